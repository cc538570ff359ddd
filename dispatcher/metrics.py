"""Metrics hooks. ``Metrics`` records nothing; the Prometheus one fills these in."""

from __future__ import annotations


class Metrics:
    """What the receiver reports; every method is a cheap no-op here."""

    def delivery(self, webhook: str, event: str | None, status: str, duration: float) -> None:
        pass

    def handler_ran(self, event: str | None, duration: float, *, failed: bool) -> None:
        pass

    def signature_failed(self, webhook: str, reason: str) -> None:
        pass
