"""Typed errors. Each expected failure has one class with the fields that explain it; the
CLI maps them to one clear message and an exit code in one place (``cli.main``)."""

from __future__ import annotations


class RlsMigrateError(Exception):
    """An expected failure: the message is shown to the user as is, without a traceback."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(RlsMigrateError):
    """Bad arguments or options."""

    exit_code = 2


class ConnectionFailed(RlsMigrateError):
    """The server could not be reached or refused us (wrong DSN, password, host)."""

    exit_code = 4


class ServerTooOld(RlsMigrateError):
    """The server is older than the oldest version the toolkit supports."""

    exit_code = 4


class PlaybookError(RlsMigrateError):
    """The playbook is malformed or disagrees with the database."""

    exit_code = 2


class PrerequisiteError(RlsMigrateError):
    """The database or its roles are not fit for the requested stage."""

    exit_code = 5


class ConcurrentRunner(RlsMigrateError):
    """Another runner holds the migration lock on this database."""

    exit_code = 6


class StepFailed(RlsMigrateError):
    """A step failed (after its retries, where it retries)."""

    exit_code = 7


class GateClosed(RlsMigrateError):
    """A stage refused to run because its gate (a clean report, an earlier stage) is shut."""

    exit_code = 3


class Interrupted(RlsMigrateError):
    """Ctrl-C during a step: the statement was cancelled, the step rolled back and
    journaled ``interrupted``; running the same command again resumes."""

    exit_code = 130

    def __init__(self, message: str, *, step_id: str | None = None,
                 stage: str | None = None) -> None:
        super().__init__(message)
        self.step_id = step_id
        self.stage = stage
