"""``python -m rls_migrate``: the same as the ``rls-migrate`` command."""

from rls_migrate.cli import main

main()
