"""An in-memory inbox for tests: the same semantics as the durable stores, no durability.

Operations never await while holding state, and a thread lock guards them, so one store
object can be shared by several event loops (and threads) at once.
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dispatcher.errors import NotFoundError
from dispatcher.inbox.base import (
    LAPSED_ERROR,
    ClaimedTask,
    Clock,
    InboxStore,
    NewDelivery,
    Wakeup,
    check_list_args,
    check_purge_args,
    check_replay_args,
    delivery_status,
    empty_stats,
    replay_targets,
    unique_handlers,
    wait_for_work,
)


@dataclass(slots=True)
class _Task:
    id: int
    delivery_id: str
    handler: str
    status: str = "pending"
    due_at: float = 0.0
    attempt: int = 0
    series: int = 0
    lease_token: str | None = None
    lease_until: float | None = None
    worker: str | None = None
    last_error: str | None = None


@dataclass(slots=True)
class _Attempt:
    task_id: int
    handler: str
    series: int
    attempt: int
    worker: str
    started_at: float
    finished_at: float | None = None
    error: str | None = None


@dataclass(slots=True)
class _Delivery:
    data: NewDelivery
    status: str
    series: int = 0
    tasks: list[_Task] = field(default_factory=list)
    attempts: list[_Attempt] = field(default_factory=list)


class MemoryStore(InboxStore):
    def __init__(self, *, clock: Clock = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._wakeup = Wakeup()
        self._deliveries: dict[str, _Delivery] = {}
        self._keys: dict[tuple[str, str], str] = {}
        self._tasks: dict[int, _Task] = {}
        self._ids = itertools.count(1)

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    # -- the delivery path -------------------------------------------------------------

    async def add(self, delivery: NewDelivery) -> str:
        outcome, _ = await self.add_and_claim(delivery, "", 0.0, 0)
        return outcome

    async def add_and_claim(
        self, delivery: NewDelivery, worker: str, lease: float, limit: int
    ) -> tuple[str, list[ClaimedTask]]:
        now = self.clock()
        claimed: list[ClaimedTask] = []
        with self._lock:
            key = (delivery.webhook, delivery.idempotency_key)
            if delivery.idempotency_key is not None and key in self._keys:
                return "duplicate", claimed
            if delivery.id in self._deliveries:
                raise ValueError(f"delivery id {delivery.id!r} is already stored")
            handlers = unique_handlers(delivery.handlers)
            record = _Delivery(delivery, "pending" if handlers else "done")
            for handler in handlers:
                task = _Task(next(self._ids), delivery.id, handler, due_at=now)
                if len(claimed) < limit:
                    self._lease(record, task, worker, lease, now)
                    claimed.append(_claimed(delivery, task))
                record.tasks.append(task)
                self._tasks[task.id] = task
            self._deliveries[delivery.id] = record
            if delivery.idempotency_key is not None:
                self._keys[key] = delivery.id  # type: ignore[index]
        if len(claimed) < len(handlers):  # some task waits for a worker's claim
            self._wakeup.notify()
        return "stored", claimed

    async def claim(self, worker: str, limit: int, lease: float) -> list[ClaimedTask]:
        now = self.clock()
        claimed: list[ClaimedTask] = []
        with self._lock:
            ready = []
            for task in self._tasks.values():
                if task.status == "pending" and task.due_at <= now:
                    ready.append((task.due_at, task.id, task))
                elif task.status == "leased" and task.lease_until < now:  # type: ignore[operator]
                    ready.append((task.lease_until, task.id, task))
            ready.sort(key=lambda item: (item[0], item[1]))
            for _, _, task in ready[: max(0, limit)]:
                record = self._deliveries[task.delivery_id]
                if task.status == "leased":
                    self._finish_attempt(record, task, LAPSED_ERROR, now)
                self._lease(record, task, worker, lease, now)
                claimed.append(_claimed(record.data, task))
        return claimed

    @staticmethod
    def _lease(record: _Delivery, task: _Task, worker: str, lease: float, now: float) -> None:
        """Start the task's next attempt for ``worker`` (the lock is held)."""
        task.status = "leased"
        task.attempt += 1
        task.lease_token = secrets.token_hex(16)
        task.lease_until = now + lease
        task.worker = worker
        record.attempts.append(
            _Attempt(task.id, task.handler, task.series, task.attempt, worker, now)
        )

    async def renew(self, task: ClaimedTask, lease: float) -> bool:
        with self._lock:
            held = self._held(task)
            if held is None:
                return False
            held.lease_until = self.clock() + lease
            return True

    async def complete(self, task: ClaimedTask) -> bool:
        with self._lock:
            held = self._held(task)
            if held is None:
                return False
            self._finish(held, "done", None, None)
            return True

    async def fail(self, task: ClaimedTask, error: str, retry_at: float | None) -> bool:
        with self._lock:
            held = self._held(task)
            if held is None:
                return False
            self._finish(held, "dead" if retry_at is None else "pending", error, retry_at)
        if retry_at is not None:
            self._wakeup.notify()
        return True

    def _held(self, task: ClaimedTask) -> _Task | None:
        held = self._tasks.get(task.task_id)  # type: ignore[arg-type]
        if held is None or held.status != "leased" or held.lease_token != task.lease_token:
            return None
        return held

    def _finish(self, task: _Task, status: str, error: str | None, retry_at: float | None) -> None:
        record = self._deliveries[task.delivery_id]
        self._finish_attempt(record, task, error, self.clock())
        task.status = status
        task.lease_token = None
        task.lease_until = None
        if retry_at is not None:
            task.due_at = retry_at
        if error is not None:
            task.last_error = error
        record.status = delivery_status(t.status for t in record.tasks)

    @staticmethod
    def _finish_attempt(record: _Delivery, task: _Task, error: str | None, now: float) -> None:
        for attempt in reversed(record.attempts):
            if (attempt.task_id, attempt.series, attempt.attempt) == (
                task.id,
                task.series,
                task.attempt,
            ):
                attempt.finished_at = now
                attempt.error = error
                return

    async def wait(self, timeout: float) -> None:
        await wait_for_work(self, self._wakeup, timeout)

    async def next_due(self) -> float | None:
        with self._lock:
            times = [
                t.due_at if t.status == "pending" else t.lease_until
                for t in self._tasks.values()
                if t.status in ("pending", "leased")
            ]
        return min(times) if times else None  # type: ignore[type-var]

    async def pending_count(self) -> int:
        with self._lock:
            return sum(t.status in ("pending", "leased") for t in self._tasks.values())

    # -- operator reads and actions ----------------------------------------------------

    async def stats(self) -> dict[str, Any]:
        now = self.clock()
        result = empty_stats()
        with self._lock:
            oldest = None
            for record in self._deliveries.values():
                result["deliveries"][record.status] += 1
                if record.status == "pending" and (
                    oldest is None or record.data.received_at < oldest
                ):
                    oldest = record.data.received_at
            for task in self._tasks.values():
                result["tasks"][task.status] += 1
        result["oldest_pending_age"] = None if oldest is None else max(0.0, now - oldest)
        return result

    async def list(
        self,
        status: str | None = None,
        webhook: str | None = None,
        event: str | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        check_list_args(status, limit)
        with self._lock:
            records = [
                r
                for r in self._deliveries.values()
                if (status is None or r.status == status)
                and (webhook is None or r.data.webhook == webhook)
                and (event is None or r.data.event == event)
            ]
            records.sort(key=lambda r: (r.data.received_at, r.data.id), reverse=True)
            return [_summary(r) for r in records[:limit]]

    async def get(self, delivery_id: str) -> dict[str, Any] | None:
        with self._lock:
            record = self._deliveries.get(delivery_id)
            if record is None:
                return None
            data = record.data
            return {
                **_summary(record),
                "idempotency_key": data.idempotency_key,
                "series": record.series,
                "headers": list(data.headers),
                "query": data.query,
                "body": data.body,
                "tasks": [
                    {
                        "id": t.id,
                        "handler": t.handler,
                        "status": t.status,
                        "attempt": t.attempt,
                        "series": t.series,
                        "due_at": t.due_at,
                        "lease_until": t.lease_until,
                        "last_error": t.last_error,
                    }
                    for t in record.tasks
                ],
                "attempts": [
                    {
                        "task_id": a.task_id,
                        "handler": a.handler,
                        "series": a.series,
                        "attempt": a.attempt,
                        "worker": a.worker,
                        "started_at": a.started_at,
                        "finished_at": a.finished_at,
                        "error": a.error,
                    }
                    for a in record.attempts
                ],
            }

    async def replay(
        self,
        ids: Sequence[str] | None = None,
        *,
        status: str | None = None,
        webhook: str | None = None,
    ) -> int:
        check_replay_args(ids, status, webhook)
        now = self.clock()
        count = 0
        with self._lock:
            if ids is not None:
                for delivery_id in ids:
                    if delivery_id not in self._deliveries:
                        raise NotFoundError("delivery", delivery_id, self._deliveries)
                records = [self._deliveries[i] for i in dict.fromkeys(ids)]
            else:
                records = list(self._deliveries.values())
            for record in records:
                if (status is not None and record.status != status) or (
                    webhook is not None and record.data.webhook != webhook
                ):
                    continue
                targets = replay_targets(record.status, [t.status for t in record.tasks])
                if targets is None:
                    continue
                record.series += 1
                for task in record.tasks:
                    if task.status in targets:
                        task.status, task.attempt, task.series = "pending", 0, record.series
                        task.due_at, task.lease_token, task.lease_until = now, None, None
                record.status = delivery_status(t.status for t in record.tasks)
                count += 1
        if count:
            self._wakeup.notify()
        return count

    async def purge(self, status: str, older_than: float) -> int:
        check_purge_args(status, older_than)
        cutoff = self.clock() - older_than
        with self._lock:
            doomed = [
                r
                for r in self._deliveries.values()
                if r.status == status and r.data.received_at < cutoff
            ]
            for record in doomed:
                del self._deliveries[record.data.id]
                if record.data.idempotency_key is not None:
                    self._keys.pop((record.data.webhook, record.data.idempotency_key), None)
                for task in record.tasks:
                    del self._tasks[task.id]
        return len(doomed)

    async def per_minute(self, since: float) -> list[tuple[int, str, int]]:
        counts: dict[tuple[int, str], int] = {}
        with self._lock:
            for record in self._deliveries.values():
                if record.data.received_at >= since:
                    key = (int(record.data.received_at // 60) * 60, record.status)
                    counts[key] = counts.get(key, 0) + 1
        return [(minute, status, n) for (minute, status), n in sorted(counts.items())]


def _claimed(data: NewDelivery, task: _Task) -> ClaimedTask:
    return ClaimedTask(
        task_id=task.id,
        delivery_id=data.id,
        handler=task.handler,
        attempt=task.attempt,
        series=task.series,
        lease_token=task.lease_token or "",
        webhook=data.webhook,
        event=data.event,
        body=data.body,
        headers=data.headers,
        query=data.query,
        received_at=data.received_at,
    )


def _summary(record: _Delivery) -> dict[str, Any]:
    # The error of the attempt that finished last, as the SQL stores order it.
    errors = sorted(
        ((a.finished_at or 0.0, i), a.error)
        for i, a in enumerate(record.attempts)
        if a.error is not None
    )
    return {
        "id": record.data.id,
        "webhook": record.data.webhook,
        "event": record.data.event,
        "status": record.status,
        "received_at": record.data.received_at,
        "attempts": len(record.attempts),
        "last_error": errors[-1][1] if errors else None,
    }
