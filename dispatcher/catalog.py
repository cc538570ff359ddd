"""The catalog: webhooks and their events, and Ductape's API over them.

Every change validates the result as a whole, then updates the match index of
the webhook it touched (see ``dispatcher.matching``). A failed change changes
nothing. ``Catalog`` holds the state; ``WebhooksAPI`` and ``EventsAPI`` give it
Ductape's call shapes (``hooks.webhooks.events.create``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import ConflictError, NotFoundError, ValidationError, closest
from .extractors import describe
from .matching import Entry, EventIndex
from .records import EVENT_FIELDS, WEBHOOK_FIELDS, Webhook, WebhookEvent
from .validation import reject_unknown, validate_event, validate_webhook

__all__ = [
    "Catalog",
    "EventsAPI",
    "Webhook",
    "WebhookEvent",
    "WebhooksAPI",
    "validate_event",
    "validate_webhook",
]


# --- the catalog ------------------------------------------------------------------------------


class Catalog:
    """Webhooks, events and one match index per webhook."""

    def __init__(self) -> None:
        self.webhooks: dict[str, Webhook] = {}
        self.events: dict[str, WebhookEvent] = {}  # registration order
        self.entries: dict[str, Entry] = {}  # event tag → where it sits in its index
        self.indexes: dict[str, EventIndex] = {}  # swapped whole, never edited
        self._group_order = itertools.count()
        self.version = 0  # bumped by every change (handler resolution caches key on it)

    # webhooks

    def webhook(self, tag: str) -> Webhook:
        try:
            return self.webhooks[tag]
        except KeyError:
            raise NotFoundError("webhook", tag, self.webhooks) from None

    def event(self, tag: str) -> WebhookEvent:
        try:
            return self.events[tag]
        except KeyError:
            raise NotFoundError("event", tag, self.events) from None

    def events_of(self, webhook: str) -> list[WebhookEvent]:
        self.webhook(webhook)
        return [event for event in self.events.values() if event.webhook == webhook]

    def add_webhook(self, data: Mapping[str, Any]) -> Webhook:
        webhook = validate_webhook(data)
        if webhook.tag in self.webhooks:
            raise ConflictError(f"a webhook with tag {webhook.tag!r} already exists")
        self.webhooks[webhook.tag] = webhook
        self._swap({webhook.tag: EventIndex()})
        return webhook

    def update_webhook(self, tag: str, changes: Mapping[str, Any]) -> Webhook:
        current = self.webhook(tag)
        if "tag" in changes and changes["tag"] != tag:
            raise ValidationError(
                "tag",
                "a webhook's tag cannot change (its events and URL hang on it); create a new one",
            )
        data = {**_webhook_data(current), **changes}
        webhook = validate_webhook(data)
        self.webhooks[tag] = webhook
        self.version += 1
        return webhook

    def remove_webhook(self, tag: str) -> Webhook:
        webhook = self.webhook(tag)
        for event in self.events_of(tag):
            del self.events[event.tag]
            del self.entries[event.tag]
        del self.webhooks[tag]
        indexes = dict(self.indexes)
        del indexes[tag]
        self._swap(indexes, replace_all=True)
        return webhook

    # events

    def add_event(self, data: Mapping[str, Any]) -> WebhookEvent:
        event, entry = validate_event(data)
        self._check_event(event, entry, replacing=None)
        self.events[event.tag] = event
        self.entries[event.tag] = entry
        self._use(event.webhook, self.indexes[event.webhook].adding(event, entry, self._next_order))
        return event

    def update_event(self, tag: str, changes: Mapping[str, Any]) -> WebhookEvent:
        current = self.event(tag)
        reject_unknown(changes, EVENT_FIELDS, "event")
        event, entry = validate_event({**current.to_dict(), **changes})
        self._check_event(event, entry, replacing=current)
        old_entry = self.entries.pop(tag)
        if event.tag == tag:
            self.events[tag] = event
        else:  # renamed: keep its place in registration order
            self.events = {
                (event.tag if t == tag else t): (event if t == tag else e)
                for t, e in self.events.items()
            }
        self.entries[event.tag] = entry
        if event.webhook == current.webhook:
            index = self.indexes[event.webhook]
            self._use(event.webhook, index.replacing(old_entry, event, entry, self._next_order))
        else:  # moved to another webhook: add there first, so it is never in neither
            self._use(
                event.webhook, self.indexes[event.webhook].adding(event, entry, self._next_order)
            )
            self._use(current.webhook, self.indexes[current.webhook].removing(old_entry))
        return event

    def remove_event(self, tag: str) -> WebhookEvent:
        event = self.event(tag)
        del self.events[tag]
        entry = self.entries.pop(tag)
        self._use(event.webhook, self.indexes[event.webhook].removing(entry))
        return event

    def _check_event(
        self, event: WebhookEvent, entry: Entry, replacing: WebhookEvent | None
    ) -> None:
        if event.webhook not in self.webhooks:
            hint = closest(event.webhook, self.webhooks)
            raise ValidationError(
                "tag",
                f"webhook {event.webhook!r} does not exist"
                + (
                    f"; did you mean {hint!r}?"
                    if hint
                    else "; create it first with webhooks.create()"
                ),
            )
        if event.tag in self.events and (replacing is None or replacing.tag != event.tag):
            raise ConflictError(f"an event with tag {event.tag!r} already exists")
        other = self.indexes[event.webhook].lookup(entry)
        if other is not None and (replacing is None or other.tag != replacing.tag):
            raise ConflictError(
                f"{event.tag!r} would be identified exactly like {other.tag!r}: same selector "
                f"({entry.selector.canonical}) and value ({_key_text(entry.key)}); change the "
                "sample or selector_value of one of them"
            )

    # bulk

    def add_all(
        self, webhooks: Iterable[Webhook], events: Iterable[tuple[WebhookEvent, Entry]]
    ) -> None:
        """Add checked records at once (catalog files): each touched index is built once."""
        for webhook in webhooks:
            self.webhooks[webhook.tag] = webhook
        indexes = dict(self.indexes)
        by_webhook: dict[str, list[tuple[WebhookEvent, Entry]]] = {}
        for event, entry in events:
            self.events[event.tag] = event
            self.entries[event.tag] = entry
            by_webhook.setdefault(event.webhook, []).append((event, entry))
        for tag in self.webhooks:
            if tag not in indexes or tag in by_webhook:
                base = indexes.get(tag, EventIndex())
                indexes[tag] = base.changed(add=by_webhook.get(tag, ()), new_order=self._next_order)
        self._swap(indexes, replace_all=True)

    # index upkeep

    def _next_order(self) -> int:
        return next(self._group_order)

    def _use(self, webhook: str, index: EventIndex) -> None:
        if index is not self.indexes[webhook]:
            self._swap({webhook: index})
        else:
            self.version += 1

    def _swap(self, indexes: dict[str, EventIndex], replace_all: bool = False) -> None:
        self.indexes = indexes if replace_all else {**self.indexes, **indexes}
        self.version += 1


def _webhook_data(webhook: Webhook) -> dict[str, Any]:
    return {name: getattr(webhook, name) for name in WEBHOOK_FIELDS}


def _key_text(key: Any) -> str:
    if isinstance(key, tuple):
        return ", ".join(_key_text(part) for part in key)
    return repr(key) if not isinstance(key, str) else describe(key)


# --- the Ductape-shaped API -------------------------------------------------------------------


class EventsAPI:
    """``hooks.webhooks.events``: create, update, fetch, fetch_all, delete."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    def create(
        self,
        *,
        name: str,
        tag: str,
        description: str,
        selector: str,
        sample: dict[str, Any],
        selector_value: Any = None,
    ) -> WebhookEvent:
        return self._catalog.add_event(
            {
                "name": name,
                "tag": tag,
                "description": description,
                "selector": selector,
                "sample": sample,
                "selector_value": selector_value,
            }
        )

    def update(self, tag: str, /, **changes: Any) -> WebhookEvent:
        return self._catalog.update_event(tag, changes)

    def fetch(self, tag: str) -> WebhookEvent:
        return self._catalog.event(tag)

    def fetch_all(self, webhook_tag: str) -> list[WebhookEvent]:
        return self._catalog.events_of(webhook_tag)

    def delete(self, tag: str) -> WebhookEvent:
        return self._catalog.remove_event(tag)


class WebhooksAPI:
    """``hooks.webhooks``: create, update, fetch, fetch_all, delete, and ``.events``."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        self.events = EventsAPI(catalog)

    def create(
        self,
        *,
        tag: str,
        name: str,
        description: str,
        verify: Any = None,
        idempotency_key: str | None = None,
    ) -> Webhook:
        return self._catalog.add_webhook(
            {
                "tag": tag,
                "name": name,
                "description": description,
                "verify": verify,
                "idempotency_key": idempotency_key,
            }
        )

    def update(self, tag: str, /, **changes: Any) -> Webhook:
        return self._catalog.update_webhook(tag, changes)

    def fetch(self, tag: str) -> Webhook:
        return self._catalog.webhook(tag)

    def fetch_all(self) -> list[Webhook]:
        return list(self._catalog.webhooks.values())

    def delete(self, tag: str) -> Webhook:
        return self._catalog.remove_webhook(tag)
