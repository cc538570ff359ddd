"""Run `dispatcher` with one deliberate durability bug, to prove the crash test catches it.

python tests/broken_build.py ack_before_commit serve ...
python tests/broken_build.py done_before_handler worker ...
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from dispatcher.cli import main
from dispatcher.pipeline import DispatchResult
from dispatcher.queued import QueuedMode

_background: set[asyncio.Task[Any]] = set()


def ack_before_commit() -> None:
    store_later = QueuedMode.enqueue

    async def enqueue(self: QueuedMode, event: Any, handlers: Any, key: Any) -> DispatchResult:
        async def later() -> None:
            await asyncio.sleep(0.2)
            await store_later(self, event, handlers, key)

        task = asyncio.get_running_loop().create_task(later())
        _background.add(task)
        task.add_done_callback(_background.discard)
        return DispatchResult("queued", 202, event.id, event.webhook, event.tag)

    QueuedMode.enqueue = enqueue  # type: ignore[method-assign]


def done_before_handler() -> None:
    run_handler = QueuedMode.run_task

    async def run_task(self: QueuedMode, task: Any) -> None:
        await self.store.complete(task)
        await run_handler(self, task)

    QueuedMode.run_task = run_task  # type: ignore[method-assign]


if __name__ == "__main__":
    {"ack_before_commit": ack_before_commit, "done_before_handler": done_before_handler}[
        sys.argv[1]
    ]()
    sys.argv = ["dispatcher", *sys.argv[2:]]
    main()
