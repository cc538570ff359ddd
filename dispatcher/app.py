"""Dispatcher: the facade that ties the catalog, the handlers and the receiver together."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .catalog import Catalog, WebhookEvent, WebhooksAPI
from .catalogfile import check_catalog_data, read_catalog_file, write_catalog_file
from .headers import Headers

_EMPTY: Mapping[str, str] = {}


class Dispatcher:
    """An incoming-webhook dispatcher: a catalog of webhooks and events, and their handlers."""

    def __init__(self) -> None:
        self.catalog = Catalog()
        self.webhooks = WebhooksAPI(self.catalog)

    # --- catalog ------------------------------------------------------------------------------

    @classmethod
    def from_catalog(cls, path: str | Path, **options: Any) -> Dispatcher:
        """A new dispatcher whose catalog is the file at ``path``."""
        hooks = cls(**options)
        hooks.load_catalog(path)
        return hooks

    def load_catalog(self, path: str | Path) -> None:
        """Add the webhooks and events of a catalog file (all or nothing)."""
        data = read_catalog_file(path)
        webhooks, events = check_catalog_data(self.catalog, data, str(path))
        self.catalog.add_all(webhooks, events)

    def save_catalog(self, path: str | Path) -> None:
        write_catalog_file(self.catalog, path)

    def match(
        self,
        payload: Any,
        webhook: str,
        headers: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
    ) -> WebhookEvent | None:
        """The event ``payload`` (with these headers and query) is, or None. No I/O."""
        index = self.catalog.indexes.get(webhook)
        if index is None:
            self.catalog.webhook(webhook)  # raises NotFoundError with a suggestion
        if headers:
            headers = headers.lowered() if isinstance(headers, Headers) else _lower(headers)
        return index.match(payload, headers or _EMPTY, query or _EMPTY)  # type: ignore[union-attr]


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}
