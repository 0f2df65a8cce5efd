"""One logger tree (`memos_ray.*`), text or JSON lines, and the id of the request each line
was written for.

The request id lives in a context variable that the API sets per request (from the caller's
`X-Request-Id`, or a new one) and that thread-pool handlers inherit; every log record made
while it is set carries it as `memos_request_id` (not `request_id`: Ray Serve passes that
one as `extra` to its access log, and a record may not have it twice), and error answers
carry it too, so a client's report and the server's log lines meet.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

ROOT = "memos_ray"
ATTRIBUTE = "memos_request_id"
REQUEST_ID: ContextVar[str | None] = ContextVar("memos_request_id", default=None)

_installed = threading.Lock()
_factory_set = False
_TEXT = "%(asctime)s %(levelname)s %(name)s [%(memos_request_id)s] %(message)s"


def install_request_ids() -> None:
    """Every log record gets `memos_request_id` (None outside a request); idempotent."""
    global _factory_set
    with _installed:
        if _factory_set:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            setattr(record, ATTRIBUTE, REQUEST_ID.get())
            return record

        logging.setLogRecordFactory(factory)
        _factory_set = True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, ATTRIBUTE, None),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure(format: Literal["text", "json"] = "text", level: str = "INFO") -> logging.Handler:
    """The `memos_ray` tree's one handler (stderr), replacing an earlier one of ours."""
    install_request_ids()
    logger = logging.getLogger(ROOT)
    for handler in list(logger.handlers):
        if getattr(handler, "_memos_ray", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._memos_ray = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if format == "json" else _TextFormatter(_TEXT))
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    return handler


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        setattr(record, ATTRIBUTE, getattr(record, ATTRIBUTE, None) or "-")
        return super().format(record)
