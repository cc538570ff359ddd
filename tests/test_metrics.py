"""GET /_metrics (prometheus-client), and the JSON log line."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.responses import Response

from dispatcher import Dispatcher, Retry, testing
from dispatcher.errors import ValidationError
from dispatcher.logs import JsonFormatter
from dispatcher.metrics import Metrics, create_metrics
from dispatcher.prometheus import BUCKETS, PrometheusMetrics
from dispatcher.signatures import GitHub

from .processes import ROOT, free_port, start, wait_healthy

CATALOG = ROOT / "examples" / "standalone" / "catalog.json"


def make(**options: Any) -> Dispatcher:
    hooks = Dispatcher.from_catalog(CATALOG, **options)

    @hooks.on("payments:new-transaction")
    async def paid(event: Any) -> None:
        pass

    @hooks.on("payments:refund")
    async def refund(event: Any) -> None:
        raise RuntimeError("refunds are down")

    @hooks.on_unmatched("payments")
    async def unmatched(event: Any) -> None:
        pass

    return hooks


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, by name and labels (parsing proves the format)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: dict[Any, float], name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


async def scrape(http: httpx.AsyncClient) -> dict[Any, float]:
    response = await http.get("/_metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return samples(response.text)


# --- in one process -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_deliveries_are_counted_by_webhook_event_and_status() -> None:
    hooks = make()
    assert type(hooks.metrics) is PrometheusMetrics
    async with testing.client(hooks) as http:
        for _ in range(3):
            await http.post("/payments", json={"event": "new-transaction"})
        await http.post("/payments", json={"event": "refund"})  # its handler fails: 500
        await http.post("/payments", json={"event": "no-such-thing"})
        found = await scrape(http)
    total = "dispatcher_deliveries_total"
    assert value(found, total, webhook="payments", event="payments:new-transaction",
                 status="processed") == 3  # fmt: skip
    assert value(found, total, webhook="payments", event="payments:refund", status="failed") == 1
    assert value(found, total, webhook="payments", event="", status="unmatched") == 1


@pytest.mark.anyio
async def test_handler_durations_and_failures_by_event() -> None:
    hooks = make()
    async with testing.client(hooks) as http:
        for _ in range(2):
            await http.post("/payments", json={"event": "new-transaction"})
        await http.post("/payments", json={"event": "refund"})
        await http.post("/payments", json={"event": "nothing-matches"})
        found = await scrape(http)
    duration = "dispatcher_handler_duration_seconds"
    assert value(found, duration + "_count", event="payments:new-transaction") == 2
    assert value(found, duration + "_count", event="payments:refund") == 1
    assert value(found, duration + "_count", event="") == 1  # the on_unmatched handler
    assert value(found, duration + "_bucket", event="payments:refund", le="+Inf") == 1
    assert 0 < value(found, duration + "_sum", event="payments:refund") < 5  # type: ignore[operator]
    failures = "dispatcher_handler_failures_total"
    assert value(found, failures, event="payments:refund") == 1
    assert value(found, failures, event="payments:new-transaction") is None


@pytest.mark.anyio
async def test_processed_deliveries_add_up_whichever_path_counted_them() -> None:
    # The receiver counts its commonest delivery (one handler, returned None) with one
    # `processed` call on the event's histogram; others (a handler's own Response here)
    # through `delivery`. A scrape adds both up under the same labels.
    hooks = Dispatcher.from_catalog(CATALOG)

    @hooks.on("payments:new-transaction")
    async def paid(event: Any) -> Response | None:
        return Response("ack") if event.payload.get("ack") else None

    async with testing.client(hooks) as http:
        for body in ({"event": "new-transaction"}, {"event": "new-transaction", "ack": True}) * 2:
            assert (await http.post("/payments", json=body)).status_code == 200
        await http.post("/payments", json={"event": "new-transaction"})
        found = await scrape(http)
    assert value(found, "dispatcher_deliveries_total", webhook="payments",
                 event="payments:new-transaction", status="processed") == 5  # fmt: skip
    assert value(found, "dispatcher_handler_duration_seconds_count",
                 event="payments:new-transaction") == 5  # fmt: skip
    fast = hooks.metrics.durations["payments:new-transaction"][-1]  # type: ignore[attr-defined]
    assert fast == 3  # the three that returned None took the one-call way


def test_a_metrics_class_of_its_own_hears_of_processed_deliveries_through_both_methods() -> None:
    heard: list[tuple[Any, ...]] = []

    class Recording(Metrics):
        def delivery(self, webhook: str, event: str | None, status: str, duration: float) -> None:
            heard.append(("delivery", webhook, event, status, duration))

        def handler_ran(self, event: str | None, duration: float, failed: bool) -> None:
            heard.append(("handler_ran", event, duration, failed))

    Recording().processed("payments", "payments:refund", 0.25, 0.5)
    assert heard == [
        ("handler_ran", "payments:refund", 0.25, False),
        ("delivery", "payments", "payments:refund", "processed", 0.5),
    ]


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    metrics = PrometheusMetrics(make())
    # 0.005 is in the le="0.005" bucket; 0.0001, the usual no-op handler, takes the
    # first-bucket shortcut, 0.006 and the rest the bisection
    for seconds in (0.0001, 0.005, 0.006, 0.3, 99.0):
        metrics.handler_ran("payments:refund", seconds, failed=False)
    family = next(f for f in metrics.registry.collect() if f.name.endswith("duration_seconds"))
    buckets = {s.labels["le"]: s.value for s in family.samples if s.name.endswith("_bucket")}
    assert len(buckets) == len(BUCKETS) + 1
    assert buckets["0.005"] == 2 and buckets["0.01"] == 3 and buckets["0.5"] == 4
    assert buckets["10.0"] == 4 and buckets["+Inf"] == 5
    total = next(s.value for s in family.samples if s.name.endswith("_sum"))
    assert total == pytest.approx(0.0001 + 0.005 + 0.006 + 0.3 + 99.0)


@pytest.mark.anyio
async def test_signature_failures_by_webhook_and_reason() -> None:
    hooks = make()
    hooks.webhooks.create(tag="gh", name="GitHub", description="d", verify=GitHub("s3cret"))
    async with testing.client(hooks) as http:
        await http.post("/gh", json={})
        await http.post("/gh", json={}, headers={"x-hub-signature-256": "sha256=00"})
        await http.post("/gh", json={}, headers={"x-hub-signature-256": "sha256=00"})
        found = await scrape(http)
    name = "dispatcher_signature_failures_total"
    assert value(found, name, webhook="gh", reason="missing_signature") == 1
    assert value(found, name, webhook="gh", reason="invalid_signature") == 2
    assert value(found, "dispatcher_deliveries_total", webhook="gh", event="",
                 status="rejected") == 3  # fmt: skip


@pytest.mark.anyio
async def test_unknown_webhook_paths_share_one_series() -> None:
    hooks = make()
    async with testing.client(hooks) as http:
        for i in range(50):
            assert (await http.post(f"/random-{i}", json={})).status_code == 404
        found = await scrape(http)
    rows = [key for key in found if key[0] == "dispatcher_deliveries_total"]
    assert rows == [("dispatcher_deliveries_total", frozenset(
        {("webhook", "_unknown"), ("event", ""), ("status", "rejected")}
    ))]  # fmt: skip
    assert found[rows[0]] == 50


@pytest.mark.anyio
async def test_metrics_route_methods() -> None:
    async with testing.client(make()) as http:
        response = await http.post("/_metrics")
        assert response.status_code == 405
        assert response.headers["allow"] == "GET, HEAD"
        head = await http.head("/_metrics")
        assert head.status_code == 200 and head.content == b""
        assert int(head.headers["content-length"]) > 0
        body = (await http.get("/_metrics")).text
    # Families are declared before anything is counted, so dashboards see the names.
    for name in ("dispatcher_deliveries_total", "dispatcher_handler_duration_seconds",
                 "dispatcher_handler_failures_total", "dispatcher_signature_failures_total"):  # fmt: skip
        assert f"# TYPE {name}" in body


@pytest.mark.anyio
async def test_two_dispatchers_in_one_process_count_apart() -> None:
    first, second = make(), make()
    async with testing.client(first) as a, testing.client(second) as b:
        await a.post("/payments", json={"event": "new-transaction"})
        await a.post("/payments", json={"event": "new-transaction"})
        await b.post("/payments", json={"event": "new-transaction"})
        labels = {"webhook": "payments", "event": "payments:new-transaction", "status": "processed"}
        assert value(await scrape(a), "dispatcher_deliveries_total", **labels) == 2
        assert value(await scrape(b), "dispatcher_deliveries_total", **labels) == 1


@pytest.mark.anyio
async def test_without_prometheus_client_the_route_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "dispatcher.prometheus")
    hooks = Dispatcher.from_catalog(CATALOG)
    assert type(hooks.metrics) is Metrics
    async with testing.client(hooks) as http:
        response = await http.get("/_metrics")
    assert response.status_code == 404
    assert "pip install 'webhook-dispatcher[metrics]'" in response.json()["detail"]


# --- the inbox (queued mode) ----------------------------------------------------------------


@pytest.mark.anyio
async def test_inbox_depth_and_oldest_pending_age_in_queued_mode() -> None:
    hooks = make(inbox="memory://", concurrency=0)  # nobody works the queue: it fills up
    async with testing.client(hooks) as http:
        for _ in range(3):
            assert (await http.post("/payments", json={"event": "refund"})).status_code == 202
        found = await scrape(http)
    assert value(found, "dispatcher_inbox_deliveries", status="pending") == 3
    assert value(found, "dispatcher_inbox_deliveries", status="dead") == 0
    assert value(found, "dispatcher_inbox_tasks", status="pending") == 3
    assert value(found, "dispatcher_inbox_tasks", status="leased") == 0
    assert 0 <= value(found, "dispatcher_inbox_oldest_pending_seconds") < 60  # type: ignore[operator]
    assert value(found, "dispatcher_deliveries_total", webhook="payments",
                 event="payments:refund", status="queued") == 3  # fmt: skip


@pytest.mark.anyio
async def test_queued_handler_runs_are_counted_and_dead_tasks_show() -> None:
    hooks = make(inbox="memory://", retry=Retry(max_attempts=1))
    async with testing.client(hooks) as http:
        await http.post("/payments", json={"event": "refund"})
        await http.drain()
        found = await scrape(http)
    assert value(found, "dispatcher_handler_failures_total", event="payments:refund") == 1
    assert value(found, "dispatcher_inbox_deliveries", status="dead") == 1
    assert value(found, "dispatcher_inbox_oldest_pending_seconds") == 0


@pytest.mark.anyio
async def test_inline_mode_has_no_inbox_gauges_and_a_broken_inbox_does_not_break_scrapes() -> None:
    async with testing.client(make()) as http:
        assert "dispatcher_inbox" not in (await http.get("/_metrics")).text
    hooks = make(inbox="memory://", concurrency=0)

    async def broken() -> dict[str, Any]:
        raise OSError("disk on fire")

    async with testing.client(hooks) as http:
        hooks.inbox.store.stats = broken  # type: ignore[union-attr, method-assign]
        response = await http.get("/_metrics")
    assert response.status_code == 200
    assert "dispatcher_deliveries_total" in response.text
    assert "dispatcher_inbox" not in response.text


# --- several processes ----------------------------------------------------------------------


def test_multiprocess_mode_refuses_a_missing_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "missing"))
    with pytest.raises(ValidationError, match="is not a directory"):
        PrometheusMetrics(make())


def test_multiprocess_mode_needs_the_variable_before_prometheus_client_is_imported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # This test process imported prometheus_client without the variable.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with pytest.raises(ValidationError, match="before Python starts"):
        create_metrics(make())


def test_serve_with_two_workers_counts_every_delivery_whichever_worker_answers(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "prometheus"
    shared.mkdir()
    port = free_port()
    log = tmp_path / "serve.log"
    proc = start(
        "serve", str(CATALOG), "--handlers", "tests.serve_handlers", "--port", str(port),
        "--workers", "2",
        env={"PROMETHEUS_MULTIPROC_DIR": str(shared), "DISPATCHER_TEST_OUT": str(tmp_path / "o")},
        log=log,
    )  # fmt: skip
    try:
        wait_healthy(port, proc)
        url = f"http://127.0.0.1:{port}"
        posted = 0
        # New connections until both workers have answered some (the kernel picks the
        # worker): then the count can only be right if the scrape adds up both.
        while posted < 20 or (len(_pids(shared)) < 2 and posted < 400):
            body = {"event": "new-transaction", "transaction_id": f"t-{posted}"}
            response = httpx.post(f"{url}/payments", json=body)
            assert response.status_code == 200, response.text
            posted += 1
        assert len(_pids(shared)) == 2, f"one worker took all {posted} deliveries"
        for _ in range(10):  # fresh connections: either worker may answer each scrape
            found = samples(httpx.get(f"{url}/_metrics").text)
            counted = [v for k, v in found.items() if k[0] == "dispatcher_deliveries_total"]
            assert sum(counted) == posted
            assert value(found, "dispatcher_handler_duration_seconds_count",
                         event="payments:new-transaction") == posted  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _pids(directory: Path) -> set[str]:
    """Processes that counted a delivery: prometheus-client writes counter_<pid>.db each."""
    return {path.stem.rsplit("_", 1)[1] for path in directory.glob("counter_*.db")}


# --- the JSON log line ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_json_log_line_of_a_delivery_has_the_delivery_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hooks = make()
    with caplog.at_level(logging.INFO, logger="dispatcher"):
        async with testing.client(hooks) as http:
            response = await http.post("/payments", json={"event": "new-transaction"})
    [record] = [r for r in caplog.records if getattr(r, "delivery_id", None)]
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = orjson.loads(line)
    assert {"timestamp", "level", "delivery_id", "webhook", "event", "status", "duration_ms",
            "attempt"} <= entry.keys()  # fmt: skip
    assert entry["delivery_id"] == response.json()["id"]
    assert entry["webhook"] == "payments" and entry["event"] == "payments:new-transaction"
    assert entry["status"] == "processed" and entry["level"] == "info"
    assert entry["attempt"] == 1 and entry["duration_ms"] >= 0
    assert entry["timestamp"].endswith("+00:00")
