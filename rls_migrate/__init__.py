"""rls-migrate: roll PostgreSQL row-level security out on a live multi-tenant database."""

__version__ = "0.1.0"
