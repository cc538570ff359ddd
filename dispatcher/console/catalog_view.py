"""What the catalog page shows: webhooks, their events, and who handles each.

Plain data built from the catalog and the router; the template only lays it out.
Two things must stand out: events nobody handles, and handlers registered for
tags the catalog does not have (possible after a catalog change at run time;
``Dispatcher.check()`` refuses them at start-up).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from ..errors import closest
from ..extractors import MISSING, describe, extract_from_sample
from ..routing import UNMATCHED, Handler
from ..selectors import parse_selector

if TYPE_CHECKING:
    from ..app import Dispatcher
    from ..catalog import Catalog, Webhook, WebhookEvent
    from ..routing import Router


@dataclass(frozen=True)
class HandlerView:
    name: str  # module.qualname
    pattern: str  # what it was registered for, as the user wrote it


@dataclass(frozen=True)
class EventView:
    tag: str
    name: str
    description: str
    selector: str
    selector_value: list[tuple[str, str]]  # (field, value as JSON) per selector field
    value_from_sample: bool  # no explicit selector_value: read from the sample
    sample: str  # pretty-printed JSON
    handlers: list[HandlerView]


@dataclass(frozen=True)
class WebhookView:
    tag: str
    name: str
    description: str
    verify: Mapping[str, Any] | None  # Webhook.to_dict()["verify"]: scheme and env var names
    idempotency_key: str | None
    events: list[EventView]
    unmatched_handlers: list[HandlerView]

    @property
    def unhandled(self) -> int:
        return sum(not event.handlers for event in self.events)


@dataclass(frozen=True)
class OrphanView:
    """Handlers registered for a tag (or webhook) the catalog does not have."""

    pattern: str
    handlers: list[str]
    hint: str | None


@dataclass(frozen=True)
class CatalogView:
    webhooks: list[WebhookView]
    orphans: list[OrphanView] = field(default_factory=list)

    @property
    def event_count(self) -> int:
        return sum(len(webhook.events) for webhook in self.webhooks)

    @property
    def unhandled(self) -> int:
        return sum(webhook.unhandled for webhook in self.webhooks)


def catalog_view(hooks: Dispatcher) -> CatalogView:
    catalog, router = hooks.catalog, hooks.router
    webhooks = [
        webhook_view(webhook, catalog.events_of(webhook.tag), router)
        for webhook in catalog.webhooks.values()
    ]
    return CatalogView(webhooks, orphans(router, catalog))


def webhook_view(webhook: Webhook, events: list[WebhookEvent], router: Router) -> WebhookView:
    record = webhook.to_dict()  # never the scheme object: to_dict() holds no secret
    return WebhookView(
        tag=webhook.tag,
        name=webhook.name,
        description=webhook.description,
        verify=record["verify"],
        idempotency_key=webhook.effective_idempotency_key,
        events=[event_view(event, router) for event in events],
        unmatched_handlers=handler_views(router.resolve(webhook.tag, None)),
    )


def event_view(event: WebhookEvent, router: Router) -> EventView:
    values, from_sample = selector_values(event)
    return EventView(
        tag=event.tag,
        name=event.name,
        description=event.description,
        selector=event.selector,
        selector_value=values,
        value_from_sample=from_sample,
        sample=pretty_json(event.sample),
        handlers=handler_views(router.resolve(event.webhook, event.tag)),
    )


def selector_values(event: WebhookEvent) -> tuple[list[tuple[str, str]], bool]:
    """The value that identifies the event, per selector field, and whether the sample gave it."""
    fields = parse_selector(event.selector).fields
    explicit = event.selector_value
    if explicit is not None and len(fields) == 1:
        return [(fields[0].canonical, describe(explicit))], False
    given: dict[str, Any] = {}
    if isinstance(explicit, Mapping):
        for text, value in explicit.items():
            given[parse_selector(text).fields[0].canonical] = value
    rows = []
    for selector_field in fields:
        if selector_field.canonical in given:
            value = given[selector_field.canonical]
        else:
            value = extract_from_sample(selector_field, event.sample)
        rows.append(
            (selector_field.canonical, "(missing)" if value is MISSING else describe(value))
        )
    return rows, explicit is None


def handler_views(handlers: tuple[Handler, ...]) -> list[HandlerView]:
    return [HandlerView(handler.name, shown_pattern(handler.pattern)) for handler in handlers]


def shown_pattern(pattern: str) -> str:
    if pattern.startswith(UNMATCHED):
        return "on_unmatched " + pattern.removeprefix(UNMATCHED)
    return pattern


def orphans(router: Router, catalog: Catalog) -> list[OrphanView]:
    """Registrations whose tag or webhook is not in the catalog (as ``Router.problems``)."""
    found = []
    for pattern, handlers in router.handlers.items():
        if pattern in ("*", UNMATCHED + "*"):
            continue
        webhook, _, event = pattern.removeprefix(UNMATCHED).partition(":")
        if pattern.startswith(UNMATCHED) or event == "*":
            if webhook in catalog.webhooks:
                continue
            hint = closest(webhook, catalog.webhooks)
        elif pattern in catalog.events:
            continue
        else:
            hint = closest(pattern, catalog.events)
        names = [handler.name for handler in handlers]
        found.append(OrphanView(shown_pattern(pattern), names, hint))
    return found


def pretty_json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2, default=repr).decode()
