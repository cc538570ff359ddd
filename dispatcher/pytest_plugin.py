"""pytest plugin (installed with the package): a ``webhook_client`` fixture.

Tell it which Dispatcher to test, either by overriding the ``webhook_dispatcher``
fixture in your conftest.py::

    @pytest.fixture
    def webhook_dispatcher():
        from myapp.hooks import hooks
        return hooks

or with an ini option (pytest.ini / pyproject ``[tool.pytest.ini_options]``)::

    webhook_dispatcher = myapp.hooks:hooks

Then, in an async test (anyio's plugin comes with Starlette: ``@pytest.mark.anyio``)::

    async def test_refund(webhook_client):
        response = await webhook_client.send_event("payments:refund", amount=10)
        assert response.status_code == 200
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "webhook_dispatcher",
        "module:attribute of the Dispatcher that the webhook_client fixture tests",
        default="",
    )


@pytest.fixture
def webhook_dispatcher(request: pytest.FixtureRequest) -> Any:
    """The Dispatcher under test: override this fixture, or set the ini option."""
    target = request.config.getini("webhook_dispatcher")
    if not target:
        pytest.fail(
            "webhook_client needs to know your Dispatcher: define a `webhook_dispatcher` fixture "
            "that returns it, or set `webhook_dispatcher = module:attribute` in your pytest config"
        )
    module_name, _, attribute = str(target).partition(":")
    return getattr(importlib.import_module(module_name), attribute)


@pytest.fixture
async def webhook_client(webhook_dispatcher: Any) -> AsyncIterator[Any]:
    """An httpx client bound to the Dispatcher in-process, its lifespan (and workers) running."""
    from .testing import client

    async with client(webhook_dispatcher) as http:
        yield http
