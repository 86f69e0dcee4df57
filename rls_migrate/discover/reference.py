"""Global tables: reach no tenant and look like reference data. Being *looked up* by
tenant tables (many tenant rows point at one shared row) is what reference data is."""

from __future__ import annotations

from rls_migrate.catalog import QualifiedName, Table, quote_ident
from rls_migrate.discover.model import Classification
from rls_migrate.discover.state import Discovery


def classify_global(
    state: Discovery, table: Table, tenant: set[QualifiedName]
) -> Classification:
    lookups = sorted({(q, fk.columns) for q, fk in state.referenced_by[table.qname]
                      if q in tenant})
    if lookups:
        shown = ", ".join(f"{q}({', '.join(quote_ident(c) for c in cols)})"
                          for q, cols in lookups[:5])
        more = f" and {len(lookups) - 5} more" if len(lookups) > 5 else ""
        evidence = f"reaches no tenant; looked up by {shown}{more}: reference data"
    else:
        evidence = ("reaches no tenant, no tenant table references it and no column "
                    "looks like a tenant reference")
    return state.classification(
        table, "global", evidence,
        notes=["confirm that every tenant may read all its rows (or skip the table)"])
