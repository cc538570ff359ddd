"""The standalone receiver's HTTP protocol: uvicorn's httptools protocol, a response in one send.

uvicorn writes a response as two socket sends: its head (``http.response.start``),
then its body. Each send is a syscall, and each wakes the client for half an answer.
Under wrk on loopback the second send cost 11-12% of the receiver's CPU per request. In
queued mode the client sleeps while a commit is awaited, so each of those wake-ups
could also preempt the receiver.

Here each connection's transport holds a write back until the next write made in the
same turn of the event loop, and sends the two as one: a head and the body that follows
it at once leave together. A write that nothing follows is sent at the loop's next turn,
so a streamed response's head still leaves before its body is ready. Nothing else
changes: every byte goes out in order, through the same transport and its flow control.

``dispatcher serve`` runs on this protocol (``http_protocol()``); an app mounted in
another server runs on that server's.
"""

from __future__ import annotations

import asyncio
from typing import Any

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is not installed (uvicorn without its "standard" extra)
    HttpToolsProtocol = None


class CoalescingTransport:
    """A transport that sends a write together with the next one made in the same turn of
    the event loop (see the module's docstring); all else is the wrapped transport's."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is None:
            self._held = bytes(data)  # a copy only if the caller could change it later
            _hold_until_next_turn(self)
        else:
            self._held = None
            self._transport.write(held + data)

    def writelines(self, lines: Any) -> None:
        self.write(b"".join(lines))

    def flush(self) -> None:
        """Send what is held back, if anything."""
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()  # close() sends what was written before it; so must these bytes
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:  # the rest: extra info, reading, buffer limits
        return getattr(self._transport, name)


# The transports holding a write, per event loop, flushed together at the loop's next turn:
# one callback per turn rather than one per response (measured: ~10% more requests/s).
_holding: dict[asyncio.AbstractEventLoop, list[CoalescingTransport]] = {}


def _hold_until_next_turn(transport: CoalescingTransport) -> None:
    loop = transport._loop
    holding = _holding.get(loop)
    if holding is None:
        holding = _holding[loop] = []
        loop.call_soon(_flush_turn, loop, holding)
    holding.append(transport)


def _flush_turn(loop: asyncio.AbstractEventLoop, holding: list[CoalescingTransport]) -> None:
    del _holding[loop]
    for transport in holding:
        transport.flush()


if HttpToolsProtocol is not None:

    class OneSendHttpToolsProtocol(HttpToolsProtocol):  # type: ignore[misc, valid-type]
        """uvicorn's httptools protocol, writing through a ``CoalescingTransport``."""

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]


def http_protocol() -> Any:
    """What ``serve`` hands uvicorn as its HTTP protocol: ``OneSendHttpToolsProtocol``, or
    uvicorn's own choice (``"auto"``) where httptools is not installed."""
    return "auto" if HttpToolsProtocol is None else OneSendHttpToolsProtocol
