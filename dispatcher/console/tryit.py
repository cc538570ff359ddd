"""Try it: which event a pasted request is, and which handlers would run. Runs nothing.

The body is parsed as the receiver parses it (its Content-Type, JSON or form),
and matched with the webhook's own index, so the answer is the receiver's answer.
Signatures are not checked: the console is for the payload, not the sender.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.datastructures import QueryParams

from ..bodies import BodyError, body_kind, parse_body
from ..extractors import MISSING, compile_field, describe
from ..selectors import parse_selector
from .catalog_view import HandlerView, handler_views, pretty_json

if TYPE_CHECKING:
    from ..app import Dispatcher
    from ..catalog import WebhookEvent


@dataclass(frozen=True)
class FieldFound:
    field: str
    found: str | None  # the value as JSON, or None when the payload has nothing there


@dataclass
class TryResult:
    webhook: str
    error: str | None = None
    event: WebhookEvent | None = None
    handlers: list[HandlerView] = field(default_factory=list)
    # Per distinct selector of the webhook's events: what this request has at each field.
    selectors: list[tuple[str, list[FieldFound]]] = field(default_factory=list)
    unmatched: str = "accept"
    signed: bool = False  # the webhook checks signatures (not checked here)


@dataclass
class TryForm:
    webhook: str = ""
    payload: str = ""
    headers: str = ""
    query: str = ""


def parse_header_lines(text: str) -> list[tuple[str, str]]:
    """``Name: value`` per line (blank lines skipped); ValueError names the bad line."""
    headers = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip() or " " in name.strip():
            raise ValueError(f"header line {number} is not 'Name: value': {line.strip()[:80]!r}")
        headers.append((name.strip().lower(), value.strip()))
    return headers


def try_request(hooks: Dispatcher, form: TryForm) -> TryResult:
    webhook = hooks.catalog.webhooks.get(form.webhook)
    result = TryResult(form.webhook, unmatched=hooks.unmatched)
    if webhook is None:
        result.error = f"no webhook {form.webhook!r}: pick one of the catalog's webhooks"
        return result
    result.signed = webhook.verify is not None
    try:
        headers = dict(parse_header_lines(form.headers))
    except ValueError as error:
        result.error = str(error)
        return result
    query = QueryParams(form.query.strip().lstrip("?"))
    try:
        payload = parse_body(body_kind(headers.get("content-type")), form.payload.encode())
    except BodyError as error:
        result.error = error.detail
        return result
    result.event = hooks.match(payload, webhook.tag, headers, query)
    tag = result.event.tag if result.event is not None else None
    result.handlers = handler_views(hooks.router.resolve(webhook.tag, tag))
    result.selectors = found_fields(hooks, webhook.tag, payload, headers, query)
    return result


def found_fields(
    hooks: Dispatcher, webhook: str, payload: Any, headers: dict[str, str], query: QueryParams
) -> list[tuple[str, list[FieldFound]]]:
    """What the request holds at each selector field: shows why nothing matched."""
    rows = []
    seen: set[str] = set()
    for event in hooks.catalog.events_of(webhook):
        selector = parse_selector(event.selector)
        if selector.canonical in seen:
            continue
        seen.add(selector.canonical)
        fields = []
        for selector_field in selector.fields:
            value = compile_field(selector_field)(payload, headers, query)
            fields.append(
                FieldFound(selector_field.canonical, None if value is MISSING else describe(value))
            )
        rows.append((event.selector, fields))
    return rows


def form_for_event(hooks: Dispatcher, tag: str) -> TryForm:
    """A form filled with an event's sample, and its header and query selector values."""
    event = hooks.catalog.events.get(tag)
    if event is None:
        return TryForm(webhook=next(iter(hooks.catalog.webhooks), ""))
    fields = parse_selector(event.selector).fields
    explicit = event.selector_value
    values: dict[str, Any] = {}
    if explicit is not None and len(fields) == 1:
        values[fields[0].canonical] = explicit
    elif isinstance(explicit, dict):
        values = {parse_selector(text).fields[0].canonical: v for text, v in explicit.items()}
    headers = ["Content-Type: application/json"]
    query = []
    for selector_field in fields:
        if selector_field.canonical not in values:
            continue
        value = values[selector_field.canonical]
        text = value if isinstance(value, str) else describe(value)
        if selector_field.source == "header":
            headers.append(f"{selector_field.name}: {text}")
        elif selector_field.source == "query":
            query.append((selector_field.name, text))
    return TryForm(
        webhook=event.webhook,
        payload=pretty_json(event.sample),
        headers="\n".join(headers),
        query=str(QueryParams(query)),
    )
