"""Scale-out readiness for Citus (row-based sharding by tenant).

* :mod:`rls_migrate.citus.readiness`: each table's role (distributed by the tenant column and
  colocated with the root, reference, or local, with why) and every blocker with its fix;
* :mod:`rls_migrate.citus.runbook`: the distribution runbook as a psql script
  (``create_reference_table``, ``create_distributed_table(..., colocate_with => root)`` in
  foreign-key order, and the rollback with ``undistribute_table``);
* :mod:`rls_migrate.citus.render`: the report as text, markdown and JSON.

The online fixes are index-stage steps (:mod:`rls_migrate.stages.tenant_keys`). Citus itself
never ran here: the report and the runbook are read from a plain PostgreSQL catalog.
"""
