"""Validation of catalog records: field data in, checked records out, or a ValidationError
that names the field and the fix. Pure functions: nothing here touches a catalog.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from .errors import CatalogError, ValidationError, closest
from .extractors import MISSING, SCALARS, describe, explain_missing, extract_from_sample, value_key
from .matching import Entry
from .records import EVENT_FIELDS, EVENT_SLUG, WEBHOOK_FIELDS, WEBHOOK_TAG, Webhook, WebhookEvent
from .selectors import Selector, parse_selector


def validate_webhook(data: Mapping[str, Any], *, every_error: bool = False) -> Webhook:
    """A checked Webhook. ``every_error``: report all bad fields (as CatalogError), not the first."""
    checks = _Checks(every_error)
    checks.run(reject_unknown, data, WEBHOOK_FIELDS, "webhook")
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
    checks.run(reject_unknown, data, EVENT_FIELDS, "event")
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


def _text(data: Mapping[str, Any], name: str) -> str:
    if name not in data or data[name] is None:
        raise ValidationError(name, "is required")
    value = data[name]
    if not isinstance(value, str):
        raise ValidationError(name, f"must be a string, got {_json_type(value)}")
    if not value.strip():
        raise ValidationError(name, "must not be empty")
    return value


def reject_unknown(data: Mapping[str, Any], known: tuple[str, ...], kind: str) -> None:
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
