"""Metrics hooks. ``Metrics`` records nothing; ``dispatcher.prometheus`` fills these in.

The receiver calls these on every delivery, so an implementation must keep
them cheap (a dict update, not a lock and a label lookup).
"""

from __future__ import annotations

from typing import Any

from .receiver import Receive, Scope, Send, send_json


class Metrics:
    """What the receiver reports; every method is a cheap no-op here."""

    def delivery(self, webhook: str, event: str | None, status: str, duration: float) -> None:
        pass

    def handler_ran(self, event: str | None, duration: float, failed: bool) -> None:
        pass

    def processed(self, webhook: str, event: str, handler_duration: float, duration: float) -> None:
        """The commonest delivery in one call: a matched event whose one handler succeeded,
        answered 200 "processed". Records what ``handler_ran`` and ``delivery`` would."""
        self.handler_ran(event, handler_duration, False)
        self.delivery(webhook, event, "processed", duration)

    def signature_failed(self, webhook: str, reason: str) -> None:
        pass

    async def endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /_metrics``: without prometheus-client there is nothing to serve."""
        await send_json(
            send,
            404,
            {
                "error": "not_found",
                "detail": "metrics need prometheus-client: pip install 'webhook-dispatcher[metrics]'",
            },
        )


def create_metrics(hooks: Any) -> Metrics:
    """Prometheus metrics when prometheus-client is installed, else the no-op."""
    try:
        from .prometheus import PrometheusMetrics
    except ImportError:
        return Metrics()
    return PrometheusMetrics(hooks)
