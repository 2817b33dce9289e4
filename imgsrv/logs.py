"""Structured logging: one JSON object per line on stderr."""

from __future__ import annotations

import atexit
import logging
import sys
import time
from typing import Any, TextIO

import orjson

# Attributes every LogRecord has; anything else passed via ``extra=`` becomes a JSON field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class _Timestamps:
    """ISO 8601 UTC timestamps with milliseconds; one strftime per second, not per line."""

    def __init__(self) -> None:
        self._last = (-1, "")  # one tuple, replaced whole: threads log too

    def __call__(self, created: float) -> str:
        second = int(created)
        cached_second, stamp = self._last
        if second != cached_second:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._last = (second, stamp)
        return f"{stamp}.{int((created - second) * 1000):03d}Z"


_timestamp = _Timestamps()


class JsonFormatter(logging.Formatter):
    """Formats a record as a single JSON line with its ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = vars(record)
        for key in fields.keys() - _STANDARD:
            if not key.startswith("_"):
                entry[key] = fields[key]
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class BatchingStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes lines in batches instead of one write per line.

    At thousands of requests a second, one write system call per access-log line costs a
    fifth of the cache-hit throughput. Lines are kept until ``max_lines`` have gathered,
    ``max_delay`` seconds have passed since the first of them, or :meth:`flush` is called (the
    runtime calls it periodically and at shutdown); warnings and errors are written at once.
    """

    def __init__(self, stream: TextIO, max_lines: int = 256, max_delay: float = 0.5) -> None:
        super().__init__(stream)
        self.max_lines = max_lines
        self.max_delay = max_delay
        self._lines: list[str] = []
        self._first = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.write_line(line, urgent=record.levelno >= logging.WARNING)

    def write_line(self, line: str, urgent: bool = False) -> None:
        """Add one formatted line to the batch (``urgent``: write the batch out now)."""
        with self.lock:  # type: ignore[union-attr]
            if not self._lines:
                self._first = time.monotonic()
            self._lines.append(line)
            due = (
                urgent
                or len(self._lines) >= self.max_lines
                or time.monotonic() - self._first >= self.max_delay
            )
        if due:
            self.flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            lines, self._lines = self._lines, []
            try:
                if lines:
                    self.stream.write("\n".join(lines) + "\n")
                super().flush()
            except (OSError, ValueError):
                pass  # the stream is gone (closed at interpreter exit): nowhere to write


def log_fields(logger: logging.Logger, msg: str, fields: dict[str, Any]) -> None:
    """Log ``msg`` with ``fields`` at info level, as :meth:`logging.Logger.info` with ``extra``.

    For the access log's thousands of lines a second: where the line goes to imgsrv's JSON
    handler, it is written without building a LogRecord (which costs as much as the rest of a
    memory-cache hit); any other handler gets a normal record.
    """
    if not logger.isEnabledFor(logging.INFO):
        return
    handlers = _handlers(logger)
    direct = [h for h in handlers if isinstance(h, BatchingStreamHandler) and _is_json(h)]
    if len(direct) < len(handlers):
        logger.info(msg, extra=fields)
        return
    entry = {"ts": _timestamp(time.time()), "level": "info", "logger": logger.name, "msg": msg}
    line = orjson.dumps(entry | fields, default=str).decode()
    for handler in direct:
        if handler.level <= logging.INFO:
            handler.write_line(line)


def _handlers(logger: logging.Logger) -> list[logging.Handler]:
    # The handlers logging itself would call, in the same walk up the hierarchy.
    found: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        found.extend(current.handlers)
        if not current.propagate:
            break
        current = current.parent
    return found


def _is_json(handler: logging.Handler) -> bool:
    return type(handler.formatter) is JsonFormatter and not handler.filters


def flush_logs() -> None:
    """Write out every batched log line now."""
    for handler in logging.getLogger("imgsrv").handlers:
        handler.flush()


def configure_logging(level: str = "info") -> None:
    """Send imgsrv's logs to stderr as JSON lines (idempotent)."""
    logger = logging.getLogger("imgsrv")
    logger.setLevel(level.upper())
    if not any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        handler = BatchingStreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
        atexit.register(flush_logs)
    logger.propagate = False
    # libvips reports recoverable decoder warnings through this logger once per tile; the
    # request outcome (served, or a 4xx with the reason) already says what matters.
    logging.getLogger("pyvips").setLevel(logging.ERROR)
