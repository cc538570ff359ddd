"""Handlers for the real-process tests: each writes a line to $DISPATCHER_TEST_OUT."""

from __future__ import annotations

import asyncio
import os

from dispatcher import Event, Router

router = Router()


def record(line: str) -> None:
    with open(os.environ["DISPATCHER_TEST_OUT"], "a") as out:
        out.write(line + "\n")


@router.on("payments:new-transaction")
async def paid(event: Event) -> None:
    record(f"paid {event.payload['transaction_id']}")


@router.on("payments:refund")
async def slow_refund(event: Event) -> None:
    record("slow-start")
    await asyncio.sleep(float(os.environ.get("DISPATCHER_TEST_SLOW", "2")))
    record("slow-done")
