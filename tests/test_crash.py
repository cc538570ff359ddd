"""Nothing acknowledged is lost: real processes, SIGKILL at moments chosen by progress.

A `dispatcher serve --inbox` process (with in-process workers) and a separate
`dispatcher worker` share one inbox. Eight client threads post N numbered
deliveries, retrying like a provider until they get a 2xx; as the share of
acknowledged deliveries passes random marks, the server or the worker is
killed with SIGKILL and restarted. Afterwards every acknowledged delivery must
have been handled at least once, and no task is left leased or pending.

The same harness, run against two deliberately broken builds (answering before
the commit, marking done before the handler ran), must find losses: that is
the proof the test can fail. SIGKILL cannot show power-loss durability; see
docs/inbox.md for what synchronous=FULL guarantees there.
"""

from __future__ import annotations

import asyncio
import queue
import random
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from dispatcher.inbox import open_inbox

from .processes import ROOT, drop_inbox_schema, free_port, start, wait_healthy

CATALOG = str(ROOT / "tests" / "crash_catalog.json")
N = 2_000
CLIENTS = 8


@dataclass
class Outcome:
    acked: set[int]
    handled: set[int]
    stats: dict[str, Any]
    kills: list[tuple[float, str]]

    @property
    def lost(self) -> set[int]:
        return self.acked - self.handled


async def _stats(url: str) -> tuple[bool, dict[str, Any]]:
    store = open_inbox(url)
    await store.open()
    try:
        return await store.idle(), await store.stats()
    finally:
        await store.close()


def wait_idle(url: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        idle, stats = asyncio.run(_stats(url))
        if idle or time.monotonic() > deadline:
            return stats
        time.sleep(0.2)


def crash_run(
    url: str,
    tmp: Path,
    seed: int,
    launcher: tuple[str, ...] = ("-m", "dispatcher"),
    handler_delay: float = 0.005,
) -> Outcome:
    rng = random.Random(seed)
    out = tmp / "handled.txt"
    log = tmp / "processes.log"
    env = {"CRASH_OUT": str(out), "CRASH_HANDLER_DELAY": str(handler_delay)}
    port = free_port()
    common = [
        "--handlers",
        "tests.crash_handlers",
        "--inbox",
        url,
        "--lease",
        "1",
        "--graceful-timeout",
        "2",
    ]
    serve_args = [
        "serve",
        CATALOG,
        *common,
        "--port",
        str(port),
        "--concurrency",
        "2",
        "--log-level",
        "warning",
    ]
    worker_args = ["worker", CATALOG, *common, "--concurrency", "4", "--log-level", "warning"]

    def launch(kind: str) -> subprocess.Popen[bytes]:
        proc = start(
            *(serve_args if kind == "server" else worker_args), env=env, log=log, launcher=launcher
        )
        if kind == "server":
            wait_healthy(port, proc, timeout=30)
        return proc

    procs = {"server": launch("server"), "worker": launch("worker")}
    acked: set[int] = set()
    lock = threading.Lock()
    todo: queue.Queue[int] = queue.Queue()
    for n in range(N):
        todo.put(n)

    def client() -> None:
        with httpx.Client(timeout=10) as http:
            while True:
                try:
                    n = todo.get_nowait()
                except queue.Empty:
                    return
                while True:  # a provider retries until it is acknowledged
                    try:
                        response = http.post(
                            f"http://127.0.0.1:{port}/load", json={"kind": "item", "n": n}
                        )
                        if 200 <= response.status_code < 300:
                            with lock:
                                acked.add(n)
                            break
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.02)

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    marks = sorted(rng.uniform(0.1, 0.9) for _ in range(4))
    victims = ["server", "worker", "server", "worker"]
    rng.shuffle(victims)
    kills: list[tuple[float, str]] = []
    try:
        while any(thread.is_alive() for thread in threads):
            share = len(acked) / N
            if marks and share >= marks[0]:
                marks.pop(0)
                victim = victims.pop()
                procs[victim].send_signal(signal.SIGKILL)
                procs[victim].wait()
                kills.append((share, victim))
                procs[victim] = launch(victim)
            time.sleep(0.005)
        for thread in threads:
            thread.join()
        stats = wait_idle(url, timeout=90)
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    handled = {int(line) for line in out.read_text().split()} if out.exists() else set()
    return Outcome(acked, handled, stats, kills)


@pytest.fixture(params=["sqlite", "postgres"])
def inbox_url(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/inbox.db"
        return
    url = f"{request.getfixturevalue('postgres_url')}?schema=crash_{uuid.uuid4().hex[:8]}"
    yield url
    drop_inbox_schema(url)


def test_nothing_acknowledged_is_lost_across_sigkills(inbox_url: str, tmp_path: Path) -> None:
    outcome = crash_run(inbox_url, tmp_path, seed=random.randrange(1 << 30))
    assert len(outcome.kills) == 4, outcome.kills
    assert outcome.acked == set(range(N))
    assert outcome.lost == set(), (
        f"lost {len(outcome.lost)} acknowledged deliveries: {outcome.kills}"
    )
    assert outcome.stats["deliveries"]["done"] == N  # each stored once, whatever the retries
    assert outcome.stats["tasks"]["leased"] == 0 and outcome.stats["tasks"]["pending"] == 0
    assert outcome.stats["tasks"]["dead"] == 0


@pytest.mark.parametrize("bug", ["ack_before_commit", "done_before_handler"])
def test_the_crash_test_catches_a_broken_build(bug: str, tmp_path: Path) -> None:
    # Slower handlers keep several tasks mid-run at every kill, so the losses are certain.
    launcher = (str(ROOT / "tests" / "broken_build.py"), bug)
    outcome = crash_run(f"sqlite:///{tmp_path}/inbox.db", tmp_path, 7, launcher, handler_delay=0.02)
    assert outcome.lost, (
        f"the {bug} build lost nothing: the crash test could not fail ({outcome.kills})"
    )
