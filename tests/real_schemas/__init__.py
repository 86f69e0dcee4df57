"""A corpus of real-world schema shapes: the DDL that Rails, Prisma and Django really emit for
multi-tenant applications, filled with synthetic data by a generic filler that reads the
catalog (:mod:`real_schemas.filler`), each with the write path its ORM runs and the playbook
an engineer of the application would commit (``<schema>.yaml`` beside the module).

One module per schema (:mod:`real_schemas.rails`, :mod:`real_schemas.prisma`,
:mod:`real_schemas.django`), each exposing a :class:`real_schemas.model.RealSchema`; the
runbook over them is ``tests/test_real_schemas.py``. Not a test package: pytest collects
nothing here.

Written from the frameworks' own DDL conventions, not from the toolkit's assumptions: the
filler reads ``pg_catalog`` itself instead of :mod:`rls_migrate.catalog`.
"""
