"""Matching: precedence, JSON-type semantics, and agreement with a brute-force reference."""

from __future__ import annotations

import functools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonpath_ng.ext import parse as jsonpath_parse

from dispatcher import ConflictError, Dispatcher, NotFoundError


def make(*events: tuple[str, str, dict[str, Any], Any]) -> Dispatcher:
    hooks = Dispatcher()
    hooks.webhooks.create(tag="w", name="W", description="d")
    for slug, selector, sample, value in events:
        hooks.webhooks.events.create(
            name=slug,
            tag=f"w:{slug}",
            description="d",
            selector=selector,
            sample=sample,
            selector_value=value,
        )
    return hooks


def tag(hooks: Dispatcher, payload: Any, **kw: Any) -> str | None:
    event = hooks.match(payload, webhook="w", **kw)
    return event.tag if event else None


def test_more_fields_win_over_fewer_whatever_the_order() -> None:
    hooks = make(
        ("any-issue", "$Event{kind}", {"kind": "issue"}, None),
        ("opened", "$Event{kind},$Event{action}", {"kind": "issue", "action": "opened"}, None),
    )
    assert tag(hooks, {"kind": "issue", "action": "opened"}) == "w:opened"
    assert tag(hooks, {"kind": "issue", "action": "closed"}) == "w:any-issue"


def test_equal_field_counts_go_by_first_registration() -> None:
    hooks = make(
        ("by-type", "$Event{type}", {"type": "x"}, None),
        ("by-kind", "$Event{kind}", {"kind": "x"}, None),
    )
    assert tag(hooks, {"type": "x", "kind": "x"}) == "w:by-type"
    hooks.webhooks.events.delete("w:by-type")
    hooks.webhooks.events.create(
        name="again",
        tag="w:by-type",
        description="d",
        selector="$Event{type}",
        sample={"type": "x"},
    )
    assert tag(hooks, {"type": "x", "kind": "x"}) == "w:by-kind"  # its group is newer now


def test_values_compare_by_json_type() -> None:
    hooks = make(
        ("one", "$Event{v}", {"v": 1}, None),
        ("text-one", "$Event{v}", {"v": "1"}, None),
        ("true", "$Event{v}", {"v": True}, None),
        ("null", "$Event{v}", {"v": None}, None),
    )
    assert tag(hooks, {"v": 1.0}) == "w:one"
    assert tag(hooks, {"v": "1"}) == "w:text-one"
    assert tag(hooks, {"v": True}) == "w:true"
    assert tag(hooks, {"v": None}) == "w:null"
    assert tag(hooks, {}) is None  # missing is not null
    assert tag(hooks, {"v": False}) is None
    assert tag(hooks, {"v": 0}) is None
    assert tag(hooks, {"v": [1]}) is None
    assert tag(hooks, {"v": {"a": 1}}) is None


def test_headers_and_query_take_part() -> None:
    hooks = make(
        ("push", "$Header{X-GitHub-Event}", {}, "push"),
        ("ping", "$Query{type}", {}, "ping"),
    )
    assert tag(hooks, {}, headers={"x-github-event": "push"}) == "w:push"
    assert tag(hooks, {}, headers={"X-GITHUB-EVENT": "push"}) == "w:push"
    assert tag(hooks, {}, query={"type": "ping"}) == "w:ping"
    assert tag(hooks, {}) is None


def test_unknown_webhook_raises_not_found() -> None:
    with pytest.raises(NotFoundError, match="did you mean 'w'"):
        make().match({}, webhook="ww")


def test_events_identified_alike_conflict_even_when_spelt_apart() -> None:
    with pytest.raises(ConflictError, match="w:a"):
        make(
            ("a", "$Event{x},$Event{y.z}", {"x": 1, "y": {"z": 2}}, None),
            ("b", "$Event{y}{z}, $Event{$.x}", {"x": 1.0, "y": {"z": 2}}, None),
        )


# --- the brute-force reference ------------------------------------------------------------------

PATHS = ["$.a", "$.b", "$.c.d", "$.c.e[0]"]
SELECTORS = {
    "$Event{a}": ["$.a"],
    "$Event{b}": ["$.b"],
    "$Event{c.d}": ["$.c.d"],
    "$Event{c}{e}{[0]}": ["$.c.e[0]"],
    "$Event{a},$Event{b}": ["$.a", "$.b"],
    "$Event{c.d},$Event{a}": ["$.c.d", "$.a"],
    "$Event{a},$Event{b},$Event{c.d}": ["$.a", "$.b", "$.c.d"],
}
VALUES = st.one_of(st.none(), st.booleans(), st.sampled_from([0, 1, 1.0, 2, "1", "x", "y"]))


def same_json_value(a: Any, b: Any) -> bool:
    """JSON equality: 1 == 1.0, but true, 1 and "1" are three different values."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


@functools.lru_cache
def compiled(path: str) -> Any:
    return jsonpath_parse(path)


def document(values: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    if "$.a" in values:
        doc["a"] = values["$.a"]
    if "$.b" in values:
        doc["b"] = values["$.b"]
    c: dict[str, Any] = {}
    if "$.c.d" in values:
        c["d"] = values["$.c.d"]
    if "$.c.e[0]" in values:
        c["e"] = [values["$.c.e[0]"]]
    if c:
        doc["c"] = c
    return doc


def reference_match(events: list[tuple[str, str, dict[str, Any]]], payload: Any) -> str | None:
    """Every event's selector evaluated with jsonpath-ng; groups by field set, DESIGN.md order."""
    groups: dict[frozenset[str], int] = {}
    for _, selector, _ in events:
        groups.setdefault(frozenset(SELECTORS[selector]), len(groups))
    ordered = sorted(
        events, key=lambda e: (-len(SELECTORS[e[1]]), groups[frozenset(SELECTORS[e[1]])])
    )
    for event_tag, selector, sample in ordered:
        for path in SELECTORS[selector]:
            want = compiled(path).find(sample)[0].value
            found = compiled(path).find(payload)
            if not found or isinstance(found[0].value, (dict, list)):
                break
            if not same_json_value(found[0].value, want):
                break
        else:
            return event_tag
    return None


EVENT = st.tuples(
    st.sampled_from(sorted(SELECTORS)), st.dictionaries(st.sampled_from(PATHS), VALUES)
)


@settings(max_examples=300, deadline=None)
@given(
    specs=st.lists(EVENT, min_size=1, max_size=8),
    payloads=st.lists(st.dictionaries(st.sampled_from(PATHS), VALUES), min_size=1, max_size=6),
)
def test_matching_equals_the_brute_force_reference(
    specs: list[tuple[str, dict[str, Any]]], payloads: list[dict[str, Any]]
) -> None:
    hooks = Dispatcher()
    hooks.webhooks.create(tag="w", name="W", description="d")
    registered: list[tuple[str, str, dict[str, Any]]] = []
    for i, (selector, values) in enumerate(specs):
        values = {**{p: f"v{i}" for p in SELECTORS[selector]}, **values}
        sample = document(values)
        try:
            hooks.webhooks.events.create(
                name=f"e{i}", tag=f"w:e{i}", description="d", selector=selector, sample=sample
            )
        except ConflictError:
            continue
        registered.append((f"w:e{i}", selector, sample))
    for payload in [document(v) for v in payloads] + [sample for _, _, sample in registered]:
        got = hooks.match(payload, webhook="w")
        assert (got.tag if got else None) == reference_match(registered, payload)
