"""Helpers for testing your own handlers: sample requests, an in-process client, a fixture.

    hooks.testing.sample_request("payments:refund", amount=10)   # a signed request
    async with dispatcher.testing.client(hooks) as client:       # runs the lifespan too
        response = await client.send_event("payments:refund")
        await client.drain()                                      # queued mode: wait for workers

The pytest plugin (installed with the package) adds a ``webhook_client``
fixture: see ``dispatcher.pytest_plugin``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx

from .errors import DispatcherError
from .samples import SampleRequest, TestingKit

if TYPE_CHECKING:
    from .app import Dispatcher

__all__ = ["SampleRequest", "TestingKit", "WebhookClient", "client", "lifespan"]


class WebhookClient(httpx.AsyncClient):
    """An httpx client bound to a Dispatcher in-process (see ``client()``)."""

    def __init__(self, hooks: Dispatcher, app: Any, base_url: str, prefix: str) -> None:
        super().__init__(transport=httpx.ASGITransport(app=app), base_url=base_url)
        self.hooks = hooks
        self.prefix = prefix

    async def send_event(self, tag: str, /, **overrides: Any) -> httpx.Response:
        """POST the sample request of event ``tag`` (signed as the catalog says) and return the answer."""
        request = self.hooks.testing.sample_request(tag, **overrides)
        return await self.post(
            self.prefix + request.path, content=request.body, headers=request.headers
        )

    async def drain(self, timeout: float = 30.0) -> None:
        """Wait until the inbox has nothing pending or running (queued mode; no-op inline)."""
        inbox = self.hooks.inbox
        if inbox is not None:
            await inbox.drain(timeout)


@contextlib.asynccontextmanager
async def client(
    hooks: Dispatcher, app: Any = None, *, prefix: str = "", base_url: str = "http://testserver"
) -> AsyncIterator[WebhookClient]:
    """An httpx client for ``hooks`` that runs the ASGI lifespan around it (startup checks,
    inbox workers). Pass ``app`` and ``prefix`` to test a parent app the dispatcher is
    mounted in."""
    target = app if app is not None else hooks
    async with lifespan(target), WebhookClient(hooks, target, base_url, prefix) as http:
        yield http


@contextlib.asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    """Drive an ASGI app's lifespan protocol: startup before, shutdown after."""
    to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
    task = asyncio.create_task(app(scope, to_app.get, from_app.put))

    async def reply(expected: str) -> None:
        getter = asyncio.create_task(from_app.get())
        done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
        if getter not in done:
            getter.cancel()
            task.result()  # raises what the app raised
            raise DispatcherError(f"the app ended its lifespan without {expected}")
        message = getter.result()
        if message["type"].endswith(".failed"):
            raise DispatcherError(f"{expected} failed: {message.get('message', '')}")

    await to_app.put({"type": "lifespan.startup"})
    await reply("lifespan.startup")
    try:
        yield
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        await reply("lifespan.shutdown")
        await task
