"""Queued mode: the receiver's requests/s against inline mode, and the workers' drain rate.

    python benchmarks/bench_inbox.py                  # 3 rounds x 5 s per app, then drains
    python benchmarks/bench_inbox.py --rounds 1 --duration 3

HTTP part (needs wrk, as bench_http.py): the 20-event dispatcher with a no-op
async handler, inline, then queued on SQLite (synchronous=FULL) and on
PostgreSQL (when 127.0.0.1:5432 answers), each with its in-process workers
draining while the load runs (the default), and once receive-only
(--concurrency 0, workers elsewhere). Each run starts from an empty inbox.

Drain part: 20,000 no-op tasks stored up front, then 1 and then 4 Worker
loops (concurrency 4 each, one process) drain them; tasks/s is stored tasks
over the time until the inbox is idle.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_http import measure, post_script  # noqa: E402
from benchmarks.http_apps import BODY  # noqa: E402
from dispatcher.inbox import InboxStore, NewDelivery, open_inbox  # noqa: E402
from dispatcher.retry import Retry  # noqa: E402
from dispatcher.worker import Worker  # noqa: E402

POSTGRES = os.environ.get("DISPATCHER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


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


def http_part(rounds: int, duration: int) -> None:
    tmp = Path(tempfile.mkdtemp())
    apps: dict[str, tuple[str, str]] = {
        "inline": ("inline", "benchmarks.http_apps:hooks"),
        "sqlite": ("queued SQLite", "benchmarks.http_apps:queued_app"),
        "sqlite-recv": ("queued SQLite, receive only", "benchmarks.http_apps:queued_app"),
    }
    if postgres_up():
        apps["postgres"] = ("queued PostgreSQL", "benchmarks.http_apps:queued_app")
        apps["postgres-recv"] = (
            "queued PostgreSQL, receive only",
            "benchmarks.http_apps:queued_app",
        )
    schemas: list[str] = []

    def setup(key: str) -> tuple[list[str], dict[str, str]]:
        if key == "inline":
            return [], {}
        concurrency = "0" if key.endswith("-recv") else "4"
        if key.startswith("sqlite"):
            url = f"sqlite:///{tmp}/{uuid.uuid4().hex}.db"
        else:
            url = f"{POSTGRES}?schema=bench_{uuid.uuid4().hex[:8]}"
            schemas.append(url)
        return ["--factory"], {"BENCH_INBOX": url, "BENCH_CONCURRENCY": concurrency}

    print(f"HTTP: body {len(BODY)} bytes; wrk -t1 -c32, {rounds} rounds x {duration} s")
    try:
        result = measure(apps, rounds, duration, "/payments", post_script(BODY), setup=setup)
    finally:
        for url in schemas:
            asyncio.run(drop_schema(url))
        shutil.rmtree(tmp, ignore_errors=True)
    inline = result["inline"]["rps"]
    print(f"{'mode':34}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'x inline':>10}")
    for key, (label, _) in apps.items():
        r = result[key]
        print(
            f"{label:34}{r['rps']:>10,.0f}{r['p50']:>9.2f}{r['p99']:>9.2f}{r['rps'] / inline:>10.2f}"
        )
    print("targets: queued SQLite >= 0.6x inline, queued PostgreSQL >= 0.4x inline")


async def fill(store: InboxStore, count: int) -> None:
    batch = []
    for _ in range(count):
        batch.append(
            store.add(
                NewDelivery(
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
            )
        )
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


def drain_part(count: int) -> None:
    print(f"\nDrain: {count:,} no-op tasks stored up front; Worker loops of concurrency 4")
    tmp = Path(tempfile.mkdtemp())
    stores = {"SQLite": lambda: f"sqlite:///{tmp}/{uuid.uuid4().hex}.db"}
    if postgres_up():
        stores["PostgreSQL"] = lambda: f"{POSTGRES}?schema=bench_{uuid.uuid4().hex[:8]}"
    for name, make_url in stores.items():
        for workers in (1, 4):
            url = make_url()
            try:
                rate = asyncio.run(drain(url, workers, count))
            finally:
                if name == "PostgreSQL":
                    asyncio.run(drop_schema(url))
            print(f"{name:11} {workers} worker(s): {rate:>8,.0f} tasks/s")
    shutil.rmtree(tmp, ignore_errors=True)
    print("target: 1 worker on SQLite >= 2,000 tasks/s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--skip-http", action="store_true")
    args = parser.parse_args()
    if not args.skip_http:
        if not shutil.which("wrk"):
            sys.exit("wrk is not installed: apt-get install wrk")
        http_part(args.rounds, args.duration)
    drain_part(args.tasks)


if __name__ == "__main__":
    main()
