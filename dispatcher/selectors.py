"""Selectors: parse ``$Event{...}``/``$Header{...}``/``$Query{...}`` text and compile extractors.

A selector names where, in a request, the value that identifies an event lives.
Parsing gives a canonical form (so ``$Event{a}{b}`` and ``$Event{a.b}`` are one
field); compiling gives an extractor, a plain function of (payload, headers,
query). Plain key/index walks compile to direct lookups; only real JSONPath
goes through jsonpath-ng, whose lexer would also reject non-ASCII keys.

Values compare by JSON type and value: ``value_key`` maps a value to a dict key
under which ``1 == 1.0`` but ``true``, ``1`` and ``"1"`` differ.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ValidationError

GRAMMAR = (
    "a selector is one or more comma-separated fields: $Event{path} (a body field: "
    "$Event{data.object.type}, $Event{data}{object}{type}, $Event{items[0].kind}, "
    '$Event{["key.with.dots"]}, or a JSONPath such as $Event{$.data[?(@.primary == true)].type}), '
    "$Header{Name} or $Query{name}"
)


class _Missing:
    """The value of a field that is not there: it matches nothing (``null`` is a value)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()

Extractor = Callable[[Any, Mapping[str, str], Mapping[str, str]], Any]
Step = str | int


# --- value keys -----------------------------------------------------------------------------


class _BoolKey:
    """Stands for true/false in match tables: Python's True == 1 would merge them."""

    __slots__ = ("value",)

    def __init__(self, value: bool) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "true" if self.value else "false"


BOOL_KEYS = {True: _BoolKey(True), False: _BoolKey(False)}
SCALARS = (str, int, float, bool, type(None))


def value_key(value: Any) -> Any:
    """The table key of a scalar JSON value (bools get their own keys)."""
    if value.__class__ is bool:
        return BOOL_KEYS[value]
    return value


def describe(value: Any) -> str:
    """A value as JSON text, for messages."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


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


# --- compiling --------------------------------------------------------------------------------


def compile_field(field: Field) -> Extractor:
    """An extractor for one field: returns the value, or MISSING."""
    if field.source == "header":
        return _header_getter(field.name)
    if field.source == "query":
        return _query_getter(field.name)
    if field.jsonpath is not None:
        return _jsonpath_getter(_parse_jsonpath(field.jsonpath))
    return _path_getter(field.path)


def compile_selector(selector: Selector) -> Extractor:
    """An extractor for the whole selector: one value, or a tuple of values for several fields.

    Values come back as table keys (``value_key``); a selector that finds an
    object or array, or nothing, gives MISSING.
    """
    getters = [compile_field(field) for field in selector.fields]
    if len(getters) == 1:
        return _single(getters[0])
    return _several(tuple(getters))


def compile_lookup(selector: Selector, extract: Extractor, table: dict[Any, Any]) -> Extractor:
    """Extraction and table lookup as one function: the table's entry for the payload, or None.

    A single body field of plain keys (the common selector) becomes one closure
    doing the subscripts, the key mapping and the lookup: no nested calls.
    """
    get = table.get
    (first, *more) = selector.fields
    path = first.path
    if (
        not more
        and first.source == "event"
        and first.jsonpath is None
        and 1 <= len(path) <= 3
        and all(isinstance(step, str) for step in path)
    ):
        return _FUSED[len(path)](*path, get)

    def lookup(payload: Any, headers: Mapping[str, str], query: Mapping[str, str]) -> Any:
        return get(extract(payload, headers, query))

    return lookup


def _fused1(a: str, get: Callable[[Any], Any]) -> Extractor:
    def lookup(payload: Any, headers: Any, query: Any) -> Any:
        try:
            value = payload[a]
            return get(BOOL_KEYS[value] if value.__class__ is bool else value)
        except _LOOKUP_ERRORS:  # missing, not a container, or unhashable (object/array)
            return None

    return lookup


def _fused2(a: str, b: str, get: Callable[[Any], Any]) -> Extractor:
    def lookup(payload: Any, headers: Any, query: Any) -> Any:
        try:
            value = payload[a][b]
            return get(BOOL_KEYS[value] if value.__class__ is bool else value)
        except _LOOKUP_ERRORS:
            return None

    return lookup


def _fused3(a: str, b: str, c: str, get: Callable[[Any], Any]) -> Extractor:
    def lookup(payload: Any, headers: Any, query: Any) -> Any:
        try:
            value = payload[a][b][c]
            return get(BOOL_KEYS[value] if value.__class__ is bool else value)
        except _LOOKUP_ERRORS:
            return None

    return lookup


_FUSED: dict[int, Callable[..., Extractor]] = {1: _fused1, 2: _fused2, 3: _fused3}


def _single(get: Extractor) -> Extractor:
    def extract(payload: Any, headers: Mapping[str, str], query: Mapping[str, str]) -> Any:
        value = get(payload, headers, query)
        cls = value.__class__
        if cls is str or cls is int or cls is float or value is None:
            return value
        if cls is bool:
            return BOOL_KEYS[value]
        return MISSING

    return extract


_PLAIN = frozenset((str, int, float, type(None)))  # scalars that are their own table keys


def _several(getters: tuple[Extractor, ...]) -> Extractor:
    if len(getters) == 2:  # the common case ($Header{X-GitHub-Event},$Event{action}): no loop
        first, second = getters

        def extract_two(payload: Any, headers: Mapping[str, str], query: Mapping[str, str]) -> Any:
            a = first(payload, headers, query)
            b = second(payload, headers, query)
            if a.__class__ in _PLAIN and b.__class__ in _PLAIN:
                return (a, b)
            return _keys_of((a, b))

        return extract_two

    def extract(payload: Any, headers: Mapping[str, str], query: Mapping[str, str]) -> Any:
        return _keys_of(tuple([get(payload, headers, query) for get in getters]))

    return extract


def _keys_of(values: tuple[Any, ...]) -> Any:
    """The table key of several values: MISSING if one is missing or not a scalar."""
    keys = []
    for value in values:
        if value.__class__ in _PLAIN:
            keys.append(value)
        elif value.__class__ is bool:
            keys.append(BOOL_KEYS[value])
        else:
            return MISSING
    return tuple(keys)


def _path_getter(path: tuple[Step, ...]) -> Extractor:
    if all(isinstance(step, str) for step in path) and len(path) <= 4:
        return _KEY_WALKS[len(path)](*path)

    def walk(payload: Any, headers: Mapping[str, str], query: Mapping[str, str]) -> Any:
        node = payload
        for step in path:
            if step.__class__ is int:
                if node.__class__ is not list:
                    return MISSING
                try:
                    node = node[step]
                except IndexError:
                    return MISSING
            else:
                if node.__class__ is not dict:
                    return MISSING
                node = node.get(step, MISSING)
                if node is MISSING:
                    return MISSING
        return node

    return walk


# Walks of string keys only: subscripting does the type checks for us (a str key on a
# list or a string raises TypeError), so the hot path is plain C-level subscripts.
_LOOKUP_ERRORS = (KeyError, TypeError, IndexError)


def _keys1(a: str) -> Extractor:
    def get(payload: Any, headers: Any, query: Any) -> Any:
        try:
            return payload[a]
        except _LOOKUP_ERRORS:
            return MISSING

    return get


def _keys2(a: str, b: str) -> Extractor:
    def get(payload: Any, headers: Any, query: Any) -> Any:
        try:
            return payload[a][b]
        except _LOOKUP_ERRORS:
            return MISSING

    return get


def _keys3(a: str, b: str, c: str) -> Extractor:
    def get(payload: Any, headers: Any, query: Any) -> Any:
        try:
            return payload[a][b][c]
        except _LOOKUP_ERRORS:
            return MISSING

    return get


def _keys4(a: str, b: str, c: str, d: str) -> Extractor:
    def get(payload: Any, headers: Any, query: Any) -> Any:
        try:
            return payload[a][b][c][d]
        except _LOOKUP_ERRORS:
            return MISSING

    return get


_KEY_WALKS: dict[int, Callable[..., Extractor]] = {1: _keys1, 2: _keys2, 3: _keys3, 4: _keys4}


def _header_getter(name: str) -> Extractor:
    def get(payload: Any, headers: Mapping[str, str], query: Mapping[str, str]) -> Any:
        return headers.get(name, MISSING)

    return get


def _query_getter(name: str) -> Extractor:
    def get(payload: Any, headers: Mapping[str, str], query: Mapping[str, str]) -> Any:
        return query.get(name, MISSING)

    return get


def _jsonpath_getter(expr: Any) -> Extractor:
    def get(payload: Any, headers: Mapping[str, str], query: Mapping[str, str]) -> Any:
        try:
            found = expr.find(payload)
        except Exception:  # a filter comparing incomparable types, say: no match
            return MISSING
        return found[0].value if found else MISSING

    return get


# --- resolving in a sample --------------------------------------------------------------------


def explain_missing(field: Field, sample: Any) -> str:
    """Why ``field`` finds nothing in ``sample``: where the walk stopped."""
    if field.source != "event":
        kind = "header" if field.source == "header" else "query parameter"
        return f"a sample holds only the body, so the {kind} {field.name!r} cannot come from it"
    if field.jsonpath is not None:
        return f"the JSONPath {field.jsonpath} matches nothing in the sample"
    node = sample
    walked: list[Step] = []
    for step in field.path:
        where = format_path(tuple(walked)) or "the top level"
        if isinstance(step, int):
            if not isinstance(node, list):
                return f"{where} is not an array, so [{step}] finds nothing"
            if not -len(node) <= step < len(node):
                return f"{where} has {len(node)} item(s), so [{step}] finds nothing"
        else:
            if not isinstance(node, dict):
                return f"{where} is not an object, so key {step!r} finds nothing"
            if step not in node:
                return f"{where} has no key {step!r}"
        node = node[step]
        walked.append(step)
    return "it finds nothing"


def extract_from_sample(field: Field, sample: Any) -> Any:
    """The raw value of one field in a sample (body only), or MISSING."""
    if field.source != "event":
        return MISSING
    return compile_field(field)(sample, {}, {})
