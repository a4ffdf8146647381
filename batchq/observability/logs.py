"""Structured logs: one JSON object per line on stdout, for the API and the workers.

``log.info("line stored", extra={"batch_id": ..., "line": 7})`` renders as
``{"ts": "...Z", "level": "INFO", "logger": "...", "message": "line stored", "batch_id": ..., "line": 7}``.
The formatter writes only what it is given: nothing here ever adds a request or response body.
Where a dict could carry content (a request, an upstream reply), pass it through ``redact`` first.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

HANDLER_NAME = "batchq"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
NOISY = ("celery.worker.strategy", "celery.app.trace", "uvicorn.access")  # one INFO line per task / request
SAFE_FIELDS = (
    "batch_id", "line", "custom_id", "owner", "status", "action", "event", "errors", "lines", "reason", "route",
    "attempts", "status_code",
)  # fmt: skip

# Every attribute a bare LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_JSON_OPTIONS = orjson.OPT_NON_STR_KEYS


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", **extra}``, plus ``exc`` / ``stack`` when present."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        try:
            return orjson.dumps(entry, default=str, option=_JSON_OPTIONS).decode()
        except (TypeError, orjson.JSONEncodeError):  # e.g. an int beyond 64 bits: degrade, never drop the line
            return orjson.dumps({k: v if isinstance(v, str) else repr(v) for k, v in entry.items()}).decode()


def configure_logging(level: str | int = "INFO", json: bool = True, stream: TextIO | None = None) -> None:
    """Install batchq's handler on the root logger (once: calling again reconfigures it)."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if h.get_name() == HANDLER_NAME), None)
    target = stream if stream is not None else sys.stdout
    if not isinstance(handler, logging.StreamHandler):
        handler = logging.StreamHandler(target)
        handler.set_name(HANDLER_NAME)
        root.addHandler(handler)
    elif handler.stream is not target:
        handler.setStream(target)
    handler.setFormatter(JsonFormatter() if json else logging.Formatter(TEXT_FORMAT))
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)


def redact(mapping: Mapping[str, Any], allowed: Collection[str] = SAFE_FIELDS) -> dict[str, Any]:
    """Only the keys in ``allowed``: for dicts that could carry request or response content."""
    return {key: value for key, value in mapping.items() if key in allowed}


def _iso(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
