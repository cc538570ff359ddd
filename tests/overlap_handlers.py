"""Handler for the two-worker test: records when each delivery's run starts and ends, and where."""

from __future__ import annotations

import asyncio
import os

from dispatcher import Event, Router

router = Router()


def record(line: str) -> None:
    fd = os.open(os.environ["OVERLAP_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@router.on("load:item")
async def run(event: Event) -> None:
    n = event.payload["n"]
    record(f"start {n} {os.getpid()}")
    # Every 25th run outlasts the lease (1 s): only lease renewal keeps other workers off it.
    await asyncio.sleep(1.6 if n % 25 == 0 else 0.01)
    record(f"end {n} {os.getpid()}")
