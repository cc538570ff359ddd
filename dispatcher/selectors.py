"""Selectors: parse ``$Event{...}``/``$Header{...}``/``$Query{...}`` text.

A selector names where, in a request, the value that identifies an event lives.
Parsing gives a canonical form, so ``$Event{a}{b}`` and ``$Event{a.b}`` are one
field and events group by what their selectors mean, not how they are spelt.
``dispatcher.extractors`` compiles parsed selectors into functions.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import ValidationError

GRAMMAR = (
    "a selector is one or more comma-separated fields: $Event{path} (a body field: "
    "$Event{data.object.type}, $Event{data}{object}{type}, $Event{items[0].kind}, "
    '$Event{["key.with.dots"]}, or a JSONPath such as $Event{$.data[?(@.primary == true)].type}), '
    "$Header{Name} or $Query{name}"
)

Step = str | int


# --- parsed fields ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Field:
    """One field of a selector. ``canonical`` is its identity: equal fields have equal text."""

    source: str  # "event", "header" or "query"
    path: tuple[Step, ...] = ()  # plain path into the body
    jsonpath: str | None = None  # a real JSONPath, when the path is not plain
    name: str = ""  # header (lower-cased) or query parameter name
    canonical: str = ""  # computed: the field's identity

    def __post_init__(self) -> None:
        object.__setattr__(self, "canonical", self._canonical())

    def _canonical(self) -> str:
        if self.source == "header":
            return f"$Header{{{self.name}}}"
        if self.source == "query":
            return f"$Query{{{self.name}}}"
        if self.jsonpath is not None:
            return f"$Event{{{self.jsonpath}}}"
        return f"$Event{{{format_path(self.path)}}}"


@dataclass(frozen=True, slots=True)
class Selector:
    """A parsed selector: its fields, sorted canonically so field order does not matter."""

    text: str = field(compare=False)
    fields: tuple[Field, ...]
    canonical: str = ""  # computed: equal selectors have equal canonical text

    def __post_init__(self) -> None:
        object.__setattr__(self, "canonical", ",".join(f.canonical for f in self.fields))

    def field_named(self, text: str) -> Field | None:
        """The field that ``text`` (a single-field selector) parses to, if it is one of ours."""
        try:
            wanted = parse_selector(text)
        except ValidationError:
            return None
        if len(wanted.fields) != 1:
            return None
        return wanted.fields[0] if wanted.fields[0] in self.fields else None


def format_path(path: tuple[Step, ...]) -> str:
    out: list[str] = []
    for step in path:
        if isinstance(step, int):
            out.append(f"[{step}]")
        elif _is_bare_key(step):
            out.append(f".{step}" if out else step)
        else:
            out.append(f"[{json.dumps(step, ensure_ascii=False)}]")
    return "".join(out)


def _is_bare_key(key: str) -> bool:
    return bool(key) and key == key.strip() and not any(c in key for c in ".[]{},'\"$")


# --- parsing ----------------------------------------------------------------------------------


def parse_selector(text: Any, *, field: str = "selector") -> Selector:
    """Parse selector text, raising ValidationError(field) that says what the grammar accepts."""
    if not isinstance(text, str):
        raise ValidationError(field, f"must be a string, got {type(text).__name__}; {GRAMMAR}")
    return _parse_cached(text, field)


@functools.lru_cache(maxsize=4096)
def _parse_cached(text: str, field: str) -> Selector:
    parts = _split_fields(text, field)
    fields = [_parse_field(part, field) for part in parts]
    seen: dict[str, str] = {}
    for part, parsed in zip(parts, fields, strict=True):
        if parsed.canonical in seen:
            raise ValidationError(
                field,
                f"{text!r} names the same field twice ({seen[parsed.canonical]!r} and {part!r}); "
                "remove one",
            )
        seen[parsed.canonical] = part
    ordered = tuple(sorted(fields, key=lambda f: f.canonical))
    return Selector(text=text, fields=ordered)


def _split_fields(text: str, field: str) -> list[str]:
    """Split on the commas between fields (not those inside braces, brackets or quotes)."""
    if not text.strip():
        raise ValidationError(field, f"is empty; {GRAMMAR}")
    parts: list[str] = []
    depth = 0
    start = 0
    for i, c in _unquoted(text, 0, field):
        if c in "{[(":
            depth += 1
        elif c in "}])":
            depth -= 1
            if depth < 0:
                raise ValidationError(field, f"{text!r} has an unmatched {c!r}; {GRAMMAR}")
        elif c == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise ValidationError(field, f"{text!r} has an unclosed brace; {GRAMMAR}")
    parts.append(text[start:])
    parts = [part.strip() for part in parts]
    if any(not part for part in parts):
        raise ValidationError(field, f"{text!r} has an empty field between commas; {GRAMMAR}")
    return parts


def _unquoted(text: str, start: int, field: str) -> Iterator[tuple[int, str]]:
    """Each (index, character) of ``text`` from ``start`` that is outside quotes."""
    quote: str | None = None
    i = start
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        else:
            yield i, c
        i += 1
    if quote:
        raise ValidationError(field, f"{text!r} has an unclosed quote; {GRAMMAR}")


SOURCES = {"$Event": "event", "$Header": "header", "$Query": "query"}


def _parse_field(text: str, field: str) -> Field:
    prefix, _, _ = text.partition("{")
    source = SOURCES.get(prefix)
    if source is None or "{" not in text:
        raise ValidationError(field, f"{text!r} is not a selector field; {GRAMMAR}")
    groups = _brace_groups(text, len(prefix), field)
    if source != "event":
        if len(groups) != 1 or not groups[0]:
            raise ValidationError(
                field,
                f"{text!r}: {prefix} takes one name in one pair of braces, e.g. {prefix}{{id}}",
            )
        name = groups[0]
        return Field(source=source, name=name.lower() if source == "header" else name)
    if groups[0].startswith("$"):
        if len(groups) != 1:
            raise ValidationError(
                field, f"{text!r}: a JSONPath goes in a single pair of braces: $Event{{$.a.b}}"
            )
        return _jsonpath_field(groups[0], text, field)
    path: list[Step] = []
    for group in groups:
        path.extend(parse_path(group, text, field))
    return Field(source="event", path=tuple(path))


def _brace_groups(text: str, pos: int, field: str) -> list[str]:
    """``{a}{b}{[0]}`` → ["a", "b", "[0]"]; braces inside quotes or brackets don't count."""
    groups: list[str] = []
    while pos < len(text):
        if text[pos] != "{":
            raise ValidationError(
                field, f"{text!r}: unexpected {text[pos]!r} after a closing brace; {GRAMMAR}"
            )
        depth, end = 0, -1
        for i, c in _unquoted(text, pos, field):
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    end = i
                    break
        if end < 0:
            raise ValidationError(field, f"{text!r}: a brace is never closed; {GRAMMAR}")
        content = text[pos + 1 : end].strip()
        if not content:
            raise ValidationError(field, f"{text!r}: empty braces; put a field name inside")
        groups.append(content)
        pos = end + 1
    return groups


def parse_path(text: str, whole: str = "", field: str = "selector") -> list[Step]:
    """Parse a plain path: ``a.b[0]``, ``[0]``, ``["a.b"]``, ``a['x y'].c``."""
    whole = whole or text
    steps: list[Step] = []
    i = 0
    expect_key = True  # at the start, or just after a dot
    while i < len(text):
        c = text[i]
        if c == "[":
            end, step = _bracket(text, i, whole, field)
            steps.append(step)
            i = end
            expect_key = False
            if i < len(text) and text[i] not in ".[":
                raise ValidationError(
                    field, f"{whole!r}: expected '.' or '[' after ']' in {text!r}; {GRAMMAR}"
                )
            if i < len(text) and text[i] == ".":
                i += 1
                expect_key = True
                if i == len(text):
                    raise ValidationError(field, f"{whole!r}: the path ends with a dot")
        elif expect_key:
            j = i
            while j < len(text) and text[j] not in ".[]":
                j += 1
            key = text[i:j]
            if not key:
                raise ValidationError(
                    field, f"{whole!r}: empty key in {text!r} (two dots in a row?); {GRAMMAR}"
                )
            if key[0] in "\"'" or any(q in key for q in "{}"):
                raise ValidationError(
                    field,
                    f'{whole!r}: quote keys in brackets, like ["{key.strip(chr(34) + chr(39))}"]',
                )
            steps.append(key)
            i = j
            expect_key = False
            if i < len(text) and text[i] == ".":
                i += 1
                expect_key = True
                if i == len(text):
                    raise ValidationError(field, f"{whole!r}: the path ends with a dot")
            elif i < len(text) and text[i] == "]":
                raise ValidationError(field, f"{whole!r}: unmatched ']' in {text!r}")
        else:
            raise ValidationError(field, f"{whole!r}: unexpected {c!r} in {text!r}; {GRAMMAR}")
    if not steps:
        raise ValidationError(field, f"{whole!r}: the path is empty; {GRAMMAR}")
    return steps


def _bracket(text: str, i: int, whole: str, field: str) -> tuple[int, Step]:
    """Parse ``[0]``, ``[-1]``, ``["key"]`` or ``['key']`` at ``i``; return (end, step)."""
    j = i + 1
    if j < len(text) and text[j] in "\"'":
        quote = text[j]
        k = j + 1
        while k < len(text) and text[k] != quote:
            k += 2 if text[k] == "\\" else 1
        if k >= len(text) or k + 1 >= len(text) or text[k + 1] != "]":
            raise ValidationError(field, f"{whole!r}: unclosed quoted key in {text!r}")
        raw = text[j : k + 1]
        try:
            key = json.loads(raw if quote == '"' else '"' + raw[1:-1].replace('"', '\\"') + '"')
        except ValueError as error:
            raise ValidationError(field, f"{whole!r}: bad quoted key {raw}: {error}") from None
        return k + 2, key
    end = text.find("]", j)
    if end < 0:
        raise ValidationError(field, f"{whole!r}: unclosed '[' in {text!r}")
    inner = text[j:end].strip()
    try:
        index = int(inner)
    except ValueError:
        raise ValidationError(
            field,
            f'{whole!r}: [{inner}] is neither an array index like [0] nor a quoted key like ["{inner}"]',
        ) from None
    return end + 1, index


@functools.lru_cache(maxsize=1024)
def _parse_jsonpath(expression: str) -> Any:
    from jsonpath_ng.ext import parse as jsonpath_parse

    return jsonpath_parse(expression)


def _jsonpath_field(expression: str, whole: str, field: str) -> Field:
    try:
        parsed = _parse_jsonpath(expression)
    except Exception as error:  # jsonpath-ng raises plain Exception subclasses of several kinds
        raise ValidationError(field, f"{whole!r}: invalid JSONPath: {error}") from None
    plain = _plain_steps(parsed)
    if plain is not None:
        # `$.a.b[0]` is a plain walk: same field as $Event{a.b[0]}, and compiled as fast.
        return Field(source="event", path=tuple(plain))
    return Field(source="event", jsonpath=str(parsed))


def _plain_steps(expr: Any) -> list[Step] | None:
    """The key/index steps of a JSONPath that is a plain walk from the root, else None."""
    from jsonpath_ng import Child, Fields, Index, Root

    steps: list[Step] = []
    while isinstance(expr, Child):
        right = expr.right
        if isinstance(right, Fields) and len(right.fields) == 1 and right.fields[0] != "*":
            steps.append(right.fields[0])
        elif isinstance(right, Index) and len(right.indices) == 1:
            steps.append(right.indices[0])
        else:
            return None
        expr = expr.left
    if not isinstance(expr, Root) or not steps:
        return None
    return steps[::-1]
