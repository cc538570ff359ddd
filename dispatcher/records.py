"""The records of the catalog: a Webhook and its WebhookEvents (the Ductape model).

Immutable: a change makes a new record (``dispatcher.validation`` checks the
fields, ``dispatcher.catalog`` keeps them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

WEBHOOK_TAG = re.compile(r"[a-z0-9-][a-z0-9_-]{0,63}")
EVENT_SLUG = re.compile(r"[a-z0-9_-][a-z0-9._-]{0,63}")


@dataclass(frozen=True, slots=True)
class Webhook:
    """One point of registration (one URL) for many events."""

    tag: str
    name: str
    description: str
    verify: Any = None  # a signature scheme (dispatcher.signatures), or None
    idempotency_key: str | None = None  # a selector naming the delivery id

    def to_dict(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "name": self.name,
            "description": self.description,
            "verify": _verify_summary(self.verify),
            "idempotency_key": self.idempotency_key,
        }

    @property
    def effective_idempotency_key(self) -> str | None:
        """The idempotency selector in force: the explicit one, or the scheme's delivery id."""
        if self.idempotency_key is not None:
            return self.idempotency_key
        return getattr(self.verify, "default_idempotency_key", None)


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """One event of a webhook, identified in payloads by its selector and value."""

    tag: str
    name: str
    description: str
    selector: str
    sample: dict[str, Any] = field(hash=False)
    selector_value: Any = None

    @property
    def webhook(self) -> str:
        return self.tag.partition(":")[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "name": self.name,
            "description": self.description,
            "selector": self.selector,
            "sample": self.sample,
            "selector_value": self.selector_value,
        }


WEBHOOK_FIELDS = ("tag", "name", "description", "verify", "idempotency_key")
EVENT_FIELDS = ("tag", "name", "description", "selector", "sample", "selector_value")


def _verify_summary(verify: Any) -> Any:
    """What a record shows of its scheme: the spec when it has one, never a secret."""
    if verify is None:
        return None
    try:
        return verify.to_spec()
    except Exception:
        return {"scheme": getattr(verify, "name", type(verify).__name__)}
