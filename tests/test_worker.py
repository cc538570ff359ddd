"""The worker loop: retries, dead-lettering, lease renewal, stopping, surviving store errors."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from dispatcher.errors import ValidationError
from dispatcher.inbox import ClaimedTask, InboxStore, MemoryStore, NewDelivery, SQLiteStore
from dispatcher.retry import Retry
from dispatcher.worker import Worker, describe

pytestmark = pytest.mark.anyio

FAST = Retry(max_attempts=3, base=0.001, max_delay=0.001)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def delivery(handlers: tuple[str, ...] = ("h",), id: str | None = None) -> NewDelivery:
    return NewDelivery(
        id=id or uuid.uuid4().hex,
        webhook="hook",
        event="ev",
        idempotency_key=None,
        body=b"{}",
        headers=(),
        query="",
        received_at=time.time(),
        handlers=handlers,
    )


async def drain(store: InboxStore, timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not await store.idle():
            await asyncio.sleep(0.005)


async def run_until_idle(worker: Worker, store: InboxStore) -> None:
    """Start ``worker``, wait until the inbox is idle, stop it."""
    await worker.start()
    try:
        await drain(store)
    finally:
        await worker.stop()


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[InboxStore]:
    if request.param == "memory":
        store: Any = MemoryStore()
    elif request.param == "sqlite":
        store = SQLiteStore(tmp_path / "w.db")
    else:
        from dispatcher.inbox.postgres import PostgresStore

        url = request.getfixturevalue("postgres_url")
        store = PostgresStore(url, schema=f"test_{uuid.uuid4().hex[:12]}")
    async with store:
        try:
            yield store
        finally:
            if request.param == "postgres":
                await store.drop_schema()


class Flaky:
    """A handler that fails its first ``failures`` calls."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[ClaimedTask] = []

    async def __call__(self, task: ClaimedTask) -> None:
        self.calls.append(task)
        if len(self.calls) <= self.failures:
            raise RuntimeError(f"flaky {len(self.calls)}")


async def test_a_handler_failing_twice_then_succeeding_ends_done(store: InboxStore) -> None:
    handler = Flaky(2)
    worker = Worker(store, handler, retry_for=lambda task: FAST, poll_interval=0.05)
    await store.add(delivery(id="d1"))
    await run_until_idle(worker, store)
    assert [t.attempt for t in handler.calls] == [1, 2, 3]
    got = await store.get("d1")
    assert got is not None and got["status"] == "done"
    errors = [a["error"] for a in got["attempts"]]
    assert len(errors) == 3
    assert errors[0].startswith("RuntimeError: flaky 1\n")
    assert errors[1].startswith("RuntimeError: flaky 2\n")
    assert "in __call__" in errors[0]  # the traceback's last lines come along
    assert errors[2] is None


async def test_an_always_failing_handler_is_dead_after_max_attempts(store: InboxStore) -> None:
    handler = Flaky(100)
    dead: list[tuple[ClaimedTask, BaseException]] = []

    async def on_dead(task: ClaimedTask, exc: BaseException) -> None:
        dead.append((task, exc))

    worker = Worker(store, handler, retry_for=lambda t: FAST, on_dead=on_dead, poll_interval=0.05)
    await store.add(delivery(id="d1"))
    await worker.start()
    try:
        await drain(store)
        await asyncio.sleep(0.02)  # a second on_dead would have happened by now
    finally:
        await worker.stop()
    assert len(handler.calls) == 3
    assert len(dead) == 1
    assert dead[0][0].attempt == 3 and str(dead[0][1]) == "flaky 3"
    got = await store.get("d1")
    assert got is not None and got["status"] == "dead"
    assert got["last_error"].startswith("RuntimeError: flaky 3")


async def test_an_error_message_with_a_nul_or_a_lone_surrogate_is_recorded(
    store: InboxStore,
) -> None:
    # PostgreSQL text cannot hold either: the outcome must still be stored, or the task
    # would stay leased and run again at the end of every lease.
    async def nul(task: ClaimedTask) -> None:
        raise ValueError("bad byte \x00 here, bad text \ud800 there")

    worker = Worker(store, nul, retry_for=lambda t: Retry(max_attempts=1), poll_interval=0.05)
    await store.add(delivery(id="d1"))
    await run_until_idle(worker, store)
    got = await store.get("d1")
    assert got is not None and got["status"] == "dead"
    assert got["last_error"].startswith("ValueError: bad byte \\x00 here, bad text \\ud800 there\n")


async def test_retries_wait_for_the_backoff_delay(anyio_backend: str) -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    handler = Flaky(1)
    retry = Retry(max_attempts=3, base=10.0, max_delay=10.0)

    class Top:
        def uniform(self, a: float, b: float) -> float:
            return b

    worker = Worker(store, handler, retry_for=lambda t: retry, rng=Top())  # type: ignore[arg-type]
    await store.add(delivery())
    assert await worker.run_once() == 1
    assert await store.next_due() == clock.now + 10.0
    clock.advance(9.9)
    assert await worker.run_once() == 0
    clock.advance(0.1)
    assert await worker.run_once() == 1
    assert await store.idle()


async def test_a_slow_handler_keeps_its_lease_so_no_other_worker_runs_it(
    store: InboxStore,
) -> None:
    runs: list[str] = []

    async def slow(task: ClaimedTask) -> None:
        runs.append(task.lease_token)
        await asyncio.sleep(0.8)  # well past the lease: only renewals keep it

    workers = [
        Worker(store, slow, retry_for=lambda t: FAST, lease=0.3, poll_interval=0.02, name=n)
        for n in ("one", "two")
    ]
    for worker in workers:
        await worker.start()
    await store.add(delivery(id="d1"))
    try:
        await drain(store)
    finally:
        for worker in workers:
            await worker.stop()
    assert len(runs) == 1
    got = await store.get("d1")
    assert got is not None and got["status"] == "done" and len(got["attempts"]) == 1


async def test_stop_waits_for_a_running_handler(store: InboxStore) -> None:
    started = anyio.Event()
    finished: list[bool] = []

    async def handler(task: ClaimedTask) -> None:
        started.set()
        await asyncio.sleep(0.1)
        finished.append(True)

    worker = Worker(store, handler, retry_for=lambda t: FAST, poll_interval=0.05)
    await store.add(delivery(id="d1"))
    await worker.start()
    with anyio.fail_after(3):
        await started.wait()
    await worker.stop(timeout=5)
    assert finished == [True]
    assert not worker.running
    got = await store.get("d1")
    assert got is not None and got["status"] == "done"


async def test_stop_cancels_a_handler_past_the_timeout_and_its_lease_lapses(
    anyio_backend: str,
) -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    started = anyio.Event()
    cancelled: list[bool] = []

    async def stuck(task: ClaimedTask) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    worker = Worker(store, stuck, retry_for=lambda t: FAST, lease=30, poll_interval=0.05)
    await store.add(delivery(id="d1"))
    await worker.start()
    with anyio.fail_after(3):
        await started.wait()
    await worker.stop(timeout=0.05)
    assert cancelled == [True]
    assert (await store.get("d1"))["tasks"][0]["status"] == "leased"  # type: ignore[index]
    assert await store.claim("other", 1, 30) == []
    clock.advance(31)
    (again,) = await store.claim("other", 1, 30)
    assert again.attempt == 2


async def test_stop_is_prompt_when_idle(store: InboxStore) -> None:
    worker = Worker(store, Flaky(0), retry_for=lambda t: FAST, poll_interval=30)
    await worker.start()
    await asyncio.sleep(0.02)
    with anyio.fail_after(1):
        await worker.stop()


async def test_new_work_wakes_an_idle_worker_before_the_poll_interval(store: InboxStore) -> None:
    handler = Flaky(0)
    worker = Worker(store, handler, retry_for=lambda t: FAST, poll_interval=30)
    await worker.start()
    try:
        await asyncio.sleep(0.05)  # the worker is idle now, in store.wait(30)
        await store.add(delivery())
        await drain(store, timeout=2)
    finally:
        await worker.stop()
    assert len(handler.calls) == 1


async def test_a_task_whose_leases_lapsed_too_often_is_dead_without_running(
    anyio_backend: str,
) -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    await store.add(delivery(id="d1"))
    for _ in range(3):  # three runs that died with their leases
        await store.claim("crashed", 1, 10)
        clock.advance(11)
    handler = Flaky(0)
    dead: list[BaseException] = []

    async def on_dead(task: ClaimedTask, exc: BaseException) -> None:
        dead.append(exc)

    worker = Worker(store, handler, retry_for=lambda t: FAST, on_dead=on_dead)
    assert await worker.run_once() == 1
    assert handler.calls == []
    assert len(dead) == 1 and isinstance(dead[0], RuntimeError)
    got = await store.get("d1")
    assert got is not None and got["status"] == "dead"
    assert "lease lapsed" in got["last_error"] and "worker died?" in got["last_error"]


async def test_on_dead_is_not_called_when_the_task_was_taken_over(anyio_backend: str) -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    dead: list[BaseException] = []

    async def on_dead(task: ClaimedTask, exc: BaseException) -> None:
        dead.append(exc)

    async def lose_lease_then_fail(task: ClaimedTask) -> None:
        clock.advance(31)
        assert await store.claim("other", 1, 30)  # took over the lapsed lease
        raise RuntimeError("late")

    worker = Worker(
        store, lose_lease_then_fail, retry_for=lambda t: Retry(max_attempts=1), on_dead=on_dead
    )
    await store.add(delivery(id="d1"))
    assert await worker.run_once() == 1
    assert dead == []
    assert (await store.get("d1"))["tasks"][0]["status"] == "leased"  # type: ignore[index]


async def test_on_dead_errors_are_logged_not_raised(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = MemoryStore()

    async def on_dead(task: ClaimedTask, exc: BaseException) -> None:
        raise ValueError("alerting is down")

    worker = Worker(store, Flaky(1), retry_for=lambda t: Retry(max_attempts=1), on_dead=on_dead)
    await store.add(delivery())
    with caplog.at_level(logging.ERROR, logger="dispatcher.worker"):
        assert await worker.run_once() == 1
    assert "on_dead" in caplog.text and "alerting is down" in caplog.text


class BrokenClaims:
    """Delegates to a store, but its first ``failures`` claims raise."""

    def __init__(self, store: InboxStore, failures: int) -> None:
        self._store = store
        self.failures = failures

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def claim(self, worker: str, limit: int, lease: float) -> list[ClaimedTask]:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("database restarting")
        return await self._store.claim(worker, limit, lease)


async def test_store_errors_do_not_kill_the_loop(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = MemoryStore()
    flaky_store = BrokenClaims(store, failures=2)
    handler = Flaky(0)
    worker = Worker(flaky_store, handler, retry_for=lambda t: FAST, poll_interval=0.02)  # type: ignore[arg-type]
    await store.add(delivery())
    with caplog.at_level(logging.ERROR, logger="dispatcher.worker"):
        await worker.start()
        try:
            await drain(store)
        finally:
            await worker.stop()
    assert len(handler.calls) == 1
    failures = [r for r in caplog.records if "claim failed" in r.getMessage()]
    assert len(failures) == 2
    assert all("database restarting" in str(r.exc_info[1]) for r in failures)


async def test_handlers_run_concurrently_up_to_the_limit(store: InboxStore) -> None:
    running = 0
    peak = 0

    async def handler(task: ClaimedTask) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1

    for _ in range(10):
        await store.add(delivery())
    worker = Worker(store, handler, retry_for=lambda t: FAST, concurrency=3, poll_interval=0.05)
    await worker.start()
    try:
        await drain(store)
    finally:
        await worker.stop()
    assert peak == 3


def test_describe_keeps_the_message_and_the_last_traceback_lines() -> None:
    def inner() -> None:
        raise KeyError("id")

    try:
        inner()
    except KeyError as exc:
        text = describe(exc)
    assert text.startswith("KeyError: 'id'\n")
    assert "in inner" in text
    assert len(describe(ValueError("x" * 10_000))) <= 4000


@pytest.mark.parametrize("kwargs", [{"concurrency": 0}, {"lease": 0}, {"poll_interval": -1.0}])
def test_bad_worker_settings_are_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        Worker(MemoryStore(), Flaky(0), retry_for=lambda t: FAST, **kwargs)  # type: ignore[arg-type]


async def test_reserve_holds_free_slots_and_adopt_runs_the_tasks_claimed_as_stored(
    store: InboxStore,
) -> None:
    ran: list[str] = []

    async def handler(task: ClaimedTask) -> None:
        ran.append(task.delivery_id)

    worker = Worker(store, handler, retry_for=lambda t: FAST, concurrency=2, poll_interval=0.05)
    assert worker.reserve(1) == 0  # not started
    await worker.start()
    assert worker.reserve(3) == 2  # as many as are free
    assert worker.reserve(1) == 0
    _, claimed = await store.add_and_claim(delivery(id="d1"), worker.name, worker.lease, 1)
    worker.adopt(claimed, 2)  # runs d1 and frees the slot it did not need
    await drain(store)
    assert ran == ["d1"]
    assert worker.reserve(2) == 2
    worker.adopt([], 2)
    await worker.stop()
    assert worker.reserve(1) == 0  # stopped


async def test_reserve_keeps_a_slot_for_the_backlog(anyio_backend: str) -> None:
    # While the last claim came back full, one free slot stays with the loop's claims, so
    # older work keeps moving; fresh deliveries may take the others.
    store = MemoryStore()
    second_claim = asyncio.Event()
    proceed = asyncio.Event()
    claim = store.claim
    claims = 0

    async def gated_claim(*args: Any) -> list[ClaimedTask]:
        nonlocal claims
        claims += 1
        if claims == 2:
            second_claim.set()
            await proceed.wait()
        return await claim(*args)

    store.claim = gated_claim  # type: ignore[method-assign]
    for n in range(3):
        await store.add(delivery(id=f"d{n}"))

    async def noop(task: ClaimedTask) -> None:
        return None

    worker = Worker(store, noop, retry_for=lambda t: FAST, concurrency=2, poll_interval=0.05)
    await worker.start()
    with anyio.fail_after(5):
        await second_claim.wait()  # the first claim filled both slots
        while worker.in_flight:
            await asyncio.sleep(0.001)
    assert worker.reserve(2) == 1  # two slots are free; one is kept for the backlog
    worker.adopt([], 1)
    proceed.set()
    await drain(store)  # the second claim found one task for two slots: caught up
    assert worker.reserve(2) == 2
    worker.adopt([], 2)
    await worker.stop()
