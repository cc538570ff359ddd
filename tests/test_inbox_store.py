"""The inbox contract, run against every store: memory, SQLite and PostgreSQL.

Time is an injected clock moved by the tests; nothing here sleeps to make a lease lapse.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from dispatcher.errors import NotFoundError, UnstorableError, ValidationError
from dispatcher.inbox import (
    InboxStore,
    MemoryStore,
    NewDelivery,
    SQLiteStore,
    open_inbox,
    sqlite_path,
)
from dispatcher.inbox.base import LAPSED_ERROR

pytestmark = pytest.mark.anyio

T0 = 1_700_000_000.0


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_delivery(
    clock: FakeClock,
    id: str | None = None,
    *,
    webhook: str = "hook",
    event: str | None = "ev",
    key: str | None = None,
    handlers: tuple[str, ...] = ("h1",),
    body: bytes = b'{"n": 1}',
) -> NewDelivery:
    return NewDelivery(
        id=id or uuid.uuid4().hex,
        webhook=webhook,
        event=event,
        idempotency_key=key,
        body=body,
        # A repeated header, and a value with a byte over 0x7f (headers are latin-1).
        headers=(
            ("content-type", "application/json"),
            ("x-sig", "abc"),
            ("x-sig", "def"),
            ("x-name", "caf\xe9"),
        ),
        query="a=1&b=2",
        received_at=clock(),
        handlers=handlers,
    )


def build_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path, clock: Any) -> Any:
    if kind == "memory":
        return MemoryStore(clock=clock)
    if kind == "sqlite":
        return SQLiteStore(tmp_path / "inbox.db", clock=clock)
    from dispatcher.inbox.postgres import PostgresStore

    url = request.getfixturevalue("postgres_url")
    return PostgresStore(url, schema=f"test_{uuid.uuid4().hex[:12]}", clock=clock)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(
    request: pytest.FixtureRequest, anyio_backend: str, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[Any]:
    store = build_store(request.param, request, tmp_path, clock)
    await store.open()
    try:
        yield store
    finally:
        if request.param == "postgres":
            await store.drop_schema()
        await store.close()


# -- add ----------------------------------------------------------------------------------


async def test_add_stores_the_delivery_and_one_task_per_handler(store, clock) -> None:
    d = make_delivery(clock, "d1", key="k1", handlers=("h1", "h2", "h1"))
    assert await store.add(d) == "stored"
    got = await store.get("d1")
    assert got is not None
    assert (got["webhook"], got["event"], got["idempotency_key"]) == ("hook", "ev", "k1")
    assert got["body"] == b'{"n": 1}'
    assert got["headers"] == list(d.headers)
    assert got["query"] == "a=1&b=2"
    assert got["received_at"] == T0
    assert got["status"] == "pending"
    assert [(t["handler"], t["status"], t["attempt"]) for t in got["tasks"]] == [
        ("h1", "pending", 0),
        ("h2", "pending", 0),
    ]


async def test_bodies_stored_together_come_back_each_exactly(store, clock) -> None:
    # One batch, bodies of every shape: PostgreSQL gets them as one bytea and cuts it up.
    bodies = [b"", b"\x00\xff\x00", "é ☃".encode(), b"x" * 70_000, b"{}", b"", b"\n"]
    keyed = [None, "k1", None, "k2", "k0", None, "k3"]  # keys reorder the rows of a batch
    ids = [f"d{i}" for i in range(len(bodies))]
    adds = [
        store.add(make_delivery(clock, id, key=key, body=body))
        for id, key, body in zip(ids, keyed, bodies, strict=True)
    ]
    assert await asyncio.gather(*adds) == ["stored"] * len(bodies)
    for id, body in zip(ids, bodies, strict=True):
        got = await store.get(id)
        assert got is not None and got["body"] == body, id
    assert got["attempts"] == []
    assert await store.get("nope") is None


async def test_a_delivery_without_handlers_is_done_at_once(store, clock) -> None:
    await store.add(make_delivery(clock, "d1", handlers=()))
    assert (await store.get("d1"))["status"] == "done"
    assert await store.claim("w", 10, 30) == []
    assert await store.idle()


async def test_idle_only_once_no_task_is_pending_or_leased(store, clock) -> None:
    assert await store.idle()
    await store.add(make_delivery(clock, "d1", handlers=("h1",)))
    assert not await store.idle()  # pending
    (task,) = await store.claim("w", 10, 30)
    assert not await store.idle()  # leased
    assert await store.complete(task)
    assert await store.idle()


async def test_duplicates_are_per_webhook_and_key(store, clock) -> None:
    assert await store.add(make_delivery(clock, "a", key="k")) == "stored"
    assert await store.add(make_delivery(clock, "b", key="k")) == "duplicate"
    assert await store.add(make_delivery(clock, "c", key="k", webhook="other")) == "stored"
    assert await store.add(make_delivery(clock, "d", key=None)) == "stored"
    assert await store.add(make_delivery(clock, "e", key=None)) == "stored"
    assert await store.get("b") is None
    assert (await store.stats())["tasks"]["pending"] == 4


async def test_fifty_concurrent_adds_of_one_key_store_exactly_one(store, clock) -> None:
    results = await asyncio.gather(
        *(store.add(make_delivery(clock, f"d{i}", key="same")) for i in range(50))
    )
    assert results.count("stored") == 1
    assert results.count("duplicate") == 49
    assert (await store.stats())["deliveries"]["pending"] == 1


async def test_a_reused_delivery_id_raises(store, clock) -> None:
    await store.add(make_delivery(clock, "d1"))
    with pytest.raises(Exception):  # noqa: B017 - each store raises its own integrity error
        await store.add(make_delivery(clock, "d1"))
    assert await store.pending_count() == 1


# -- claim, leases, fencing -----------------------------------------------------------------


async def test_claim_takes_the_oldest_due_first_up_to_the_limit(store, clock) -> None:
    for i in range(4):
        await store.add(make_delivery(clock, f"d{i}"))
        clock.advance(1)
    first = await store.claim("w", 2, 30)
    assert [t.delivery_id for t in first] == ["d0", "d1"]
    assert all(t.attempt == 1 and t.series == 0 and t.handler == "h1" for t in first)
    assert first[0].body == b'{"n": 1}' and first[0].query == "a=1&b=2"
    assert first[0].headers[1:] == (("x-sig", "abc"), ("x-sig", "def"), ("x-name", "caf\xe9"))
    assert first[0].lease_token != first[1].lease_token
    assert [t.delivery_id for t in await store.claim("w", 10, 30)] == ["d2", "d3"]
    assert await store.claim("w", 10, 30) == []


async def test_a_lease_is_reclaimed_only_after_it_lapsed(store, clock) -> None:
    await store.add(make_delivery(clock, "d1"))
    (task,) = await store.claim("w1", 1, 30)
    clock.advance(29)
    assert await store.claim("w2", 1, 30) == []
    assert await store.next_due() == T0 + 30
    clock.advance(2)
    (again,) = await store.claim("w2", 1, 30)
    assert again.task_id == task.task_id
    assert again.attempt == 2
    assert again.lease_token != task.lease_token
    attempts = (await store.get("d1"))["attempts"]
    assert [(a["attempt"], a["worker"], a["error"]) for a in attempts] == [
        (1, "w1", LAPSED_ERROR),
        (2, "w2", None),
    ]


async def test_a_stale_lease_token_cannot_complete_fail_or_renew(store, clock) -> None:
    await store.add(make_delivery(clock, "d1"))
    (stale,) = await store.claim("w1", 1, 10)
    clock.advance(11)
    (fresh,) = await store.claim("w2", 1, 10)
    assert not await store.complete(stale)
    assert not await store.fail(stale, "late", None)
    assert not await store.renew(stale, 100)
    got = await store.get("d1")
    assert got["status"] == "pending" and got["tasks"][0]["status"] == "leased"
    assert await store.complete(fresh)
    assert not await store.complete(fresh)  # done is final: a second complete is fenced too
    assert (await store.get("d1"))["status"] == "done"


async def test_renew_keeps_the_lease_alive(store, clock) -> None:
    await store.add(make_delivery(clock, "d1"))
    (task,) = await store.claim("w1", 1, 10)
    clock.advance(8)
    assert await store.renew(task, 10)
    clock.advance(8)
    assert await store.claim("w2", 1, 10) == []
    clock.advance(3)
    assert len(await store.claim("w2", 1, 10)) == 1


async def test_no_task_is_handed_to_two_concurrent_claimers(store, clock) -> None:
    for i in range(20):
        await store.add(make_delivery(clock, f"d{i}", handlers=("a", "b", "c")))
    batches = await asyncio.gather(*(store.claim(f"w{i}", 3, 30) for i in range(30)))
    ids = [t.task_id for batch in batches for t in batch]
    assert len(ids) == 60
    assert len(set(ids)) == 60


async def test_add_and_claim_leases_up_to_the_limit_of_the_new_tasks(store, clock) -> None:
    delivery = make_delivery(clock, "d1", handlers=("a", "b", "c"))
    outcome, claimed = await store.add_and_claim(delivery, "w1", 30, 2)
    assert outcome == "stored"
    assert [(t.handler, t.attempt, t.series) for t in claimed] == [("a", 1, 0), ("b", 1, 0)]
    first = claimed[0]
    assert (first.delivery_id, first.webhook, first.event) == ("d1", "hook", "ev")
    assert (first.body, first.headers, first.query) == (
        delivery.body, delivery.headers, delivery.query,
    )  # fmt: skip
    assert first.received_at == delivery.received_at
    assert claimed[0].lease_token != claimed[1].lease_token
    got = await store.get("d1")
    assert [(t["handler"], t["status"], t["attempt"]) for t in got["tasks"]] == [
        ("a", "leased", 1), ("b", "leased", 1), ("c", "pending", 0),
    ]  # fmt: skip
    assert [(a["handler"], a["attempt"], a["worker"]) for a in got["attempts"]] == [
        ("a", 1, "w1"), ("b", 1, "w1"),
    ]  # fmt: skip
    # The one left over is any worker's; the claimed ones are not handed out again.
    (rest,) = await store.claim("w2", 10, 30)
    assert rest.handler == "c"
    assert [await store.complete(task) for task in [*claimed, rest]] == [True] * 3
    assert (await store.get("d1"))["status"] == "done"


async def test_a_task_claimed_as_stored_is_reclaimed_when_its_lease_lapses(store, clock) -> None:
    # The receiving process died after the commit: the task runs again, like any claim.
    _, (task,) = await store.add_and_claim(make_delivery(clock, "d1"), "w1", 30, 1)
    assert await store.claim("w2", 1, 30) == []
    clock.advance(31)
    (again,) = await store.claim("w2", 1, 30)
    assert (again.task_id, again.attempt) == (task.task_id, 2)
    assert not await store.complete(task)  # fenced
    assert await store.complete(again)
    attempts = (await store.get("d1"))["attempts"]
    assert [(a["attempt"], a["worker"], a["error"]) for a in attempts] == [
        (1, "w1", LAPSED_ERROR),
        (2, "w2", None),
    ]


async def test_add_and_claim_of_a_duplicate_claims_nothing(store, clock) -> None:
    assert (await store.add_and_claim(make_delivery(clock, key="k"), "w", 30, 1))[0] == "stored"
    again = await store.add_and_claim(make_delivery(clock, key="k"), "w", 30, 1)
    assert again == ("duplicate", [])
    assert (await store.stats())["tasks"]["leased"] == 1


async def test_concurrent_add_and_claims_each_get_their_own_tasks(store, clock) -> None:
    added = await asyncio.gather(*(
        store.add_and_claim(make_delivery(clock, f"d{i}", handlers=("a", "b")), "w", 30, 1)
        for i in range(20)
    ))  # fmt: skip
    claimed = [task for _, tasks in added for task in tasks]
    assert [t.delivery_id for t in claimed] == [f"d{i}" for i in range(20)]
    assert len({t.task_id for t in claimed}) == 20
    assert [t.handler for t in await store.claim("w2", 50, 30)] == ["b"] * 20
    assert all(await asyncio.gather(*(store.complete(t) for t in claimed)))


async def test_wait_is_not_woken_by_a_delivery_whose_tasks_were_all_claimed(store, clock) -> None:
    await store.wait(0)  # use up the wake-up PostgreSQL's store gives when it starts to LISTEN
    await store.add_and_claim(make_delivery(clock, "d1"), "w", 30, 1)
    started = time.monotonic()
    await store.wait(0.2)
    assert time.monotonic() - started >= 0.15
    await store.add_and_claim(make_delivery(clock, "d2", handlers=("a", "b")), "w", 30, 1)
    started = time.monotonic()
    await store.wait(5)  # "b" is left for the workers
    assert time.monotonic() - started < 2


# -- outcomes -------------------------------------------------------------------------------


async def test_fail_with_retry_at_makes_the_task_due_later(store, clock) -> None:
    await store.add(make_delivery(clock, "d1"))
    (task,) = await store.claim("w", 1, 30)
    assert await store.fail(task, "ValueError: boom", T0 + 60)
    got = await store.get("d1")
    assert got["status"] == "pending"
    assert got["tasks"][0]["status"] == "pending"
    assert got["attempts"][0]["error"] == "ValueError: boom"
    assert got["attempts"][0]["finished_at"] == T0
    assert await store.next_due() == T0 + 60
    clock.advance(59)
    assert await store.claim("w", 1, 30) == []
    clock.advance(1)
    (again,) = await store.claim("w", 1, 30)
    assert again.attempt == 2


async def test_fail_without_retry_is_dead(store, clock) -> None:
    await store.add(make_delivery(clock, "d1", handlers=("a", "b")))
    a, b = await store.claim("w", 2, 30)
    assert await store.fail(a, "gave up", None)
    assert (await store.get("d1"))["status"] == "pending"  # b still runs
    assert await store.complete(b)
    got = await store.get("d1")
    assert got["status"] == "dead"
    assert sorted(t["status"] for t in got["tasks"]) == ["dead", "done"]
    assert await store.idle()
    assert await store.next_due() is None


async def test_replay_starts_a_new_series_of_the_dead_tasks(store, clock) -> None:
    await store.add(make_delivery(clock, "d1", handlers=("a", "b")))
    a, b = await store.claim("w", 2, 30)
    await store.fail(a, "boom", None)
    await store.complete(b)
    clock.advance(5)
    assert await store.replay(["d1"]) == 1
    got = await store.get("d1")
    assert got["status"] == "pending" and got["series"] == 1
    (again,) = await store.claim("w", 10, 30)
    assert (again.handler, again.attempt, again.series) == ("a", 1, 1)
    await store.complete(again)
    got = await store.get("d1")
    assert got["status"] == "done"
    assert [(x["handler"], x["series"], x["attempt"]) for x in got["attempts"]] == [
        ("a", 0, 1),
        ("b", 0, 1),
        ("a", 1, 1),
    ]
    assert got["attempts"][0]["error"] == "boom"  # history is kept


async def test_replay_of_a_done_delivery_runs_every_task(store, clock) -> None:
    await store.add(make_delivery(clock, "d1", handlers=("a", "b")))
    for task in await store.claim("w", 2, 30):
        await store.complete(task)
    assert await store.replay(["d1"]) == 1
    assert sorted(t.handler for t in await store.claim("w", 10, 30)) == ["a", "b"]


async def test_replay_selects_by_status_and_webhook(store, clock) -> None:
    for i, hook in enumerate(["x", "x", "y"]):
        await store.add(make_delivery(clock, f"d{i}", webhook=hook))
    await store.add(make_delivery(clock, "in-flight", webhook="x"))
    tasks = {t.delivery_id: t for t in await store.claim("w", 3, 30)}
    for delivery_id in ("d0", "d1", "d2"):
        await store.fail(tasks[delivery_id], "boom", None)
    assert await store.replay(status="dead", webhook="x") == 2
    assert (await store.get("d2"))["status"] == "dead"
    assert await store.replay(status="pending") == 0  # in flight: nothing dead to replay
    assert await store.replay(["d2"], webhook="x") == 0


async def test_replay_refuses_unknown_ids_and_an_empty_selection(store, clock) -> None:
    await store.add(make_delivery(clock, "d1"))
    (task,) = await store.claim("w", 1, 30)
    await store.fail(task, "boom", None)
    with pytest.raises(NotFoundError):
        await store.replay(["d1", "missing"])
    assert (await store.get("d1"))["status"] == "dead"  # all or nothing
    with pytest.raises(ValidationError):
        await store.replay()


async def test_purge_and_prune_delete_old_finished_deliveries(store, clock) -> None:
    await store.add(make_delivery(clock, "old-done", key="k"))
    await store.add(make_delivery(clock, "old-dead"))
    await store.add(make_delivery(clock, "old-pending"))
    tasks = {t.delivery_id: t for t in await store.claim("w", 2, 30)}
    await store.complete(tasks["old-done"])
    await store.fail(tasks["old-dead"], "boom", None)
    clock.advance(8 * 86400)
    await store.add(make_delivery(clock, "new-done", handlers=()))
    assert await store.prune() == 1  # 7 days by default; the new one is younger
    assert await store.get("old-done") is None
    assert await store.get("new-done") is not None
    assert await store.get("old-dead") is not None
    assert await store.add(make_delivery(clock, "again", key="k")) == "stored"  # key forgotten
    assert await store.purge("dead", 86400) == 1
    assert await store.get("old-dead") is None
    with pytest.raises(ValidationError):
        await store.purge("pending", 0)
    assert await store.get("old-pending") is not None


# -- operator reads ---------------------------------------------------------------------------


async def test_stats_counts_and_oldest_pending_age(store, clock) -> None:
    assert (await store.stats())["oldest_pending_age"] is None
    await store.add(make_delivery(clock, "d1"))
    clock.advance(10)
    await store.add(make_delivery(clock, "d2", handlers=("a", "b")))
    (task,) = await store.claim("w", 1, 30)
    await store.fail(task, "boom", None)
    clock.advance(5)
    stats = await store.stats()
    assert stats["deliveries"] == {"pending": 1, "done": 0, "dead": 1}
    assert stats["tasks"] == {"pending": 2, "leased": 0, "done": 0, "dead": 1}
    assert stats["oldest_pending_age"] == pytest.approx(5.0)
    assert await store.pending_count() == 2


async def test_list_is_newest_first_and_filters(store, clock) -> None:
    await store.add(make_delivery(clock, "d1", webhook="x", event="paid"))
    clock.advance(1)
    await store.add(make_delivery(clock, "d2", webhook="x", event=None))
    clock.advance(1)
    await store.add(make_delivery(clock, "d3", webhook="y", event="paid"))
    tasks = {t.delivery_id: t for t in await store.claim("w", 1, 30)}
    await store.fail(tasks["d1"], "KeyError: 'id'\n  File ...", None)
    assert [r["id"] for r in await store.list()] == ["d3", "d2", "d1"]
    assert [r["id"] for r in await store.list(limit=2)] == ["d3", "d2"]
    assert [r["id"] for r in await store.list(webhook="x")] == ["d2", "d1"]
    assert [r["id"] for r in await store.list(event="paid")] == ["d3", "d1"]
    (dead,) = await store.list(status="dead")
    assert dead == {
        "id": "d1",
        "webhook": "x",
        "event": "paid",
        "status": "dead",
        "received_at": T0,
        "attempts": 1,
        "last_error": "KeyError: 'id'\n  File ...",
    }
    with pytest.raises(ValidationError):
        await store.list(status="leased")


async def test_per_minute_counts_by_current_status(store, clock) -> None:
    start = 1_700_000_040.0  # a whole minute
    clock.now = start
    await store.add(make_delivery(clock, "a"))
    await store.add(make_delivery(clock, "b", handlers=()))
    clock.advance(61)
    await store.add(make_delivery(clock, "c"))
    assert await store.per_minute(start) == [
        (int(start), "done", 1),
        (int(start), "pending", 1),
        (int(start) + 60, "pending", 1),
    ]
    assert await store.per_minute(start + 60) == [(int(start) + 60, "pending", 1)]


# -- waiting ----------------------------------------------------------------------------------


async def test_wait_returns_when_work_is_added(store, clock) -> None:
    await store.wait(0)  # consume any remembered signal
    with anyio.fail_after(3):
        async with anyio.create_task_group() as tg:
            woke = anyio.Event()

            async def waiter() -> None:
                await store.wait(30)
                woke.set()

            tg.start_soon(waiter)
            await anyio.sleep(0.05)
            assert not woke.is_set()
            await store.add(make_delivery(clock, "d1"))
            await woke.wait()


async def test_wait_returns_when_a_retry_falls_due(store, clock) -> None:
    await store.add(make_delivery(clock, "d1"))
    (task,) = await store.claim("w", 1, 30)
    await store.fail(task, "boom", T0 + 0.05)
    await store.wait(0)  # the fail signalled; consume it
    started = time.monotonic()
    await store.wait(10)
    assert time.monotonic() - started < 2


# -- store-specific -----------------------------------------------------------------------------


def test_one_store_serves_several_event_loops(tmp_path: Path) -> None:
    for store in (MemoryStore(), SQLiteStore(tmp_path / "loops.db")):
        asyncio.run(store.open())
        asyncio.run(store.wait(0))  # a first loop, now closed, touched the wake-up
        assert asyncio.run(store.add(make_delivery(FakeClock(time.time()), "d1"))) == "stored"
        woke: list[float] = []

        def waiter(store: InboxStore = store, woke: list[float] = woke) -> None:
            started = time.monotonic()
            asyncio.run(store.wait(10))
            woke.append(time.monotonic() - started)

        (task,) = asyncio.run(store.claim("w", 1, 30))
        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.1)
        asyncio.run(store.add(make_delivery(FakeClock(time.time()), "d2")))
        thread.join(5)
        assert woke and woke[0] < 3
        assert asyncio.run(store.complete(task))
        asyncio.run(store.close())


async def test_sqlite_uses_wal_and_full_sync(tmp_path: Path, anyio_backend: str) -> None:
    async with SQLiteStore(tmp_path / "a" / "b" / "inbox.db") as store:
        assert await store.pragma("journal_mode") == "wal"
        assert await store.pragma("synchronous") == 2  # FULL
        # Statement journals (a multi-row insert's undo) stay in memory, never a temp file.
        assert await store.pragma("temp_store") == 2  # MEMORY
    async with SQLiteStore(tmp_path / "n.db", synchronous="NORMAL") as store:
        assert await store.pragma("synchronous") == 1
    with pytest.raises(ValidationError):
        SQLiteStore(tmp_path / "x.db", synchronous="sometimes")


async def test_sqlite_at_off_never_syncs_for_the_bench_control(
    tmp_path: Path, anyio_backend: str
) -> None:
    """bench_inbox --controls measures what the fsyncs cost with ``?synchronous=OFF``:
    the URL option must reach the writer, for deliveries too (not FULL for them)."""
    store = open_inbox(f"sqlite:///{tmp_path}/off.db?synchronous=OFF")
    assert isinstance(store, SQLiteStore)
    async with store:
        await store.add(make_delivery(FakeClock(time.time()), "d1", handlers=("h1",)))
        assert await store.pragma("synchronous") == 0  # OFF


def test_only_batches_that_must_survive_a_power_loss_wait_for_an_fsync() -> None:
    from dispatcher.inbox.sqlite_ops import sync_level

    def finish(status: str) -> tuple[str, bool, tuple[object, ...]]:
        return ("finish_many", True, (7, "tok", 0, 1, "d1", status, None, None, 0.0))

    claim, renew, add = ("claim", False, ()), ("renew", False, ()), ("add_many", True, ())
    # a power loss that takes these back only makes a task run again
    for relaxed in ([claim], [renew], [finish("done")], [finish("pending"), claim, renew]):
        assert sync_level(relaxed, "FULL") == "NORMAL"
        assert sync_level(relaxed, "EXTRA") == "NORMAL"
    # acknowledged deliveries, deaths (on_error hears once) and operators' actions: fsync
    for strict in ([add], [claim, add], [finish("done"), finish("dead")], [("replay", False, ())],
                   [("purge_chunk", False, ())], [("migrate", False, ())]):  # fmt: skip
        assert sync_level(strict, "FULL") == "FULL"
        assert sync_level(strict, "EXTRA") == "EXTRA"
    assert sync_level([claim], "NORMAL") == sync_level([add], "NORMAL") == "NORMAL"


async def test_a_batch_after_relaxed_ones_commits_with_full_sync_again(
    tmp_path: Path, anyio_backend: str
) -> None:
    clock = FakeClock(time.time())
    async with SQLiteStore(tmp_path / "inbox.db", clock=clock) as store:
        await store.add(make_delivery(clock, "d1", handlers=("h1",)))
        (task,) = await store.claim("w", 10, 30)  # a batch committed with NORMAL
        assert await store.complete(task)  # and another
        assert await store.pragma("synchronous") == 2  # FULL again for what needs it


async def test_sqlite_group_commits_concurrent_writes(tmp_path: Path, anyio_backend: str) -> None:
    clock = FakeClock()
    async with SQLiteStore(tmp_path / "inbox.db", clock=clock) as store:
        before = store.commits
        results = await asyncio.gather(
            *(store.add(make_delivery(clock, f"d{i}")) for i in range(200))
        )
        assert results == ["stored"] * 200
        commits = store.commits - before
        assert 1 <= commits < 50
        sequential = store.commits
        await store.add(make_delivery(clock, "one"))
        await store.add(make_delivery(clock, "two"))
        assert store.commits - sequential == 2  # an idle writer commits at once


async def test_sqlite_sends_a_full_frame_before_the_loop_turn_ends(
    tmp_path: Path, anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Requests started in one loop turn: the process gets their writes FRAME_OPS at a
    # time while the turn goes on (and commits them meanwhile), the rest at its end.
    from dispatcher.inbox import sqlite_writer

    clock = FakeClock()
    frames: list[int] = []
    send = sqlite_writer.Writer._send

    def recording_send(writer: Any, frame: Any) -> None:
        frames.append(len(frame.ops))
        send(writer, frame)

    full = sqlite_writer.FRAME_OPS
    async with SQLiteStore(tmp_path / "inbox.db", clock=clock) as store:
        monkeypatch.setattr(sqlite_writer.Writer, "_send", recording_send)
        adds = [
            asyncio.ensure_future(store.add(make_delivery(clock, f"d{i}")))
            for i in range(2 * full + 3)
        ]
        await asyncio.sleep(0)  # one loop turn: every add ran up to its write
        assert frames == [full, full]  # sent during the turn
        assert await asyncio.gather(*adds) == ["stored"] * (2 * full + 3)
        assert frames == [full, full, 3]  # the rest went at the end of the turn


async def test_sqlite_one_failing_op_does_not_fail_its_batch(
    tmp_path: Path, anyio_backend: str
) -> None:
    clock = FakeClock()
    async with SQLiteStore(tmp_path / "inbox.db", clock=clock) as store:
        await store.add(make_delivery(clock, "taken"))
        ops = [store.add(make_delivery(clock, f"d{i}")) for i in range(20)]
        ops.insert(10, store.add(make_delivery(clock, "taken", handlers=("x", "y"))))
        results = await asyncio.gather(*ops, return_exceptions=True)
        assert isinstance(results[10], sqlite3.IntegrityError)
        assert results[:10] + results[11:] == ["stored"] * 20
        got = await store.get("taken")
        assert [t["handler"] for t in got["tasks"]] == ["h1"]  # the failed op left nothing
        assert await store.pending_count() == 21


@contextlib.contextmanager
def another_writer(path: Path) -> Iterator[None]:
    """Another connection holds the inbox's write lock (as another process writing would)
    until the block ends."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


async def test_sqlite_waits_for_another_writer_without_blocking_the_loop(
    tmp_path: Path, anyio_backend: str
) -> None:
    clock = FakeClock()
    async with SQLiteStore(tmp_path / "inbox.db", clock=clock) as store:
        with another_writer(tmp_path / "inbox.db"):
            add = asyncio.ensure_future(store.add(make_delivery(clock, "waits")))
            ticks = 0
            for _ in range(20):  # the loop keeps running while the add waits for the lock
                await asyncio.sleep(0.01)
                ticks += 1
            assert ticks == 20 and not add.done()
        assert await asyncio.wait_for(add, 5) == "stored"
        assert (
            await store.add(make_delivery(clock, "after")) == "stored"
        )  # and the next write goes through


async def test_sqlite_writes_more_than_the_pipe_holds_while_another_writer_has_the_lock(
    tmp_path: Path, anyio_backend: str
) -> None:
    # The process reads its stdin only between batches: while it waits for the lock,
    # 4 MiB of frames cannot all fit in the pipe. The loop must go on all the same,
    # and every write must arrive, in order, once the lock is free.
    clock = FakeClock()
    body = b'{"pad": "' + b"x" * (512 * 1024) + b'"}'
    async with SQLiteStore(tmp_path / "inbox.db", clock=clock) as store:
        with another_writer(tmp_path / "inbox.db"):
            adds = []
            for i in range(8):  # one frame each, sent in different loop turns
                add = store.add(make_delivery(clock, f"big{i}", body=body))
                adds.append(asyncio.ensure_future(add))
                await asyncio.sleep(0.01)
            writer = store._writer
            assert writer is not None and writer._outlet is not None
            assert writer._outlet._backlog  # the pipe is full: the rest waits its turn
            ticks = 0
            for _ in range(10):  # and the loop keeps running meanwhile
                await asyncio.sleep(0.01)
                ticks += 1
            assert ticks == 10 and not any(add.done() for add in adds)
        assert await asyncio.wait_for(asyncio.gather(*adds), 10) == ["stored"] * 8
        assert not writer._outlet._backlog
        for i in range(8):
            got = await store.get(f"big{i}")
            assert got is not None and got["body"] == body
    with contextlib.closing(sqlite3.connect(tmp_path / "inbox.db")) as db:
        stored = [row[0] for row in db.execute("SELECT id FROM deliveries ORDER BY rowid")]
    assert stored == [f"big{i}" for i in range(8)]


def test_the_writer_process_binds_none_and_bytes_through_identity_adapters() -> None:
    # In a process of its own, as the writer does it: the tests' own sqlite3 stays as it is.
    script = (
        "import sqlite3\n"
        "from dispatcher.inbox.sqlite_process import adapt_at_once\n"
        "adapt_at_once()\n"
        "assert (bytes, sqlite3.PrepareProtocol) in sqlite3.adapters\n"
        "assert (type(None), sqlite3.PrepareProtocol) in sqlite3.adapters\n"
        "conn = sqlite3.connect(':memory:')\n"
        "row = conn.execute('SELECT ?, typeof(?), ?, typeof(?)', (None, None, b'a\\0b', b'')).fetchone()\n"
        "print(repr(row))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == repr((None, "null", b"a\0b", "blob"))
    assert (bytes, sqlite3.PrepareProtocol) not in sqlite3.adapters  # not in this process


def test_sqlite_writer_process_takes_whole_frames_as_they_come() -> None:
    from dispatcher.inbox.sqlite_process import Frames, encode_frame

    def frame(first: int) -> bytes:  # frame id `first`, ops numbered from it
        return encode_frame((first, [("add_many", True, i) for i in range(first, first + 5)]))

    def numbers(frames: list[Any]) -> list[int]:
        assert all(ops[0][2] == frame_id for frame_id, ops in frames)  # ids kept
        return [op[2] for _, ops in frames for op in ops]

    read, write = os.pipe()
    try:
        frames = Frames(read)
        os.write(write, frame(0) + frame(5) + frame(10))
        # Whole frames until the limit is reached or passed; the rest waits its turn.
        assert numbers(frames.take(8)) == list(range(10))
        assert numbers(frames.take(8)) == list(range(10, 15))
        half = frame(15)
        os.write(write, half[:7])  # a frame cut in two by the pipe...
        threading.Timer(0.05, os.write, (write, half[7:])).start()
        assert numbers(frames.take(8)) == list(range(15, 20))  # ...waited for
        os.write(write, frame(20))
        os.close(write)
        write = -1
        assert numbers(frames.take(8)) == list(range(20, 25))  # what came first
        assert frames.take(8) == []  # then the end
    finally:
        os.close(read)
        if write >= 0:
            os.close(write)


async def test_sqlite_gives_up_on_a_lock_held_past_the_busy_timeout(
    tmp_path: Path, anyio_backend: str
) -> None:
    clock = FakeClock()
    async with SQLiteStore(tmp_path / "inbox.db", clock=clock, busy_timeout=0.2) as store:
        with (
            another_writer(tmp_path / "inbox.db"),
            pytest.raises(sqlite3.OperationalError, match="locked"),
        ):
            await store.add(make_delivery(clock, "refused"))
        assert await store.add(make_delivery(clock, "later")) == "stored"
        assert await store.get("refused") is None


async def test_sqlite_group_commits_outcomes_and_fences_a_second_outcome_of_one_task(
    tmp_path: Path, anyio_backend: str
) -> None:
    clock = FakeClock()
    async with SQLiteStore(tmp_path / "inbox.db", clock=clock) as store:
        await asyncio.gather(*(store.add(make_delivery(clock, f"d{i}")) for i in range(40)))
        tasks = await store.claim("w", 40, 30)
        before = store.commits
        results = await asyncio.gather(
            *(store.complete(task) for task in tasks[:39]),
            store.fail(tasks[0], "late", None),  # a second outcome of one task: fenced
            store.fail(tasks[39], "boom", None),
        )
        assert results == [True] * 39 + [False, True]
        assert store.commits - before < 5
        stats = await store.stats()
        assert stats["deliveries"]["done"] == 39 and stats["deliveries"]["dead"] == 1
        dead = await store.get(tasks[39].delivery_id)
        assert dead["attempts"][-1]["error"] == "boom"


async def test_sqlite_close_finishes_queued_writes_and_data_survives(
    tmp_path: Path, anyio_backend: str
) -> None:
    clock = FakeClock()
    store = SQLiteStore(tmp_path / "inbox.db", clock=clock)
    await store.open()
    adds = [asyncio.ensure_future(store.add(make_delivery(clock, f"d{i}"))) for i in range(50)]
    await asyncio.sleep(0)  # every add has queued its operation
    await store.close()
    assert [a.result() for a in adds] == ["stored"] * 50
    with pytest.raises(RuntimeError, match="not open"):
        await store.add(make_delivery(clock, "late"))
    async with SQLiteStore(tmp_path / "inbox.db", clock=clock) as again:
        assert (await again.stats())["deliveries"]["pending"] == 50


def writer_process(store: SQLiteStore) -> Any:
    writer = store._writer
    assert writer is not None and writer._process is not None
    return writer._process


async def test_sqlite_writes_run_in_a_writer_process_that_ends_with_the_store(
    tmp_path: Path, anyio_backend: str
) -> None:
    store = SQLiteStore(tmp_path / "inbox.db")
    await store.open()
    process = writer_process(store)
    assert process.poll() is None
    await store.close()
    assert process.poll() is not None  # closed, not left behind


async def test_sqlite_writer_process_survives_sigint_and_sigterm(
    tmp_path: Path, anyio_backend: str
) -> None:
    # A terminal's Ctrl-C or a supervisor's SIGTERM reach the whole process group; the
    # receiver still writes during its graceful shutdown.
    clock = FakeClock()
    async with SQLiteStore(tmp_path / "inbox.db", clock=clock) as store:
        process = writer_process(store)
        await store.wait(0)
        for sig in (signal.SIGINT, signal.SIGTERM):
            process.send_signal(sig)
        await asyncio.sleep(0.2)
        assert process.poll() is None
        assert await store.add(make_delivery(clock, "after-signals")) == "stored"


async def test_sqlite_a_killed_writer_process_fails_its_writes_and_is_restarted(
    tmp_path: Path, anyio_backend: str
) -> None:
    clock = FakeClock()
    async with SQLiteStore(tmp_path / "inbox.db", clock=clock) as store:
        assert await store.add(make_delivery(clock, "before")) == "stored"
        with another_writer(tmp_path / "inbox.db"):  # the writer waits for this lock...
            waiting = asyncio.ensure_future(store.add(make_delivery(clock, "lost")))
            await asyncio.sleep(0.2)
            process = writer_process(store)
            process.kill()  # ... and dies meanwhile
            with pytest.raises(RuntimeError, match="writer process exited before answering"):
                await asyncio.wait_for(waiting, 5)
        # The next write starts a new process; what was committed before is there.
        assert await store.add(make_delivery(clock, "after")) == "stored"
        assert writer_process(store).pid != process.pid
        assert (await store.get("before"))["status"] == "pending"
        assert await store.get("lost") is None


async def test_sqlite_a_write_cancelled_before_it_left_is_not_made(
    tmp_path: Path, anyio_backend: str
) -> None:
    # A request cancelled while its delivery waited to be sent was never acknowledged:
    # storing it anyway would make the provider's retry a duplicate.
    clock = FakeClock()
    async with SQLiteStore(tmp_path / "inbox.db", clock=clock) as store:
        gave_up = asyncio.ensure_future(store.add(make_delivery(clock, "gave-up")))
        await asyncio.sleep(0)  # its write is queued for the end of this loop turn
        gave_up.cancel()
        assert await store.add(make_delivery(clock, "later")) == "stored"
        assert gave_up.cancelled()
        assert await store.get("gave-up") is None


async def test_sqlite_answers_are_read_on_the_writing_loop_without_a_thread(
    tmp_path: Path, anyio_backend: str
) -> None:
    # A reader thread cost every answer frame a GIL hand-over and a cross-thread wake-up.
    clock = FakeClock()
    async with SQLiteStore(tmp_path / "inbox.db", clock=clock) as store:
        results = await asyncio.gather(
            *(store.add(make_delivery(clock, f"d{i}")) for i in range(50))
        )
        assert results == ["stored"] * 50
        assert "dispatcher-inbox-answers" not in {t.name for t in threading.enumerate()}


def test_sqlite_answers_reach_a_loop_while_the_reading_loop_is_blocked(tmp_path: Path) -> None:
    # The main loop reads the answers (it wrote first), then blocks on a thread whose own
    # loop writes: a thread must read that loop's answers, or both wait forever.
    store = SQLiteStore(tmp_path / "inbox.db")
    clock = FakeClock()
    outcome: list[str] = []

    def other_loop() -> None:
        outcome.append(asyncio.run(store.add(make_delivery(clock, "from-a-thread"))))

    async def main() -> None:
        await store.open()
        assert await store.add(make_delivery(clock, "first")) == "stored"
        thread = threading.Thread(target=other_loop, daemon=True)
        thread.start()
        thread.join(10)  # blocks this loop: it cannot read anything meanwhile
        assert outcome == ["stored"]
        await store.close()

    asyncio.run(main())


def test_sqlite_a_writer_process_that_died_between_loops_is_replaced(tmp_path: Path) -> None:
    # No loop ran to see it go: the next write finds the pipe closed and goes to a new
    # process instead of failing.
    store = SQLiteStore(tmp_path / "inbox.db")
    clock = FakeClock()
    asyncio.run(store.open())
    assert asyncio.run(store.add(make_delivery(clock, "before"))) == "stored"
    process = writer_process(store)
    process.kill()
    process.wait()
    assert asyncio.run(store.add(make_delivery(clock, "after"))) == "stored"
    assert writer_process(store).pid != process.pid
    assert asyncio.run(store.get("before"))["status"] == "pending"
    asyncio.run(store.close())


@pytest.mark.parametrize("sent", [False, True], ids=["unsent", "sent"])
def test_sqlite_close_from_another_loop_settles_writes_left_on_a_stopped_loop(
    tmp_path: Path, sent: bool
) -> None:
    # A loop stopped in the turn that queued a write (the write goes at the turn's end),
    # or after sending it (its answer is read on that loop). Closing the store from
    # another loop fails the unsent write at once and reads the sent one's answer,
    # instead of waiting out its timeout for either.
    store = SQLiteStore(tmp_path / "inbox.db")
    clock = FakeClock()
    first = asyncio.new_event_loop()
    try:
        first.run_until_complete(store.open())

        async def leave_a_write_behind() -> asyncio.Future[str]:
            return asyncio.ensure_future(store.add(make_delivery(clock, "left")))

        left = first.run_until_complete(leave_a_write_behind())  # queued, loop stopped
        if sent:
            first.run_until_complete(asyncio.sleep(0))  # the turn's end sent it
        started = time.monotonic()
        asyncio.run(store.close())
        assert time.monotonic() - started < 5
        if sent:
            assert first.run_until_complete(left) == "stored"
        else:
            with pytest.raises(RuntimeError, match="closed before this write was answered"):
                first.run_until_complete(left)
    finally:
        first.close()


def test_sqlite_writer_process_exits_when_the_receiver_is_killed(tmp_path: Path) -> None:
    # SIGKILL gives the receiver no chance to close the store: the writer process sees
    # its stdin close and exits, so it never holds the database for a restarted one.
    script = tmp_path / "receiver.py"
    script.write_text(
        "import asyncio, sys, time\n"
        "from dispatcher.inbox import SQLiteStore\n"
        "async def main():\n"
        f"    store = SQLiteStore({str(tmp_path / 'inbox.db')!r})\n"
        "    await store.open()\n"
        "    print(store._writer._process.pid, flush=True)\n"
        "    time.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    receiver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout is not None
        child = int(receiver.stdout.readline())
        receiver.kill()
        receiver.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(child):
            time.sleep(0.02)
        assert not _alive(child)
    finally:
        receiver.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by init) counts as gone.
    with contextlib.suppress(FileNotFoundError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    return True


async def test_sqlite_refuses_a_schema_newer_than_it_knows(
    tmp_path: Path, anyio_backend: str
) -> None:
    async with SQLiteStore(tmp_path / "inbox.db"):
        pass
    conn = sqlite3.connect(tmp_path / "inbox.db")
    conn.execute("INSERT INTO inbox_schema (version) VALUES (99)")
    conn.commit()
    conn.close()
    with pytest.raises(ValidationError, match="version 99, newer"):
        await SQLiteStore(tmp_path / "inbox.db").open()


async def test_postgres_migrates_safely_from_several_processes_at_once(
    postgres_url: str, anyio_backend: str
) -> None:
    from dispatcher.inbox.postgres import PostgresStore

    schema = f"test_{uuid.uuid4().hex[:12]}"
    stores = [PostgresStore(postgres_url, schema=schema) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        versions = await stores[0].pool.fetch(f'SELECT version FROM "{schema}".inbox_schema')
        assert [r["version"] for r in versions] == [1]
        await stores[1].migrate()
        assert await stores[2].add(make_delivery(FakeClock(), "d1")) == "stored"
    finally:
        await stores[0].drop_schema()
        for s in stores:
            await s.close()


async def test_postgres_polls_when_listen_is_unavailable(
    postgres_url: str, anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dispatcher.inbox.postgres import PostgresStore

    store = PostgresStore(postgres_url, schema=f"test_{uuid.uuid4().hex[:12]}", poll_interval=0.1)

    async def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OSError("no listening today")

    monkeypatch.setattr(store._asyncpg, "connect", refuse)
    async with store:
        try:
            started = time.monotonic()
            await store.wait(10)
            await store.wait(10)
            assert time.monotonic() - started < 2  # polled, did not sleep for 10 s
        finally:
            await store.drop_schema()


# -- PostgreSQL group commit ----------------------------------------------------------------------


@pytest.fixture
async def pg(postgres_url: str, anyio_backend: str, clock: FakeClock) -> AsyncIterator[Any]:
    from dispatcher.inbox.postgres import PostgresStore

    store = PostgresStore(postgres_url, schema=f"test_{uuid.uuid4().hex[:12]}", clock=clock)
    await store.open()
    try:
        yield store
    finally:
        await store.drop_schema()
        await store.close()


async def transactions_that_stored(pg: Any) -> int:
    """How many transactions wrote the deliveries (each row carries its writer's xid)."""
    return await pg.pool.fetchval(f"SELECT count(DISTINCT xmin::text) FROM {pg._s}.deliveries")


async def test_postgres_group_commits_concurrent_adds(pg: Any, clock: FakeClock) -> None:
    results = await asyncio.gather(*(pg.add(make_delivery(clock, f"d{i}")) for i in range(200)))
    assert results == ["stored"] * 200
    assert pg.commits == 1  # all queued before the flusher ran: one batch
    assert await transactions_that_stored(pg) == 1
    assert await pg.pending_count() == 200
    await pg.add(make_delivery(clock, "one"))
    await pg.add(make_delivery(clock, "two"))
    assert pg.commits == 3  # an idle writer commits a lone add at once
    assert await transactions_that_stored(pg) == 3


async def test_postgres_batches_are_capped(postgres_url: str, anyio_backend: str) -> None:
    from dispatcher.inbox.postgres import PostgresStore

    clock = FakeClock()
    store = PostgresStore(postgres_url, schema=f"test_{uuid.uuid4().hex[:12]}", batch_size=16)
    async with store:
        try:
            await asyncio.gather(*(store.add(make_delivery(clock, f"d{i}")) for i in range(100)))
            assert store.commits == 7  # 6 x 16 + 4
        finally:
            await store.drop_schema()


async def test_postgres_duplicates_inside_one_batch(pg: Any, clock: FakeClock) -> None:
    assert await pg.add(make_delivery(clock, "old", key="k0")) == "stored"
    keys = ["k1", "k2", "k1", None, "k2", "k0", None, "k1"]
    results = await asyncio.gather(
        *(pg.add(make_delivery(clock, f"d{i}", key=key)) for i, key in enumerate(keys))
    )
    assert pg.commits == 2
    assert results == [
        "stored",  # the first k1 submitted is the one stored
        "stored",
        "duplicate",
        "stored",
        "duplicate",
        "duplicate",  # k0 was stored by an earlier batch
        "stored",
        "duplicate",
    ]
    assert {r["id"] for r in await pg.list(limit=100)} == {"old", "d0", "d1", "d3", "d6"}
    assert await pg.pending_count() == 5  # no task for a duplicate


async def test_postgres_a_refused_row_fails_only_its_own_add(pg: Any, clock: FakeClock) -> None:
    import asyncpg

    await pg.add(make_delivery(clock, "taken"))
    adds = [pg.add(make_delivery(clock, f"d{i}")) for i in range(20)]
    adds.insert(5, pg.add(make_delivery(clock, "taken", handlers=("x", "y"))))  # a reused id
    nul = dataclasses.replace(make_delivery(clock, "nul"), query="a=\x00")  # text PG refuses
    adds.insert(12, pg.add(nul))
    lone = dataclasses.replace(make_delivery(clock, "lone"), query="a=\ud800")  # no UTF-8
    adds.insert(17, pg.add(lone))
    results = await asyncio.gather(*adds, return_exceptions=True)
    assert isinstance(results[5], asyncpg.exceptions.UniqueViolationError)
    # Text it cannot store: no retry can help, and the error says so.
    assert isinstance(results[12], UnstorableError)
    assert isinstance(results[12].__cause__, asyncpg.exceptions.DataError)
    assert isinstance(results[17], UnstorableError)
    assert isinstance(results[17].__cause__, asyncpg.exceptions._base.DataError)
    assert results[:5] + results[6:12] + results[13:17] + results[18:] == ["stored"] * 20
    assert pg.commits == 2  # the batch was redone row by row, still in one transaction
    assert [t["handler"] for t in (await pg.get("taken"))["tasks"]] == ["h1"]
    assert await pg.get("nul") is None and await pg.get("lone") is None
    assert await pg.pending_count() == 21


async def test_postgres_a_failed_batch_fails_all_its_callers_and_the_next_batch_works(
    pg: Any, clock: FakeClock
) -> None:
    import asyncpg

    await pg.add(make_delivery(clock, "before"))
    await pg.pool.execute(f"ALTER TABLE {pg._s}.tasks RENAME TO away")  # every insert fails now
    results = await asyncio.gather(
        *(pg.add(make_delivery(clock, f"lost{i}")) for i in range(20)), return_exceptions=True
    )
    assert all(isinstance(r, asyncpg.exceptions.UndefinedTableError) for r in results), results
    assert pg.commits == 1
    await pg.pool.execute(f"ALTER TABLE {pg._s}.away RENAME TO tasks")
    results = await asyncio.gather(*(pg.add(make_delivery(clock, f"d{i}")) for i in range(20)))
    assert results == ["stored"] * 20
    assert pg.commits == 2
    assert await pg.pending_count() == 21  # the failed batch left nothing behind
    assert await pg.get("lost0") is None


async def test_postgres_group_commits_outcomes(pg: Any, clock: FakeClock) -> None:
    await asyncio.gather(*(pg.add(make_delivery(clock, f"d{i}")) for i in range(40)))
    tasks = await pg.claim("w", 40, 30)
    before = pg.commits
    fail = pg.fail(tasks[0], "boom", T0 + 60)
    assert await asyncio.gather(fail, *(pg.complete(t) for t in tasks[1:])) == [True] * 40
    assert pg.commits - before == 1
    stats = await pg.stats()
    assert stats["tasks"] == {"pending": 1, "leased": 0, "done": 39, "dead": 0}
    assert stats["deliveries"] == {"pending": 1, "done": 39, "dead": 0}
    assert (await pg.get("d0"))["attempts"][0]["error"] == "boom"


async def test_postgres_two_outcomes_of_one_task_never_share_a_batch(
    pg: Any, clock: FakeClock
) -> None:
    await pg.add(make_delivery(clock, "d1"))
    (task,) = await pg.claim("w", 1, 30)
    before = pg.commits
    assert await asyncio.gather(pg.complete(task), pg.fail(task, "late", None)) == [True, False]
    assert pg.commits - before == 2  # the repeat waited for the next batch: it is fenced
    assert (await pg.get("d1"))["status"] == "done"


async def test_postgres_outcomes_of_sibling_tasks_from_two_workers_leave_the_right_status(
    pg: Any, clock: FakeClock, postgres_url: str
) -> None:
    import asyncpg

    from dispatcher.inbox.postgres_sql import FINISH_BATCH

    await pg.add(make_delivery(clock, "d1", handlers=("a", "b")))
    a, b = await pg.claim("w", 2, 30)
    other = await asyncpg.connect(postgres_url)  # another worker process, finishing a
    try:
        outcome = other.transaction()
        await outcome.start()
        done = [int(a.task_id), a.lease_token, "done", None, None, a.series, a.attempt, T0]
        (row,) = await other.fetch(
            pg._sql(FINISH_BATCH), orjson.dumps([done]).decode(), ["d1"], pg.channel, True
        )
        assert row["finished"] == [a.task_id]
        # a batch of done outcomes commits without waiting for the WAL flush
        assert await other.fetchval("SHOW synchronous_commit") == "off"
        finishing = asyncio.ensure_future(pg.complete(b))
        await asyncio.sleep(0.3)
        assert not finishing.done()  # it waits for the other worker to commit ...
        await outcome.commit()
        assert await finishing  # ... then sees a done: b was the last task
    finally:
        await other.close()
    assert (await pg.get("d1"))["status"] == "done"


async def test_postgres_outcome_batches_wait_for_the_wal_flush_unless_all_may_rerun(
    pg: Any, clock: FakeClock, postgres_url: str
) -> None:
    import asyncpg

    from dispatcher.inbox.postgres_sql import FINISH_BATCH
    from dispatcher.inbox.postgres_writer import Outcome, OutcomeWriter

    conn = await asyncpg.connect(postgres_url)
    try:
        default = await conn.fetchval("SHOW synchronous_commit")
        # done and "retry later" may be lost to a server crash (the task runs again); a
        # death may not: on_error hears of it once
        for n, (statuses, expected) in enumerate(
            ((["done", "pending"], "off"), (["done", "dead"], default))
        ):
            await pg.add(make_delivery(clock, f"d{n}", handlers=("a", "b")))
            tasks = await pg.claim("w", 2, 30)
            later = {"pending": T0 + 3600}  # a retry, not due during the test
            batch = [
                Outcome(t, s, "e", later.get(s), T0) for t, s in zip(tasks, statuses, strict=True)
            ]
            record = OutcomeWriter(conn, pg._sql(FINISH_BATCH), pg.channel)  # type: ignore[arg-type]
            async with conn.transaction():  # to read the setting the batch's commit uses
                assert await record(batch) == [True, True]
                assert await conn.fetchval("SHOW synchronous_commit") == expected
            assert [t["status"] for t in (await pg.get(f"d{n}"))["tasks"]] == statuses
    finally:
        await conn.close()


async def test_postgres_hot_statements_use_indexes_even_when_planned_on_small_tables(
    pg: Any, clock: FakeClock
) -> None:
    # asyncpg prepares a statement once per connection, and PostgreSQL soon settles on one
    # generic plan; made while the tables are small, a sequential scan would stay for good.
    from dispatcher.inbox.postgres_sql import ADD_BATCH, CLAIM, FINISH_BATCH

    await asyncio.gather(*(pg.add(make_delivery(clock, f"d{i}")) for i in range(30)))
    statements = {
        "a": (ADD_BATCH, """'[["x","w","e","k",[],"q",1,"pending",0]]','\\x',"""
                         """'[["x","h",1,"t","w",31]]','c'"""),
        "c": (CLAIM, "1.0, 4, 30.0, 'w', 'e'"),
        "f": (FINISH_BATCH, """'[[1,"t","done",null,null,0,1,1]]','{d0}','c',false"""),
    }  # fmt: skip
    async with pg.pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        for name, (sql, args) in statements.items():
            await conn.execute(f"PREPARE generic_{name} AS {pg._sql(sql)}")
            plan = "\n".join(
                r[0] for r in await conn.fetch(f"EXPLAIN EXECUTE generic_{name}({args})")
            )
            assert "Seq Scan" not in plan, plan
            await conn.execute(f"DEALLOCATE generic_{name}")


def test_postgres_store_belongs_to_the_loop_that_opened_it(postgres_url: str) -> None:
    from dispatcher.inbox.postgres import PostgresStore

    clock = FakeClock(time.time())
    store = PostgresStore(postgres_url, schema=f"test_{uuid.uuid4().hex[:12]}")
    first = asyncio.new_event_loop()
    try:
        first.run_until_complete(store.open())
        assert first.run_until_complete(store.add(make_delivery(clock, "d1"))) == "stored"
        with pytest.raises(RuntimeError, match="another event loop"):
            asyncio.run(store.add(make_delivery(clock, "d2")))
        first.run_until_complete(store.close())
    finally:
        first.close()

    async def again() -> None:  # reopened, it works on the new loop
        async with store:
            try:
                assert await store.add(make_delivery(clock, "d3")) == "stored"
                assert await store.pending_count() == 2
            finally:
                await store.drop_schema()

    asyncio.run(again())


# -- open_inbox -----------------------------------------------------------------------------------


def test_open_inbox_picks_the_store_by_url(tmp_path: Path) -> None:
    assert isinstance(open_inbox("memory://"), MemoryStore)
    relative = open_inbox("sqlite:///data/inbox.db")
    assert isinstance(relative, SQLiteStore) and relative.path == Path("data/inbox.db")
    absolute = open_inbox(f"sqlite:///{tmp_path}/inbox.db", synchronous="NORMAL")
    assert absolute.path == tmp_path / "inbox.db" and absolute.path.is_absolute()
    assert absolute.synchronous == "NORMAL"
    assert sqlite_path("sqlite:////var/lib/x.db") == Path("/var/lib/x.db")
    pg = open_inbox("postgres://u:pw@db:5432/app?schema=hooks&sslmode=disable")
    assert pg.schema == "hooks" and pg.dsn == "postgres://u:pw@db:5432/app?sslmode=disable"
    assert open_inbox("postgresql://u@db/app").schema == "dispatcher"


def test_a_sqlite_url_sets_the_store_options_its_query_names(tmp_path: Path) -> None:
    store = open_inbox("sqlite:///data/inbox.db?synchronous=normal&busy_timeout=2.5")
    assert isinstance(store, SQLiteStore)
    assert store.path == Path("data/inbox.db")  # the query is not part of the file's name
    assert store.synchronous == "NORMAL" and store._busy_ms == 2500
    assert sqlite_path("sqlite:////var/lib/x.db?synchronous=FULL") == Path("/var/lib/x.db")
    # an option given in code wins over the URL's
    assert open_inbox("sqlite:///x.db?synchronous=NORMAL", synchronous="FULL").synchronous == "FULL"
    assert open_inbox("sqlite:///x.db").synchronous == "FULL"  # and FULL stays the default


@pytest.mark.parametrize(
    ("query", "field", "says"),
    [
        ("mode=ro", "inbox", "unknown option 'mode'"),
        ("synchronous=sometimes", "synchronous", "'FULL' (durable) or 'NORMAL'"),
        ("busy_timeout=soon", "busy_timeout", "give seconds"),
        ("busy_timeout=-1", "busy_timeout", "give seconds"),
        ("busy_timeout=nan", "busy_timeout", "give seconds"),
        ("busy_timeout=inf", "busy_timeout", "give seconds"),
    ],
)
def test_a_sqlite_url_with_a_bad_option_says_what_it_takes(
    tmp_path: Path, query: str, field: str, says: str
) -> None:
    with pytest.raises(ValidationError) as info:
        open_inbox(f"sqlite:///{tmp_path}/inbox.db?{query}")
    assert info.value.field == field and says in str(info.value)
    assert not list(tmp_path.iterdir())  # no file named after the query string


async def test_the_urls_synchronous_reaches_the_connection(
    tmp_path: Path, anyio_backend: str
) -> None:
    async with open_inbox(f"sqlite:///{tmp_path}/inbox.db?synchronous=NORMAL") as store:
        assert await store.pragma("synchronous") == 1  # NORMAL
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".db"] == ["inbox.db"]


@pytest.mark.parametrize(
    "url", ["mysql://u:secret@db/x", "sqlite:///", "sqlite:///?synchronous=FULL", "inbox.db", ""]
)
def test_open_inbox_rejects_other_urls_listing_the_accepted_forms(url: str) -> None:
    with pytest.raises(ValidationError) as info:
        open_inbox(url)
    assert info.value.field == "inbox"
    assert "sqlite:///relative/path.db" in str(info.value)
    assert "secret" not in str(info.value)


def test_a_missing_asyncpg_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # import asyncpg now raises ImportError
    with pytest.raises(ValidationError, match=r"pip install 'webhook-dispatcher\[postgres\]'"):
        open_inbox("postgresql://u@db/app")


async def test_sqlite_creates_the_file_and_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, anyio_backend: str
) -> None:
    monkeypatch.chdir(tmp_path)
    async with open_inbox("sqlite:///nested/dir/inbox.db"):
        pass
    assert (tmp_path / "nested" / "dir" / "inbox.db").is_file()
