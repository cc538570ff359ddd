"""The catalog: webhooks and their events (the Ductape webhook-events model).

Records are immutable; every change validates the result as a whole, then
swaps in a new match index for the webhook it touched. A failed change
changes nothing. ``Catalog`` holds the state; ``WebhooksAPI`` and
``EventsAPI`` give it Ductape's call shapes (``hooks.webhooks.events.create``).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from .errors import CatalogError, ConflictError, NotFoundError, ValidationError, closest
from .matching import Entry, EventIndex
from .selectors import (
    MISSING,
    SCALARS,
    Selector,
    describe,
    explain_missing,
    extract_from_sample,
    parse_selector,
    value_key,
)

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


# --- validation (pure: records in, records or ValidationError out) --------------------------


def validate_webhook(data: Mapping[str, Any], *, every_error: bool = False) -> Webhook:
    """A checked Webhook. ``every_error``: report all bad fields (as CatalogError), not the first."""
    checks = _Checks(every_error)
    checks.run(_reject_unknown, data, WEBHOOK_FIELDS, "webhook")
    tag = checks.run(_webhook_tag, data)
    name = checks.run(_text, data, "name")
    description = checks.run(_text, data, "description")
    verify = checks.run(_scheme, data.get("verify"))
    key = data.get("idempotency_key")
    if key is not None:
        checks.run(parse_selector, key, field="idempotency_key")
    checks.done()
    return Webhook(tag=tag, name=name, description=description, verify=verify, idempotency_key=key)


def validate_event(
    data: Mapping[str, Any], *, every_error: bool = False
) -> tuple[WebhookEvent, Entry]:
    """A checked event and where it goes in its webhook's index (selector + value key)."""
    checks = _Checks(every_error)
    checks.run(_reject_unknown, data, EVENT_FIELDS, "event")
    tag = checks.run(_event_tag, data)
    name = checks.run(_text, data, "name")
    description = checks.run(_text, data, "description")
    selector = checks.run(lambda: parse_selector(_text(data, "selector")))
    sample = checks.run(_sample, data)
    selector_value = data.get("selector_value")
    key = None
    if selector is not _FAILED and sample is not _FAILED:
        key = checks.run(_selector_key, selector, sample, selector_value)
    checks.done()
    event = WebhookEvent(
        tag=tag,
        name=name,
        description=description,
        selector=selector.text,
        sample=sample,
        selector_value=selector_value,
    )
    return event, Entry(selector, key)


_FAILED: Any = object()


class _Checks:
    """Runs field checks: raise at the first failure, or collect them all (catalog files)."""

    def __init__(self, every_error: bool) -> None:
        self.every_error = every_error
        self.errors: list[ValidationError] = []

    def run(self, check: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return check(*args, **kwargs)
        except ValidationError as error:
            if not self.every_error:
                raise
            self.errors.append(error)
            return _FAILED

    def done(self) -> None:
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise CatalogError(self.errors)


def _webhook_tag(data: Mapping[str, Any]) -> str:
    tag = _text(data, "tag")
    if not WEBHOOK_TAG.fullmatch(tag):
        raise ValidationError("tag", _slug_problem(tag, "webhook tag"))
    return tag


def _event_tag(data: Mapping[str, Any]) -> str:
    tag = _text(data, "tag")
    webhook, colon, slug = tag.partition(":")
    if not colon or not WEBHOOK_TAG.fullmatch(webhook) or not EVENT_SLUG.fullmatch(slug):
        raise ValidationError(
            "tag",
            f"{tag!r} is not '<webhook-tag>:<event-slug>'; write it like 'payments:new-transaction' "
            "(lowercase letters, digits, '-', '_' and, in the event part, '.')",
        )
    return tag


def _sample(data: Mapping[str, Any]) -> dict[str, Any]:
    if "sample" not in data or data["sample"] is None:
        raise ValidationError("sample", "is required: give an example payload (a JSON object)")
    sample = data["sample"]
    if not isinstance(sample, dict):
        raise ValidationError(
            "sample", f"must be a JSON object ({{...}}), got {_json_type(sample)}"
        )
    try:
        return orjson.loads(orjson.dumps(sample))  # a private copy, and proof it is JSON
    except (TypeError, orjson.JSONEncodeError) as error:
        raise ValidationError("sample", f"is not JSON-serialisable: {error}") from None


def _selector_key(selector: Selector, sample: dict[str, Any], explicit: Any) -> Any:
    """The value key that identifies the event: explicit, else read from the sample."""
    fields = selector.fields
    given: dict[Any, Any] = {}
    if explicit is not None:
        if len(fields) == 1:
            if not isinstance(explicit, SCALARS) or isinstance(explicit, Mapping):
                raise ValidationError(
                    "selector_value",
                    f"must be a string, number or boolean, got {_json_type(explicit)}",
                )
            given[fields[0]] = explicit
        else:
            given = _field_values(selector, explicit)
    values = []
    for f in fields:
        value = given[f] if f in given else extract_from_sample(f, sample)
        if value is MISSING:
            hint = (
                f"add it to the sample, or set selector_value to {{{f.canonical!r}: <value>}}"
                if len(fields) > 1
                else "add it to the sample, or give selector_value"
            )
            raise ValidationError(
                "selector",
                f"{f.canonical} finds nothing in the sample ({explain_missing(f, sample)}); {hint}",
            )
        if not isinstance(value, SCALARS):
            raise ValidationError(
                "selector",
                f"{f.canonical} finds {_json_type(value)} {describe(value)[:60]} in the sample; "
                "a selector must end at a string, number, boolean or null: point it deeper",
            )
        values.append(value_key(value))
    return values[0] if len(values) == 1 else tuple(values)


def _field_values(selector: Selector, explicit: Any) -> dict[Any, Any]:
    wanted = ", ".join(repr(f.canonical) for f in selector.fields)
    if not isinstance(explicit, Mapping):
        raise ValidationError(
            "selector_value",
            f"for a selector of several fields it must be a mapping from each field to its "
            f"value ({wanted}), got {_json_type(explicit)}",
        )
    values: dict[Any, Any] = {}
    for text, value in explicit.items():
        try:
            parsed = parse_selector(text, field="selector_value")
        except ValidationError as error:
            raise ValidationError("selector_value", f"key {error.message}") from None
        if len(parsed.fields) != 1 or parsed.fields[0] not in selector.fields:
            raise ValidationError(
                "selector_value", f"key {text!r} is not a field of the selector; use {wanted}"
            )
        if not isinstance(value, SCALARS):
            raise ValidationError(
                "selector_value",
                f"{text!r} must map to a string, number, boolean or null, got {_json_type(value)}",
            )
        values[parsed.fields[0]] = value
    return values


def _scheme(verify: Any) -> Any:
    if verify is None:
        return None
    if isinstance(verify, Mapping):
        from .signatures import from_spec

        return from_spec(verify)
    if not callable(getattr(verify, "verify", None)):
        raise ValidationError(
            "verify",
            f"must be a signature scheme such as dispatcher.signatures.Stripe(secret), or a spec "
            f"like {{'scheme': 'stripe', 'secret_env': 'STRIPE_WEBHOOK_SECRET'}}; "
            f"got {type(verify).__name__}",
        )
    return verify


def _verify_summary(verify: Any) -> Any:
    """What a record shows of its scheme: the spec when it has one, never a secret."""
    if verify is None:
        return None
    try:
        return verify.to_spec()
    except Exception:
        return {"scheme": getattr(verify, "name", type(verify).__name__)}


def _text(data: Mapping[str, Any], name: str) -> str:
    if name not in data or data[name] is None:
        raise ValidationError(name, "is required")
    value = data[name]
    if not isinstance(value, str):
        raise ValidationError(name, f"must be a string, got {_json_type(value)}")
    if not value.strip():
        raise ValidationError(name, "must not be empty")
    return value


def _reject_unknown(data: Mapping[str, Any], known: tuple[str, ...], kind: str) -> None:
    for name in data:
        if name not in known:
            hint = closest(str(name), known)
            also = (
                f"; did you mean {hint!r}?" if hint else f"; {kind} fields are {', '.join(known)}"
            )
            raise ValidationError(str(name), f"is not a {kind} field{also}")


def _slug_problem(tag: str, what: str) -> str:
    if tag.startswith("_"):
        return f"{tag!r}: a {what} must not start with '_' (reserved for the receiver's own routes)"
    if len(tag) > 64:
        return f"{tag!r} is {len(tag)} characters; a {what} has at most 64"
    fix = re.sub(r"[^a-z0-9_-]+", "-", tag.lower()).strip("-_") or "my-webhook"
    return f"{tag!r} is not a slug (lowercase letters, digits, '-', '_'); try {fix!r}"


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "an array"
    if value is None:
        return "null"
    return f"a {type(value).__name__}"


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
        _reject_unknown(changes, EVENT_FIELDS, "event")
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
