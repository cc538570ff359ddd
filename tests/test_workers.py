"""Worker processes: several on one PostgreSQL inbox share the work, and never run a task twice
at once; each runs on uvloop and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import orjson

from .processes import ROOT, drop_inbox_schema, free_port, start, wait_healthy
from .test_crash import wait_idle

CATALOG = str(ROOT / "tests" / "crash_catalog.json")
N = 200


def test_two_worker_processes_share_a_postgres_inbox(postgres_url: str, tmp_path: Path) -> None:
    url = f"{postgres_url}?schema=workers_{uuid.uuid4().hex[:8]}"
    out = tmp_path / "runs.txt"
    env = {"OVERLAP_OUT": str(out)}
    log = tmp_path / "log"
    common = ["--handlers", "tests.overlap_handlers", "--inbox", url, "--lease", "1"]
    port = free_port()
    server = start(
        "serve", CATALOG, *common, "--port", str(port), "--concurrency", "0", env=env, log=log
    )
    workers = []
    try:
        wait_healthy(port, server)
        workers = [
            start("worker", CATALOG, *common, "--concurrency", "8", env=env, log=log)
            for _ in range(2)
        ]
        with httpx.Client() as http:
            for n in range(N):
                response = http.post(f"http://127.0.0.1:{port}/load", json={"kind": "item", "n": n})
                assert response.status_code == 202
        time.sleep(0.5)
        stats = wait_idle(url, timeout=60)
    finally:
        for proc in [server, *workers]:
            proc.send_signal(signal.SIGTERM)
        for proc in [server, *workers]:
            proc.wait(timeout=20)
        drop_inbox_schema(url)
    lines = [line.split() for line in out.read_text().splitlines()]
    starts = Counter(int(n) for kind, n, _ in lines if kind == "start")
    ends = Counter(int(n) for kind, n, _ in lines if kind == "end")
    assert stats["tasks"]["done"] == N and stats["tasks"]["leased"] == 0, stats
    assert set(starts) == set(range(N))  # every task ran
    assert [n for n, count in starts.items() if count > 1] == []  # none twice, slow ones included
    assert ends == starts
    pids = {pid for _, _, pid in lines}
    assert len(pids) == 2  # both workers took a share


async def _store_deliveries(url: str, count: int) -> None:
    """Store ``count`` deliveries of load:item as a receive-only serve would."""
    from dispatcher import Dispatcher

    from . import overlap_handlers

    hooks = Dispatcher(inbox=url, concurrency=0)
    hooks.load_catalog(CATALOG)
    hooks.include(overlap_handlers.router)
    await hooks.startup()
    try:
        for n in range(count):
            result = await hooks.dispatch("load", orjson.dumps({"kind": "item", "n": n}))
            assert result.status == "queued", result
    finally:
        await hooks.shutdown()


def test_a_worker_process_runs_on_uvloop_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    # `dispatcher worker` runs on the same event loop as `serve` (uvloop): a worker's time
    # goes mostly to the loop's machinery.
    url = f"sqlite:///{tmp_path / 'inbox.db'}"
    out = tmp_path / "runs.txt"
    log = tmp_path / "log"
    asyncio.run(_store_deliveries(url, 3))
    worker = start(
        "worker", CATALOG, "--handlers", "tests.overlap_handlers", "--inbox", url,
        "--log-level", "info", env={"OVERLAP_OUT": str(out)}, log=log,
    )  # fmt: skip
    try:
        stats = wait_idle(url, timeout=30)
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=20)
    text = log.read_text()
    assert "running 4 at a time on uvloop" in text, text
    assert code == 0, text
    assert stats["tasks"]["done"] == 3, stats
    assert sorted(line.split()[1] for line in out.read_text().splitlines() if "end" in line) == [
        "0", "1", "2",
    ]  # fmt: skip
