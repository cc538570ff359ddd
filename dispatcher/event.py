"""Event: what a handler receives, one delivery of one webhook payload."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from .headers import Headers


class Event:
    """One delivery, as a handler sees it.

    ``tag`` and ``name`` are None when the payload matched no event of its
    webhook (``on_unmatched`` handlers). ``attempt`` is 1 for the first run and
    grows with each retry from the inbox; ``replay`` counts operator replays.

    A plain slotted class rather than a dataclass: one is built for every
    delivery, and positional construction plus a lazily made ``received_at``
    (stored as epoch seconds until read) keep that cheap.
    """

    __slots__ = (
        "_received",
        "attempt",
        "body",
        "headers",
        "id",
        "name",
        "payload",
        "query",
        "replay",
        "tag",
        "webhook",
    )

    def __init__(
        self,
        id: str,
        webhook: str,
        tag: str | None,
        name: str | None,
        payload: Any,
        headers: Headers,
        query: Mapping[str, str],
        body: bytes,
        received_at: datetime | float,
        attempt: int = 1,
        replay: int = 0,
    ) -> None:
        self.id = id
        self.webhook = webhook
        self.tag = tag
        self.name = name
        self.payload = payload
        self.headers = headers
        self.query = query
        self.body = body
        self._received = received_at
        self.attempt = attempt
        self.replay = replay

    @property
    def received_at(self) -> datetime:
        """When the receiver accepted the delivery (aware, UTC)."""
        received = self._received
        if not isinstance(received, datetime):
            received = self._received = datetime.fromtimestamp(received, UTC)
        return received

    @property
    def received_timestamp(self) -> float:
        """``received_at`` as seconds since the epoch (what the inbox stores)."""
        received = self._received
        return received.timestamp() if isinstance(received, datetime) else received

    def __repr__(self) -> str:
        return (
            f"Event(id={self.id!r}, webhook={self.webhook!r}, tag={self.tag!r}, "
            f"attempt={self.attempt}, payload={self.payload!r})"
        )
