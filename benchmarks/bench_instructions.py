"""Instructions per request of bench_http.py's apps under uvicorn, counted by callgrind.

    python benchmarks/bench_instructions.py                  # apps a b c d f, about 6 min
    python benchmarks/bench_instructions.py --apps a b --requests 1000

bench_http.py's req/s move by 10-20% from run to run on a shared 2-core machine,
and a slow machine lowers b/a by more than that. An instruction count moves by
under 0.1% between runs, whatever else the machine is doing: it tells whether a
change made the receiver do less, and how far its ratios are from the targets
when every instruction costs the same.

Needs valgrind (Debian: apt-get install valgrind). Each app runs under uvicorn
exactly as in bench_http.py, inside callgrind with instrumentation off; a client
warms it up (CPython specialises bytecode during the first calls), then
callgrind counts the server process's instructions while the client POSTs the
bench's body over 32 keep-alive connections, 32 requests in flight at a time
(as wrk -c32 keeps them). User space only: the kernel's share (sockets, epoll)
is not counted, so the counted ratios leave out a cost every app pays alike.

A ratio here is instructions of the other app over the dispatcher's (b/a is
a's count over b's): what the req/s ratio would be if every instruction took
the same time. They do not on a slow machine, whose caches make the app with
more code and data pay more per instruction.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_http import APPS, CONTROLS, free_port, uvicorn_command, wait_for  # noqa: E402
from benchmarks.http_apps import BODY  # noqa: E402

REQUEST = (
    b"POST /payments HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
)


def drive(port: int, requests: int, connections: int = 32) -> None:
    """POST the bench's body ``requests`` times, ``connections`` at a time; every answer
    must be a 200."""
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(connections)]
    buffers = [b""] * connections
    try:
        for done in range(0, requests, connections):
            batch = range(min(connections, requests - done))
            for i in batch:
                socks[i].sendall(REQUEST)
            for i in batch:
                buffers[i] = read_answer(socks[i], buffers[i])
    finally:
        for sock in socks:
            sock.close()


def read_answer(sock: socket.socket, buffer: bytes) -> bytes:
    """Read one HTTP answer (status 200, with a Content-Length); what came after it."""
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end >= 0:
            head = buffer[:end].decode("latin-1").split("\r\n")
            if not head[0].startswith("HTTP/1.1 200"):
                raise RuntimeError(f"the app answered {head[0]!r}")
            length = next(
                int(line.split(":", 1)[1])
                for line in head
                if line.lower().startswith("content-length:")
            )
            if len(buffer) >= end + 4 + length:
                return buffer[end + 4 + length :]
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("the app closed the connection")
        buffer += chunk


def count(app: str, requests: int, warmup: int) -> float:
    """Instructions per request of ``app`` under uvicorn (callgrind)."""
    port = free_port()
    out = Path(tempfile.mkdtemp())
    command = [
        "valgrind", "--tool=callgrind", "--instr-atstart=no",
        f"--callgrind-out-file={out}/callgrind.out", *uvicorn_command(app, port),
    ]  # fmt: skip
    proc = subprocess.Popen(
        command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "0"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(port, timeout=180)  # uvicorn starts slowly on valgrind's emulated CPU
        drive(port, warmup)
        control(proc.pid, "--instr=on")
        control(proc.pid, "--zero")
        drive(port, requests)
        control(proc.pid, "--dump")
        dumps = [path for path in out.iterdir() if path.name != "callgrind.out"]
        if len(dumps) != 1:
            raise RuntimeError(f"expected one callgrind dump in {out}, found {dumps}")
        summary = next(
            line for line in dumps[0].read_text().splitlines() if line.startswith("summary:")
        )
        return int(summary.split()[1]) / requests
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        shutil.rmtree(out, ignore_errors=True)


def control(pid: int, option: str) -> None:
    subprocess.run(
        ["callgrind_control", option, str(pid)], check=True, capture_output=True, timeout=60
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    everything = {**APPS, **CONTROLS}
    parser.add_argument("--apps", nargs="+", default=["a", "b", "c", "d", "f"],
                        choices=sorted(set(everything) - {"e"}))  # fmt: skip
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=320)
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        sys.exit("valgrind is not installed: apt-get install valgrind")
    print(
        f"instructions per request under uvicorn (callgrind), {args.requests} requests, 32 at a time"
    )
    counted = {}
    for key in args.apps:
        label, app = everything[key]
        counted[key] = count(app, args.requests, args.warmup)
        print(f"({key}) {label:26}{counted[key]:>12,.0f}", flush=True)
    if "b" in counted:
        targets = {"a": 0.85, "c": 2.5, "d": 1.3, "f": None}
        for key, target in targets.items():
            if key in counted:
                goal = f"  (req/s target >= {target})" if target else ""
                print(f"b/{key} = {counted[key] / counted['b']:.3f} by instructions{goal}")


if __name__ == "__main__":
    main()
