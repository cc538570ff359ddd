"""Logging for the standalone process: a readable line by default, or one JSON object a line.

The receiver logs each delivery through ``logging.getLogger("dispatcher")``
with structured fields in ``extra`` (delivery_id, webhook, event, status,
http_status, duration_ms, attempt); the JSON format writes them as keys, the
text format writes the message. Never the body, never a secret.
"""

from __future__ import annotations

import copy
import logging
from datetime import UTC, datetime
from typing import Any

import orjson

FIELDS = (
    "delivery_id",
    "webhook",
    "event",
    "status",
    "http_status",
    "duration_ms",
    "attempt",
    "error",
)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: timestamp, level, logger, message and the delivery fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def logging_config(level: str = "info", log_format: str = "text") -> dict[str, Any]:
    """uvicorn's logging config, plus the dispatcher loggers, in the chosen format."""
    import uvicorn.config

    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    if log_format == "json":
        for name in ("default", "access"):
            config["formatters"][name] = {"()": "dispatcher.logs.JsonFormatter"}
    elif log_format != "text":
        raise ValueError(f"log format must be 'text' or 'json', got {log_format!r}")
    config["loggers"]["dispatcher"] = {
        "handlers": ["default"],
        "level": level.upper(),
        "propagate": False,
    }
    return config
