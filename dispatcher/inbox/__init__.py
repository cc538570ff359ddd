"""The durable inbox: every accepted delivery is stored before it is acknowledged.

``open_inbox(url)`` picks the store from a URL:

- ``memory://`` -- in-process, for tests; not durable
- ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` (as SQLAlchemy spells them)
- ``postgresql://...`` or ``postgres://...`` (needs asyncpg); ``?schema=name`` picks the schema
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from dispatcher.errors import ValidationError
from dispatcher.inbox.base import ClaimedTask, InboxStore, NewDelivery
from dispatcher.inbox.memory import MemoryStore
from dispatcher.inbox.sqlite import SQLiteStore

if TYPE_CHECKING:
    from dispatcher.inbox.postgres import PostgresStore

__all__ = [
    "ClaimedTask",
    "InboxStore",
    "MemoryStore",
    "NewDelivery",
    "PostgresStore",
    "SQLiteStore",
    "open_inbox",
    "sqlite_path",
]

ACCEPTED = (
    "memory://, sqlite:///relative/path.db, sqlite:////absolute/path.db, "
    "postgresql://user@host/db (or postgres://)"
)


def open_inbox(url: str, **options: Any) -> InboxStore:
    """The store ``url`` names, not yet opened: ``await store.open()`` (or ``async with``)."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "memory":
        return MemoryStore(**options)
    if scheme == "sqlite":
        return SQLiteStore(sqlite_path(url), **options)
    if scheme in ("postgresql", "postgres"):
        from dispatcher.inbox.postgres import PostgresStore

        dsn, schema = _split_schema(url)
        if schema is not None:
            options.setdefault("schema", schema)
        return PostgresStore(dsn, **options)
    raise ValidationError("inbox", f"unsupported inbox URL {_redact(url)!r}; use {ACCEPTED}")


def sqlite_path(url: str) -> Path:
    """The file a ``sqlite:///`` URL names: three slashes relative, four absolute."""
    prefix = "sqlite:///"
    if not url.lower().startswith(prefix) or len(url) == len(prefix):
        raise ValidationError(
            "inbox",
            f"{url!r} names no SQLite file; write sqlite:///relative/path.db "
            "or sqlite:////absolute/path.db",
        )
    return Path(url[len(prefix) :])


def _split_schema(url: str) -> tuple[str, str | None]:
    """Take ``schema=`` out of the query string: asyncpg would reject it as unknown."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((value for key, value in pairs if key == "schema"), None)
    rest = urlencode([(key, value) for key, value in pairs if key != "schema"])
    return urlunsplit(parts._replace(query=rest)), schema


def _redact(url: str) -> str:
    """The URL without a password, fit for an error message."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def __getattr__(name: str) -> Any:
    # PostgresStore is imported on first use, so asyncpg stays an optional dependency.
    if name == "PostgresStore":
        from dispatcher.inbox.postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
