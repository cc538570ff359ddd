"""The catalog API (Ductape's webhooks/events calls): records, validation, conflicts."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from dispatcher import ConflictError, Dispatcher, DispatcherError, NotFoundError, ValidationError


@pytest.fixture
def hooks() -> Dispatcher:
    hooks = Dispatcher()
    hooks.webhooks.create(tag="payments", name="Payments", description="Payment events")
    return hooks


def event(**overrides: Any) -> dict[str, Any]:
    data = {
        "name": "New transaction",
        "tag": "payments:new-transaction",
        "description": "A customer paid",
        "selector": "$Event{event}",
        "sample": {"event": "new-transaction", "amount": 5000},
    }
    data.update(overrides)
    return data


def test_create_fetch_update_delete_webhook() -> None:
    hooks = Dispatcher()
    created = hooks.webhooks.create(tag="payments", name="Payments", description="d")
    assert hooks.webhooks.fetch("payments") == created
    updated = hooks.webhooks.update("payments", name="Payments v2")
    assert updated.name == "Payments v2" and updated.description == "d"
    assert hooks.webhooks.fetch_all() == [updated]
    assert hooks.webhooks.delete("payments") == updated
    assert hooks.webhooks.fetch_all() == []


def test_create_and_fetch_event(hooks: Dispatcher) -> None:
    created = hooks.webhooks.events.create(**event())
    assert created.webhook == "payments"
    assert hooks.webhooks.events.fetch("payments:new-transaction") == created
    assert created.to_dict() == {**event(), "selector_value": None}


def test_records_are_immutable_and_samples_are_copied(hooks: Dispatcher) -> None:
    sample = {"event": "new-transaction", "meta": {"k": 1}}
    created = hooks.webhooks.events.create(**event(sample=sample))
    sample["meta"]["k"] = 2
    assert created.sample == {"event": "new-transaction", "meta": {"k": 1}}
    with pytest.raises(dataclasses.FrozenInstanceError):
        created.name = "x"  # type: ignore[misc]


def test_fetch_all_keeps_registration_order_through_updates(hooks: Dispatcher) -> None:
    for slug in ("c", "a", "b"):
        hooks.webhooks.events.create(**event(tag=f"payments:{slug}", sample={"event": slug}))
    hooks.webhooks.events.update("payments:a", name="renamed")
    assert [e.tag for e in hooks.webhooks.events.fetch_all("payments")] == [
        "payments:c",
        "payments:a",
        "payments:b",
    ]


def test_update_is_partial_and_the_index_follows(hooks: Dispatcher) -> None:
    hooks.webhooks.events.create(**event())
    updated = hooks.webhooks.events.update(
        "payments:new-transaction", sample={"event": "charge", "amount": 1}
    )
    assert updated.name == "New transaction"
    assert hooks.match({"event": "charge"}, webhook="payments") == updated
    assert hooks.match({"event": "new-transaction"}, webhook="payments") is None
    moved = hooks.webhooks.events.update(
        "payments:new-transaction", selector="$Event{data.kind}", sample={"data": {"kind": "k"}}
    )
    assert hooks.match({"data": {"kind": "k"}}, webhook="payments") == moved
    assert hooks.match({"event": "charge"}, webhook="payments") is None


def test_update_can_rename_an_event(hooks: Dispatcher) -> None:
    hooks.webhooks.events.create(**event())
    renamed = hooks.webhooks.events.update("payments:new-transaction", tag="payments:paid")
    assert hooks.match({"event": "new-transaction"}, webhook="payments") == renamed
    with pytest.raises(NotFoundError):
        hooks.webhooks.events.fetch("payments:new-transaction")


def test_failed_update_changes_nothing(hooks: Dispatcher) -> None:
    original = hooks.webhooks.events.create(**event())
    with pytest.raises(ValidationError):
        hooks.webhooks.events.update("payments:new-transaction", selector="$Event{missing}")
    assert hooks.webhooks.events.fetch("payments:new-transaction") == original
    assert hooks.match({"event": "new-transaction"}, webhook="payments") == original


def test_failed_create_changes_nothing(hooks: Dispatcher) -> None:
    hooks.webhooks.events.create(**event())
    version = hooks.catalog.version
    with pytest.raises(ConflictError):
        hooks.webhooks.events.create(**event(tag="payments:again"))
    assert hooks.catalog.version == version
    assert [e.tag for e in hooks.webhooks.events.fetch_all("payments")] == [
        "payments:new-transaction"
    ]


def test_delete_event_and_webhook_cascade(hooks: Dispatcher) -> None:
    hooks.webhooks.events.create(**event())
    hooks.webhooks.events.create(**event(tag="payments:refund", sample={"event": "refund"}))
    hooks.webhooks.events.delete("payments:refund")
    assert hooks.match({"event": "refund"}, webhook="payments") is None
    hooks.webhooks.delete("payments")
    with pytest.raises(NotFoundError):
        hooks.webhooks.events.fetch("payments:new-transaction")
    hooks.webhooks.create(tag="payments", name="again", description="d")
    assert hooks.webhooks.events.fetch_all("payments") == []


@pytest.mark.parametrize(
    ("overrides", "field", "says"),
    [
        ({"name": ""}, "name", "must not be empty"),
        ({"name": "  "}, "name", "must not be empty"),
        ({"description": None}, "description", "is required"),
        ({"name": 3}, "name", "must be a string"),
        ({"tag": "payments"}, "tag", "<webhook-tag>:<event-slug>"),
        ({"tag": "payments:New Event"}, "tag", "<webhook-tag>:<event-slug>"),
        ({"tag": "paymnts:new"}, "tag", "did you mean 'payments'"),
        ({"selector": "event"}, "selector", "$Event{path}"),
        ({"selector": "$Event{missing}"}, "selector", "has no key 'missing'"),
        ({"selector": "$Event{meta}", "sample": {"meta": {"a": 1}}}, "selector", "finds an object"),
        ({"selector": "$Event{a.b}", "sample": {"a": 1}}, "selector", "is not an object"),
        ({"sample": [1, 2]}, "sample", "must be a JSON object"),
        ({"sample": "text"}, "sample", "got a string"),
        ({"sample": {"event": "x", "when": object()}}, "sample", "not JSON-serialisable"),
        ({"selector_value": {"a": 1}}, "selector_value", "must be a string, number or boolean"),
        ({"selector": "$Header{X-Kind}"}, "selector", "cannot come from it"),
    ],
)
def test_validation_names_the_field_and_the_fix(
    hooks: Dispatcher, overrides: dict[str, Any], field: str, says: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        hooks.webhooks.events.create(**event(**overrides))
    assert raised.value.field == field
    assert says in str(raised.value)


def test_sample_that_is_not_an_object_is_reported_before_the_selector(hooks: Dispatcher) -> None:
    with pytest.raises(ValidationError) as raised:
        hooks.webhooks.events.create(**event(selector="$Event{nope}", sample=[]))
    assert raised.value.field == "sample"


def test_missing_sample_is_required(hooks: Dispatcher) -> None:
    with pytest.raises(ValidationError) as raised:
        hooks.catalog.add_event({k: v for k, v in event().items() if k != "sample"})
    assert raised.value.field == "sample"


@pytest.mark.parametrize(
    ("tag", "says"),
    [
        ("Payments", "try 'payments'"),
        ("_internal", "must not start with '_'"),
        ("a" * 65, "at most 64"),
        ("pay ments", "not a slug"),
        ("", "must not be empty"),
    ],
)
def test_webhook_tags_are_slugs(tag: str, says: str) -> None:
    with pytest.raises(ValidationError) as raised:
        Dispatcher().webhooks.create(tag=tag, name="n", description="d")
    assert raised.value.field == "tag"
    assert says in str(raised.value)


def test_webhook_tag_limits_accept_edges() -> None:
    hooks = Dispatcher()
    hooks.webhooks.create(tag="a" * 64, name="n", description="d")
    hooks.webhooks.create(tag="0-a_b", name="n", description="d")
    assert len(hooks.webhooks.fetch_all()) == 2


def test_webhook_tag_cannot_change_and_unknown_fields_are_named(hooks: Dispatcher) -> None:
    with pytest.raises(ValidationError, match="cannot change"):
        hooks.webhooks.update("payments", tag="billing")
    with pytest.raises(ValidationError, match="did you mean 'description'"):
        hooks.webhooks.update("payments", descripton="typo")
    with pytest.raises(ValidationError, match="idempotency_key"):
        hooks.webhooks.update("payments", idempotency_key="$Event{")


def test_not_found_suggests_the_closest_tag(hooks: Dispatcher) -> None:
    hooks.webhooks.events.create(**event())
    with pytest.raises(NotFoundError) as raised:
        hooks.webhooks.events.fetch("payments:new-transactoin")
    assert raised.value.suggestion == "payments:new-transaction"
    assert "did you mean 'payments:new-transaction'" in str(raised.value)
    with pytest.raises(NotFoundError, match=r"no webhook with tag 'zzz'$"):
        hooks.webhooks.fetch("zzz")


def test_conflicts_name_the_other_event(hooks: Dispatcher) -> None:
    hooks.webhooks.events.create(**event())
    with pytest.raises(ConflictError, match="already exists"):
        hooks.webhooks.events.create(**event())
    with pytest.raises(ConflictError, match="'payments:new-transaction'"):
        hooks.webhooks.events.create(**event(tag="payments:dup"))
    with pytest.raises(ConflictError):  # same field spelt differently, same value
        hooks.webhooks.events.create(**event(tag="payments:dup", selector="$Event{$.event}"))
    with pytest.raises(ConflictError, match="already exists"):
        hooks.webhooks.create(tag="payments", name="n", description="d")


def test_same_value_under_a_different_selector_is_no_conflict(hooks: Dispatcher) -> None:
    hooks.webhooks.events.create(**event())
    other = hooks.webhooks.events.create(
        **event(tag="payments:other", selector="$Event{kind}", sample={"kind": "new-transaction"})
    )
    assert other.tag == "payments:other"


def test_json_type_matters_for_conflicts(hooks: Dispatcher) -> None:
    base = {"selector": "$Event{v}"}
    hooks.webhooks.events.create(**event(tag="payments:int", sample={"v": 1}, **base))
    hooks.webhooks.events.create(**event(tag="payments:str", sample={"v": "1"}, **base))
    hooks.webhooks.events.create(**event(tag="payments:bool", sample={"v": True}, **base))
    hooks.webhooks.events.create(**event(tag="payments:null", sample={"v": None}, **base))
    with pytest.raises(ConflictError, match="payments:int"):
        hooks.webhooks.events.create(**event(tag="payments:float", sample={"v": 1.0}, **base))


def test_explicit_selector_value_overrides_the_sample(hooks: Dispatcher) -> None:
    created = hooks.webhooks.events.create(**event(selector_value="paid"))
    assert hooks.match({"event": "paid"}, webhook="payments") == created
    assert hooks.match({"event": "new-transaction"}, webhook="payments") is None


def test_multi_field_selector_value_is_keyed_by_field_text(hooks: Dispatcher) -> None:
    created = hooks.webhooks.events.create(
        **event(
            selector="$Header{X-GitHub-Event}, $Event{a}{b}",
            sample={"a": {"b": "opened"}},
            selector_value={"$Header{x-github-event}": "issues", "$Event{a.b}": "opened"},
        )
    )
    assert (
        hooks.match({"a": {"b": "opened"}}, "payments", headers={"X-GitHub-Event": "issues"})
        == created
    )


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("issues", "must be a mapping from each field"),
        ({"$Event{nope}": "x"}, "is not a field of the selector"),
        ({"$Event{": "x"}, "key"),
        ({"$Header{X-GitHub-Event}": ["issues"]}, "must map to a string"),
        ({"$Event{a.b}": "opened"}, "$Header{x-github-event} finds nothing"),
    ],
)
def test_bad_multi_field_selector_values(hooks: Dispatcher, value: Any, says: str) -> None:
    with pytest.raises(ValidationError) as raised:
        hooks.webhooks.events.create(
            **event(
                selector="$Header{X-GitHub-Event},$Event{a.b}",
                sample={"a": {"b": "opened"}},
                selector_value=value,
            )
        )
    assert says in str(raised.value)


def test_all_errors_are_dispatcher_errors() -> None:
    for cls in (ValidationError, NotFoundError, ConflictError):
        assert issubclass(cls, DispatcherError)


def test_creating_ten_thousand_events_one_by_one() -> None:
    hooks = Dispatcher()
    hooks.webhooks.create(tag="big", name="Big", description="d")
    for i in range(10_000):
        hooks.webhooks.events.create(
            name=f"e{i}", tag=f"big:e{i}", description="d", selector="$Event{t}", sample={"t": i}
        )
    assert hooks.match({"t": 9_999}, webhook="big").tag == "big:e9999"
    assert len(hooks.catalog.indexes["big"]) == 10_000
