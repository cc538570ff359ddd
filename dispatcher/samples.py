"""Sample requests built from the catalog: what ``hooks.testing`` and ``dispatcher send`` post.

No HTTP client here (``dispatcher.testing`` adds one), so the runtime needs no httpx.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import orjson

from .selectors import parse_selector

if TYPE_CHECKING:
    from .app import Dispatcher


@dataclass(frozen=True)
class SampleRequest:
    """A request for one event: POST ``path`` with ``body``, ``headers`` and ``query``."""

    webhook: str
    event: str
    payload: Any
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return f"/{self.webhook}" + (f"?{urlencode(self.query)}" if self.query else "")


class TestingKit:
    """``hooks.testing``: builds requests from the catalog's samples."""

    __test__ = False  # not a pytest test class

    def __init__(self, hooks: Dispatcher) -> None:
        self._hooks = hooks

    def sample_request(self, tag: str, /, **overrides: Any) -> SampleRequest:
        """The request for event ``tag`` built from its sample; ``overrides`` replace top-level
        payload fields. Header and query fields of the selector are filled from its value, a
        body idempotency key gets a fresh value, and the request is signed with the webhook's
        scheme (fresh ids and timestamps) when it has one."""
        catalog = self._hooks.catalog
        event = catalog.event(tag)
        webhook = catalog.webhook(event.webhook)
        payload = {**event.sample, **overrides}
        headers: dict[str, str] = {"content-type": "application/json"}
        query: dict[str, str] = {}
        for selector_field, value in _field_values(event.selector, event.selector_value):
            if selector_field.source == "header":
                headers[selector_field.name] = _text(value)
            elif selector_field.source == "query":
                query[selector_field.name] = _text(value)
        key = webhook.idempotency_key
        if key is not None:
            for key_field in parse_selector(key).fields:
                fresh = uuid.uuid4().hex
                if key_field.source == "header":
                    headers.setdefault(key_field.name, fresh)
                elif key_field.source == "query":
                    query.setdefault(key_field.name, fresh)
                elif len(key_field.path) == 1 and key_field.path[0] not in overrides:
                    payload[key_field.path[0]] = fresh
        body = orjson.dumps(payload)
        if webhook.verify is not None:
            headers.update({k.lower(): v for k, v in webhook.verify.sign(body).items()})
        return SampleRequest(webhook.tag, event.tag, payload, body, headers, query)


def _field_values(selector: str, value: Any) -> list[tuple[Any, Any]]:
    parsed = parse_selector(selector)
    if value is None:
        return []
    if len(parsed.fields) == 1:
        return [(parsed.fields[0], value)]
    pairs = []
    for text, field_value in value.items():
        pairs.append((parse_selector(text).fields[0], field_value))
    return pairs


def _text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()
