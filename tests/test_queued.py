"""Queued mode through the receiver: 202 after the store, workers, retries, dead letters, replay."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from dispatcher import Dispatcher, Event, Retry, testing
from dispatcher.inbox import MemoryStore, open_inbox

pytestmark = pytest.mark.anyio
FAST = Retry(max_attempts=3, base=0.001, max_delay=0.005)


@pytest.fixture(params=["sqlite", "postgres"])
async def inbox_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/inbox.db"
        return
    base = request.getfixturevalue("postgres_url")
    schema = f"t_{uuid.uuid4().hex[:10]}"
    yield f"{base}?schema={schema}"
    store = open_inbox(f"{base}?schema={schema}")
    await store.open()
    await store.drop_schema()  # type: ignore[attr-defined]
    await store.close()


def make(inbox: Any, **options: Any) -> Dispatcher:
    hooks = Dispatcher(inbox=inbox, retry=FAST, **options)
    hooks.webhooks.create(tag="w", name="W", description="d", idempotency_key="$Event{id}")
    for slug in ("a", "b"):
        hooks.webhooks.events.create(
            name=slug, tag=f"w:{slug}", description="d", selector="$Event{type}",
            sample={"type": slug, "id": "1"},
        )  # fmt: skip
    return hooks


async def test_deliveries_are_stored_then_answered_202_and_run_by_workers(inbox_url: str) -> None:
    hooks = make(inbox_url)
    seen: list[tuple[str, int]] = []
    hooks.on("w:a", lambda e: seen.append((e.payload["id"], e.attempt)))
    async with testing.client(hooks) as client:
        response = await client.post("/w", json={"type": "a", "id": "x1"}, params={"q": "1"})
        assert response.status_code == 202
        body = response.json()
        assert body["status"] == "queued" and body["event"] == "w:a" and body["webhook"] == "w"
        await client.drain()
        assert seen == [("x1", 1)]
        stored = await hooks.inbox.store.get(body["id"])  # type: ignore[union-attr]
        assert stored["status"] == "done" and stored["query"] == "q=1"
        assert (await client.get("/_health")).json()["mode"] == "queued"


async def test_dispatch_without_http_stores_and_reports_queued() -> None:
    hooks = make("memory://", concurrency=0)
    hooks.on("w:a", lambda e: None)
    async with testing.client(hooks):
        result = await hooks.dispatch("w", {"type": "a", "id": "d1"})
        assert (result.status, result.http_status) == ("queued", 202)
        assert (result.webhook, result.event) == ("w", "w:a")
        stored = await hooks.inbox.store.get(result.id)  # type: ignore[union-attr, arg-type]
        assert stored["status"] == "pending"
        again = await hooks.dispatch("w", {"type": "a", "id": "d1"})
        assert (again.status, again.http_status) == ("duplicate", 200)


async def test_a_stored_key_is_seen_whatever_its_outcome(inbox_url: str) -> None:
    hooks = make(inbox_url)
    hooks.on("w:a", lambda e: 1 / 0)
    async with testing.client(hooks) as client:
        assert (await client.post("/w", json={"type": "a", "id": "k"})).status_code == 202
        await client.drain()
        response = await client.post("/w", json={"type": "a", "id": "k"})
        assert (response.status_code, response.json()["status"]) == (200, "duplicate")


async def test_concurrent_copies_store_once(inbox_url: str) -> None:
    hooks = make(inbox_url)
    runs: list[str] = []
    hooks.on("w:a", lambda e: runs.append(e.id))
    async with testing.client(hooks) as client:
        responses = await asyncio.gather(
            *(client.post("/w", json={"type": "a", "id": "same"}) for _ in range(50))
        )
        await client.drain()
    assert sorted(r.status_code for r in responses) == [200] * 49 + [202]
    assert len(runs) == 1


async def test_retries_until_success_with_attempts_visible(inbox_url: str) -> None:
    hooks = make(inbox_url)
    attempts: list[int] = []

    @hooks.on("w:a")
    async def flaky(event: Event) -> None:
        attempts.append(event.attempt)
        if event.attempt < 3:
            raise RuntimeError(f"attempt {event.attempt} fails")

    errors: list[Any] = []
    hooks.on_error(lambda event, error: errors.append(error))
    async with testing.client(hooks) as client:
        delivery = (await client.post("/w", json={"type": "a", "id": "r"})).json()["id"]
        await client.drain()
        stored = await hooks.inbox.store.get(delivery)  # type: ignore[union-attr]
    assert attempts == [1, 2, 3]
    assert stored["status"] == "done"
    assert [a["error"] is None for a in stored["attempts"]] == [False, False, True]
    assert "attempt 1 fails" in stored["attempts"][0]["error"]
    assert errors == []  # queued mode: on_error hears only of dead tasks


async def test_dead_after_max_attempts_on_error_once_and_replay_runs_it_again(
    inbox_url: str,
) -> None:
    hooks = make(inbox_url)
    fail = [True]
    calls: list[int] = []

    @hooks.on("w:a")
    async def broken(event: Event) -> None:
        calls.append(event.attempt)
        if fail[0]:
            raise ValueError("still broken")

    dead: list[tuple[str, int]] = []
    hooks.on_error(lambda event, error: dead.append((str(error), event.attempt)))
    async with testing.client(hooks) as client:
        delivery = (await client.post("/w", json={"type": "a", "id": "d"})).json()["id"]
        await client.drain()
        store = hooks.inbox.store  # type: ignore[union-attr]
        stored = await store.get(delivery)
        assert stored["status"] == "dead"
        assert len(stored["attempts"]) == 3
        assert all(a["error"].startswith("ValueError: still broken") for a in stored["attempts"])
        assert dead == [("still broken", 3)]
        fail[0] = False
        assert await store.replay([delivery]) == 1
        await client.drain()
        stored = await store.get(delivery)
    assert stored["status"] == "done"
    assert calls == [1, 2, 3, 1]
    assert stored["attempts"][-1]["series"] == 1


async def test_a_failing_handler_never_reruns_one_that_succeeded(inbox_url: str) -> None:
    hooks = make(inbox_url)
    ok_runs: list[int] = []
    hooks.on("w:a", lambda e: ok_runs.append(e.attempt))
    hooks.on("w:*", lambda e: 1 / 0, retry=Retry(max_attempts=4, base=0.001, max_delay=0.002))
    async with testing.client(hooks) as client:
        delivery = (await client.post("/w", json={"type": "a", "id": "two"})).json()["id"]
        await client.drain()
        stored = await hooks.inbox.store.get(delivery)  # type: ignore[union-attr]
    assert ok_runs == [1]
    assert sorted(t["attempt"] for t in stored["tasks"]) == [1, 4]  # per-handler retry policy


async def test_unmatched_and_handlerless_deliveries_are_stored_done() -> None:
    hooks = make(MemoryStore())
    async with testing.client(hooks) as client:
        response = await client.post("/w", json={"type": "zzz", "id": "u"})
        assert response.status_code == 202 and response.json()["event"] is None
        await client.drain()
        stored = await hooks.inbox.store.get(response.json()["id"])  # type: ignore[union-attr]
        assert stored["status"] == "done" and stored["tasks"] == []


class BrokenStore(MemoryStore):
    async def add(self, delivery: Any) -> str:
        raise OSError("disk full")

    async def add_and_claim(self, delivery: Any, *args: Any) -> Any:
        raise OSError("disk full")


async def test_a_store_that_cannot_write_gets_503_and_nothing_runs() -> None:
    hooks = make(BrokenStore())
    ran: list[Event] = []
    hooks.on("w:a", ran.append)
    async with testing.client(hooks) as client:
        response = await client.post("/w", json={"type": "a", "id": "z"})
        assert (response.status_code, response.json()["error"]) == (503, "inbox_unavailable")
        assert "disk full" not in response.text
    assert ran == []


async def test_a_delivery_the_inbox_cannot_store_gets_422_not_503(postgres_url: str) -> None:
    # PostgreSQL text cannot hold a NUL: a 503 would have the provider retry forever.
    url = f"{postgres_url}?schema=t_{uuid.uuid4().hex[:10]}"
    hooks = make(url)
    ran: list[Event] = []
    hooks.on("w:a", ran.append)
    try:
        async with testing.client(hooks) as client:
            response = await client.post("/w", json={"type": "a", "id": "bad\u0000key"})
            assert response.status_code == 422
            assert response.json()["error"] == "unstorable_delivery"
            assert "sending it again will not help" in response.json()["detail"]
            assert "0x00" not in response.text  # the database's own words stay in the log
            ok = await client.post("/w", json={"type": "a", "id": "good"})
            assert ok.status_code == 202  # the next delivery is stored as usual
            await client.drain()
            stats = await hooks.inbox.store.stats()  # type: ignore[union-attr]
            assert stats["deliveries"]["done"] == 1 and stats["deliveries"]["pending"] == 0
        assert [e.payload["id"] for e in ran] == ["good"]
    finally:
        store = open_inbox(url)
        await store.open()
        await store.drop_schema()  # type: ignore[attr-defined]
        await store.close()


async def test_a_task_whose_handler_is_gone_is_reported_and_dead_lettered() -> None:
    store = MemoryStore()
    first = make(store, concurrency=0)  # receive only
    first.on("w:a", lambda e: None)
    async with testing.client(first) as client:
        await client.post("/w", json={"type": "a", "id": "gone"})
    second = make(store)  # the next deploy no longer has that handler
    dead: list[str] = []
    second.on_error(lambda event, error: dead.append(str(error)))
    async with testing.client(second) as client:
        await client.drain()
    assert len(dead) == 1 and "no handler" in dead[0]


def test_bad_inbox_options_say_what_to_fix() -> None:
    with pytest.raises(Exception, match=r"sqlite:///relative/path\.db"):
        Dispatcher(inbox="mysql://nope")
    with pytest.raises(Exception, match="lease"):
        Dispatcher(inbox="memory://", lease=0)
    with pytest.raises(Exception, match="retry"):
        Dispatcher(retry=3)  # type: ignore[arg-type]


async def test_first_runs_reuse_the_stored_event_and_retries_read_the_store(
    inbox_url: str,
) -> None:
    # This process's workers take a delivery's first run from the Event the pipeline
    # built (no second parse); a retry is rebuilt from the store, so what the first run
    # did to its payload does not carry over.
    hooks = make(inbox_url)
    seen: list[tuple[int, dict[str, Any], str, str | None, str]] = []
    rebuilt: list[int] = []

    @hooks.on("w:a")
    async def mutating(event: Event) -> None:
        seen.append(
            (event.attempt, dict(event.payload), event.headers["x-trace"], event.name,
             str(event.query))
        )  # fmt: skip
        event.payload["touched"] = True
        if event.attempt == 1:
            raise RuntimeError("first run fails")

    @hooks.on("w:*")
    async def second(event: Event) -> None:
        assert event.attempt == 1

    async with testing.client(hooks) as client:
        queued = hooks.inbox
        assert queued is not None
        rebuild = queued.rebuilt_event
        queued.rebuilt_event = lambda task: rebuilt.append(task.attempt) or rebuild(task)  # type: ignore[method-assign]
        response = await client.post(
            "/w", json={"type": "a", "id": "f1"}, params={"q": "1"}, headers={"X-Trace": "t1"}
        )
        assert response.status_code == 202
        await client.drain()
        assert queued._fresh == {}  # both first runs took the pipeline's event
    assert rebuilt == [2]  # only the retry read the store
    original = {"type": "a", "id": "f1"}
    assert seen == [(1, original, "t1", "a", "q=1"), (2, original, "t1", "a", "q=1")]


def test_a_rebuilt_event_reads_its_stored_query() -> None:
    from dispatcher.inbox.base import ClaimedTask
    from dispatcher.queued import query_of

    def task(query: str) -> ClaimedTask:
        return ClaimedTask(1, "d1", "h", 2, 0, "t", "w", "w:a", b"{}", (), query, 0.0)

    empty = query_of(task(""))
    assert len(empty) == 0 and str(empty) == "" and empty.get("q") is None
    repeated = query_of(task("q=1&q=2&x=%20y"))
    assert repeated.getlist("q") == ["1", "2"] and repeated["x"] == " y"


async def test_events_kept_for_first_runs_are_bounded(tmp_path: Path, monkeypatch: Any) -> None:
    # Deliveries whose tasks another process runs must not pile up here.
    from dispatcher import queued

    monkeypatch.setattr(queued, "FRESH_EVENTS", 3)
    hooks = make(f"sqlite:///{tmp_path}/inbox.db", concurrency=1)
    ran: list[str] = []
    hooks.on("w:a", lambda e: ran.append(e.payload["id"]))
    async with testing.client(hooks) as client:
        inbox = hooks.inbox
        assert inbox is not None and inbox.worker is not None
        await inbox.worker.stop()  # as if workers elsewhere took every task
        ids = []
        for n in range(6):
            answer = await client.post("/w", json={"type": "a", "id": f"b{n}"})
            assert answer.status_code == 202
            ids.append(answer.json()["id"])
        assert list(inbox._fresh) == ids[-3:]  # the oldest went first
        await inbox.worker.start()  # the evicted ones are rebuilt from the store
        await client.drain()
    assert sorted(ran) == [f"b{n}" for n in range(6)]


async def test_tasks_are_claimed_as_stored_when_the_workers_have_room(inbox_url: str) -> None:
    # No claim round trip for a fresh delivery: the receiver's own workers take the tasks
    # they have room for in the transaction that stores it, and start them once it
    # committed. One slot here, so of a delivery's two tasks one is claimed as stored
    # (the first, w:a's) and the other waits for the worker's own claim.
    hooks = make(inbox_url, concurrency=1)
    ran: list[tuple[str, str, int]] = []
    hooks.on("w:a", lambda e: ran.append(("a", e.payload["id"], e.attempt)))
    hooks.on("w:*", lambda e: ran.append(("*", e.payload["id"], e.attempt)))
    async with testing.client(hooks) as client:
        queued = hooks.inbox
        assert queued is not None and queued.worker is not None
        claimed: list[str] = []
        store = queued.store
        claim = store.claim

        async def recording_claim(*args: Any) -> Any:
            tasks = await claim(*args)
            claimed.extend(task.handler for task in tasks)
            return tasks

        store.claim = recording_claim  # type: ignore[method-assign]
        ids = []
        for n in range(3):
            response = await client.post("/w", json={"type": "a", "id": f"c{n}"})
            assert response.status_code == 202
            ids.append(response.json()["id"])
            await client.drain()
            with anyio.fail_after(5):  # the loop's last claim, of one task for one slot,
                while queued.worker._backlog:  # counts as full until the next comes back empty
                    await asyncio.sleep(0.001)
        for delivery_id in ids:
            stored = await store.get(delivery_id)
            assert stored["status"] == "done"
            assert [a["worker"] for a in stored["attempts"]] == [queued.worker.name] * 2
    assert sorted(ran) == sorted((kind, f"c{n}", 1) for n in range(3) for kind in "a*")
    star = hooks.router.resolve("w", "w:a")[1].key
    assert claimed == [star] * 3


async def test_a_delivery_posted_as_the_workers_stop_still_runs(inbox_url: str) -> None:
    hooks = make(inbox_url)
    ran: list[str] = []
    hooks.on("w:a", lambda e: ran.append(e.payload["id"]))
    async with testing.client(hooks) as client:
        queued = hooks.inbox
        assert queued is not None and queued.worker is not None
        worker = queued.worker
        posting = asyncio.ensure_future(client.post("/w", json={"type": "a", "id": "s1"}))
        with anyio.fail_after(5):
            while not worker._reserved:  # its slot is held while the delivery is stored
                await asyncio.sleep(0)
        await worker.stop(timeout=5)  # waits for it to be stored and run
        assert (await posting).status_code == 202
        assert ran == ["s1"]
        await worker.start()
