"""Extractors: parsed selectors compiled into plain functions of (payload, headers, query).

Plain key/index walks compile to direct subscripts; only real JSONPath goes
through jsonpath-ng (whose lexer would also reject non-ASCII keys). The common
selector is fused with its table lookup into one closure: matching is the hot
path of every delivery.

Values compare by JSON type and value: ``value_key`` maps a value to a dict key
under which ``1 == 1.0`` but ``true``, ``1`` and ``"1"`` differ.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from .selectors import Field, Selector, Step, _parse_jsonpath, format_path


class _Missing:
    """The value of a field that is not there: it matches nothing (``null`` is a value)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()

Extractor = Callable[[Any, Mapping[str, str], Mapping[str, str]], Any]


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
