"""Structured logs (structlog): readable lines for people, JSON lines for machines.

Logs go to stderr, so stdout stays for what a command prints (a plan, a report).

Example::

    configure_logging("json", "info")
    log = get_logger(stage="backfill")
    log.info("step.done", step="backfill:public.comments", ms=812.4)
    # {"stage": "backfill", "step": "backfill:public.comments", "ms": 812.4,
    #  "event": "step.done", "level": "info", "timestamp": "2024-05-01T10:00:00.123Z"}
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal, TextIO, cast

import structlog
from structlog.typing import FilteringBoundLogger, Processor

LogFormat = Literal["text", "json"]
FORMATS: tuple[LogFormat, ...] = ("text", "json")

_state: dict[str, Any] = {"format": None}


def _level_number(level: str | int) -> int:
    if isinstance(level, int):
        return level
    number = logging.getLevelNamesMapping().get(level.upper())
    if number is None:
        raise ValueError(
            f"unknown log level {level!r}: expected debug, info, warning, error or critical"
        )
    return number


def configure_logging(
    fmt: LogFormat = "text", level: str | int = "info", *, stream: TextIO | None = None
) -> None:
    """Set up structlog for the whole process: ``text`` (colours on a terminal) or ``json``
    (one object per line), at ``level``, written to ``stream`` (stderr by default)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}: expected one of {FORMATS}")
    out: TextIO = stream if stream is not None else _CurrentStderr()  # type: ignore[assignment]
    processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    if fmt == "json":
        processors += [
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(default=str),
        ]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=_isatty(out)))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_level_number(level)),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        # Not cached: tests and the CLI may configure again (another stream, format).
        cache_logger_on_first_use=False,
    )
    _state["format"] = fmt


class _CurrentStderr:
    """Whatever ``sys.stderr`` is when a line is written (not when logging was set up):
    test runners and daemonizers swap it, and stdout must stay clean for command output."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def log_format() -> LogFormat | None:
    """The format :func:`configure_logging` set, or None when it was never called."""
    return cast("LogFormat | None", _state["format"])


def get_logger(**context: Any) -> FilteringBoundLogger:
    """A logger bound to ``context``. Without an earlier :func:`configure_logging` (and
    without the application configuring structlog itself), text logs at info on stderr."""
    if _state["format"] is None and not structlog.is_configured():
        configure_logging()
    return cast(FilteringBoundLogger, structlog.get_logger().bind(**context))


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
