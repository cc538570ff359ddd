"""`dispatcher serve`'s HTTP protocol: a response's head and body leave in one send."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvicorn

from dispatcher.http_protocol import CoalescingTransport, OneSendHttpToolsProtocol, http_protocol

from .processes import free_port

pytestmark = pytest.mark.anyio


class RecordingTransport:
    """What a transport was asked to do, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", bytes(data)))

    def close(self) -> None:
        self.calls.append(("close", None))
        self.closing = True

    def abort(self) -> None:
        self.calls.append(("abort", None))
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return f"info:{name}"


def coalescing() -> tuple[CoalescingTransport, RecordingTransport]:
    inner = RecordingTransport()
    return CoalescingTransport(inner, asyncio.get_running_loop()), inner  # type: ignore[arg-type]


async def next_turn() -> None:
    await asyncio.sleep(0)  # the loop runs what was scheduled before this task resumes


async def test_a_write_and_the_next_in_the_same_turn_leave_as_one() -> None:
    outer, inner = coalescing()
    outer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    outer.write(b"{}")
    assert inner.calls == [("write", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")]
    await next_turn()
    assert len(inner.calls) == 1  # nothing was left to flush


async def test_a_write_nothing_follows_leaves_at_the_next_turn() -> None:
    outer, inner = coalescing()
    outer.write(bytearray(b"head"))
    assert inner.calls == []
    await next_turn()
    assert inner.calls == [("write", b"head")]


async def test_writes_keep_their_order_across_turns_and_connections() -> None:
    first, first_inner = coalescing()
    second, second_inner = coalescing()
    first.write(b"a")
    second.write(b"x")
    first.write(b"b")
    first.write(b"c")  # held again: nothing follows it in this turn
    await next_turn()
    first.write(b"d")
    await next_turn()
    assert first_inner.calls == [("write", b"ab"), ("write", b"c"), ("write", b"d")]
    assert second_inner.calls == [("write", b"x")]


async def test_close_sends_what_is_held_first_and_abort_drops_it() -> None:
    outer, inner = coalescing()
    outer.write(b"bye")
    outer.close()
    assert inner.calls == [("write", b"bye"), ("close", None)]
    await next_turn()
    assert len(inner.calls) == 2

    outer, inner = coalescing()
    outer.write(b"lost")
    outer.abort()
    await next_turn()
    assert inner.calls == [("abort", None)]


async def test_a_held_write_is_dropped_once_the_transport_is_closing() -> None:
    outer, inner = coalescing()
    outer.write(b"late")
    inner.closing = True  # the peer went away before the next turn
    await next_turn()
    assert inner.calls == []


async def test_everything_else_is_the_wrapped_transports() -> None:
    outer, inner = coalescing()
    assert outer.get_extra_info("peername") == "info:peername"
    assert outer.is_closing() is False
    outer.writelines([b"a", b"b"])
    outer.write(b"c")
    assert inner.calls == [("write", b"abc")]


def test_serve_gets_the_one_send_protocol() -> None:
    assert http_protocol() is OneSendHttpToolsProtocol


# --- through uvicorn, on a real socket ------------------------------------------------------


class CountingProtocol(OneSendHttpToolsProtocol):  # type: ignore[misc, valid-type]
    """The protocol, with the socket transport's writes recorded under the coalescing one."""

    sends: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        original = transport.write  # type: ignore[attr-defined]

        class Spy:
            def __getattr__(self, name: str) -> Any:
                return getattr(transport, name)

            def write(self, data: bytes) -> None:
                CountingProtocol.sends.append(bytes(data))
                original(data)

        super().connection_made(Spy())  # type: ignore[arg-type]


async def serving(app: Any) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    port = free_port()
    config = uvicorn.Config(
        app, port=port, http=CountingProtocol, lifespan="off", log_level="error",
        timeout_graceful_shutdown=1,  # a test that failed leaves no server waiting on its app
    )  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    return server, task, port


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.startswith(b"content-length")
    )
    return head, await asyncio.wait_for(reader.readexactly(length), 5)


async def test_uvicorn_sends_each_response_of_a_keep_alive_connection_in_one_write() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        body = scope["path"].encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})

    CountingProtocol.sends = []
    server, task, port = await serving(app)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for path in ("/one", "/two"):
            writer.write(
                f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{{}}".encode()
            )
            head, body = await read_response(reader)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == path.encode()
        writer.close()
    finally:
        server.should_exit = True
        await task
    assert len(CountingProtocol.sends) == 2
    assert [send.startswith(b"HTTP/1.1 200 OK\r\n") for send in CountingProtocol.sends] == [
        True
    ] * 2
    assert CountingProtocol.sends[0].endswith(b"\r\n\r\n/one")


async def test_a_streamed_responses_head_leaves_before_its_body_is_ready() -> None:
    head_read = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"4")]})  # fmt: skip
        await head_read.wait()  # the body waits until the client has the head
        await send({"type": "http.response.body", "body": b"done"})

    CountingProtocol.sends = []
    server, task, port = await serving(app)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        head_read.set()
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"done"
        writer.close()
    finally:
        head_read.set()
        server.should_exit = True
        await task
    assert len(CountingProtocol.sends) == 2 and CountingProtocol.sends[1] == b"done"


async def test_a_malformed_request_still_gets_its_400_before_the_close() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not reached")

    server, task, port = await serving(app)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)  # until the server closes
        writer.close()
    finally:
        server.should_exit = True
        await task
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")


async def test_a_100_continue_leaves_before_the_client_sends_its_body() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = (await receive())["body"]
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})

    server, task, port = await serving(app)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.write(b"ping")  # only now, as a client that waits for the 100 does
        head, body = await read_response(reader)
        writer.close()
    finally:
        server.should_exit = True
        await task
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == b"ping"
