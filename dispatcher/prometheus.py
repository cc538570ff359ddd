"""Prometheus metrics for ``GET /_metrics`` (the ``metrics`` extra: prometheus-client).

The receiver reports every request, so recording must cost next to nothing.
In one process, ``PrometheusMetrics`` bumps plain dict counters and keeps
histogram buckets itself; a custom Collector turns them into metric families
only when Prometheus scrapes. Under several worker processes (the
``PROMETHEUS_MULTIPROC_DIR`` environment variable set, as prometheus-client
documents) ``MultiProcessMetrics`` writes through prometheus-client's own
metric objects into the shared mmap files, and a scrape, whichever worker
answers it, reads all workers' files with ``MultiProcessCollector``.

Inbox gauges (queued mode) are read from the inbox store at scrape time: the
store is shared by every worker, so any worker's answer is the whole truth.

Labels stay bounded: a payload that matches no event is counted with
``event=""``, and requests to a webhook tag the catalog does not know are
counted under ``webhook="_unknown"`` (tags cannot start with ``_``), so a
client posting to random paths cannot grow the series without bound.
"""

from __future__ import annotations

import asyncio
import logging
import os
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import values as prometheus_values
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .errors import ValidationError
from .metrics import Metrics
from .receiver import Receive, Scope, Send

logger = logging.getLogger("dispatcher")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROC_ENV = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")
UNKNOWN_WEBHOOK = "_unknown"

#: prometheus-client's default buckets (seconds); the +Inf bucket is implicit.
BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)  # fmt: skip

FIRST_BOUND = BUCKETS[0]
#: A histogram list: a count per bucket and +Inf, the sum, then the deliveries ``processed``
#: counted (PrometheusMetrics.processed).
HISTOGRAM_SIZE = len(BUCKETS) + 3
# Their indexes, written as literals where they are bumped: a non-negative constant index
# lets CPython specialise the list subscript (a negative one or a global name does not).
SUM, PROCESSED = 15, 16
assert (SUM, PROCESSED) == (HISTOGRAM_SIZE - 2, HISTOGRAM_SIZE - 1)

DELIVERIES = ("dispatcher_deliveries", "Requests to webhook routes, by webhook, event and outcome.")
DURATION = ("dispatcher_handler_duration_seconds", "Handler run time, by event tag.")
FAILURES = ("dispatcher_handler_failures", "Handler runs that raised, by event tag.")
SIGNATURES = ("dispatcher_signature_failures", "Requests refused by signature checks, by reason.")


class PrometheusMetrics(Metrics):
    """Counts in plain dicts (one process); families are built only at scrape time.

    The receiver and the pipeline call these on the event loop's thread (sync
    handlers run in threads, but their outcome is reported back on the loop),
    so the unlocked ``+= 1`` loses nothing.

    ``PrometheusMetrics(hooks)`` gives a ``MultiProcessMetrics`` when
    ``PROMETHEUS_MULTIPROC_DIR`` is set, so callers need not know the mode.
    """

    multiprocess = False

    def __new__(cls, hooks: Any) -> PrometheusMetrics:
        if cls is PrometheusMetrics and multiprocess_dir() is not None:
            return super().__new__(MultiProcessMetrics)
        return super().__new__(cls)

    def __init__(self, hooks: Any) -> None:
        self.hooks = hooks
        # Nested dicts, not tuple keys: no tuple to build and hash on every call (half the
        # cost). Keys hold the raw event (None when unmatched); labels are made at scrape.
        self.deliveries: dict[str, dict[str | None, dict[str, int]]] = {}
        # Per event: bucket counts (len(BUCKETS) + 1 for +Inf), the sum, then the deliveries
        # counted by ``processed``: one list, so an observation is a few item updates and no
        # attribute lookups, and the commonest delivery is counted with a single dict lookup.
        self.durations: dict[str | None, list[float]] = {}
        self.failures: dict[str | None, int] = {}
        self.signature_failures: dict[str, dict[str, int]] = {}
        # A registry of our own: several Dispatchers in one process must not clash in
        # prometheus-client's global registry.
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_CountsCollector(self))

    # --- the hot path: called for every request -------------------------------------------

    def delivery(self, webhook: str, event: str | None, status: str, duration: float) -> None:
        try:
            self.deliveries[webhook][event][status] += 1
        except KeyError:  # the first of its kind: rare, so the common case pays no check
            self._first_delivery(webhook, event, status)

    def _first_delivery(self, webhook: str, event: str | None, status: str) -> None:
        if webhook not in self.hooks.catalog.webhooks:
            webhook = UNKNOWN_WEBHOOK
        by_status = self.deliveries.setdefault(webhook, {}).setdefault(event, {})
        by_status[status] = by_status.get(status, 0) + 1

    def handler_ran(self, event: str | None, duration: float, failed: bool) -> None:
        try:
            histogram = self.durations[event]
        except KeyError:
            histogram = self.durations[event] = [0.0] * HISTOGRAM_SIZE
        # bisect_left: a bucket is "<= bound". Most handlers take less than the first
        # bound, which a comparison finds for a third of bisect's cost; 1.0, not 1, so the
        # float add takes no int conversion.
        histogram[0 if duration <= FIRST_BOUND else bisect_left(BUCKETS, duration)] += 1.0
        histogram[15] += duration  # SUM
        if failed:
            self.failures[event] = self.failures.get(event, 0) + 1

    def processed(self, webhook: str, event: str, handler_duration: float, duration: float) -> None:
        # handler_ran and delivery in one, on the event's histogram: one dict lookup where
        # they take four (an event tag names its webhook, so the scrape finds the delivery's
        # labels again). About 1k of the two calls' 3.4k instructions per request fewer.
        try:
            histogram = self.durations[event]
        except KeyError:
            histogram = self.durations[event] = [0.0] * HISTOGRAM_SIZE
        bucket = 0 if handler_duration <= FIRST_BOUND else bisect_left(BUCKETS, handler_duration)
        histogram[bucket] += 1.0
        histogram[15] += handler_duration  # SUM
        histogram[16] += 1.0  # PROCESSED deliveries

    def signature_failed(self, webhook: str, reason: str) -> None:
        by_reason = self.signature_failures.setdefault(webhook, {})
        by_reason[reason] = by_reason.get(reason, 0) + 1

    # --- scraping ---------------------------------------------------------------------------

    async def endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /_metrics``: the Prometheus text exposition format (0.0.4)."""
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            await _send(send, 405, b"405 Method Not Allowed\n", "text/plain; charset=utf-8",
                        [(b"allow", b"GET, HEAD")])  # fmt: skip
            return
        body = await self.exposition()
        await _send(send, 200, b"" if method == "HEAD" else body, CONTENT_TYPE, [],
                    length=len(body))  # fmt: skip

    async def exposition(self) -> bytes:
        """Everything a scrape returns: the counters, then the inbox gauges (queued mode)."""
        counters = await self._render_counters()
        inbox = await inbox_families(self.hooks)
        return counters + (generate_latest(_Families(inbox)) if inbox else b"")  # type: ignore[arg-type]

    async def _render_counters(self) -> bytes:
        return generate_latest(self.registry)


class _CountsCollector(Collector):
    """Turns a PrometheusMetrics' dicts into metric families, once per scrape."""

    def __init__(self, metrics: PrometheusMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        m = self.metrics
        histograms = sorted(m.durations.copy().items(), key=_unmatched_first)
        # Snapshots: each list's buckets, sum and processed count from the same moment.
        snapshots = [(event, list(counts)) for event, counts in histograms]
        deliveries = CounterMetricFamily(*DELIVERIES, labels=("webhook", "event", "status"))
        for webhook, event, status, count in _delivery_rows(m.deliveries, snapshots):
            deliveries.add_metric((webhook, event or "", status), count)
        yield deliveries

        durations = HistogramMetricFamily(*DURATION, labels=("event",))
        for event, counts in snapshots:
            durations.add_metric((event or "",), cumulative(counts), counts[SUM])
        yield durations

        failures = CounterMetricFamily(*FAILURES, labels=("event",))
        for event, count in sorted(m.failures.copy().items(), key=_unmatched_first):
            failures.add_metric((event or "",), count)
        yield failures

        signatures = CounterMetricFamily(*SIGNATURES, labels=("webhook", "reason"))
        for webhook, reason, count in _flatten(m.signature_failures):
            signatures.add_metric((webhook, reason), count)
        yield signatures


def _delivery_rows(
    tree: dict[str, Any], histograms: list[tuple[str | None, list[float]]]
) -> list[tuple[Any, ...]]:
    """(webhook, event, status, count) rows: the counts ``delivery`` kept, plus the processed
    deliveries ``processed`` kept on each event's histogram (its webhook: the tag's head)."""
    counts = {row[:-1]: row[-1] for row in _flatten(tree)}
    for event, histogram in histograms:
        if event is not None and histogram[PROCESSED]:
            key = (event.partition(":")[0], event, "processed")
            counts[key] = counts.get(key, 0) + int(histogram[PROCESSED])
    return sorted(((*key, count) for key, count in counts.items()), key=_row_order)


def _row_order(row: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple("" if part is None else part for part in row[:-1])


def _flatten(tree: dict[Any, Any]) -> list[tuple[Any, ...]]:
    """Nested counters as sorted (key, ..., count) rows.

    Every level is copied first (``dict.copy`` is atomic under the GIL): a handler
    thread may add a key while a scrape walks the tree.
    """
    rows: list[tuple[Any, ...]] = []
    for key, value in tree.copy().items():
        if isinstance(value, dict):
            rows.extend((key, *row) for row in _flatten(value))
        else:
            rows.append((key, value))
    return sorted(rows, key=_row_order)


def cumulative(counts: list[float]) -> list[tuple[str, float]]:
    """Per-bucket counts (then the sum, ignored) as Prometheus' cumulative ``le`` buckets."""
    buckets = []
    total = 0.0
    for bound, count in zip((*BUCKETS, float("inf")), counts, strict=False):
        total += count
        buckets.append((floatToGoString(bound), total))
    return buckets


def _unmatched_first(item: tuple[str | None, Any]) -> str:
    return item[0] or ""  # None (unmatched) and str do not compare


# --- several processes ----------------------------------------------------------------------


def multiprocess_dir() -> str | None:
    for name in MULTIPROC_ENV:
        value = os.environ.get(name)
        if value:
            return value
    return None


class _SharedMetrics:
    """prometheus-client metric objects, one set per process.

    In multiprocess mode a value lives in this process' mmap file under the
    metric's name and labels; two objects for one name in one process would
    overwrite each other's counts, so every Dispatcher of the process shares these.
    """

    def __init__(self) -> None:
        labels = ("webhook", "event", "status")
        self.deliveries = Counter(*DELIVERIES, labels, registry=None)
        self.durations = Histogram(*DURATION, ("event",), registry=None, buckets=BUCKETS)
        self.failures = Counter(*FAILURES, ("event",), registry=None)
        self.signatures = Counter(*SIGNATURES, ("webhook", "reason"), registry=None)


_shared: _SharedMetrics | None = None


def shared_metrics() -> _SharedMetrics:
    global _shared
    if _shared is None:
        _shared = _SharedMetrics()
    return _shared


class MultiProcessMetrics(PrometheusMetrics):
    """Counts through prometheus-client's mmap-backed values, summed over processes at scrape."""

    multiprocess = True

    def __init__(self, hooks: Any) -> None:
        path = multiprocess_dir()
        if path is None or not os.path.isdir(path):
            raise ValidationError(
                "PROMETHEUS_MULTIPROC_DIR",
                f"{path!r} is not a directory: create it (empty) before starting the workers",
            )
        if prometheus_values.ValueClass is prometheus_values.MutexValue:
            # prometheus-client picks its value class when first imported.
            raise ValidationError(
                "PROMETHEUS_MULTIPROC_DIR",
                "was set after prometheus_client was imported, so this process cannot share "
                "its counts; set it in the environment before Python starts",
            )
        self.hooks = hooks
        self.path = path
        self.shared = shared_metrics()
        # Label lookups take a lock and build a key: cache the child per label tuple.
        self._delivery_children: dict[tuple[str, str | None, str], Any] = {}
        self._duration_children: dict[str | None, Any] = {}
        self._failure_children: dict[str | None, Any] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(self.registry, path=path)

    def delivery(self, webhook: str, event: str | None, status: str, duration: float) -> None:
        key = (webhook, event, status)
        child = self._delivery_children.get(key)
        if child is None:
            child = self._delivery_child(key)
        child.inc()

    def _delivery_child(self, key: tuple[str, str | None, str]) -> Any:
        webhook, event, status = key
        known = webhook in self.hooks.catalog.webhooks
        child = self.shared.deliveries.labels(
            webhook if known else UNKNOWN_WEBHOOK, event or "", status
        )
        if known:  # unknown tags are never cached: the cache must stay bounded too
            self._delivery_children[key] = child
        return child

    # Through delivery and handler_ran above: the one-process shortcut counts in dicts
    # that no scrape reads in this mode.
    processed = Metrics.processed

    def handler_ran(self, event: str | None, duration: float, failed: bool) -> None:
        child = self._duration_children.get(event)
        if child is None:
            child = self._duration_children[event] = self.shared.durations.labels(event or "")
        child.observe(duration)
        if failed:
            counter = self._failure_children.get(event)
            if counter is None:
                counter = self._failure_children[event] = self.shared.failures.labels(event or "")
            counter.inc()

    def signature_failed(self, webhook: str, reason: str) -> None:
        self.shared.signatures.labels(webhook, reason).inc()

    async def _render_counters(self) -> bytes:
        # Reading every worker's files is disk I/O: keep it off the event loop.
        return await asyncio.to_thread(generate_latest, self.registry)


# --- inbox gauges -----------------------------------------------------------------------------


async def inbox_families(hooks: Any) -> list[Metric]:
    """Depth by status and the oldest pending delivery's age, from the store (queued mode)."""
    store = getattr(getattr(hooks, "inbox", None), "store", None)
    if store is None:
        return []
    try:
        stats = await store.stats()
    except Exception as error:  # a scrape must not fail because the inbox is unreachable
        logger.warning("metrics: cannot read inbox stats: %s", error)
        return []
    tasks = GaugeMetricFamily("dispatcher_inbox_tasks", "Inbox tasks by status.", labels=["status"])
    for status, count in sorted(stats.get("tasks", {}).items()):
        tasks.add_metric((status,), count)
    deliveries = GaugeMetricFamily(
        "dispatcher_inbox_deliveries", "Inbox deliveries by status.", labels=["status"]
    )
    for status, count in sorted(stats.get("deliveries", {}).items()):
        deliveries.add_metric((status,), count)
    age = stats.get("oldest_pending_age")
    oldest = GaugeMetricFamily(
        "dispatcher_inbox_oldest_pending_seconds",
        "Age of the oldest pending delivery (0 when none is pending).",
        value=float(age or 0.0),
    )
    return [tasks, deliveries, oldest]


class _Families:
    """What generate_latest needs of a registry: ``collect()``, here over ready families."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


async def _send(
    send: Send,
    status: int,
    body: bytes,
    content_type: str,
    headers: list[tuple[bytes, bytes]],
    *,
    length: int | None = None,
) -> None:
    size = len(body) if length is None else length
    raw = [(b"content-type", content_type.encode()), (b"content-length", str(size).encode())]
    await send({"type": "http.response.start", "status": status, "headers": raw + headers})
    await send({"type": "http.response.body", "body": body})
