"""The worker: claims tasks from the inbox, runs their handler, records the outcome.

Delivery is at-least-once: a task is marked done only after its handler returned, and a
worker that dies mid-handler loses its lease, so another worker runs the task again.
Handlers should therefore be idempotent (``ClaimedTask.delivery_id`` is a natural key).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import socket
import traceback
from collections.abc import Awaitable, Callable, Sequence

from dispatcher.errors import ValidationError
from dispatcher.inbox.base import ClaimedTask, InboxStore
from dispatcher.retry import Retry

log = logging.getLogger("dispatcher.worker")

#: Stored errors are for operators; a runaway message must not bloat the inbox.
MAX_ERROR_CHARS = 4000
TRACEBACK_LINES = 6


class _Run:
    """Book-keeping for one claimed task: its slot and its lease renewal timer."""

    __slots__ = ("finishing", "holds_slot", "timer")

    def __init__(self) -> None:
        self.timer: asyncio.TimerHandle | None = None
        self.finishing = False
        self.holds_slot = True


class Worker:
    def __init__(
        self,
        store: InboxStore,
        run: Callable[[ClaimedTask], Awaitable[None]],
        *,
        retry_for: Callable[[ClaimedTask], Retry],
        concurrency: int = 4,
        lease: float = 30.0,
        on_dead: Callable[[ClaimedTask, BaseException], Awaitable[None]] | None = None,
        name: str | None = None,
        poll_interval: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValidationError("concurrency", f"must be at least 1, got {concurrency}")
        if not lease > 0:
            raise ValidationError("lease", f"must be a positive number of seconds, got {lease}")
        if not poll_interval > 0:
            raise ValidationError(
                "poll_interval", f"must be a positive number of seconds, got {poll_interval}"
            )
        self.store = store
        self.run = run
        self.retry_for = retry_for
        self.concurrency = concurrency
        self.lease = lease
        self.on_dead = on_dead
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.poll_interval = poll_interval
        self.rng = rng or random.Random()
        # Claimed tasks until their outcome is recorded; _running counts those whose handler
        # still runs. A slot frees when the handler returns, so the next claim can share a
        # commit with the outcomes being recorded (SQLite group commit) instead of
        # waiting for them.
        self._inflight: dict[asyncio.Task[None], ClaimedTask] = {}
        self._running = 0
        # Slots held for tasks this process is storing (reserve, then adopt), and whether
        # the last claim came back full: a backlog, which keeps a slot (see reserve).
        self._reserved = 0
        self._backlog = False
        self._stopped = True  # not started, or stop() has returned
        self._background: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._stop_event = asyncio.Event()
        self._slot_freed = asyncio.Event()

    @property
    def running(self) -> bool:
        return self._loop_task is not None and not self._loop_task.done()

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    async def start(self) -> None:
        """Start claiming and running tasks in the background on the running loop."""
        if self.running:
            raise RuntimeError(f"worker {self.name} is already running")
        self._stopping = self._stopped = self._backlog = False
        self._stop_event = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._loop_task = asyncio.create_task(self._loop(), name=f"dispatcher-worker {self.name}")

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop claiming, let running handlers finish for up to ``timeout`` s, cancel the rest.

        A cancelled handler's task is not marked anything: its lease lapses and another
        worker runs it again later.
        """
        deadline = asyncio.get_running_loop().time() + timeout
        self._stopping = True
        self._stop_event.set()
        self._slot_freed.set()
        loop_task, self._loop_task = self._loop_task, None
        if loop_task is not None:
            # The loop may be inside claim(): let it finish so claimed tasks get run.
            await asyncio.wait([loop_task], timeout=timeout)
            if not loop_task.done():
                loop_task.cancel()
                await asyncio.gather(loop_task, return_exceptions=True)
        # Running handlers finish; so do fresh tasks still being stored for slots reserved
        # before the stop (adopt hands them over).
        while self._inflight or self._reserved:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            if self._inflight:
                await asyncio.wait(list(self._inflight), timeout=left)
            else:
                await asyncio.sleep(min(left, 0.005))
        late = list(self._inflight)
        for task in late:
            log.warning(
                "worker %s: cancelling %s after %ss; its lease will lapse and it will rerun",
                self.name,
                _label(self._inflight[task]),
                timeout,
            )
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        self._stopped = True
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    def reserve(self, wanted: int) -> int:
        """Hold up to ``wanted`` free slots for the tasks of a delivery being stored now:
        how many were held. Pass them to ``adopt`` once the store answered.

        None while stopping. While the inbox has a backlog (the last claim filled every
        free slot), one free slot stays with the loop's claims, so older work keeps
        moving while fresh deliveries still start at once (measured under overload:
        fresh tasks claimed as stored cost less than claims, so more work gets done).
        """
        if self._stopping or self._stopped:
            return 0
        kept = 1 if self._backlog else 0  # for the loop's claims of older work
        free = self._free_slots() - kept
        if free <= 0:  # the common case under load: every slot busy
            return 0
        held = wanted if wanted < free else free  # min(), without its call: every request
        self._reserved += held
        return held

    def adopt(self, tasks: Sequence[ClaimedTask], reserved: int) -> None:
        """Run ``tasks``, claimed for this worker by ``InboxStore.add_and_claim``, in the
        ``reserved`` slots held for them; slots left over are freed."""
        self._reserved -= reserved
        if self._stopped:
            if tasks:  # too late to run here: their leases lapse, then any worker runs them
                log.warning(
                    "worker %s had stopped when %d fresh task(s) came; they run again "
                    "once their lease lapsed",
                    self.name,
                    len(tasks),
                )
            return
        for task in tasks:
            self._spawn(task)
        if len(tasks) < reserved:
            self._slot_freed.set()

    async def run_once(self) -> int:
        """Claim one batch (up to the free slots), run it to the end; how many ran."""
        free = self._free_slots()
        if free <= 0:
            return 0
        tasks = await self.store.claim(self.name, free, self.lease)
        spawned = [self._spawn(task) for task in tasks]
        if spawned:
            await asyncio.gather(*spawned)
        return len(tasks)

    # -- the loop ----------------------------------------------------------------------

    async def _loop(self) -> None:
        failures = 0
        while not self._stopping:
            free = self._free_slots()
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            try:
                tasks = await self.store.claim(self.name, free, self.lease)
                failures = 0
                self._backlog = len(tasks) == free
                for task in tasks:
                    self._spawn(task)
                # Fewer than asked for: the inbox is drained for now. Anything added since
                # is signalled to wait(), which then returns at once.
                if len(tasks) < free and not self._stopping:
                    await self._idle()
            except Exception:  # the store is down or broken: keep trying, never die
                failures += 1
                pause = min(5.0, 0.05 * 2**failures)
                log.exception("worker %s: claim failed; retrying in %.2fs", self.name, pause)
                await self._pause(pause)

    async def _idle(self) -> None:
        waiter = asyncio.ensure_future(self.store.wait(self.poll_interval))
        stopper = asyncio.ensure_future(self._stop_event.wait())
        try:
            await asyncio.wait([waiter, stopper], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for future in (waiter, stopper):
                future.cancel()
            await asyncio.gather(waiter, stopper, return_exceptions=True)
        if waiter.done() and not waiter.cancelled() and waiter.exception() is not None:
            log.warning("worker %s: waiting for work failed: %s", self.name, waiter.exception())
            await self._pause(self.poll_interval)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), seconds)

    def _free_slots(self) -> int:
        # Outcomes still being recorded are capped too, so a slow store applies back-pressure.
        free = min(self.concurrency - self._running, 2 * self.concurrency - len(self._inflight))
        return free - self._reserved

    def _spawn(self, task: ClaimedTask) -> asyncio.Task[None]:
        state = _Run()
        runner = asyncio.create_task(self._handle(task, state), name=f"dispatcher {_label(task)}")
        self._running += 1
        self._inflight[runner] = task
        runner.add_done_callback(self._finished)
        return runner

    def _release(self, state: _Run) -> None:
        state.finishing = True
        if state.holds_slot:
            state.holds_slot = False
            self._running -= 1
            self._slot_freed.set()

    def _finished(self, runner: asyncio.Task[None]) -> None:
        self._inflight.pop(runner, None)
        self._slot_freed.set()

    # -- one task ----------------------------------------------------------------------

    async def _handle(self, task: ClaimedTask, state: _Run) -> None:
        try:
            await self._attempt(task, state)
        finally:
            self._release(state)
            if state.timer is not None:
                state.timer.cancel()

    async def _attempt(self, task: ClaimedTask, state: _Run) -> None:
        retry = self._retry(task)
        if task.attempt > retry.max_attempts:
            # Earlier runs lost their leases (worker killed, or handler hung past the lease):
            # running it again would exceed the limit, so it is dead without another run.
            exc = RuntimeError(
                f"lease lapsed after {task.attempt - 1} attempts "
                f"(max_attempts={retry.max_attempts}; worker died?)"
            )
            self._release(state)
            await self._dead(task, exc, f"{type(exc).__name__}: {exc}")
            return
        self._schedule_renewal(task, state)
        try:
            await self.run(task)
        except Exception as exc:
            self._release(state)
            error = describe(exc)
            if task.attempt >= retry.max_attempts:
                await self._dead(task, exc, error)
            else:
                retry_at = self.store.clock() + retry.delay(task.attempt, self.rng)
                log.warning("%s failed, retrying: %s", _label(task), error.splitlines()[0])
                await self._settle(task, self.store.fail(task, error, retry_at))
        else:
            self._release(state)
            await self._settle(task, self.store.complete(task))

    def _retry(self, task: ClaimedTask) -> Retry:
        try:
            return self.retry_for(task)
        except Exception:
            log.exception("retry_for(%s) failed; using the default Retry()", _label(task))
            return Retry()

    async def _dead(self, task: ClaimedTask, exc: BaseException, error: str) -> None:
        log.error("%s is dead after attempt %d: %s", _label(task), task.attempt, error)
        if not await self._settle(task, self.store.fail(task, error, None)):
            return  # fenced or failed: someone else owns the task now, or it reruns later
        if self.on_dead is not None:
            try:
                await self.on_dead(task, exc)
            except Exception:
                log.exception("on_dead for %s raised", _label(task))

    async def _settle(self, task: ClaimedTask, call: Awaitable[bool]) -> bool:
        """Record an outcome; False (and a log line) when fenced or the store failed."""
        try:
            ok = await call
        except Exception:
            log.exception("recording the outcome of %s failed; it will run again", _label(task))
            return False
        if not ok:
            log.warning("%s: lease was lost before finishing; outcome discarded", _label(task))
        return ok

    # -- leases ------------------------------------------------------------------------

    def _schedule_renewal(self, task: ClaimedTask, state: _Run) -> None:
        # A timer per task is much cheaper than a task per task, and most handlers finish
        # long before the first renewal is due.
        loop = asyncio.get_running_loop()
        state.timer = loop.call_later(self.lease / 3, self._renewal_due, task, state)

    def _renewal_due(self, task: ClaimedTask, state: _Run) -> None:
        if state.finishing:
            return
        renewal = asyncio.create_task(self._renew(task, state))
        self._background.add(renewal)
        renewal.add_done_callback(self._background.discard)

    async def _renew(self, task: ClaimedTask, state: _Run) -> None:
        try:
            ok = await self.store.renew(task, self.lease)
        except Exception as exc:
            log.warning("renewing the lease of %s failed (will retry): %s", _label(task), exc)
            ok = True
        if state.finishing:
            return
        if not ok:
            log.warning(
                "%s: lease lost (lapsed and reclaimed); its result will be discarded", _label(task)
            )
            return
        self._schedule_renewal(task, state)


def describe(exc: BaseException) -> str:
    """``Type: message`` and the last traceback lines: what an operator needs to triage.

    A NUL character is written as ``\\x00``, and a lone surrogate as ``\\udXXX``: no
    PostgreSQL text can hold them, and an outcome it refused would leave the task leased,
    to run again at the end of every lease.
    """
    head = f"{type(exc).__name__}: {exc}"
    frames = "".join(traceback.format_tb(exc.__traceback__)).rstrip().splitlines()
    text = "\n".join([head, *frames[-TRACEBACK_LINES:]]).replace("\x00", "\\x00")
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


def _label(task: ClaimedTask) -> str:
    return f"task {task.task_id} ({task.handler} for delivery {task.delivery_id})"
