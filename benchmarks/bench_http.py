"""Requests/s and latency of the receiver against a raw ASGI floor, FastAPI and Starlette.

    python benchmarks/bench_http.py                 # 3 rounds x 5 s per app (about 90 s)
    python benchmarks/bench_http.py --rounds 1 --duration 3
    python benchmarks/bench_http.py --controls      # also what b/a can be at best here

Needs wrk (Debian: apt-get install wrk). Each app runs under uvicorn (1 worker,
uvloop, httptools, access log off): a-d share one server, so their ratios compare the
apps alone. (s) is (b) as ``dispatcher serve`` runs it, whose protocol sends each
response in one write instead of uvicorn's two: s/b is what that is worth. wrk drives
each with 1 thread and 32 connections, POSTing the same ~400-byte JSON body. Apps run
one after another, round after round (a b c d s a b c d s ...), and the median of the
rounds counts, so a noisy moment on this shared machine hits every app alike. Each ratio
is also printed round by round (two apps of one round ran seconds apart), which shows how
far this machine's slow and fast phases move it.

--controls adds two apps to the rounds, as ceilings for b/a on this machine: (e) the
raw app plus a busy-wait as long as the dispatcher's own work over the raw app's,
measured in-process at the start of the run, and (f) the dispatcher's essential work
alone (http_apps.essential: headers, parse, match, Event, id, handler, answer). It also
prints the in-process cost of (a), (f) and (b) with warm caches and with the caches swept
before each call: under a server, the app's code and data are evicted between requests,
and the swept figure is the closer one.

Beside req/s and latency, each app's row gives the server process's CPU time per
request (user and system, from /proc) and how often wrk slept per 1,000 requests:
under a saturating load the first is the whole cost of a request, and the second shows
the closed loop at work (the slower the server, the more often wrk waits, and every
wake-up is an interrupt the server's write pays for). ``busy`` is the share of the
whole machine's CPU time (both cores, wrk included) that was not idle during the run;
the server's event loop is one thread, so it is at its limit when ``cpu`` times req/s is a
whole core, however far under 100% the machine is.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import http_apps  # noqa: E402
from benchmarks.http_apps import BODY  # noqa: E402

APPS = {
    "a": ("raw ASGI floor", "benchmarks.http_apps:raw"),
    "b": ("dispatcher inline", "benchmarks.http_apps:hooks"),
    "c": ("FastAPI endpoint", "benchmarks.http_apps:fastapi_app"),
    "d": ("Starlette route", "benchmarks.http_apps:starlette_app"),
}
SWEEP = 4 << 20  # bytes read between two timed calls: more than this machine's L2 cache
#: (b) as `dispatcher serve` runs it: the same app, each response in one send (http_protocol)
SERVED = {"s": ("dispatcher serve, inline", "benchmarks.http_apps:hooks")}
CONTROLS = {
    "e": ("control: raw + busy-wait", "benchmarks.http_apps:busy"),
    "f": ("control: essential work", "benchmarks.http_apps:essential"),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


#: How a server is started: (app, port, extra args) -> its command line.
Command = Callable[[str, int, list[str] | None], list[str]]


def uvicorn_command(app: str, port: int, extra: list[str] | None = None) -> list[str]:
    """How every benchmark runs an app: uvicorn, 1 worker, uvloop, httptools, no access log."""
    return [
        sys.executable, "-m", "uvicorn", app, "--port", str(port), "--workers", "1",
        "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
        *(extra or []),
    ]  # fmt: skip


def serve_command(app: str, port: int, extra: list[str] | None = None) -> list[str]:
    """An app as a user runs it: ``dispatcher serve`` (uvicorn, 1 worker, uvloop, httptools
    with each response in one send, per-delivery log lines off)."""
    return [
        sys.executable, "-m", "dispatcher", "serve", app, "--port", str(port),
        "--log-level", "warning", *(extra or []),
    ]  # fmt: skip


def start(app: str, port: int, extra: list[str] | None = None,
          env: dict[str, str] | None = None, command: Command = uvicorn_command,
          ) -> subprocess.Popen[bytes]:  # fmt: skip
    proc = subprocess.Popen(
        command(app, port, extra),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )
    wait_for(port)
    return proc


def wrk(url: str, duration: float, script: Path, connections: int = 32,
        server: int | None = None, batch: bool = False) -> dict[str, float]:  # fmt: skip
    """One wrk run: req/s, p50 and p99 (ms); with ``batch``, wrk runs at the scheduling
    policy SCHED_BATCH, whose wake-ups do not preempt a running process (a control: the
    load then disturbs the server about as little as a load from another machine would).
    With ``server`` (the app's pid), also that
    process's CPU per request (``cpu``, µs: user and system time over the run), its
    child processes' (``helper``: the SQLite inbox's writer process), how often wrk went
    to sleep per 1,000 requests (``wakes``: its voluntary context switches), how often
    the server was preempted per 1,000 requests (``preempted``: its threads' involuntary
    context switches), and the share of the whole machine's CPU time that was busy
    (``busy``): the figures that say where a req/s difference went, and whether anything
    was saturated."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_nvcsw
    cpu_before = process_cpu_seconds(server) if server else math.nan
    helpers_before = children_cpu_seconds(server) if server else {}
    machine_before = machine_times()
    preempted_before = involuntary_switches(server) if server else 0
    out = subprocess.run(
        load_command(
            ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency", "-s", str(script), url],
            batch,
        ),
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    cpu = process_cpu_seconds(server) - cpu_before if server else math.nan
    helpers = children_cpu_seconds(server) if server else {}
    helper_cpu = sum(seconds - helpers_before.get(pid, 0.0) for pid, seconds in helpers.items())
    busy = busy_share(machine_before, machine_times())
    preempted = involuntary_switches(server) - preempted_before if server else 0
    # wrk is the only child that ends during the run, so the children's count is its own
    sleeps = resource.getrusage(resource.RUSAGE_CHILDREN).ru_nvcsw - children
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if non2xx:
        raise RuntimeError(f"{url}: {non2xx.group(1)} error answers\n{out}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return {
        "rps": rps, "p50": latency(out, "50%"), "p99": latency(out, "99%"),
        "cpu": cpu / requests * 1e6 if requests else math.nan,
        "helper": helper_cpu / requests * 1e6 if requests and server else math.nan,
        "busy": busy,
        "preempted": preempted / requests * 1000 if requests and server else math.nan,
        "wakes": sleeps / requests * 1000 if requests else math.nan,
    }  # fmt: skip


def load_command(command: list[str], batch: bool) -> list[str]:
    """``command``, at the scheduling policy SCHED_BATCH if ``batch`` (see ``wrk``)."""
    return ["chrt", "--batch", "0", *command] if batch else command


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a running process, from ``/proc`` (NaN elsewhere)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return math.nan
    return cpu_seconds_of_stat(stat)


def cpu_seconds_of_stat(stat: str) -> float:
    """utime + stime of a ``/proc/PID/stat`` line (fields 14 and 15; the command name, in
    parentheses, may itself hold spaces and parentheses, so count from its end)."""
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds of each child process of ``pid`` (of any of its threads), by pid."""
    return {child: process_cpu_seconds(child) for child in child_pids(pid)}


def child_pids(pid: int) -> list[int]:
    """The children of ``pid``, from ``/proc/PID/task/*/children`` (a process started from
    a thread, as the inbox starts its writer, is a child of that thread)."""
    return [int(child) for text in thread_files(pid, "children") for child in text.split()]


def involuntary_switches(pid: int) -> int:
    """How often the threads of ``pid`` were taken off a CPU while they still had work
    (another task was woken or had waited its turn), from ``/proc/PID/task/*/status``:
    how much the server shared its cores with other busy processes."""
    return sum(map(switches_of_status, thread_files(pid, "status")))


def thread_files(pid: int, name: str) -> list[str]:
    """The text of ``/proc/PID/task/*/<name>`` for each thread of ``pid``: none for a
    process (or a thread) that has gone, or where there is no ``/proc``."""
    texts: list[str] = []
    with contextlib.suppress(OSError):
        for thread in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                texts.append(Path(f"/proc/{pid}/task/{thread}/{name}").read_text())
    return texts


def switches_of_status(status: str) -> int:
    """The ``nonvoluntary_ctxt_switches`` count of a ``/proc/.../status`` text (0 if none)."""
    match = re.search(r"^nonvoluntary_ctxt_switches:\s+(\d+)", status, re.MULTILINE)
    return int(match.group(1)) if match else 0


def machine_times(stat: str | None = None) -> tuple[int, int]:
    """(all, idle) CPU time of the whole machine in clock ticks, from the first line of
    ``/proc/stat`` (idle counts iowait too); (0, 0) where there is none."""
    if stat is None:
        try:
            stat = Path("/proc/stat").read_text()
        except OSError:
            return 0, 0
    fields = [int(value) for value in stat.split("\n", 1)[0].split()[1:]]
    return sum(fields[:8]), fields[3] + fields[4]  # guest time is already in user time


def busy_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The share of the machine's CPU time that was not idle between two machine_times."""
    total, idle = after[0] - before[0], after[1] - before[1]
    return 1 - idle / total if total > 0 else math.nan


def latency(out: str, label: str) -> float:
    """A percentile from wrk's latency distribution, in milliseconds."""
    value, unit = re.search(rf"{label}\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def post_script(body: bytes, content_type: str = "application/json") -> Path:
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    text = body.decode().replace("\\", "\\\\").replace('"', '\\"')
    script.write_text(
        f'wrk.method = "POST"\nwrk.body = "{text}"\nwrk.headers["Content-Type"] = "{content_type}"\n'
    )
    return script


METRICS = ("rps", "p50", "p99", "cpu", "helper", "busy", "preempted", "wakes")


def measure(apps: dict[str, tuple[str, str]], rounds: int, duration: float, path: str,
            script: Path, warmup: float = 1.0, setup: Any = None,
            batch: Collection[str] = (), served: Collection[str] = (),
            ) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Per app, the median of each of ``wrk``'s figures (``METRICS``: req/s, latencies,
    the server's and its helpers' CPU per request, machine busy, the server's
    preemptions, wrk's sleeps), and each round's req/s (``rounds``, for
    ``round_ratios``). ``setup(key)`` gives (server args, env) per run; the apps in
    ``served`` run under ``dispatcher serve`` (``serve_command``), the others under plain
    uvicorn; the apps in ``batch`` get their load from wrk at SCHED_BATCH (``wrk``)."""
    runs: dict[str, list[dict[str, float]]] = {key: [] for key in apps}
    for _ in range(rounds):
        for key, (_, app) in apps.items():
            port = free_port()
            extra, env = setup(key) if setup else ([], {})
            command = serve_command if key in served else uvicorn_command
            proc = start(app, port, extra, env, command)
            try:
                url = f"http://127.0.0.1:{port}{path}"
                wrk(url, warmup, script, batch=key in batch)
                runs[key].append(wrk(url, duration, script, server=proc.pid, batch=key in batch))
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    return {
        key: {
            **{m: statistics.median(r[m] for r in results) for m in METRICS},
            "rounds": [r["rps"] for r in results],
        }
        for key, results in runs.items()
    }


def round_ratios(result: dict[str, dict[str, Any]], x: str, y: str) -> str:
    """x's req/s over y's, round by round: the two ran a few seconds apart, so a slow
    phase of this shared machine that lasts minutes shows as a spread here, not as one
    app's median against another's."""
    pairs = zip(result[x]["rounds"], result[y]["rounds"], strict=True)
    return " ".join(f"{rx / ry:.2f}" for rx, ry in pairs)


def in_process_us(app: Any, calls: int = 20_000, repeats: int = 7, sweep: int = 0) -> float:
    """Microseconds per request of an ASGI app called directly (no server, no socket) with
    the bench's request, on uvloop: the best of ``repeats`` timings of ``calls`` calls (the
    others were disturbed by whatever else this shared machine ran).

    With ``sweep`` (bytes), each call is timed alone after reading that much other memory,
    so it starts with the CPU caches holding something else, as in a server, where the
    HTTP stack and the kernel run between two requests; the median call counts.
    """
    import uvloop

    scope = {
        "type": "http", "method": "POST", "path": "/payments", "root_path": "",
        "query_string": b"", "headers": [
            (b"host", b"127.0.0.1"), (b"content-length", str(len(BODY)).encode()),
            (b"content-type", b"application/json"),
        ],
    }  # fmt: skip
    message = {"type": "http.request", "body": BODY, "more_body": False}

    async def receive() -> dict[str, Any]:
        return message

    async def send(message: dict[str, Any]) -> None:
        pass

    async def timed() -> float:
        await http_apps.hooks.startup()
        for _ in range(calls // 10):  # warm up
            await app(scope, receive, send)
        runs = []
        if sweep:
            other = bytearray(b"\2") * sweep  # written, so backed by real pages (not zero pages)
            for _ in range(calls):
                other.find(1)  # reads all of it: nothing there
                start = time.perf_counter()
                await app(scope, receive, send)
                runs.append((time.perf_counter() - start) * 1e6)
        else:
            for _ in range(repeats):
                start = time.perf_counter()
                for _ in range(calls):
                    await app(scope, receive, send)
                runs.append((time.perf_counter() - start) / calls * 1e6)
        await http_apps.hooks.shutdown()
        return statistics.median(runs) if sweep else min(runs)

    return uvloop.run(timed())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--controls", action="store_true",
                        help="also run two ceilings for b/a (see the module's doc)")  # fmt: skip
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install wrk")
    apps = {**APPS, **SERVED}
    env: dict[str, str] = {}
    if args.controls:
        print(f"in-process, us per request   {'warm':>6} {'caches swept':>13}")
        warm = {}
        for key, app in (("a", http_apps.raw), ("f", http_apps.essential), ("b", http_apps.hooks)):
            warm[key] = in_process_us(app)
            cold = in_process_us(app, calls=3000, sweep=SWEEP)
            label = {**APPS, **CONTROLS}[key][0]
            print(f"({key}) {label:24}{warm[key]:>6.2f} {cold:>13.2f}")
        spin = max(0.0, warm["b"] - warm["a"])
        print(f"(e) spins {spin:.2f} us: (b) - (a), warm")
        apps.update(CONTROLS)
        env = {"BENCH_SPIN_US": f"{spin:.3f}"}
    print(f"body: {len(BODY)} bytes; wrk -t1 -c32, {args.rounds} rounds x {args.duration:g} s")
    result = measure(apps, args.rounds, args.duration, "/payments", post_script(BODY),
                     setup=lambda key: ([], env), served=SERVED)  # fmt: skip
    print(f"{'':3}{'app':26}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'cpu us':>8}{'wakes':>7}"
          f"{'busy':>6}")  # fmt: skip
    for key, (label, _) in apps.items():
        r = result[key]
        print(f"({key}) {label:26}{r['rps']:>10,.0f}{r['p50']:>9.2f}{r['p99']:>9.2f}"
              f"{r['cpu']:>8.1f}{r['wakes']:>7.0f}{r['busy']:>6.0%}")  # fmt: skip
    print("cpu us: the server process's CPU per request; wakes: wrk's sleeps per 1,000;")
    print("busy: the share of the machine's CPU time (both cores) in use during the run")
    rps = {key: r["rps"] for key, r in result.items()}
    for other, target in (("a", 0.85), ("c", 2.5), ("d", 1.3)):
        print(f"b/{other} = {rps['b'] / rps[other]:.2f}  (target >= {target};"
              f" round by round: {round_ratios(result, 'b', other)})")  # fmt: skip
    print(f"s/b = {rps['s'] / rps['b']:.2f}  (dispatcher serve's one send per response against"
          f" uvicorn's two; round by round: {round_ratios(result, 's', 'b')})")  # fmt: skip
    if args.controls:
        print(f"e/a = {rps['e'] / rps['a']:.2f}  (the dispatcher's in-process work as pure CPU)")
        print(f"f/a = {rps['f'] / rps['a']:.2f}  (only the work no receiver can skip)")


if __name__ == "__main__":
    main()
