"""The standalone process: `dispatcher serve` on a free port, real HTTP, SIGTERM."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import httpx

from .processes import ROOT, free_port, start, wait_for_line, wait_healthy

CATALOG = str(ROOT / "examples" / "standalone" / "catalog.json")


def test_serve_routes_to_handlers_and_sigterm_finishes_in_flight_work(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    port = free_port()
    log = tmp_path / "serve.log"
    proc = start(
        "serve", CATALOG, "--handlers", "tests.serve_handlers", "--port", str(port),
        env={"DISPATCHER_TEST_OUT": str(out), "DISPATCHER_TEST_SLOW": "1.5"}, log=log,
    )  # fmt: skip
    try:
        wait_healthy(port, proc)
        url = f"http://127.0.0.1:{port}/payments"
        response = httpx.post(url, json={"event": "new-transaction", "transaction_id": "t-1"})
        assert response.status_code == 200, response.text
        assert response.json()["event"] == "payments:new-transaction"
        assert "paid t-1" in out.read_text()

        answers: list[httpx.Response] = []
        slow = threading.Thread(
            target=lambda: answers.append(httpx.post(url, json={"event": "refund"}, timeout=10))
        )
        slow.start()
        wait_for_line(out, "slow-start")
        proc.send_signal(signal.SIGTERM)
        slow.join(timeout=10)
        assert proc.wait(timeout=15) == 0, log.read_text()
    finally:
        proc.kill()
    assert answers and answers[0].status_code == 200
    assert out.read_text().splitlines()[-1] == "slow-done"
    assert "payments payments:refund processed 200" in log.read_text()


def test_serve_refuses_to_start_when_handlers_name_unknown_tags(tmp_path: Path) -> None:
    module = tmp_path / "bad_handlers.py"
    module.write_text(
        "from dispatcher import Router\nrouter = Router()\n"
        "@router.on('payments:refnd')\nasync def h(event): pass\n"
    )
    proc = start(
        "serve", CATALOG, "--handlers", "bad_handlers", "--port", str(free_port()),
        env={"PYTHONPATH": f"{ROOT}:{tmp_path}"}, log=tmp_path / "log",
    )  # fmt: skip
    assert proc.wait(timeout=20) == 1
    text = (tmp_path / "log").read_text()
    assert "did you mean 'payments:refund'" in text and "Traceback" not in text


def test_serve_explains_a_module_without_handlers(tmp_path: Path) -> None:
    (tmp_path / "empty_mod.py").write_text("x = 1\n")
    proc = start(
        "serve", CATALOG, "--handlers", "empty_mod", "--port", str(free_port()),
        env={"PYTHONPATH": f"{ROOT}:{tmp_path}"}, log=tmp_path / "log",
    )  # fmt: skip
    assert proc.wait(timeout=20) == 1
    assert "defines no dispatcher.Router" in (tmp_path / "log").read_text()


def test_serve_a_module_attribute_target_with_two_workers(tmp_path: Path) -> None:
    (tmp_path / "app_mod.py").write_text(
        "from dispatcher import Dispatcher\n"
        f"hooks = Dispatcher.from_catalog({CATALOG!r})\n"
        "@hooks.on('payments:*')\nasync def h(event): pass\n"
    )
    port = free_port()
    proc = start(
        "serve", "app_mod:hooks", "--port", str(port), "--workers", "2",
        env={"PYTHONPATH": f"{ROOT}:{tmp_path}"}, log=tmp_path / "log",
    )  # fmt: skip
    try:
        wait_healthy(port, proc)
        for _ in range(6):
            response = httpx.post(f"http://127.0.0.1:{port}/payments", json={"event": "refund"})
            assert response.json()["status"] == "processed"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, (tmp_path / "log").read_text()
    finally:
        proc.kill()
