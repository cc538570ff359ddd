"""Starting real `dispatcher` processes for tests: free ports, waiting for readiness."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(
    *args: str,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    launcher: tuple[str, ...] = ("-m", "dispatcher"),
) -> subprocess.Popen[bytes]:
    """Run `python -m dispatcher ARGS` (or another launcher) from the repository root."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - the process owns it
    return subprocess.Popen(
        [sys.executable, *launcher, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def wait_healthy(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the process exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/_health", timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"nothing healthy on port {port} after {timeout} s")


def wait_for_line(path: Path, line: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and line in path.read_text().splitlines():
            return
        time.sleep(0.02)
    raise AssertionError(f"{line!r} never appeared in {path}")


def drop_inbox_schema(url: str) -> None:
    """Remove the PostgreSQL schema a test's inbox URL (``?schema=...``) created."""
    import asyncio

    from dispatcher.inbox import open_inbox

    async def drop() -> None:
        store = open_inbox(url)
        await store.open()
        await store.drop_schema()  # type: ignore[attr-defined]
        await store.close()

    asyncio.run(drop())
