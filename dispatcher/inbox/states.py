"""Task and delivery states, and the rules between them that every store applies.

Standard library and dispatcher.errors only: the SQLite writer process loads it without
the rest of the package.
"""

from __future__ import annotations

from collections.abc import Iterable

from dispatcher.errors import ValidationError

TASK_STATUSES = ("pending", "leased", "done", "dead")
DELIVERY_STATUSES = ("pending", "done", "dead")
TERMINAL_STATUSES = ("done", "dead")

#: Task outcomes whose loss in a crash of the machine or database server only makes the
#: task run again, which at-least-once delivery allows: a store may commit a batch of
#: only these without waiting for it to reach the disk. A death is not one of them:
#: ``on_error`` hears of each once.
RERUNNABLE_OUTCOMES = frozenset({"done", "pending"})

#: Written on an attempt whose worker lost its lease before finishing (found at reclaim).
LAPSED_ERROR = "lease lapsed before the attempt finished (worker died or was too slow)"


def unique_handlers(handlers: Iterable[str]) -> tuple[str, ...]:
    """One task per handler key: a key listed twice would otherwise run twice."""
    return tuple(dict.fromkeys(handlers))


def delivery_status(task_statuses: Iterable[str]) -> str:
    statuses = set(task_statuses)
    if statuses & {"pending", "leased"}:
        return "pending"
    return "dead" if "dead" in statuses else "done"


def replay_targets(status: str, task_statuses: list[str]) -> tuple[str, ...] | None:
    """Which task statuses a replay resets, or None when the delivery is not replayed.

    Dead tasks are replayed alone (their done siblings already ran); a fully done delivery
    replays everything. A pending delivery without dead tasks is still in flight: resetting
    its leased tasks would fence out the workers running them, so it is skipped.
    """
    if "dead" in task_statuses:
        return ("dead",)
    if status == "done" and task_statuses:
        return ("done",)
    return None


def check_schema_version(version: int, known: int) -> None:
    """Refuse an inbox whose schema a newer dispatcher migrated: it may not read it right."""
    if version > known:
        raise ValidationError(
            "inbox",
            f"the inbox schema is version {version}, newer than this dispatcher knows"
            f" ({known}); upgrade webhook-dispatcher",
        )
