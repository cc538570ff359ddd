"""In-memory idempotency for inline mode: each delivery key runs once.

Providers deliver at least once, so retries and races bring copies. ``acquire``
is an atomic check-and-record: the first caller for a key runs the delivery,
a copy arriving meanwhile waits for the outcome (a duplicate if it succeeded,
otherwise it runs), and a key whose delivery succeeded stays "seen" for the
retention window. A failed delivery is forgotten, so the provider's retry runs
its handlers again.

Bounded: at most ``max_keys`` seen keys (default 100,000, a few tens of MB);
past that the oldest are forgotten first. State is guarded by a thread lock
and waiters are futures of their own loop, so one guard serves any number of
event loops (tests start a new one per client). The durable inbox replaces
this store in queued mode.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

Key = tuple[str, str]


class IdempotencyGuard:
    def __init__(
        self,
        ttl: float = 24 * 3600.0,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: OrderedDict[Key, float] = OrderedDict()  # key → expiry, oldest first
        self._running: dict[Key, list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]] = {}

    async def acquire(self, webhook: str, key: str) -> bool:
        """True: run the delivery, then call ``release``. False: it is a duplicate."""
        slot = (webhook, key)
        while True:
            with self._lock:
                expiry = self._seen.get(slot)
                if expiry is not None:
                    if expiry > self._clock():
                        return False
                    del self._seen[slot]
                waiters = self._running.get(slot)
                if waiters is None:
                    self._running[slot] = []
                    return True
                loop = asyncio.get_running_loop()
                done = loop.create_future()
                waiters.append((loop, done))
            await done  # the running copy finished: look again

    def release(self, webhook: str, key: str, succeeded: bool) -> None:
        slot = (webhook, key)
        with self._lock:
            waiters = self._running.pop(slot, [])
            if succeeded:
                now = self._clock()
                self._seen[slot] = now + self.ttl
                self._seen.move_to_end(slot)
                self._evict(now)
        for loop, done in waiters:
            loop.call_soon_threadsafe(_wake, done)

    def _evict(self, now: float) -> None:
        seen = self._seen
        while seen and (len(seen) > self.max_keys or next(iter(seen.values())) <= now):
            seen.popitem(last=False)

    def __len__(self) -> int:
        return len(self._seen)


def _wake(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)
