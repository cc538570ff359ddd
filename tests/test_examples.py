"""Every example runs as its README section says."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx
import pytest

from dispatcher import testing

from .processes import ROOT, free_port, start, wait_healthy

pytestmark = pytest.mark.anyio
PAYLOADS = ROOT / "examples" / "payloads"


def payload(name: str) -> dict[str, object]:
    return json.loads((PAYLOADS / f"{name}.json").read_text())


async def test_fastapi_example() -> None:
    from examples import fastapi_app

    async with testing.client(fastapi_app.hooks, fastapi_app.app) as client:
        response = await client.post("/webhooks/payments", json=payload("payments.new-transaction"))
        assert response.json()["event"] == "payments:new-transaction"
        response = await client.post(
            "/webhooks/github", json=payload("github.push"), headers={"X-GitHub-Event": "push"}
        )
        assert response.json()["event"] == "github:push"
        assert (await client.get("/")).json()["received"] == 2
    assert fastapi_app.received == ["1229100110101-192920101", "github:push"]


async def test_starlette_example() -> None:
    from examples import starlette_app

    async with testing.client(starlette_app.hooks, starlette_app.app) as client:
        response = await client.post("/hooks/payments", json=payload("payments.refund"))
        assert response.json()["event"] == "payments:refund"
        assert (await client.get("/")).json() == {"refunds": ["1229100110101-192920101"]}


def test_standalone_example_serves_as_the_readme_says(tmp_path: Path) -> None:
    port = free_port()
    proc = start(
        "serve", "examples/standalone/catalog.json", "--handlers", "examples.standalone.handlers",
        "--port", str(port), log=tmp_path / "log",
    )  # fmt: skip
    try:
        wait_healthy(port, proc)
        base = f"http://127.0.0.1:{port}"
        for name in ("payments.new-transaction", "payments.refund"):
            response = httpx.post(f"{base}/payments", json=payload(name))
            assert response.json()["status"] == "processed"
        response = httpx.post(
            f"{base}/github", json=payload("github.issue-opened"),
            headers={"X-GitHub-Event": "issues"},
        )  # fmt: skip
        assert response.json()["event"] == "github:issue-opened"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        proc.kill()
