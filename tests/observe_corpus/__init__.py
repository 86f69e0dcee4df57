"""The observe-mode corpus (issue 16): application traffic that observe mode must not mistake
for breakage, and code paths that enforcement really breaks, each checked against ground truth.

* :mod:`.patterns_joins`, :mod:`.patterns_filters`, :mod:`.patterns_writes`: correct query
  patterns (the tenant is set per transaction and only its own rows are asked for), grouped
  by why observe mode meets other tenants' rows anyway: (A) a hash, merge, nested-loop or
  recursive join that scans a child table scoped only through its parent, ``EXISTS``/``IN``
  through a parent; (B) plan-dependent shapes (generic plans, the biggest tenant's custom
  plan); (C) non-leakproof filters (``lower()``, ``ILIKE``, ``~``, ``->>``); (D) ``= ANY($1)``
  with psycopg's ``smallint[]`` lists; plus views, the partitioned table, upserts,
  ``UPDATE ... FROM``, ``DELETE ... USING`` and ``INSERT ... SELECT``.
* :mod:`.orm`: SQLAlchemy 2 models of the sample and the ORM form of many patterns
  (``selectinload``, ``joinedload``, lazy loads, ``has()``, ``in_()``, recursive CTEs,
  ``on_conflict_do_update``, ``UPDATE ... FROM``).
* :mod:`.modes`: every pattern in four modes: psycopg's simple query protocol
  (``ClientCursor``), psycopg prepared statements (``prepare=True``, run past the fifth
  execution where PostgreSQL may switch to a generic plan), ``plan_cache_mode =
  force_generic_plan``, and the SQLAlchemy ORM.
* :mod:`.wrong_paths`: code paths enforcement breaks (no context, another tenant's id, IDOR
  reads, updates and deletes, cross-tenant inserts and upserts, a nightly job, a stale
  context on a pooled connection, a real violation that shares its statement with correct
  traffic).
* :mod:`.gate`: what the enforce gate makes of the evidence the corpus left.
* :mod:`.database`: the sample database (plus a ``security_invoker`` view of our own) taken
  through observe, and the facts about two tenants (the biggest and the smallest) that
  patterns take their parameters from.

Ground truth is checked, not assumed (``test_corpus.py``): every correct pattern returns the
same rows under observe and under enforce, and every wrong path returns something else or
fails under enforce.
"""
