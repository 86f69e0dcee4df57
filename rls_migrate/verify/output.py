"""verify's output: a pass/fail matrix (tenant table x check), then every failure and
warning with what to do, then a summary line; or JSON (``VerifyReport.to_dict``)."""

from __future__ import annotations

import json

from rls_migrate.verify.runner import ALL_RULES, VerifyReport

CELL = {"pass": "ok", "fail": "FAIL", "warn": "warn", "skip": "-"}
MARK = {"fail": "FAIL", "warn": "WARN"}


def columns() -> list[str]:
    out: list[str] = []
    for r in ALL_RULES:
        if r.column and r.column not in out:
            out.append(r.column)
    return out


def render_text(report: VerifyReport) -> str:
    probe = ("probe skipped (--no-probe)" if report.probe_role is None else
             f"probe as {report.probe_role}, tenants "
             + (" and ".join(report.tenants) if report.tenants else "picked per table"))
    lines = [f"rls-migrate verify: database {report.database}, PostgreSQL "
             f"{report.server_version}, {len(report.tables)} tenant table(s); {probe}", ""]
    cols = columns()
    matrix = report.matrix()
    width = max([len("table"), *(len(t) for t in report.tables)])
    widths = [max(len(c), 4) for c in cols]
    lines.append("  ".join(["table".ljust(width), *(c.ljust(w) for c, w in zip(cols, widths,
                                                                              strict=True))]))
    for table in report.tables:
        cells = matrix.get(table, {})
        lines.append("  ".join([table.ljust(width), *(CELL[cells.get(c, "skip")].ljust(w)
                                                     for c, w in zip(cols, widths,
                                                                     strict=True))]).rstrip())
    problems = [f for f in report.findings if f.status in MARK]
    problems.sort(key=lambda f: (f.status != "fail", f.code, f.subject))
    if problems:
        lines.append("")
        code_w = max(len(f.code) for f in problems)
        for f in problems:
            lines.append(f"{MARK[f.status]}  {f.code.ljust(code_w)}  {f.subject}: {f.message}")
    lines.append("")
    verdict = "ok" if report.ok else "FAILED"
    lines.append(f"verify {verdict}: {report.count('fail')} failed, {report.count('warn')} "
                 f"warning(s), {report.count('pass')} passed, {report.count('skip')} not "
                 "applicable (rls-migrate verify --explain CHECK tells what a check means)")
    return "\n".join(lines) + "\n"


def render_json(report: VerifyReport) -> str:
    return json.dumps(report.to_dict(), indent=2) + "\n"


def explain(code: str) -> str:
    from rls_migrate.verify.runner import rule

    r = rule(code)
    body = r.doc.strip()
    if body.startswith(f"{r.code}:"):
        body = body.split("\n", 1)[1].strip() if "\n" in body else ""
    return f"{r.code} ({r.severity}): {r.summary}\n\n{body}\n"


def list_checks() -> str:
    width = max(len(r.code) for r in ALL_RULES)
    return "\n".join(f"{r.code.ljust(width)}  {r.severity:<7}  {r.summary}"
                     for r in ALL_RULES) + "\n"
