"""Catalog files: JSON, TOML, and YAML when PyYAML is installed; chosen by extension.

The shape, in JSON::

    {"webhooks": [{"tag": "payments", "name": "...", "description": "...",
                   "verify": {"scheme": "stripe", "secret_env": "STRIPE_WEBHOOK_SECRET"},
                   "events": [{"tag": "payments:refund", "name": "...", ...}]}]}

An event's tag may be written without its webhook part (``"refund"``). Loading
checks everything and reports every error with its place, in one exception;
nothing is added unless the whole file is good.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from .errors import CatalogError, ConflictError, DispatcherError, ValidationError
from .matching import Entry
from .validation import validate_event, validate_webhook

if TYPE_CHECKING:
    from .catalog import Catalog
    from .records import Webhook, WebhookEvent

FORMATS = {".json": "json", ".toml": "toml", ".yaml": "yaml", ".yml": "yaml"}


def file_format(path: Path) -> str:
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise ValidationError(
            "file",
            f"{path}: unknown catalog format {path.suffix!r}; use .json, .toml, .yaml or .yml",
        ) from None


def read_catalog_file(path: str | Path) -> dict[str, Any]:
    """Parse a catalog file into plain data (no validation beyond the syntax)."""
    path = Path(path)
    kind = file_format(path)
    try:
        text = path.read_bytes()
    except OSError as error:
        raise ValidationError("file", f"cannot read {path}: {error.strerror or error}") from None
    try:
        if kind == "json":
            data = orjson.loads(text)
        elif kind == "toml":
            data = tomllib.loads(text.decode("utf-8"))
        else:
            data = _yaml().safe_load(text)
    except (ValueError, UnicodeDecodeError) as error:  # JSON, TOML and YAML errors are ValueErrors
        raise ValidationError("file", f"{path} is not valid {kind.upper()}: {error}") from None
    except Exception as error:  # PyYAML's YAMLError is not a ValueError
        raise ValidationError("file", f"{path} is not valid {kind.upper()}: {error}") from None
    if not isinstance(data, dict) or not isinstance(data.get("webhooks"), list):
        raise ValidationError(
            "webhooks",
            f"{path}: a catalog file holds an object with a 'webhooks' list, "
            'e.g. {"webhooks": [{"tag": "payments", "name": ..., "events": [...]}]}',
        )
    return data


def check_catalog_data(
    catalog: Catalog, data: dict[str, Any], source: str
) -> tuple[list[Webhook], list[tuple[WebhookEvent, Entry]]]:
    """Validate file data against (and in addition to) ``catalog``; raise CatalogError with all errors."""
    errors: list[ValidationError] = []
    webhooks: list[Webhook] = []
    events: list[tuple[WebhookEvent, Entry]] = []
    known_hooks = set(catalog.webhooks)
    known_events = set(catalog.events)
    taken: dict[tuple[str, str, Any], str] = {}  # (webhook, selector, key) → event tag

    for i, raw in enumerate(data["webhooks"]):
        where = f"{source} webhooks[{i}]"
        if not isinstance(raw, dict):
            errors.append(ValidationError("webhook", "must be an object", location=where))
            continue
        tag = raw.get("tag")
        if isinstance(tag, str):
            where = f"{source} webhook {tag!r}"
        raw_events = raw.get("events", [])
        fields = {k: v for k, v in raw.items() if k != "events"}
        try:
            webhook = validate_webhook(fields, every_error=True)
        except DispatcherError as error:
            errors.extend(_placed(error, where))
            webhook = None
        if webhook is not None:
            if webhook.tag in known_hooks:
                errors.append(
                    ValidationError(
                        "tag", f"a webhook {webhook.tag!r} already exists", location=where
                    )
                )
            else:
                known_hooks.add(webhook.tag)
                webhooks.append(webhook)
        if not isinstance(raw_events, list):
            errors.append(ValidationError("events", "must be a list of events", location=where))
            continue
        for j, raw_event in enumerate(raw_events):
            event_where = f"{where} events[{j}]"
            if not isinstance(raw_event, dict):
                errors.append(ValidationError("event", "must be an object", location=event_where))
                continue
            raw_event = dict(raw_event)
            short = raw_event.get("tag")
            if isinstance(short, str) and ":" not in short and isinstance(tag, str):
                raw_event["tag"] = f"{tag}:{short}"
            if isinstance(raw_event.get("tag"), str):
                event_where = f"{source} event {raw_event['tag']!r}"
            try:
                event, entry = validate_event(raw_event, every_error=True)
            except DispatcherError as error:
                errors.extend(_placed(error, event_where))
                continue
            if event.webhook != tag:
                errors.append(
                    ValidationError(
                        "tag",
                        f"belongs to webhook {event.webhook!r} but is listed under {tag!r}; "
                        "move it or fix its tag",
                        location=event_where,
                    )
                )
                continue
            if event.tag in known_events:
                errors.append(
                    ValidationError(
                        "tag", f"an event {event.tag!r} already exists", location=event_where
                    )
                )
                continue
            slot = (event.webhook, entry.selector.canonical, entry.key)
            index = catalog.indexes.get(event.webhook)
            other = taken.get(slot) or (o.tag if index and (o := index.lookup(entry)) else None)
            if other is not None:
                errors.append(
                    ValidationError(
                        "selector",
                        f"identified exactly like {other!r} (same selector {entry.selector.canonical}"
                        " and value); change the sample or selector_value of one of them",
                        location=event_where,
                    )
                )
                continue
            taken[slot] = event.tag
            known_events.add(event.tag)
            events.append((event, entry))
    if errors:
        raise CatalogError(errors, source=source)
    return webhooks, events


def _placed(error: DispatcherError, where: str) -> list[ValidationError]:
    if isinstance(error, CatalogError):
        return [e.at(where) for e in error.errors]
    if isinstance(error, ValidationError):
        return [error.at(where)]
    if isinstance(error, ConflictError):
        return [ValidationError("tag", str(error), location=where)]
    return [ValidationError("catalog", str(error), location=where)]


def catalog_data(catalog: Catalog) -> dict[str, Any]:
    """The file form of a catalog; empty optional fields are left out."""
    hooks = []
    for webhook in catalog.webhooks.values():
        entry: dict[str, Any] = {
            "tag": webhook.tag,
            "name": webhook.name,
            "description": webhook.description,
        }
        if webhook.verify is not None:
            try:
                entry["verify"] = webhook.verify.to_spec()
            except ValidationError as error:
                raise error.at(f"webhook {webhook.tag!r}") from None
        if webhook.idempotency_key is not None:
            entry["idempotency_key"] = webhook.idempotency_key
        entry["events"] = [
            {k: v for k, v in event.to_dict().items() if not (k == "selector_value" and v is None)}
            for event in catalog.events_of(webhook.tag)
        ]
        hooks.append(entry)
    return {"webhooks": hooks}


def write_catalog_file(catalog: Catalog, path: str | Path) -> None:
    path = Path(path)
    kind = file_format(path)
    data = catalog_data(catalog)
    if kind == "json":
        text = orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n"
    elif kind == "toml":
        import tomli_w

        null = _find_null(data)
        if null:
            raise ValidationError(
                "file",
                f"TOML has no null, and {null} is null; save this catalog as .json or .yaml instead",
            )
        text = tomli_w.dumps(data).encode()
    else:
        text = _yaml().safe_dump(data, sort_keys=False, allow_unicode=True).encode()
    path.write_bytes(text)


def _find_null(data: Any, where: str = "") -> str | None:
    """The place of the first null in ``data`` (``webhooks[0].events[1].sample.x``), if any."""
    if data is None:
        return where or "the catalog"
    if isinstance(data, dict):
        for key, value in data.items():
            found = _find_null(value, f"{where}.{key}" if where else str(key))
            if found:
                return found
    elif isinstance(data, list):
        for i, value in enumerate(data):
            found = _find_null(value, f"{where}[{i}]")
            if found:
                return found
    return None


def _yaml() -> Any:
    try:
        import yaml
    except ImportError:
        raise ValidationError(
            "file", "YAML catalogs need PyYAML: pip install 'webhook-dispatcher[yaml]'"
        ) from None
    return yaml
