"""Structured logging: JSON lines (or console), PHI redaction, per-message context.

One processor chain renders both structlog calls and stdlib `logging` records (asyncio,
aiohttp, httpx ...), so every line on the stream has the same shape::

    {"event": "message_retry", "channel": "adt", "message_id": 42, "level": "info",
     "logger": "hl7engine.runner", "timestamp": "2025-01-01T12:00:00.000000Z"}

Disabled levels cost one method call (structlog.make_filtering_bound_logger). The PHI
redaction processor (engine.obs.redact.RedactPHI) runs last before rendering.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Iterator, Mapping
from contextvars import Token
from pathlib import Path
from typing import IO, Any, Literal

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

from engine.obs.audit import AUDIT_LOGGER_NAME
from engine.obs.redact import RedactPHI

_CONTEXT_KEYS = ("channel", "message_id", "control_id")
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL}


class _Output:
    """One stream and its lock, shared by structlog loggers and the stdlib handler."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self._lock = threading.Lock()

    def write_line(self, line: str) -> None:
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()


class _LineLogger:
    """The logger structlog wraps: writes one rendered line; knows its name for the `logger` key."""

    def __init__(self, output: _Output, name: str) -> None:
        self._output = output
        self.name = name

    def msg(self, message: str) -> None:
        self._output.write_line(message)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


class _LineLoggerFactory:
    def __init__(self, output: _Output) -> None:
        self._output = output

    def __call__(self, *args: Any) -> _LineLogger:
        # structlog.get_logger("hl7engine.runner") passes the name here.
        name = str(args[0]) if args else "hl7engine"
        return _LineLogger(self._output, name)


class _StdlibHandler(logging.Handler):
    """Routes stdlib records through structlog's ProcessorFormatter to the shared output."""

    def __init__(self, output: _Output, formatter: logging.Formatter) -> None:
        super().__init__()
        self._output = output
        self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._output.write_line(self.format(record))
        except Exception:  # logging must never take the engine down; stdlib's own policy
            self.handleError(record)


def _add_logger_name(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    record = event_dict.get("_record")
    name = record.name if isinstance(record, logging.LogRecord) else getattr(logger, "name", None)
    if name is not None:
        event_dict.setdefault("logger", name)
    return event_dict


def _level_number(level: str) -> int:
    try:
        return _LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(_LEVELS)}") from None


def configure_logging(
    level: str = "info",
    fmt: Literal["json", "console"] = "json",
    stream: IO[str] | None = None,
    log_content: bool = False,
    *,
    cache_loggers: bool = True,
    audit_path: Path | None = None,
) -> None:
    """Configure structlog and stdlib logging for the whole process.

    level: debug | info | warning | error | critical.
    fmt: "json" (one JSON object per line, for machines) or "console" (for people).
    stream: where lines go (default: sys.stderr at call time).
    log_content: **logs will contain PHI.** Off by default. When on, log values are not
        redacted and exceptions keep their messages; meant for debugging with test data
        only. A warning line says so at startup.
    cache_loggers: cache each logger on first use (fast). Tests that reconfigure logging
        several times pass False so module-level loggers pick up the new configuration.
    audit_path: also append every `hl7engine.audit` event to this hash-chained file
        (engine/obs/audit.py); verify it with `hl7engine audit verify`.
    """
    output = _Output(stream if stream is not None else sys.stderr)
    level_no = _level_number(level)
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    renderer: Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=output.stream.isatty())
    redact = RedactPHI(log_content=log_content)
    audit: list[Processor] = []
    if audit_path is not None:
        from engine.obs.audit import AuditTrail, AuditTrailProcessor

        audit.append(AuditTrailProcessor(AuditTrail(audit_path)))
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _add_logger_name,
        timestamper,
    ]
    structlog.configure(
        processors=[*shared, redact, *audit, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=_LineLoggerFactory(output),
        context_class=dict,
        cache_logger_on_first_use=cache_loggers,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, redact, renderer],
        # The format string is code; its arguments are data and may be PHI (an httpx URL
        # with a search parameter): render "%s" placeholders uninterpolated unless
        # content logging is on.
        use_get_message=log_content,
    )
    _install_stdlib_handler(_StdlibHandler(output, formatter), level_no)
    if log_content:
        structlog.get_logger("hl7engine.logging").warning(
            "content_logging_enabled", reason="log_content is on: logs will contain PHI"
        )


def _install_stdlib_handler(handler: _StdlibHandler, level_no: int) -> None:
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StdlibHandler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level_no)
    logging.captureWarnings(True)


def get_logger(name: str) -> FilteringBoundLogger:
    """A structlog logger whose lines carry `logger=name`; same as structlog.get_logger(name)."""
    logger: FilteringBoundLogger = structlog.get_logger(name)
    return logger


def audit_logger() -> FilteringBoundLogger:
    """The operator-access audit log (DESIGN.md §5.7): always at info, whatever the level.

    Lines carry `logger="hl7engine.audit"` so they can be routed or retained apart.
    """
    proxy: FilteringBoundLogger = structlog.wrap_logger(
        None,
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory_args=(AUDIT_LOGGER_NAME,),
    )
    return proxy


def bind_message_context(
    channel: str, message_id: int | None = None, control_id: str | None = None
) -> Mapping[str, Token[Any]]:
    """Attach a message's identifiers to every log line of the current task/context.

    The control id (MSH-10) is not PHI but is optional: leave it out where a sender's
    ids are considered sensitive. Returns tokens for `reset_message_context`.
    """
    values: dict[str, Any] = {"channel": channel}
    if message_id is not None:
        values["message_id"] = message_id
    if control_id is not None:
        values["control_id"] = control_id
    return structlog.contextvars.bind_contextvars(**values)


def reset_message_context(tokens: Mapping[str, Token[Any]]) -> None:
    """Restore the context as it was before the matching `bind_message_context`."""
    structlog.contextvars.reset_contextvars(**tokens)


def clear_message_context() -> None:
    """Drop channel, message_id and control_id from the current context."""
    structlog.contextvars.unbind_contextvars(*_CONTEXT_KEYS)


@contextlib.contextmanager
def message_context(
    channel: str, message_id: int | None = None, control_id: str | None = None
) -> Iterator[None]:
    """`with message_context("adt", 42): ...` binds the ids for the block, then restores."""
    tokens = bind_message_context(channel, message_id, control_id)
    try:
        yield
    finally:
        reset_message_context(tokens)
