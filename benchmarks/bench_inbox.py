"""Queued mode: the receiver's requests/s against inline mode, and the workers' drain rate.

    python benchmarks/bench_inbox.py                  # 3 rounds x 5 s per app, then drains
    python benchmarks/bench_inbox.py --rounds 1 --duration 3
    python benchmarks/bench_inbox.py --controls       # also SQLite without its fsync, and
                                                      # with wrk unable to preempt

HTTP part (needs wrk, as bench_http.py): the 20-event dispatcher with a no-op
async handler, run by ``dispatcher serve`` as a user runs it (``--inbox URL
--concurrency N``): inline, then queued on SQLite (synchronous=FULL) and on
PostgreSQL (when 127.0.0.1:5432 answers), each with its in-process workers
draining while the load runs (the default), and once receive-only
(--concurrency 0, workers elsewhere). Each run starts from an empty inbox.
(Until the seventeenth session the apps ran under plain uvicorn, whose two sends per
response cost inline mode more than queued mode: benchmarks/README.md.)

For the runs with in-process workers it also prints the share of the stored
tasks those workers had finished when the load stopped: the rest was still
waiting in the inbox (the figure is req/s under that backlog). Each row also says where
the time went: the receiver's CPU per request and the share of one core that makes
(its event loop is one thread), the SQLite writer process's CPU per request, how often
the receiver was preempted, and how busy the whole machine was. With the receiver under
a full core and the machine under 100%, nothing was saturated: requests spent their time
waiting, for a commit or for their turn in the receiver's loop.

With --controls, queued SQLite also runs receive-only at synchronous=OFF: no fsync at
all, so not durable against a power loss; what it answers more than FULL is what the
fsyncs cost. (Not NORMAL, the control until the eighteenth session: NORMAL skips the
fsync at each commit but makes each checkpoint fsync the whole unsynced WAL, a stall of
about 12 ms every ~50 commits here, so it answered no more than FULL and hid the
fsyncs' cost; benchmarks/README.md.) And inline and queued SQLite and
PostgreSQL (receive only) run once more with wrk at the scheduling policy SCHED_BATCH
(``chrt --batch 0``), whose wake-ups do not preempt the receiver. Queued mode leaves
wrk idle while a commit is awaited, so answers wake it, and on two cores the woken wrk
often takes the receiver's core: these rows show what that costs, a cost a load from
another machine would not add. They are controls; the targets count the other rows.

Drain part: 20,000 no-op tasks stored up front, then 1 and then 4 Worker
loops (concurrency 4 each, one process) drain them; tasks/s is stored tasks
over the time until the inbox is idle. The drains and the fresh part run on the
event loop that ``dispatcher worker`` and ``serve`` run on (uvloop).

Fresh part: 32 concurrent producers, each storing deliveries one after another
and running their task at once, as a receiver with in-process workers does:
stored, then claimed, run and completed (the worker's own claim) against
claimed as stored (add_and_claim), run and completed; deliveries/s and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_http import measure, post_script, round_ratios  # noqa: E402
from benchmarks.http_apps import BODY  # noqa: E402
from dispatcher.inbox import InboxStore, NewDelivery, open_inbox  # noqa: E402
from dispatcher.retry import Retry  # noqa: E402
from dispatcher.server import event_loop_factory  # noqa: E402
from dispatcher.worker import Worker  # noqa: E402

POSTGRES = os.environ.get("DISPATCHER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")

T = TypeVar("T")


def on_worker_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on the event loop a worker process runs on (``dispatcher worker``)."""
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run(main)


def postgres_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


async def drop_schema(url: str) -> None:
    store = open_inbox(url)
    await store.open()
    await store.drop_schema()  # type: ignore[attr-defined]
    await store.close()


def http_part(rounds: int, duration: int, controls: bool = False) -> None:
    tmp = Path(tempfile.mkdtemp())
    apps: dict[str, tuple[str, str]] = {
        "inline": ("inline", "benchmarks.http_apps:hooks"),
        "sqlite": ("queued SQLite", "benchmarks.http_apps:hooks"),
        "sqlite-recv": ("queued SQLite, receive only", "benchmarks.http_apps:hooks"),
    }
    if controls:  # what do the fsyncs cost? The same without any (not durable)
        apps["sqlite-off-recv"] = (
            "control: SQLite synchronous=OFF, receive only",
            "benchmarks.http_apps:hooks",
        )
        # What does wrk taking the receiver's core cost? The same with wrk unable to preempt.
        apps["inline-batch"] = ("control: inline, wrk at SCHED_BATCH", "benchmarks.http_apps:hooks")
        apps["sqlite-batch-recv"] = (
            "control: SQLite receive only, wrk at SCHED_BATCH",
            "benchmarks.http_apps:hooks",
        )
    if postgres_up():
        apps["postgres"] = ("queued PostgreSQL", "benchmarks.http_apps:hooks")
        apps["postgres-recv"] = (
            "queued PostgreSQL, receive only",
            "benchmarks.http_apps:hooks",
        )
        if controls:
            apps["postgres-batch-recv"] = (
                "control: PostgreSQL receive only, wrk at SCHED_BATCH",
                "benchmarks.http_apps:hooks",
            )
    schemas: list[str] = []
    inboxes: dict[str, list[str]] = {}  # the inbox of each run, by mode

    def setup(key: str) -> tuple[list[str], dict[str, str]]:
        if key.startswith("inline"):
            return [], {}
        concurrency = "0" if key.endswith("-recv") else "4"
        if key.startswith("sqlite"):
            url = f"sqlite:///{tmp}/{uuid.uuid4().hex}.db"
            if "-off" in key:
                url += "?synchronous=OFF"
        else:
            url = f"{POSTGRES}?schema=bench_{uuid.uuid4().hex[:8]}"
            schemas.append(url)
        inboxes.setdefault(key, []).append(url)
        return ["--inbox", url, "--concurrency", concurrency], {}

    print(f"HTTP: body {len(BODY)} bytes; wrk -t1 -c32, {rounds} rounds x {duration} s")
    try:
        batch = [key for key in apps if "-batch" in key]
        result = measure(
            apps,
            rounds,
            duration,
            "/payments",
            post_script(BODY),
            setup=setup,
            batch=batch,
            served=apps,
        )
        finished = {
            key: statistics.median(asyncio.run(done_share(url)) for url in urls)
            for key, urls in inboxes.items()
            if not key.endswith("-recv")
        }
    finally:
        for url in schemas:
            asyncio.run(drop_schema(url))
        shutil.rmtree(tmp, ignore_errors=True)
    inline = result["inline"]["rps"]
    width = max(len(label) for label, _ in apps.values()) + 2
    print(
        f"{'mode':{width}}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'cpu us':>8}{'core':>6}"
        f"{'writer us':>10}{'preempt':>8}{'busy':>6}{'x inline':>9}{'run':>6}"
    )
    for key, (label, _) in apps.items():
        r = result[key]
        ran = f"{finished[key]:>5.0%}" if key in finished else ""
        writer = f"{r['helper']:>10.1f}" if key.startswith("sqlite") else f"{'':>10}"
        print(
            f"{label:{width}}{r['rps']:>8,.0f}{r['p50']:>8.2f}{r['p99']:>8.2f}{r['cpu']:>8.1f}"
            f"{r['cpu'] * r['rps'] / 1e6:>6.0%}{writer}{r['preempted']:>8.0f}{r['busy']:>6.0%}"
            f"{r['rps'] / inline:>9.2f} {ran}"
        )
    for key, (label, _) in apps.items():
        if key != "inline":
            print(f"{label:{width}}x inline round by round: {round_ratios(result, key, 'inline')}")
    for key in ("sqlite-batch-recv", "postgres-batch-recv"):
        if key in apps:
            both = result[key]["rps"] / result["inline-batch"]["rps"]
            label = apps[key][0].removeprefix("control: ").removesuffix(", wrk at SCHED_BATCH")
            print(f"with wrk at SCHED_BATCH for both: {label} x inline {both:.2f}"
                  f" (round by round: {round_ratios(result, key, 'inline-batch')})")  # fmt: skip
    print("cpu us: the receiver process's CPU per request; core: the share of one core it used")
    print("(its loop is one thread: 100% is its limit); writer us: its SQLite writer process's")
    print("CPU per request; preempt: how often the receiver was taken off a CPU that it still")
    print(
        "needed, per 1,000 requests; busy: the share of the machine's CPU time (both cores, wrk and"
    )
    print(
        "PostgreSQL included) in use: with neither at its limit, requests spent their time waiting"
    )
    print("run: share of the stored tasks the in-process workers had finished at the end")
    print("targets: queued SQLite >= 0.6x inline, queued PostgreSQL >= 0.4x inline")


async def done_share(url: str) -> float:
    """The share of an inbox's tasks that are done."""
    store = open_inbox(url)
    await store.open()
    try:
        tasks = (await store.stats())["tasks"]
    finally:
        await store.close()
    return tasks["done"] / max(1, sum(tasks.values()))


async def fill(store: InboxStore, count: int) -> None:
    batch = []
    for _ in range(count):
        batch.append(store.add(new_delivery()))
        if len(batch) == 256:
            await asyncio.gather(*batch)
            batch = []
    await asyncio.gather(*batch)


async def drain(url: str, workers: int, count: int) -> float:
    store = open_inbox(url)
    await store.open()
    await fill(store, count)

    async def noop(task: Any) -> None:
        return None

    loops = [
        Worker(store, noop, retry_for=lambda task: Retry(), concurrency=4, lease=30.0)
        for _ in range(workers)
    ]
    start = time.perf_counter()
    for worker in loops:
        await worker.start()
    while not await store.idle():
        await asyncio.sleep(0.01)
    took = time.perf_counter() - start
    for worker in loops:
        await worker.stop()
    await store.close()
    return count / took


def fresh_inbox_urls(tmp: Path) -> dict[str, Any]:
    """Per store, a function giving the URL of a new, empty inbox."""
    stores = {"SQLite": lambda: f"sqlite:///{tmp}/{uuid.uuid4().hex}.db"}
    if postgres_up():
        stores["PostgreSQL"] = lambda: f"{POSTGRES}?schema=bench_{uuid.uuid4().hex[:8]}"
    return stores


def drain_part(count: int) -> None:
    print(f"\nDrain: {count:,} no-op tasks stored up front; Worker loops of concurrency 4")
    tmp = Path(tempfile.mkdtemp())
    stores = fresh_inbox_urls(tmp)
    for name, make_url in stores.items():
        for workers in (1, 4):
            url = make_url()
            try:
                rate = on_worker_loop(drain(url, workers, count))
            finally:
                if name == "PostgreSQL":
                    asyncio.run(drop_schema(url))
            print(f"{name:11} {workers} worker(s): {rate:>8,.0f} tasks/s")
    shutil.rmtree(tmp, ignore_errors=True)
    print("target: 1 worker on SQLite >= 2,000 tasks/s")


def new_delivery() -> NewDelivery:
    return NewDelivery(
        id=uuid.uuid4().hex,
        webhook="payments",
        event="payments:event-10",
        idempotency_key=None,
        body=BODY,
        headers=(("content-type", "application/json"),),
        query="",
        received_at=time.time(),
        handlers=("payments:event-10 noop",),
    )


async def fresh(url: str, count: int, claimed_as_stored: bool) -> float:
    """Deliveries/s of 32 producers that each store a delivery and run its task at once."""
    store = open_inbox(url)
    await store.open()

    async def producer(deliveries: int) -> None:
        for _ in range(deliveries):
            if claimed_as_stored:
                _, tasks = await store.add_and_claim(new_delivery(), "bench", 30.0, 1)
            else:
                await store.add(new_delivery())
                tasks = await store.claim("bench", 1, 30.0)
            for task in tasks:  # the handler is a no-op
                await store.complete(task)

    start = time.perf_counter()
    await asyncio.gather(*(producer(count // 32) for _ in range(32)))
    while not await store.idle():  # tasks a claim skipped (locked by another claim)
        for task in await store.claim("bench", 32, 30.0):
            await store.complete(task)
    took = time.perf_counter() - start
    await store.close()
    return count // 32 * 32 / took


def fresh_part(count: int, rounds: int) -> None:
    print(f"\nFresh: {count:,} deliveries from 32 producers, each task run as it is stored")
    tmp = Path(tempfile.mkdtemp())
    stores = fresh_inbox_urls(tmp)
    for name, make_url in stores.items():
        rates: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(rounds):  # alternating, so a noisy moment hits both
            for claimed_as_stored in (False, True):
                url = make_url()
                try:
                    rates[claimed_as_stored].append(
                        on_worker_loop(fresh(url, count, claimed_as_stored))
                    )
                finally:
                    if name == "PostgreSQL":
                        asyncio.run(drop_schema(url))
        claim, stored = (statistics.median(rates[flag]) for flag in (False, True))
        print(
            f"{name:11} stored, then claimed: {claim:>7,.0f}/s   claimed as stored:"
            f" {stored:>7,.0f}/s   ({stored / claim:.2f}x)"
        )
    shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--fresh", type=int, default=6_400)
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument(
        "--controls",
        action="store_true",
        help="also run queued SQLite with synchronous=OFF (no fsync at all), and"
        " inline and queued receive-only with wrk at SCHED_BATCH (it cannot preempt the receiver)",
    )
    args = parser.parse_args()
    if not args.skip_http:
        if not shutil.which("wrk"):
            sys.exit("wrk is not installed: apt-get install wrk")
        if args.controls and not shutil.which("chrt"):
            sys.exit("--controls needs chrt (util-linux): apt-get install util-linux")
        http_part(args.rounds, args.duration, args.controls)
    drain_part(args.tasks)
    fresh_part(args.fresh, args.rounds)


if __name__ == "__main__":
    main()
