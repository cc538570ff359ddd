"""The crash tests' handler: record each delivery's number, durably enough for SIGKILL.

An O_APPEND write is in the kernel once os.write returns, so a process killed
right after still leaves its line; the task is marked done only after that.
"""

from __future__ import annotations

import asyncio
import os

from dispatcher import Event, Router

router = Router()


@router.on("load:item")
async def record(event: Event) -> None:
    await asyncio.sleep(float(os.environ.get("CRASH_HANDLER_DELAY", "0.005")))  # kills land mid-run
    fd = os.open(os.environ["CRASH_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{event.payload['n']}\n".encode())
    finally:
        os.close(fd)
