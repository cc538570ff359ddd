"""The PostgreSQL inbox's group commit (postgres_writer.GroupCommit), on a flush that
records its batches: no database needed to see what goes into which transaction."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dispatcher.inbox.postgres_writer import GroupCommit

pytestmark = pytest.mark.anyio


class Recorder:
    """A flush that keeps each batch and answers every item with itself, doubled."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []

    async def __call__(self, items: list[Any]) -> list[Any]:
        self.batches.append(list(items))
        await asyncio.sleep(0)  # a commit takes time: later items queue meanwhile
        return [item * 2 for item in items]


async def test_a_batch_takes_what_queued_meanwhile_up_to_batch_size(anyio_backend: str) -> None:
    flush = Recorder()
    writer = GroupCommit(flush, batch_size=3)
    results = await asyncio.gather(*(writer.submit(n) for n in range(7)))
    assert results == [n * 2 for n in range(7)]
    assert flush.batches == [[0, 1, 2], [3, 4, 5], [6]]  # oldest first
    assert writer.commits == 3


async def test_a_caller_that_gave_up_before_its_turn_is_not_written(anyio_backend: str) -> None:
    flush = Recorder()
    writer = GroupCommit(flush)
    kept, dropped, last = writer.submit(1), writer.submit(2), writer.submit(3)
    dropped.cancel()  # its request was cancelled: never acknowledged, so not stored
    assert await asyncio.gather(kept, last) == [2, 6]
    assert flush.batches == [[1, 3]]


async def test_a_repeated_key_waits_for_the_next_batch_ahead_of_later_items(
    anyio_backend: str,
) -> None:
    flush = Recorder()
    writer = GroupCommit(flush, key=lambda item: item % 10)
    first = [writer.submit(n) for n in (1, 11, 2, 21)]  # 11 and 21 repeat 1's key
    assert await asyncio.gather(*first) == [2, 22, 4, 42]
    assert flush.batches == [[1, 2], [11], [21]]
    flush.batches.clear()
    queued = [writer.submit(n) for n in (5, 15, 6)]
    await asyncio.sleep(0)  # the flusher takes [5, 6] and puts 15 back in front ...
    queued.append(writer.submit(7))  # ... so 15 goes before 7, which came later
    await asyncio.gather(*queued)
    assert flush.batches == [[5, 6], [15, 7]]


async def test_a_failed_flush_fails_its_whole_batch_and_not_the_next(anyio_backend: str) -> None:
    calls = 0

    async def flaky(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        if calls == 1:
            raise ConnectionError("server went away")
        return items

    writer = GroupCommit(flaky, batch_size=2)
    results = await asyncio.gather(*(writer.submit(n) for n in range(3)), return_exceptions=True)
    assert [type(r) for r in results[:2]] == [ConnectionError, ConnectionError]
    assert results[2] == 2
    assert writer.commits == 1
