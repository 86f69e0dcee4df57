"""Bad input: one clear error and a non-zero exit, never a traceback, and nothing executed.

* **Playbooks**, fuzzed with hypothesis through the library entry point (many examples):
  random YAML documents and random text, and mutations of the sample's valid playbook
  (keys deleted, renamed, added; values replaced by other types, random text, other table
  and column names). ``parse_playbook`` then ``build_plan`` (which checks the playbook
  against the catalog, as ``apply`` does before running anything) either accept it or raise
  the toolkit's own error (:class:`~rls_migrate.errors.RlsMigrateError`): any other
  exception is a traceback a user would see. Fewer of them go through the real CLI
  (``apply --stage prepare``): exit non-zero, one ``error:`` line, and the database is
  untouched (no ``rls_migrate`` schema, the same schema snapshot).
* **CLI arguments**, fuzzed in process (``rls_migrate.cli.main``, many examples) and as a
  process (fewer): subcommands, options and values drawn from what the CLI knows plus
  random text, DSNs that are wrong, unreachable or malformed, and playbook paths that are
  missing, directories or garbage.
* **The environment**: a wrong DSN, a wrong password, a server too old (a proxy that
  reports PostgreSQL 12), a role without CREATE, a hot standby (in recovery), and a table
  dropped or renamed between ``plan`` and ``apply``: the plan is built against the live
  catalog at apply time, so the drift is reported before anything runs.

Examples are derandomized (the same every run); ``RLS_MIGRATE_FUZZ_SCALE`` multiplies the
numbers of examples of the full version.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import functools
import io
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import structlog
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from plan_helpers import schema_snapshot
from psycopg import sql
from psycopg.conninfo import make_conninfo

from reliability.support import StageTemplates, heavy_on_newest_only, report, write_playbook
from rls_migrate import logs
from rls_migrate.catalog import Catalog
from rls_migrate.connect import MIN_SERVER_VERSION, connect
from rls_migrate.errors import PlaybookError, RlsMigrateError, ServerTooOld
from rls_migrate.planner import build_plan
from rls_migrate.playbook import dump_playbook, parse_playbook
from rls_migrate.runner import apply_stage
from rls_migrate.steps import STAGES
from rls_migrate.testing import servers
from rls_migrate.testing.faults import cli_command, run_cli
from rls_migrate.testing.replica import StandbyServer

SCALE = float(os.environ.get("RLS_MIGRATE_FUZZ_SCALE", "1"))


def _option_with(option: str, value: str) -> list[str]:
    return [option, value]


def examples(full: int, reduced: int, *, reliability: bool) -> int:
    return max(1, int(full * SCALE)) if reliability else reduced


def fuzz_settings(n: int) -> settings:
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def sample(stage_templates: StageTemplates) -> Iterator[str]:
    """A fresh copy of the sample database, no stage applied."""
    with stage_templates.cloned("prepare") as dsn:
        yield dsn


def untouched(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT to_regnamespace('rls_migrate') IS NULL").fetchone()
    return bool(row and row[0])


def one_error(stderr: str) -> str:
    """The CLI's error: one ``error:`` line first, and no traceback."""
    assert "Traceback" not in stderr, stderr[-3000:]
    first = stderr.strip().splitlines()[0] if stderr.strip() else ""
    assert first.startswith("error: "), stderr[-3000:]
    assert sum(line.startswith("error:") for line in stderr.splitlines()) == 1, stderr
    return first


# --------------------------------------------------------------------------- playbooks

KEYS = ("version", "dsn_env", "schemas", "tenant", "roles", "options", "tables", "table",
        "key", "key_type", "column", "setting", "app", "owner", "admin", "admin_mode",
        "strategy", "parent", "lock_timeout", "retries", "backfill", "index", "enforce",
        "batch_target", "orphans", "order", "force_rls", "tenant_unique", "public.issues")
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats()
           | st.text(max_size=30) | st.sampled_from(
               ["TODO", "root", "derive", "bigint", "uuid", "100ms", "-1s", "public.nope",
                "id -> public.accounts(id)", '"x"."y', "app.tenant_id", "", "0", "1e400"]))


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # A named function: hypothesis cannot read a multi-line lambda's source and warns that
    # it does not use its argument.
    return (st.lists(children, max_size=4)
            | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=12), children,
                              max_size=5))


VALUES = st.recursive(SCALARS, _containers, max_leaves=25)


NAMES = ("public.nope", "public.issues", "public.accounts", "public.countries", "nope.accounts",
         '"Project Notes"', "public.open_issues", "id", "account_id", "tenant_id", "nope",
         "app_user", "app_admin", "postgres", "no_such_role", "project_id -> public.nope(id)",
         "nope -> public.projects(id)", "issue_id -> public.countries(code)",
         "id -> public.issues(id)", "uuid", "text")


def judge(text: str, catalog: Catalog) -> str:
    """What the library makes of a playbook text: ``shape`` (PlaybookError while parsing),
    ``catalog`` (rejected while planning) or ``valid``. Any other exception escapes: it is
    what a user would get as a traceback."""
    try:
        playbook = parse_playbook(text, "fuzz.yaml")
    except RlsMigrateError as exc:
        assert exc.message.strip(), "an empty error message"
        return "shape"
    try:
        build_plan(catalog, playbook, source="fuzz.yaml")
    except RlsMigrateError as exc:
        assert exc.message.strip(), "an empty error message"
        return "catalog"
    return "valid"


@pytest.mark.parametrize(("columns", "expected"), [
    ("[]", "'columns' is empty"),
    ("[project_id, id]", "2 column\\(s\\) in 'columns' but 1 in 'ref_columns'"),
])
def test_parent_mapping_with_mismatched_columns(sample: str, columns: str,
                                                expected: str) -> None:
    """Written as a mapping (as dump_playbook writes it), the parent's column lists must
    pair up too: the planners zip them."""
    text = ("version: 1\ntenant: {table: public.accounts, key: id}\nroles: {app: app_user}\n"
            "tables:\n  public.accounts: {strategy: root, column: id}\n"
            "  public.projects: {strategy: direct, column: account_id}\n"
            f"  public.issues: {{strategy: derive, parent: {{columns: {columns},"
            " table: public.projects, ref_columns: [id]}}\n")
    with pytest.raises(PlaybookError, match=rf"fuzz\.yaml:7: tables\.public\.issues\.parent: "
                                            rf"{expected}"):
        parse_playbook(text, "fuzz.yaml")


def mutate(data: st.DataObject, doc: Any) -> Any:
    """A few random edits at random places of a YAML document (dicts and lists)."""
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        parent: Any = None
        key: Any = None
        node = doc
        while isinstance(node, dict | list) and node and data.draw(st.booleans()):
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            parent, key = node, data.draw(st.sampled_from(keys))
            node = node[key]
        op = data.draw(st.sampled_from(["delete", "replace", "rename", "add", "swap_table",
                                        "swap_name", "swap_name", "swap_name"]))
        if op == "swap_name" and isinstance(parent, dict | list) and isinstance(node, str):
            # A plausible edit: another table, column or role name (existing or not).
            parent[key] = data.draw(st.sampled_from(NAMES))
            continue
        if parent is None:
            if op == "replace":
                doc = data.draw(VALUES)
            continue
        if op == "delete":
            del parent[key]
        elif op == "replace":
            parent[key] = data.draw(VALUES)
        elif op == "rename" and isinstance(parent, dict):
            parent[data.draw(st.sampled_from(KEYS) | st.text(max_size=12))] = parent.pop(key)
        elif op == "add" and isinstance(parent, dict):
            parent[data.draw(st.sampled_from(KEYS) | st.text(max_size=12))] = data.draw(VALUES)
        elif op == "swap_table":
            parent[key] = data.draw(st.sampled_from(
                ["public.nope", "public.issues", "public.accounts", "nope.accounts",
                 '"Project Notes"', "project_id -> public.nope(id)",
                 "nope -> public.projects(id)", "id, x -> public.accounts(id)"]))
    return doc


_DUMPER: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def dump(value: Any) -> str:
    """YAML text of any document (libyaml's emitter where there is one: fast)."""
    return yaml.dump(value, Dumper=_DUMPER, allow_unicode=True)


def valid_document(dsn: str, templates: StageTemplates) -> tuple[dict[str, Any], Catalog]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        catalog = Catalog.load(conn)
    doc = yaml.safe_load(dump_playbook(templates.playbook))
    assert judge(dump(doc), catalog) == "valid"
    return doc, catalog


def fuzz_playbooks_in_library(dsn: str, templates: StageTemplates, *, reliability: bool,
                              label: str) -> None:
    doc, catalog = valid_document(dsn, templates)
    outcomes: collections.Counter[str] = collections.Counter()
    before = schema_snapshot(dsn)

    @fuzz_settings(examples(300, 20, reliability=reliability))
    @given(VALUES)
    def random_documents(value: Any) -> None:
        outcomes[judge(dump(value), catalog)] += 1

    @fuzz_settings(examples(150, 10, reliability=reliability))
    @given(st.text(max_size=400))
    def random_text(text: str) -> None:
        outcomes[judge(text, catalog)] += 1

    @fuzz_settings(examples(500, 30, reliability=reliability))
    @given(st.data())
    def mutations(data: st.DataObject) -> None:
        outcomes[judge(dump(mutate(data, copy.deepcopy(doc))), catalog)] += 1

    random_documents()
    random_text()
    mutations()
    assert outcomes["shape"] and len(outcomes) >= 2, outcomes  # not vacuous
    assert schema_snapshot(dsn) == before and untouched(dsn)
    total = sum(outcomes.values())
    report(f"fuzz playbooks (library) {label}: {total} examples, {dict(outcomes)}; "
           "no other exception, nothing executed")


@pytest.mark.reliability
def test_fuzz_playbooks_library(sample: str, stage_templates: StageTemplates,
                                pg_server: servers.PostgresServer) -> None:
    heavy_on_newest_only(pg_server)
    fuzz_playbooks_in_library(sample, stage_templates, reliability=True,
                              label=pg_server.backend.name)


def test_fuzz_playbooks_library_reduced(sample: str, stage_templates: StageTemplates,
                                        pg_server: servers.PostgresServer) -> None:
    fuzz_playbooks_in_library(sample, stage_templates, reliability=False,
                              label=f"{pg_server.backend.name} (reduced)")


def fuzz_playbooks_through_cli(dsn: str, templates: StageTemplates, tmp_path: Path, *,
                               n: int, label: str) -> None:
    doc, catalog = valid_document(dsn, templates)
    before = schema_snapshot(dsn)
    ran: list[int] = []

    @fuzz_settings(n)
    @given(st.data())
    def mutations(data: st.DataObject) -> None:
        text = dump(mutate(data, copy.deepcopy(doc)))
        if judge(text, catalog) == "valid":
            return  # a valid playbook may run: not this test's business
        path = tmp_path / "fuzz.yaml"
        path.write_text(text)
        done = run_cli(cli_command("apply", str(path), "--stage", "prepare", "--yes", "--dsn",
                                   dsn), timeout=120)
        ran.append(done.returncode)
        assert done.returncode != 0
        one_error(done.stderr)
        assert untouched(dsn)

    mutations()
    assert ran, "every mutation was valid"
    assert schema_snapshot(dsn) == before
    report(f"fuzz playbooks (CLI) {label}: {len(ran)} invalid playbooks through `apply`, exit "
           f"codes {sorted(set(ran))}, one error line each, nothing executed")


@pytest.mark.reliability
def test_fuzz_playbooks_cli(sample: str, stage_templates: StageTemplates,
                            pg_server: servers.PostgresServer, tmp_path: Path) -> None:
    heavy_on_newest_only(pg_server)
    fuzz_playbooks_through_cli(sample, stage_templates, tmp_path, n=int(8 * SCALE) or 1,
                               label=pg_server.backend.name)


# --------------------------------------------------------------------------- CLI arguments

# Each command with the options it takes (None: a flag); argument lists are drawn mostly
# well formed, so the fuzz gets past click's parsing into the commands themselves.
PLAYBOOK = "PLAYBOOK"
COMMANDS: dict[str, tuple[tuple[str, ...], dict[str, str | None]]] = {
    "doctor": ((), {"--dsn": "dsn", "--app-role": "text"}),
    "init": ((), {"--dsn": "dsn", "--tenant-table": "table", "--key": "text",
                  "--app-role": "text", "--column": "text", "--setting": "text",
                  "--dsn-env": "text", "-o": "path", "--force": None}),
    "plan": ((PLAYBOOK,), {"--dsn": "dsn", "--stage": "stage", "--format": "format",
                           "-o": "path"}),
    "apply": ((PLAYBOOK,), {"--stage": "stage", "--dsn": "dsn", "--yes": None,
                            "--dry-run": None, "--force": None}),
    "status": ((PLAYBOOK,), {"--dsn": "dsn", "--format": "format"}),
    "rollback": ((PLAYBOOK,), {"--to": "stage", "--dsn": "dsn", "--drop-columns": None,
                               "--dry-run": None}),
    "report": ((PLAYBOOK,), {"--dsn": "dsn", "--since": "text", "--format": "format",
                             "--fail-on-violations": None, "--log": "path"}),
    "verify": ((PLAYBOOK,), {"--dsn": "dsn", "--app-dsn": "dsn", "--tenants": "tenants",
                             "--no-probe": None, "--format": "format", "--explain": "text",
                             "--list": None}),
    "check": ((), {"--dsn": "dsn", "--playbook": "path", "--column": "text",
                   "--app-role": "text", "--schema": "text", "--format": "format"}),
    "alembic render": ((PLAYBOOK,), {"--versions-dir": "path", "--stages": "text",
                                     "--dsn": "dsn", "--single": None}),
}
# No '/' (paths stay inside the test's folder) and no NUL (argv cannot hold it).
SURROGATES: Any = ("Cs",)  # hypothesis types the categories as a Literal
TEXT = st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=SURROGATES),
               max_size=20)


def argument_values(dsn: str, files: dict[str, Path]) -> dict[str, st.SearchStrategy[str]]:
    """Values by kind: mostly plausible, some wrong, some random text."""
    closed = make_conninfo(dsn, port=str(_closed_port()), connect_timeout="2")
    paths = [str(p) for p in files.values()]
    return {
        "dsn": st.one_of(st.just(dsn), st.sampled_from(
            [closed, "host=127.0.0.1 port", "not a dsn", "", "postgresql://u:s3cret@[bad"]),
            TEXT),
        "stage": st.sampled_from([*STAGES, "none"]) | TEXT,
        "format": st.sampled_from(["text", "json", "markdown", "sql"]) | TEXT,
        "path": st.sampled_from(paths) | TEXT,
        "table": st.sampled_from(["accounts", "public.accounts", "public.nope", '"x',
                                  "a.b.c"]) | TEXT,
        "tenants": st.sampled_from(["1,2", "1", "1,1", "1;DROP TABLE accounts,2",
                                    "' OR '1'='1,2"]) | TEXT,
        "text": st.sampled_from(["app_user", "24h", "all", "-1", "tenant_id",
                                 "app.tenant_id", "view-bypasses-rls"]) | TEXT,
    }


def argv_strategy(dsn: str, files: dict[str, Path]) -> st.SearchStrategy[list[str]]:
    values = argument_values(dsn, files)
    paths = values["path"]

    def for_command(name: str) -> st.SearchStrategy[list[str]]:
        positionals, options = COMMANDS[name]
        parts: list[st.SearchStrategy[list[str]]] = [st.just(name.split())]
        parts += [paths.map(lambda p: [p]) for _ in positionals]
        for option, kind in options.items():
            given_ = (st.just([option]) if kind is None
                      else values[kind].map(functools.partial(_option_with, option)))
            parts.append(st.one_of(st.just([]), given_))
        # Now and then a stray token: an unknown option, a value, --help.
        parts.append(st.one_of(st.just([]), st.just([]), st.just([]),
                               st.sampled_from(["--nope", "-x", "--help", "--"]).map(
                                   lambda t: [t]),
                               TEXT.map(lambda t: [t])))
        return st.tuples(*parts).map(lambda chunks: [t for chunk in chunks for t in chunk])

    return st.sampled_from(sorted(COMMANDS)).flatmap(for_command)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bad_files(folder: Path) -> dict[str, Path]:
    """Playbook paths that must all be refused: missing, a folder, garbage, invalid. (A
    file that is not UTF-8 has its own test: it fails today, and would hide the rest.)"""
    files = {"missing": folder / "missing.yaml", "folder": folder / "a-folder",
             "garbage": folder / "garbage.yaml", "invalid": folder / "invalid.yaml",
             "empty": folder / "empty.yaml"}
    files["folder"].mkdir(exist_ok=True)
    files["garbage"].write_text("tenant: [\n\x01 {{ %s")
    files["invalid"].write_text("version: 1\ntenant: {table: public.nope}\nroles: {app: x}\n"
                                "tables: {public.nope: {strategy: root, column: id}}\n")
    files["empty"].write_text("")
    return files


@contextlib.contextmanager
def cli_in_process() -> Iterator[Callable[[list[str]], tuple[int, str, str]]]:
    """``rls_migrate.cli.main(argv)`` in this process: (exit code, stdout, stderr). An
    exception other than SystemExit escapes (it would be a traceback). Logging is
    restored afterwards (commands configure it globally)."""
    from rls_migrate.cli import main

    saved_config = structlog.get_config()
    saved_state = dict(logs._state)

    def call(argv: list[str]) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code: Any = 0
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(argv)
            except SystemExit as exc:
                code = exc.code
        return (code if isinstance(code, int) else 1), out.getvalue(), err.getvalue()

    try:
        yield call
    finally:
        structlog.configure(**saved_config)
        logs._state.clear()
        logs._state.update(saved_state)


def check_cli_result(argv: list[str], code: int, stdout: str, stderr: str) -> None:
    assert "Traceback" not in stdout + stderr, argv
    if code != 0:
        assert (stdout + stderr).strip(), f"{argv}: exit {code} without a word"
        assert "s3cret" not in stdout + stderr, f"{argv}: the password was shown"


def fuzz_arguments(dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *,
                   reliability: bool, label: str) -> None:
    for name in ("RLS_MIGRATE_DSN", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # init writes playbooks/<db>.yaml where it runs
    files = bad_files(tmp_path)
    before = schema_snapshot(dsn)
    codes: collections.Counter[int] = collections.Counter()

    with cli_in_process() as call:
        @fuzz_settings(examples(300, 20, reliability=reliability))
        @given(argv_strategy(dsn, files))
        def arguments(argv: list[str]) -> None:
            code, stdout, stderr = call(argv)
            check_cli_result(argv, code, stdout, stderr)
            codes[code] += 1
            assert untouched(dsn), argv

        arguments()
    assert schema_snapshot(dsn) == before
    assert len(codes) >= 2, codes  # not only usage errors
    report(f"fuzz CLI arguments (in process) {label}: {sum(codes.values())} argument lists, "
           f"exit codes {dict(sorted(codes.items()))}; no traceback, nothing executed")


@pytest.mark.reliability
def test_fuzz_cli_arguments(sample: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            pg_server: servers.PostgresServer) -> None:
    heavy_on_newest_only(pg_server)
    fuzz_arguments(sample, tmp_path, monkeypatch, reliability=True,
                   label=pg_server.backend.name)
    # And a few through the real process, where the exit code and stderr are what a user
    # sees.
    files = bad_files(tmp_path)
    codes = []

    @fuzz_settings(int(8 * SCALE) or 1)
    @given(argv_strategy(sample, files))
    def as_process(argv: list[str]) -> None:
        done = run_cli(cli_command(*argv), timeout=120)
        check_cli_result(argv, done.returncode, done.stdout, done.stderr)
        codes.append(done.returncode)

    as_process()
    assert untouched(sample)
    report(f"fuzz CLI arguments (process) {pg_server.backend.name}: {len(codes)} runs, exit "
           f"codes {sorted(set(codes))}")


def test_fuzz_cli_arguments_reduced(sample: str, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch,
                                    pg_server: servers.PostgresServer) -> None:
    fuzz_arguments(sample, tmp_path, monkeypatch, reliability=False,
                   label=f"{pg_server.backend.name} (reduced)")


@pytest.mark.reliability
def test_playbook_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("tenant: {table: café}\n".encode("latin-1"))
    done = run_cli(cli_command("plan", str(path), "--dsn", "host=127.0.0.1 port=1"),
                   timeout=60)
    assert done.returncode == 2
    assert "UTF-8" in one_error(done.stderr) or "utf-8" in done.stderr


# --------------------------------------------------------------------------- the environment


def playbook_file(templates: StageTemplates, tmp_path: Path) -> Path:
    return write_playbook(templates.playbook, tmp_path / "app.yaml")


@pytest.mark.reliability
def test_wrong_dsn_and_password(sample: str, stage_templates: StageTemplates,
                                tmp_path: Path) -> None:
    path = playbook_file(stage_templates, tmp_path)
    with psycopg.connect(sample, autocommit=True) as conn:
        try:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'right-password'").format(
                sql.Identifier(servers.PASSWORD_ROLE)))
        except psycopg.errors.DuplicateObject:
            pass  # cluster-wide: made by an earlier test
    cases = {
        "closed port": (make_conninfo(sample, port=str(_closed_port())), 4,
                        "cannot connect"),
        "malformed": ("host=127.0.0.1 port", 4, "not a valid connection string"),
        "malformed URL with a password": ("postgresql://u:s3cret@[bad", 4,
                                          "not a valid connection string"),
        "wrong password": (make_conninfo(sample, user=servers.PASSWORD_ROLE,
                                         password="s3cret"), 4,
                           "password authentication failed"),
        "no database": (make_conninfo(sample, dbname="no_such_db"), 4, "does not exist"),
    }
    for name, (dsn, code, words) in cases.items():
        done = run_cli(cli_command("apply", str(path), "--stage", "prepare", "--yes",
                                   "--dsn", dsn), timeout=60)
        assert done.returncode == code, (name, done.stderr)
        message = one_error(done.stderr)
        assert words in message, (name, message)
        assert "s3cret" not in done.stderr + done.stdout, name
    assert untouched(sample)


class VersionProxy:
    """A TCP proxy to a server that rewrites the ``server_version`` the server reports at
    start-up to major 12: a server too old, for the client."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            for src, dst, rewrite in ((client, server, False), (server, client, True)):
                threading.Thread(target=self._pump, args=(src, dst, rewrite),
                                 daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, rewrite: bool) -> None:
        marker = b"server_version\x00"
        with contextlib.suppress(OSError):
            while True:
                chunk = src.recv(65536)
                if not chunk:
                    break
                at = chunk.find(marker) if rewrite else -1
                if at >= 0:  # same length: "18.6" -> "12.6", message lengths stay right
                    start = at + len(marker)
                    chunk = chunk[:start] + b"12" + chunk[start + 2:]
                dst.sendall(chunk)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()


@pytest.mark.reliability
def test_server_too_old(sample: str, stage_templates: StageTemplates,
                        pg_server: servers.PostgresServer, tmp_path: Path) -> None:
    if not isinstance(pg_server, servers.LocalServer):
        pytest.skip("the proxy needs a local server")
    proxy = VersionProxy(pg_server.port)
    try:
        old = make_conninfo(sample, port=str(proxy.port), sslmode="disable",
                            gssencmode="disable")
        with pytest.raises(ServerTooOld, match=r"PostgreSQL 12\.\d+.* is too old"):
            connect(old)
        done = run_cli(cli_command("apply", str(playbook_file(stage_templates, tmp_path)),
                                   "--stage", "prepare", "--yes", "--dsn", old), timeout=60)
        assert done.returncode == 4
        assert "too old" in one_error(done.stderr)
        assert f"{MIN_SERVER_VERSION // 10000} or newer" in done.stderr
    finally:
        proxy.close()
    assert untouched(sample)


@pytest.mark.reliability
def test_role_without_create(sample: str, stage_templates: StageTemplates,
                             tmp_path: Path) -> None:
    role = "rel_no_create"
    with psycopg.connect(sample, autocommit=True) as conn:
        with contextlib.suppress(psycopg.errors.DuplicateObject):
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(
            sql.Identifier(role)))
    done = run_cli(cli_command("apply", str(playbook_file(stage_templates, tmp_path)),
                               "--stage", "prepare", "--yes", "--dsn",
                               make_conninfo(sample, user=role)), timeout=60)
    assert untouched(sample)
    assert done.returncode != 0
    assert "permission denied" in one_error(done.stderr)


@pytest.mark.reliability
def test_database_in_recovery(fault_templates: StageTemplates,
                              fault_server: servers.LocalServer,
                              fault_standby: StandbyServer, tmp_path: Path) -> None:
    path = playbook_file(fault_templates, tmp_path)
    with fault_templates.cloned("prepare") as dsn:
        standby = fault_standby
        standby.catch_up(fault_server)
        replica = standby.dsn(servers.dbname_of(dsn))
        doctor = run_cli(cli_command("doctor", "--dsn", replica), timeout=60)
        assert doctor.returncode == 1 and "BLOCK" in doctor.stdout
        done = run_cli(cli_command("apply", str(path), "--stage", "prepare", "--yes",
                                   "--dsn", replica), timeout=60)
        assert untouched(dsn)
        assert done.returncode != 0
        message = one_error(done.stderr)
        assert "read-only" in message or "recovery" in message or "standby" in message


@pytest.mark.reliability
@pytest.mark.parametrize("drift", ["rename", "drop"])
def test_drift_between_plan_and_apply(drift: str, sample: str,
                                      stage_templates: StageTemplates,
                                      tmp_path: Path) -> None:
    """The playbook was planned against a table that is gone at apply time: the plan is
    rebuilt from the live catalog, the drift is reported, nothing runs. Before any stage
    and in mid-migration (after add-column)."""
    path = playbook_file(stage_templates, tmp_path)
    planned = run_cli(cli_command("plan", str(path), "--dsn", sample), timeout=60)
    assert planned.returncode == 0, planned.stderr
    change = {"rename": 'ALTER TABLE comments RENAME TO remarks',
              "drop": 'DROP TABLE "Project Notes"'}[drift]
    expected = {"rename": "tables.public.comments: no table public.comments in the database",
                "drop": 'tables.public."Project Notes": no table public."Project Notes" in '
                        "the database"}[drift]

    with psycopg.connect(sample, autocommit=True) as conn:
        conn.execute(change)
    before = schema_snapshot(sample)
    done = run_cli(cli_command("apply", str(path), "--stage", "prepare", "--yes", "--dsn",
                               sample), timeout=60)
    assert done.returncode == 2
    assert "does not match the database" in one_error(done.stderr)
    assert expected in done.stderr
    assert untouched(sample) and schema_snapshot(sample) == before


def test_drift_reported_before_anything_runs(sample: str,
                                             stage_templates: StageTemplates) -> None:
    """Reduced (the library): a table renamed after the playbook was written fails apply
    with the drift, and nothing runs."""
    with psycopg.connect(sample, autocommit=True) as conn:
        conn.execute("ALTER TABLE comments RENAME TO remarks")
    before = schema_snapshot(sample)
    with pytest.raises(PlaybookError, match=r"tables\.public\.comments: no table "
                                            r"public\.comments in the database"):
        apply_stage(sample, stage_templates.playbook, "prepare")
    assert untouched(sample) and schema_snapshot(sample) == before


@pytest.mark.reliability
def test_drift_in_mid_migration(stage_templates: StageTemplates, tmp_path: Path) -> None:
    path = playbook_file(stage_templates, tmp_path)
    with stage_templates.cloned("prepare") as dsn:
        for stage in ("prepare", "add-column"):
            assert apply_stage(dsn, stage_templates.playbook, stage).result.failed == 0
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("ALTER TABLE issues RENAME TO tickets")
            runs = conn.execute("SELECT count(*) FROM rls_migrate.runs").fetchone()
            journal = conn.execute("SELECT count(*) FROM rls_migrate.journal").fetchone()
        before = schema_snapshot(dsn)
        done = run_cli(cli_command("apply", str(path), "--stage", "backfill", "--yes",
                                   "--dsn", dsn), timeout=60)
        assert done.returncode == 2
        one_error(done.stderr)
        assert "tables.public.issues: no table public.issues in the database" in done.stderr
        assert schema_snapshot(dsn) == before
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM rls_migrate.runs").fetchone() == runs
            assert conn.execute("SELECT count(*) FROM rls_migrate.journal").fetchone() \
                == journal
