"""Catalog files: JSON/TOML/YAML round trips, every error reported with its place."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dispatcher import CatalogError, Dispatcher, ValidationError
from dispatcher.cli import main

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "catalog.json"


def snapshot(hooks: Dispatcher) -> list[Any]:
    return [
        (w.to_dict(), [e.to_dict() for e in hooks.webhooks.events.fetch_all(w.tag)])
        for w in hooks.webhooks.fetch_all()
    ]


def write(tmp_path: Path, data: Any, name: str = "catalog.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("suffix", [".json", ".toml", ".yaml", ".yml"])
def test_save_then_load_gives_back_the_same_catalog(tmp_path: Path, suffix: str) -> None:
    hooks = Dispatcher.from_catalog(EXAMPLE)
    path = tmp_path / f"saved{suffix}"
    hooks.save_catalog(path)
    again = Dispatcher.from_catalog(path)
    assert snapshot(again) == snapshot(hooks)
    payload = json.loads((EXAMPLE.parent / "payloads" / "payments.payout-failed.json").read_text())
    assert again.match(payload, webhook="payments").tag == "payments:payout-failed"


def test_null_round_trips_in_json_and_yaml_but_toml_says_why(tmp_path: Path) -> None:
    hooks = Dispatcher()
    hooks.webhooks.create(tag="w", name="W", description="d")
    hooks.webhooks.events.create(
        name="n", tag="w:n", description="d", selector="$Event{v}", sample={"v": None, "x": [None]}
    )
    for suffix in (".json", ".yaml"):
        hooks.save_catalog(tmp_path / f"c{suffix}")
        assert snapshot(Dispatcher.from_catalog(tmp_path / f"c{suffix}")) == snapshot(hooks)
    with pytest.raises(
        ValidationError, match=r"TOML has no null.*sample\.v is null.*\.json or \.yaml"
    ):
        hooks.save_catalog(tmp_path / "c.toml")


def test_load_adds_to_what_is_there_and_conflicts_are_errors(tmp_path: Path) -> None:
    hooks = Dispatcher()
    hooks.webhooks.create(tag="other", name="O", description="d")
    hooks.load_catalog(EXAMPLE)
    assert {w.tag for w in hooks.webhooks.fetch_all()} == {"other", "payments", "github"}
    with pytest.raises(CatalogError) as raised:
        hooks.load_catalog(EXAMPLE)
    assert "a webhook 'payments' already exists" in str(raised.value)


def test_from_catalog_starts_empty() -> None:
    hooks = Dispatcher.from_catalog(EXAMPLE)
    assert [w.tag for w in hooks.webhooks.fetch_all()] == ["payments", "github"]


def test_every_error_is_reported_with_its_place_and_nothing_is_added(tmp_path: Path) -> None:
    data = {
        "webhooks": [
            {
                "tag": "pay",
                "name": "Pay",
                "description": "d",
                "events": [
                    {
                        "tag": "a",
                        "name": "A",
                        "description": "d",
                        "selector": "$Event{t}",
                        "sample": {"t": 1},
                    },
                    {
                        "tag": "b",
                        "name": "B",
                        "description": "d",
                        "selector": "$Event{t}",
                        "sample": {"t": 1},
                    },
                    {
                        "tag": "c",
                        "name": "",
                        "description": "d",
                        "selector": "$Event{t}",
                        "sample": {"t": 3},
                    },
                    {
                        "tag": "d",
                        "name": "D",
                        "description": "d",
                        "selector": "$Event{",
                        "sample": {"t": 4},
                    },
                    {
                        "tag": "other:e",
                        "name": "E",
                        "description": "d",
                        "selector": "$Event{t}",
                        "sample": {"t": 5},
                    },
                ],
            },
            {"tag": "Bad Tag", "name": "x", "description": "d"},
            "not an object",
        ]
    }
    hooks = Dispatcher()
    path = write(tmp_path, data)
    with pytest.raises(CatalogError) as raised:
        hooks.load_catalog(path)
    errors = raised.value.errors
    places = [(e.location, e.field) for e in errors]
    assert places == [
        (f"{path} event 'pay:b'", "selector"),
        (f"{path} event 'pay:c'", "name"),
        (f"{path} event 'pay:d'", "selector"),
        (f"{path} event 'other:e'", "tag"),
        (f"{path} webhook 'Bad Tag'", "tag"),
        (f"{path} webhooks[2]", "webhook"),
    ]
    assert "identified exactly like 'pay:a'" in str(raised.value)
    assert "6 errors" in str(raised.value)
    assert hooks.webhooks.fetch_all() == []


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("{not json", "is not valid JSON"),
        ('{"hooks": []}', "holds an object with a 'webhooks' list"),
        ("[]", "holds an object with a 'webhooks' list"),
    ],
)
def test_unreadable_files_say_what_is_wrong(tmp_path: Path, content: str, says: str) -> None:
    path = tmp_path / "c.json"
    path.write_text(content)
    with pytest.raises(ValidationError, match=says):
        Dispatcher.from_catalog(path)


def test_bad_toml_and_unknown_extension_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text("webhooks = [")
    with pytest.raises(ValidationError, match="is not valid TOML"):
        Dispatcher.from_catalog(tmp_path / "c.toml")
    with pytest.raises(ValidationError, match=r"use \.json, \.toml, \.yaml or \.yml"):
        Dispatcher.from_catalog(tmp_path / "c.ini")
    with pytest.raises(ValidationError, match="cannot read"):
        Dispatcher.from_catalog(tmp_path / "missing.json")


def test_toml_catalog_reads_like_json(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        """
[[webhooks]]
tag = "shop"
name = "Shop"
description = "Orders"

[[webhooks.events]]
tag = "order-created"
name = "Order created"
description = "A new order"
selector = "$Header{X-Shopify-Topic}"
selector_value = "orders/create"
sample = { id = 1, total = "9.99" }
"""
    )
    hooks = Dispatcher.from_catalog(path)
    event = hooks.match({"id": 2}, webhook="shop", headers={"X-Shopify-Topic": "orders/create"})
    assert event.tag == "shop:order-created"


# --- CLI: validate and match ---------------------------------------------------------------------


def test_cli_validate_ok_and_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(main, ["validate", str(EXAMPLE)])
    assert ok.exit_code == 0
    assert "2 webhook(s), 9 event(s)" in ok.output
    bad = write(tmp_path, {"webhooks": [{"tag": "x", "name": "", "description": ""}]})
    result = runner.invoke(main, ["validate", str(bad)])
    assert result.exit_code == 1
    assert (
        "2 errors" in result.output and "name" in result.output and "description" in result.output
    )
    assert "Traceback" not in result.output


def test_cli_match_prints_tag_or_unmatched(tmp_path: Path) -> None:
    runner = CliRunner()
    payload = EXAMPLE.parent / "payloads" / "github.issue-opened.json"
    result = runner.invoke(
        main, ["match", str(EXAMPLE), "github", str(payload), "--header", "X-GitHub-Event: issues"]
    )
    assert (result.exit_code, result.output.strip()) == (0, "github:issue-opened")
    result = runner.invoke(main, ["match", str(EXAMPLE), "github", str(payload)])
    assert (result.exit_code, result.output.strip()) == (1, "unmatched")
    result = runner.invoke(main, ["match", str(EXAMPLE), "githb", str(payload)])
    assert result.exit_code == 1 and "did you mean 'github'" in result.output
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    result = runner.invoke(main, ["match", str(EXAMPLE), "github", str(bad)])
    assert result.exit_code != 0 and "is not valid JSON" in result.output


@pytest.mark.parametrize("payload", sorted((EXAMPLE.parent / "payloads").glob("*.json")))
def test_every_example_payload_matches_its_event(payload: Path) -> None:
    hooks = Dispatcher.from_catalog(EXAMPLE)
    webhook, _, slug = payload.stem.partition(".")
    event = hooks.webhooks.events.fetch(f"{webhook}:{slug}")
    headers = {}
    if isinstance(event.selector_value, dict):
        headers = {
            k[len("$Header{") : -1]: v
            for k, v in event.selector_value.items()
            if k.startswith("$Header")
        }
    elif event.selector.startswith("$Header"):
        headers = {event.selector[len("$Header{") : -1]: event.selector_value}
    assert hooks.match(json.loads(payload.read_text()), webhook=webhook, headers=headers) == event
