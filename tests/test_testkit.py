"""The test kit users get: sample requests, the in-process client, the pytest plugin, send."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dispatcher import Dispatcher, testing
from dispatcher.cli import main
from dispatcher.sending import apply_settings
from dispatcher.signatures import GitHub, StandardWebhooks

from .processes import ROOT, free_port, start, wait_healthy

pytestmark = pytest.mark.anyio
CATALOG = ROOT / "examples" / "catalog.json"


def hooks_with(verify: Any = None) -> Dispatcher:
    hooks = Dispatcher.from_catalog(CATALOG)
    if verify is not None:
        hooks.webhooks.update("github", verify=verify)
    return hooks


def test_sample_request_fills_header_fields_and_merges_overrides() -> None:
    request = hooks_with().testing.sample_request("github:issue-opened", action="opened", extra=1)
    assert request.headers["x-github-event"] == "issues"
    assert request.payload["extra"] == 1 and request.payload["issue"]["number"] == 1347
    assert json.loads(request.body) == request.payload
    assert request.path == "/github"
    assert request.headers["content-type"] == "application/json"


def test_sample_requests_are_signed_with_fresh_ids_and_verify() -> None:
    hooks = hooks_with(GitHub("s3cret"))
    first = hooks.testing.sample_request("github:push")
    second = hooks.testing.sample_request("github:push")
    assert first.headers["x-github-delivery"] != second.headers["x-github-delivery"]
    GitHub("s3cret").verify(first.headers, first.body)


def test_a_body_idempotency_key_gets_a_fresh_value_unless_overridden() -> None:
    hooks = hooks_with()
    hooks.webhooks.update("payments", idempotency_key="$Event{event_id}")
    a = hooks.testing.sample_request("payments:refund")
    b = hooks.testing.sample_request("payments:refund")
    assert a.payload["event_id"] != b.payload["event_id"]
    assert (
        hooks.testing.sample_request("payments:refund", event_id="fixed").payload["event_id"]
        == "fixed"
    )


async def test_client_send_event_posts_signed_samples() -> None:
    hooks = hooks_with(StandardWebhooks("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"))
    seen: list[str] = []
    hooks.on("github:*", lambda e: seen.append(e.tag))
    async with testing.client(hooks) as client:
        for tag in ("github:issue-opened", "github:push", "github:issue-opened"):
            response = await client.send_event(tag)
            assert response.status_code == 200, response.text
        await client.drain()  # inline mode: nothing to wait for
    assert seen == ["github:issue-opened", "github:push", "github:issue-opened"]


async def test_client_runs_the_lifespan() -> None:
    hooks = hooks_with()
    async with testing.client(hooks):
        assert hooks.started
    assert not hooks.started


def test_the_pytest_plugin_fixture_and_the_example_test(pytester: pytest.Pytester) -> None:
    pytester.copy_example(str(ROOT / "examples" / "test_with_dispatcher.py"))
    (pytester.path / "catalog.json").write_text(CATALOG.read_text())
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_the_plugin_says_how_to_name_the_dispatcher(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        @pytest.mark.anyio
        async def test_x(webhook_client):
            pass
        @pytest.fixture
        def anyio_backend():
            return "asyncio"
        """
    )
    result = pytester.runpytest_subprocess("-q")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*define a `webhook_dispatcher` fixture*"])


def test_the_plugin_reads_the_ini_option(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        hookmod=f"""
        from dispatcher import Dispatcher
        hooks = Dispatcher.from_catalog({str(CATALOG)!r})
        """
    )
    pytester.makeini("[pytest]\nwebhook_dispatcher = hookmod:hooks\n")
    pytester.makepyfile(
        """
        import pytest
        @pytest.fixture
        def anyio_backend():
            return "asyncio"
        @pytest.mark.anyio
        async def test_x(webhook_client):
            response = await webhook_client.send_event("payments:refund")
            assert response.json()["event"] == "payments:refund"
        """
    )
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_apply_settings_sets_nested_paths_with_json_values() -> None:
    sample = {"a": {"b": 1}, "items": [{"k": "x"}]}
    out = apply_settings(sample, ["a.b=2", "a.c=text", 'items[0].k="y"', "new.deep=true"])
    assert out == {"a": {"b": 2, "c": "text"}, "items": [{"k": "y"}], "new": {"deep": True}}
    assert sample == {"a": {"b": 1}, "items": [{"k": "x"}]}


def test_cli_send_posts_a_signed_sample_to_a_running_receiver(tmp_path: Path) -> None:
    catalog = json.loads(CATALOG.read_text())
    catalog["webhooks"][1]["verify"] = {"scheme": "github", "secret_env": "GH_SECRET"}
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(catalog))
    env = {"GH_SECRET": "gh-test-secret"}
    port = free_port()
    proc = start("serve", str(path), "--port", str(port), env=env, log=tmp_path / "log")
    try:
        wait_healthy(port, proc)
        url = f"http://127.0.0.1:{port}"
        sent = subprocess.run(
            [sys.executable, "-m", "dispatcher", "send", "github:issue-opened", "--catalog", str(path),
             "--url", url, "--set", "issue.number=7"],
            capture_output=True, text=True, env={**__import__("os").environ, **env}, cwd=ROOT,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        assert sent.stdout.startswith("200 ") and '"event":"github:issue-opened"' in sent.stdout
        unsigned = CliRunner().invoke(
            main, ["send", "payments:refund", "--catalog", str(CATALOG), "--url", url + "/nowhere"]
        )
        assert unsigned.exit_code == 1 and unsigned.output.startswith("404 ")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)


def test_cli_send_explains_an_unreachable_receiver() -> None:
    result = CliRunner().invoke(
        main,
        [
            "send",
            "payments:refund",
            "--catalog",
            str(CATALOG),
            "--url",
            f"http://127.0.0.1:{free_port()}",
        ],
    )
    assert result.exit_code == 1
    assert "cannot reach" in result.output and "Traceback" not in result.output
