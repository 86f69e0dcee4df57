"""``verify``: is RLS really protecting every tenant table?

* structural checks and policy lints on one catalog snapshot (:mod:`rls_migrate.verify.rules`,
  one rule per module, each with a code, a severity and a documentation page);
* a live probe as the application role (:mod:`rls_migrate.verify.probe`): with tenant A's
  context, try to read, update, delete and insert tenant B's rows, in transactions that are
  rolled back; with no context, every table must read empty.

Example::

    from rls_migrate.verify import verify
    report = verify(dsn, load_playbook("playbooks/app.yaml"))
    for finding in report.failures:
        print(finding.code, finding.subject, finding.message)
"""

from __future__ import annotations

from rls_migrate.verify.model import Finding, Rule, VerifyContext
from rls_migrate.verify.runner import ALL_RULES, VerifyReport, rule, verify

__all__ = ["ALL_RULES", "Finding", "Rule", "VerifyContext", "VerifyReport", "rule", "verify"]
