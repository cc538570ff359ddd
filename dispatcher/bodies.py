"""Request bodies: JSON, or form-encoded; anything else is refused with the reason.

Form bodies carrying a ``payload`` field (GitHub's form mode, Slack's
interactions) are that field's JSON; other form bodies (Twilio, Mailgun) become
an object of their fields, a repeated field a list.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import orjson

JSON = "json"
FORM = "form"


class BodyError(Exception):
    """A body that cannot be a payload: ``status`` (400/415), ``code`` and ``detail``."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


def body_kind(content_type: str | None) -> str:
    """JSON or FORM from a Content-Type header (missing means JSON); 415 otherwise."""
    if not content_type or content_type == "application/json":
        return JSON
    media = content_type.partition(";")[0].strip().lower()
    if media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    ):
        return JSON
    if media == "application/x-www-form-urlencoded":
        return FORM
    raise BodyError(
        415,
        "unsupported_media_type",
        f"Content-Type {media or content_type!r} is not supported; send application/json "
        "or application/x-www-form-urlencoded",
    )


def parse_body(kind: str, body: bytes) -> Any:
    if kind == JSON:
        return _json(body, "the body")
    if not body.strip():
        raise _empty()
    return _form(body)


def _empty() -> BodyError:
    return BodyError(400, "empty_body", "the request body is empty; send a JSON payload")


def _json(data: bytes | str, what: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise json_problem(data, error, what) from None


def json_problem(data: bytes | str, error: Exception, what: str = "the body") -> BodyError:
    """The 400 for JSON that did not parse (checked only on failure: parsing is the fast path)."""
    if not data.strip():
        return _empty()
    # orjson's message says what is wrong (bad UTF-8, too deeply nested, the position).
    return BodyError(400, "invalid_json", f"{what} is not valid JSON: {error}")


def _form(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True, errors="strict")
    except (UnicodeDecodeError, ValueError) as error:
        raise BodyError(
            400, "invalid_form", f"the form-encoded body is malformed: {error}"
        ) from None
    fields: dict[str, Any] = {}
    for name, value in pairs:
        if name in fields:
            previous = fields[name]
            fields[name] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            fields[name] = value
    payload = fields.get("payload")
    if isinstance(payload, str):
        return _json(payload, "the form field 'payload'")
    return fields
