"""The benchmark's apps answer the bench's request as the dispatcher does, so the ratios
bench_http.py prints compare like with like (the controls included)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from typing import Any

import httpx
import orjson
import pytest

from benchmarks import http_apps
from benchmarks.bench_http import in_process_us

pytestmark = pytest.mark.anyio


async def post(app: Any) -> httpx.Response:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://bench"
    ) as client:
        return await client.post(
            "/payments", content=http_apps.BODY, headers={"content-type": "application/json"}
        )


async def test_essential_control_answers_as_the_dispatcher_does() -> None:
    await http_apps.hooks.startup()
    try:
        real, control = await post(http_apps.hooks), await post(http_apps.essential)
    finally:
        await http_apps.hooks.shutdown()
    assert real.status_code == control.status_code == 200
    real_body, control_body = orjson.loads(real.content), orjson.loads(control.content)
    assert len(control_body.pop("id")) == len(real_body.pop("id")) == 32
    assert (
        control_body
        == real_body
        == {
            "webhook": "payments",
            "event": "payments:event-10",
            "status": "processed",
        }
    )


async def test_essential_control_runs_the_handler() -> None:
    seen = []

    async def record(event: Any) -> None:
        seen.append(event)

    handler = http_apps.hooks.router.resolve("payments", "payments:event-10")[0]
    object.__setattr__(handler, "func", record)  # a Handler is frozen
    try:
        response = await post(http_apps.essential)
    finally:
        object.__setattr__(handler, "func", http_apps.noop)
    assert response.status_code == 200
    assert [e.tag for e in seen] == ["payments:event-10"]
    assert seen[0].payload == orjson.loads(http_apps.BODY)
    assert seen[0].id == orjson.loads(response.content)["id"]


async def test_busy_control_spins_then_answers_as_the_raw_app(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http_apps, "SPIN", 0.002)
    raw, busy = await post(http_apps.raw), await post(http_apps.busy)
    assert raw.content == busy.content == b'{"status":"processed","event":"event-10"}'
    assert busy.elapsed.total_seconds() >= 0.002


def test_in_process_cost_is_per_request() -> None:
    assert 0 < in_process_us(http_apps.raw, calls=200, repeats=1) < 1000


def test_in_process_cost_with_caches_swept_pays_for_the_sweep_outside_the_timing() -> None:
    # 64 MiB read before each call takes milliseconds: were it timed, the median would show it.
    cold = in_process_us(http_apps.raw, calls=20, sweep=64 << 20)
    assert 0 < cold < 1000


def test_instruction_bench_reads_answers_split_or_run_together() -> None:
    # bench_instructions divides a count by the requests it drove: each answer must be
    # read whole, however the bytes arrive, and an error answer must stop the count.
    from benchmarks.bench_instructions import read_answer

    answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"
    left, right = socket.socketpair()
    with left, right:
        left.sendall(answer[10:] + answer)  # the first answer's end, then a second whole
        rest = read_answer(right, answer[:10])  # its start already read
        assert rest == answer  # the second answer, read along with the first, is kept
        assert read_answer(right, rest) == b""
        left.sendall(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
        with pytest.raises(RuntimeError, match="404"):
            read_answer(right, b"")


def test_cpu_seconds_are_read_past_a_command_name_with_spaces_and_parentheses() -> None:
    import os

    from benchmarks.bench_http import cpu_seconds_of_stat, process_cpu_seconds

    tick = os.sysconf("SC_CLK_TCK")
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
    # utime stime ...: fields 14 and 15
    stat = "4242 (py thon (x)) R 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 100 0 0\n"
    assert cpu_seconds_of_stat(stat) == 300 / tick
    # and a live process: this one has used some CPU, and no more than its whole life
    own = process_cpu_seconds(os.getpid())
    assert 0 < own <= sum(os.times()[:2]) + 1 / tick


def test_ratios_are_paired_round_by_round() -> None:
    from benchmarks.bench_http import round_ratios

    # b ran right after a in each round; a slow second round slows both
    result = {
        "a": {"rps": 20_000.0, "rounds": [20_000.0, 10_000.0, 21_000.0]},
        "b": {"rps": 17_000.0, "rounds": [17_000.0, 9_000.0, 16_800.0]},
    }
    assert round_ratios(result, "b", "a") == "0.85 0.90 0.80"
    with pytest.raises(ValueError):  # a round missing on one side is an error, not a skip
        round_ratios({"a": {"rounds": [1.0]}, "b": {"rounds": [1.0, 2.0]}}, "b", "a")


def test_a_server_s_helper_processes_are_found_from_any_of_its_threads() -> None:
    import os
    import subprocess
    import sys
    import threading

    from benchmarks.bench_http import child_pids, children_cpu_seconds

    # The inbox starts its SQLite writer process from a worker thread, so the writer is
    # listed under that thread's /proc entry, not under the main thread's; the thread is
    # kept alive meanwhile (when a thread ends, its children pass to another one).
    started: list[subprocess.Popen[bytes]] = []
    spawned, checked = threading.Event(), threading.Event()
    waits_for_stdin = [sys.executable, "-c", "import sys; sys.stdin.read()"]

    def start() -> None:
        started.append(subprocess.Popen(waits_for_stdin, stdin=subprocess.PIPE))
        spawned.set()
        checked.wait(30)

    thread = threading.Thread(target=start)
    thread.start()
    try:
        assert spawned.wait(30)
        (child,) = started
        assert child.pid in child_pids(os.getpid())
        assert children_cpu_seconds(os.getpid())[child.pid] >= 0
    finally:
        checked.set()
        thread.join()
        for process in started:
            process.communicate(b"")
    assert child.pid not in child_pids(os.getpid())
    assert child_pids(2**22 + 1) == []  # no such process: nothing, not an error


def test_machine_busy_share_comes_from_idle_and_iowait_time() -> None:
    import math

    from benchmarks.bench_http import busy_share, machine_times

    # cpu user nice system idle iowait irq softirq steal guest guest_nice
    before = machine_times("cpu  100 0 50 800 50 0 0 0 40 0\ncpu0 1 2 3\n")
    after = machine_times("cpu  400 0 150 1300 100 0 0 0 160 0\ncpu0 1 2 3\n")
    assert before == (1000, 850)  # guest time is part of user time, not counted twice
    assert after == (1950, 1400)
    assert busy_share(before, after) == pytest.approx(1 - 550 / 950)
    assert math.isnan(busy_share(after, after))  # no time passed
    live = machine_times()
    assert live[0] >= live[1] > 0


def test_preemptions_are_counted_over_every_thread_of_the_server() -> None:
    """bench_inbox's ``preempt`` column: the involuntary context switches of all the
    server's threads, not only its main thread's."""
    import hashlib
    import os
    import threading
    from pathlib import Path

    from benchmarks.bench_http import involuntary_switches, switches_of_status

    status = "Name:\tpython\nvoluntary_ctxt_switches:\t12\nnonvoluntary_ctxt_switches:\t7\n"
    assert switches_of_status(status) == 7
    assert switches_of_status("Name:\tpython\n") == 0

    # One thread more than there are cores, hashing without the GIL, take turns by
    # preemption; then they wait (no more preemptions) while the counts are read.
    data, done = b"x" * (1 << 20), threading.Event()
    cores = len(os.sched_getaffinity(0))

    def spin() -> None:
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            hashlib.sha256(data).digest()
        done.wait(30)

    threads = [threading.Thread(target=spin) for _ in range(cores + 1)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.8)
        ids = [thread.native_id for thread in threads]
        each = [
            switches_of_status(Path(f"/proc/{os.getpid()}/task/{tid}/status").read_text())
            for tid in ids
        ]
        assert sum(each) > max(each)  # more than one thread was preempted
        assert involuntary_switches(os.getpid()) >= sum(each)
    finally:
        done.set()
        for thread in threads:
            thread.join()
    assert involuntary_switches(2**22 + 1) == 0  # no such process: nothing, not an error


def test_the_load_runs_at_sched_batch_when_asked() -> None:
    from benchmarks.bench_http import load_command

    policy = [sys.executable, "-c", "import os; print(os.sched_getscheduler(0))"]
    for batch, expected in ((True, os.SCHED_BATCH), (False, os.SCHED_OTHER)):
        out = subprocess.run(load_command(policy, batch), capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert int(out.stdout) == expected


def test_the_inbox_bench_runs_the_app_as_dispatcher_serve_does(tmp_path: Any) -> None:
    """bench_inbox's queued rows: the bench app under ``dispatcher serve --inbox``, with
    serve's own HTTP protocol, answering 202 once the delivery is stored."""
    from benchmarks.bench_http import free_port, serve_command, start

    url = f"sqlite:///{tmp_path}/inbox.db"
    port = free_port()
    command = serve_command("benchmarks.http_apps:hooks", port, ["--inbox", url])
    assert command[1:4] == ["-m", "dispatcher", "serve"]
    proc = start(
        "benchmarks.http_apps:hooks", port, ["--inbox", url, "--concurrency", "0"],
        command=serve_command,
    )  # fmt: skip
    try:
        response = httpx.post(
            f"http://127.0.0.1:{port}/payments", content=http_apps.BODY,
            headers={"content-type": "application/json"},
        )  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "queued"
    assert (tmp_path / "inbox.db").exists()
