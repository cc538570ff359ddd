"""``dispatcher inbox ...`` through click's CliRunner, on a SQLite file."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from dispatcher.inbox import NewDelivery, SQLiteStore
from dispatcher.inbox.cli import inbox, parse_duration

DAY = 86400.0


def run(*args: str) -> Result:
    return CliRunner().invoke(inbox, list(args))


def failed_cleanly(result: Result) -> bool:
    """Exit 1 with one line on stderr and no traceback (an uncaught error also exits 1)."""
    return (
        result.exit_code == 1
        and isinstance(result.exception, SystemExit)
        and len(result.stderr.strip().splitlines()) == 1
        and "Traceback" not in result.output
    )


def add(path: Path, *deliveries: NewDelivery) -> None:
    async def main() -> None:
        async with SQLiteStore(path) as store:
            for d in deliveries:
                await store.add(d)

    asyncio.run(main())


def settle(path: Path, *, fail: tuple[str, ...] = (), complete: tuple[str, ...] = ()) -> None:
    """Claim every due task; fail (dead) or complete those of the named deliveries."""

    async def main() -> None:
        async with SQLiteStore(path) as store:
            for task in await store.claim("cli-test", 100, 30):
                if task.delivery_id in fail:
                    await store.fail(task, "KeyError: 'customer'\n  File handler.py, line 9", None)
                elif task.delivery_id in complete:
                    await store.complete(task)

    asyncio.run(main())


def delivery(
    id: str,
    *,
    webhook: str = "stripe",
    event: str | None = "payment.ok",
    body: bytes = b'{"id": "evt_1", "amount": 5}',
    age: float = 0.0,
    handlers: tuple[str, ...] = ("notify",),
) -> NewDelivery:
    return NewDelivery(
        id=id,
        webhook=webhook,
        event=event,
        idempotency_key=None,
        body=body,
        headers=(("content-type", "application/json"), ("stripe-signature", "t=1,v1=ab")),
        query="source=test",
        received_at=time.time() - age,
        handlers=handlers,
    )


@pytest.fixture
def db(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "inbox.db"
    add(path, delivery("d-dead", age=30))
    settle(path, fail=("d-dead",))
    add(path, delivery("d-pending", webhook="github"))
    return path, f"sqlite:///{path}"


def test_migrate_creates_the_inbox_and_is_idempotent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/new/inbox.db"
    first = run("migrate", url)
    assert first.exit_code == 0, first.output
    assert (tmp_path / "new" / "inbox.db").is_file()
    assert run("migrate", url).exit_code == 0


def test_commands_other_than_migrate_refuse_a_missing_file(tmp_path: Path) -> None:
    result = run("stats", f"sqlite:///{tmp_path}/typo.db")
    assert failed_cleanly(result)
    assert "dispatcher inbox migrate" in result.stderr
    assert not (tmp_path / "typo.db").exists()


def test_a_url_with_options_names_the_same_file(db: tuple[Path, str]) -> None:
    path, url = db
    result = run("stats", f"{url}?synchronous=NORMAL&busy_timeout=1")
    assert result.exit_code == 0, result.output
    assert "deliveries: pending 1  done 0  dead 1" in result.output
    assert [p.name for p in path.parent.iterdir() if p.suffix == ".db"] == ["inbox.db"]


def test_stats(db: tuple[Path, str]) -> None:
    _, url = db
    result = run("stats", url)
    assert result.exit_code == 0, result.output
    assert "deliveries: pending 1  done 0  dead 1" in result.output
    assert "tasks:      pending 1  leased 0  done 0  dead 1" in result.output
    assert "oldest pending:" in result.output
    data = json.loads(run("stats", url, "--json").output)
    assert data["deliveries"] == {"pending": 1, "done": 0, "dead": 1}
    assert data["oldest_pending_age"] >= 0


def test_list_shows_a_table_and_filters(db: tuple[Path, str]) -> None:
    _, url = db
    result = run("list", url)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:4] == ["ID", "WEBHOOK", "EVENT", "STATUS"]
    assert lines[1].startswith("d-pending")  # newest first
    assert "d-dead" in lines[2] and "KeyError: 'customer'" in lines[2]
    dead = run("list", url, "--status", "dead")
    assert "d-dead" in dead.output and "d-pending" not in dead.output
    github = run("list", url, "--webhook", "github")
    assert "d-pending" in github.output and "d-dead" not in github.output
    assert "no deliveries" in run("list", url, "--event", "nothing").output
    rows = json.loads(run("list", url, "--limit", "1", "--json").output)
    assert [r["id"] for r in rows] == ["d-pending"]
    assert set(rows[0]) == {
        "id",
        "webhook",
        "event",
        "status",
        "received_at",
        "attempts",
        "last_error",
    }


def test_show_prints_headers_payload_and_attempts(db: tuple[Path, str]) -> None:
    _, url = db
    result = run("show", url, "d-dead")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "stripe-signature: t=1,v1=ab" in out
    assert '"amount": 5' in out and '  "id": "evt_1"' in out  # pretty-printed JSON
    assert "query      source=test" in out
    assert "series 0 attempt 1 notify on cli-test: failed" in out
    assert "KeyError: 'customer'" in out and "File handler.py, line 9" in out
    data = json.loads(run("show", url, "d-dead", "--json").output)
    assert data["body"] == '{"id": "evt_1", "amount": 5}'
    assert data["attempts"][0]["error"].startswith("KeyError")
    assert data["headers"][1] == ["stripe-signature", "t=1,v1=ab"]


def test_show_handles_binary_bodies_and_unknown_ids(tmp_path: Path) -> None:
    path = tmp_path / "inbox.db"
    add(path, delivery("bin", body=b"\xff\x00\x01"))
    url = f"sqlite:///{path}"
    assert "3 bytes of binary data" in run("show", url, "bin").output
    assert json.loads(run("show", url, "bin", "--json").output)["body_base64"] == "/wAB"
    missing = run("show", url, "nope")
    assert failed_cleanly(missing) and "nope" in missing.stderr


def test_replay_by_id_and_by_status(db: tuple[Path, str]) -> None:
    path, url = db
    result = run("replay", url, "d-dead")
    assert result.exit_code == 0, result.output
    assert "replayed 1 delivery" in result.output
    assert json.loads(run("stats", url, "--json").output)["deliveries"]["dead"] == 0
    settle(path, fail=("d-dead",), complete=("d-pending",))  # d-dead dies again, in series 1
    assert "replayed 1 delivery" in run("replay", url, "--status", "dead").output
    shown = json.loads(run("show", url, "d-dead", "--json").output)
    assert shown["series"] == 2 and len(shown["attempts"]) == 2
    assert "replayed 1 delivery" in run("replay", url, "--webhook", "github").output
    assert "replayed 0 deliveries" in run("replay", url, "--status", "dead").output


def test_replay_of_an_unknown_id_is_an_error_and_changes_nothing(db: tuple[Path, str]) -> None:
    _, url = db
    result = run("replay", url, "d-dead", "missing-id")
    assert failed_cleanly(result)
    assert "missing-id" in result.stderr
    assert json.loads(run("stats", url, "--json").output)["deliveries"]["dead"] == 1
    assert failed_cleanly(run("replay", url))  # no selection at all


def test_purge_deletes_old_finished_deliveries(tmp_path: Path) -> None:
    path = tmp_path / "inbox.db"
    add(path, delivery("old", age=8 * DAY, handlers=()), delivery("new", handlers=()))
    url = f"sqlite:///{path}"
    result = run("purge", url, "--status", "done", "--older-than", "7d")
    assert result.exit_code == 0, result.output
    assert "purged 1 delivery" in result.output
    rows = json.loads(run("list", url, "--json").output)
    assert [r["id"] for r in rows] == ["new"]
    bad = run("purge", url, "--status", "done", "--older-than", "soon")
    assert bad.exit_code != 0 and "30s, 15m, 12h or 7d" in bad.output
    assert run("purge", url, "--status", "pending", "--older-than", "1d").exit_code != 0


def test_a_bad_url_is_one_line_not_a_traceback() -> None:
    result = run("stats", "mysql://u:secret@db/x")
    assert failed_cleanly(result)
    assert "sqlite:///relative/path.db" in result.stderr and "secret" not in result.stderr


def test_an_unreachable_database_is_one_line_not_a_traceback() -> None:
    result = run("stats", "postgresql://postgres@127.0.0.1:1/test")
    assert failed_cleanly(result)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("15m", 900), ("12h", 43200), ("7d", 604800), ("2w", 1209600), ("90", 90)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_parse_duration_rejects_nonsense() -> None:
    with pytest.raises(click.BadParameter):
        parse_duration("7 days")
