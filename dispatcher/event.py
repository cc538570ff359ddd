"""Event: what a handler receives, one delivery of one webhook payload."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .headers import Headers


@dataclass(slots=True)
class Event:
    """One delivery, as a handler sees it.

    ``tag`` and ``name`` are None when the payload matched no event of its
    webhook (``on_unmatched`` handlers). ``attempt`` is 1 for the first run and
    grows with each retry from the inbox. (Not frozen: a frozen dataclass's
    ``__init__`` costs microseconds per delivery on the hot path.)
    """

    id: str
    webhook: str
    tag: str | None
    name: str | None
    payload: Any
    headers: Headers
    query: Mapping[str, str]
    body: bytes = field(repr=False)
    received_at: datetime
    attempt: int = 1
    replay: int = 0  # >0 when an operator replayed the delivery (the n-th replay)
