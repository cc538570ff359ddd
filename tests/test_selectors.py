"""The selector grammar and canonical forms (selectors.py), extraction and value keys (extractors.py)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonpath_ng.ext import parse as jsonpath_parse

from dispatcher import ValidationError
from dispatcher.extractors import MISSING, compile_field, compile_selector, value_key
from dispatcher.selectors import Field, parse_selector


def canon(text: str) -> str:
    return parse_selector(text).canonical


def extract(text: str, payload: Any, headers: dict | None = None, query: dict | None = None) -> Any:
    return compile_selector(parse_selector(text))(payload, headers or {}, query or {})


# --- grammar -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("$Event{data}{object}{type}", "$Event{data.object.type}"),
        ("$Event{items}{[0]}{kind}", "$Event{items[0].kind}"),
        ("$Event{ event }", "$Event{event}"),
        ("$Event{$.data.object.type}", "$Event{data.object.type}"),
        ("$Event{$.items[0].kind}", "$Event{items[0].kind}"),
        ('$Event{["a"]}', "$Event{a}"),
        ("$Event{['a']}", "$Event{a}"),
        ("$Header{X-GitHub-Event}", "$Header{x-github-event}"),
        ("$Header{X-GitHub-Event},$Event{action}", "$Event{action}, $Header{x-github-event}"),
        ("$Event{a}{b},$Query{t}", "$Query{t},$Event{a.b}"),
    ],
)
def test_equivalent_spellings_have_one_canonical_form(a: str, b: str) -> None:
    assert canon(a) == canon(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ('$Event{["a.b"]}', "$Event{a.b}"),  # a key with a dot is not a path of two keys
        ("$Query{Type}", "$Query{type}"),  # query names are case-sensitive
        ("$Event{a[0]}", '$Event{a["0"]}'),  # an index is not a key
        ("$Header{event}", "$Event{event}"),
    ],
)
def test_different_fields_differ(a: str, b: str) -> None:
    assert canon(a) != canon(b)


def test_key_with_dot_is_read_as_one_key() -> None:
    payload = {"a.b": 1, "a": {"b": 2}}
    assert extract('$Event{["a.b"]}', payload) == 1
    assert extract("$Event{a.b}", payload) == 2


def test_unicode_keys_work_in_plain_paths() -> None:
    payload = {"données": {"événement": "créé", "名前": [{"ключ": "значение"}]}}
    assert extract("$Event{données.événement}", payload) == "créé"
    assert extract("$Event{données}{名前}{[0]}{ключ}", payload) == "значение"


def test_array_indexes_including_negative() -> None:
    payload = {"items": [{"kind": "a"}, {"kind": "b"}]}
    assert extract("$Event{items[0].kind}", payload) == "a"
    assert extract("$Event{items[-1].kind}", payload) == "b"
    assert extract("$Event{items[2].kind}", payload) is MISSING


def test_top_level_array_and_scalar_payloads() -> None:
    assert extract("$Event{[1]}", ["a", "b"]) == "b"
    assert extract("$Event{a}", "just a string") is MISSING
    assert extract("$Event{[0]}", "string") is MISSING  # strings are not arrays


def test_full_jsonpath_with_filter_takes_first_match() -> None:
    selector = "$Event{$.data[?(@.primary == true)].type}"
    payload = {"data": [{"primary": False, "type": "x"}, {"primary": True, "type": "y"}]}
    assert extract(selector, payload) == "y"
    assert extract(selector, {"data": [{"primary": False, "type": "x"}]}) is MISSING
    assert parse_selector(selector).fields[0].jsonpath is not None


def test_headers_are_case_insensitive_and_query_is_read() -> None:
    assert extract("$Header{X-GitHub-Event}", {}, headers={"x-github-event": "push"}) == "push"
    assert extract("$Query{type}", {}, query={"type": "ping"}) == "ping"
    assert extract("$Query{type}", {}, query={}) is MISSING


def test_multi_field_gives_a_tuple_or_missing() -> None:
    text = "$Header{X-Kind},$Event{action}"
    assert extract(text, {"action": "opened"}, headers={"x-kind": "issue"}) == ("opened", "issue")
    assert extract(text, {"action": "opened"}) is MISSING


def test_objects_and_arrays_are_not_values() -> None:
    assert extract("$Event{data}", {"data": {"a": 1}}) is MISSING
    assert extract("$Event{data}", {"data": [1]}) is MISSING
    assert extract("$Event{data}", {"data": None}) is None  # null is a value


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("event", "is not a selector field"),
        ("$Event{}", "empty braces"),
        ("$Event{a", "unclosed brace"),
        ('$Event{["a]}', "unclosed quote"),
        ("$Event{a..b}", "empty key"),
        ("$Event{a.}", "ends with a dot"),
        ("$Event{a[x]}", "neither an array index"),
        ("$Event{a}x", "unexpected"),
        ("$Body{a}", "is not a selector field"),
        ("$Header{a}{b}", "one name"),
        ("$Event{$.a[?(@.x ==)]}", "invalid JSONPath"),
        ("$Event{a},,$Event{b}", "empty field"),
        ("$Event{a},$Event{a}", "same field twice"),
        ("$Event{a}, $Event{$.a}", "same field twice"),
        ("", "is empty"),
        ("$Event{$.a}{b}", "single pair of braces"),
    ],
)
def test_bad_selectors_say_what_the_grammar_accepts(text: str, says: str) -> None:
    with pytest.raises(ValidationError) as raised:
        parse_selector(text)
    assert raised.value.field == "selector"
    assert says in str(raised.value)


def test_non_string_selector_is_rejected() -> None:
    with pytest.raises(ValidationError, match="must be a string"):
        parse_selector(42)


# --- value keys --------------------------------------------------------------------------------


def test_value_keys_compare_by_json_type_and_value() -> None:
    table = {
        value_key(1): "int",
        value_key("1"): "str",
        value_key(True): "bool",
        value_key(None): "null",
    }
    assert table[value_key(1.0)] == "int"
    assert table[value_key("1")] == "str"
    assert table[value_key(True)] == "bool"
    assert value_key(False) not in table
    assert value_key(0) not in table
    assert table[value_key(None)] == "null"
    assert len(table) == 4


# --- properties: plain paths agree with jsonpath-ng ---------------------------------------------

KEYS = st.sampled_from(["a", "b", "c", "data", "x1"])
STEP = st.one_of(KEYS, st.integers(min_value=-3, max_value=3))
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text("ab", max_size=2))
JSON = st.recursive(
    SCALAR,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=4)),
    max_leaves=20,
)


def to_jsonpath(path: list[Any]) -> str:
    return "$" + "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in path)


@settings(max_examples=400, deadline=None)
@given(path=st.lists(STEP, min_size=1, max_size=4), payload=JSON)
def test_plain_paths_extract_exactly_what_jsonpath_ng_does(path: list[Any], payload: Any) -> None:
    ours = compile_field(Field(source="event", path=tuple(path)))(payload, {}, {})
    found = jsonpath_parse(to_jsonpath(path)).find(payload)
    theirs = found[0].value if found else MISSING
    assert ours is MISSING if theirs is MISSING else ours == theirs and type(ours) is type(theirs)
