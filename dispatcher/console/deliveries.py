"""What the deliveries pages show, read from the inbox store (queued mode only).

"Failed" here means what an operator means: the delivery is dead, or a
handler raised and its task waits for a retry. Stores list by delivery status
(pending, done, dead), so the failed filter merges two reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson

from ..inbox.base import replay_targets
from .catalog_view import pretty_json

STATUSES = ("pending", "done", "dead")
FILTERS = ("failed", *STATUSES)
REDACTED = "[redacted]"
MAX_BODY_SHOWN = 256 * 1024

# Header and query names whose values may be credentials: shown as [redacted].
# Signature headers stay visible: an HMAC proves nothing without the secret.
_SECRET_NAME = re.compile(
    r"auth|cookie|token|secret|passw|api[-_]?key|credential|session", re.IGNORECASE
)


def store_of(hooks: Any) -> Any:
    """The inbox store in queued mode, else None."""
    return getattr(getattr(hooks, "inbox", None), "store", None)


def is_failed(delivery: dict[str, Any]) -> bool:
    return delivery["status"] == "dead" or (
        delivery["status"] == "pending" and delivery.get("last_error") is not None
    )


def shown_status(delivery: dict[str, Any]) -> str:
    """The status as the console names it: a pending delivery with an error is retrying."""
    if delivery["status"] == "pending" and delivery.get("last_error") is not None:
        return "retrying"
    return str(delivery["status"])


@dataclass(frozen=True)
class Filters:
    status: str | None = None  # one of FILTERS
    webhook: str | None = None
    event: str | None = None
    limit: int = 50

    @classmethod
    def from_query(cls, query: Any) -> Filters:
        status = query.get("status") or None
        try:
            limit = min(max(int(query.get("limit", 50)), 1), 500)
        except ValueError:
            limit = 50
        return cls(
            status=status if status in FILTERS else None,
            webhook=query.get("webhook") or None,
            event=query.get("event") or None,
            limit=limit,
        )


async def list_deliveries(store: Any, filters: Filters) -> list[dict[str, Any]]:
    """Newest first, at most ``filters.limit``."""
    common = {"webhook": filters.webhook, "event": filters.event, "limit": filters.limit}
    if filters.status != "failed":
        return list(await store.list(status=filters.status, **common))
    dead = await store.list(status="dead", **common)
    pending = await store.list(status="pending", **common)
    failed = [*dead, *(item for item in pending if is_failed(item))]
    failed.sort(key=lambda item: (item["received_at"], item["id"]), reverse=True)
    return failed[: filters.limit]


def replayable(delivery: dict[str, Any]) -> bool:
    """Whether a replay would run anything (the store's own rule): dead tasks, or all done."""
    statuses = [task["status"] for task in delivery.get("tasks", [])]
    return replay_targets(delivery["status"], statuses) is not None


def redact_pairs(pairs: Any) -> list[tuple[str, str]]:
    return [(name, REDACTED if _SECRET_NAME.search(name) else value) for name, value in pairs]


def query_pairs(query: str) -> list[tuple[str, str]]:
    return redact_pairs(parse_qsl(query or "", keep_blank_values=True))


def body_text(body: bytes) -> tuple[str, bool]:
    """The body for display (pretty JSON when it is JSON) and whether it was cut short."""
    cut = len(body) > MAX_BODY_SHOWN
    if not cut:
        try:
            return pretty_json(orjson.loads(body)), False
        except orjson.JSONDecodeError:
            pass
    return body[:MAX_BODY_SHOWN].decode("utf-8", errors="replace"), cut


def first_line(text: str | None, limit: int = 90) -> str:
    """The gist of a stored error (its first line) for tables; the detail page shows it all."""
    line = (text or "").strip().split("\n", 1)[0]
    return line if len(line) <= limit else line[: limit - 1] + "\u2026"


def handler_label(key: str) -> tuple[str, str]:
    """A task's handler key ("pattern module.function") as (function, pattern)."""
    pattern, _, name = key.partition(" ")
    return (name, pattern) if name else (key, "")


def when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def took(start: float | None, end: float | None) -> str:
    if start is None or end is None:
        return "-"
    return f"{(end - start) * 1000:.1f} ms"
