"""``dispatcher send``: post a catalog sample to a running receiver (stdlib HTTP, no extra deps)."""

from __future__ import annotations

import copy
import urllib.error
import urllib.request
from typing import Any

import orjson

from .errors import DispatcherError, ValidationError
from .samples import SampleRequest
from .selectors import parse_path


def apply_settings(sample: dict[str, Any], settings: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """A copy of ``sample`` with each ``path=value`` set (value read as JSON, else as text)."""
    payload = copy.deepcopy(sample)
    for setting in settings:
        path_text, equals, raw = setting.partition("=")
        if not equals or not path_text.strip():
            raise ValidationError("--set", f"{setting!r} is not PATH=VALUE (e.g. data.amount=10)")
        path = parse_path(path_text.strip(), field="--set")
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            value = raw
        node: Any = payload
        for step, following in zip(path, [*path[1:], None], strict=True):
            if following is None:
                _put(node, step, value, path_text)
            else:
                if isinstance(node, dict) and step not in node:
                    node[step] = [] if isinstance(following, int) else {}
                try:
                    node = node[step]
                except (KeyError, IndexError, TypeError):
                    raise ValidationError(
                        "--set", f"{path_text}: no {step!r} in the sample"
                    ) from None
    return payload


def _put(node: Any, step: str | int, value: Any, path_text: str) -> None:
    try:
        if isinstance(node, list) and isinstance(step, int) and step == len(node):
            node.append(value)
        else:
            node[step] = value
    except (IndexError, TypeError):
        raise ValidationError("--set", f"{path_text}: cannot set {step!r} there") from None


def post(url: str, request: SampleRequest, timeout: float) -> tuple[int, str]:
    """POST the request under ``url`` (the receiver's base); return (status, body text)."""
    target = url.rstrip("/") + request.path
    http = urllib.request.Request(target, data=request.body, headers=request.headers, method="POST")
    try:
        with urllib.request.urlopen(http, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DispatcherError(f"cannot reach {target}: {reason}") from None
