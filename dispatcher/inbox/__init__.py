"""The durable inbox: every accepted delivery is stored before it is acknowledged.

``open_inbox(url)`` picks the store from a URL:

- ``memory://`` -- in-process, for tests; not durable
- ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` (as SQLAlchemy spells them);
  ``?synchronous=NORMAL`` and ``?busy_timeout=SECONDS`` set those store options
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
    "sqlite_options",
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
        for name, value in sqlite_options(url).items():
            options.setdefault(name, value)  # an argument given in code wins over the URL
        return SQLiteStore(sqlite_path(url), **options)
    if scheme in ("postgresql", "postgres"):
        from dispatcher.inbox.postgres import PostgresStore

        dsn, schema = _split_schema(url)
        if schema is not None:
            options.setdefault("schema", schema)
        return PostgresStore(dsn, **options)
    raise ValidationError("inbox", f"unsupported inbox URL {_redact(url)!r}; use {ACCEPTED}")


def sqlite_path(url: str) -> Path:
    """The file a ``sqlite:///`` URL names: three slashes relative, four absolute; the
    query string (``sqlite_options``) is not part of it."""
    prefix = "sqlite:///"
    path = url[len(prefix) :].partition("?")[0] if url.lower().startswith(prefix) else ""
    if not path:
        raise ValidationError(
            "inbox",
            f"{url!r} names no SQLite file; write sqlite:///relative/path.db "
            "or sqlite:////absolute/path.db",
        )
    return Path(path)


#: What a ``sqlite:///`` URL's query string may set: ``SQLiteStore``'s options of the
#: same names, so that ``serve --inbox URL`` and ``worker --inbox URL`` reach them too.
SQLITE_OPTIONS = ("synchronous", "busy_timeout")


def sqlite_options(url: str) -> dict[str, Any]:
    """The store options a ``sqlite:///`` URL sets, as in
    ``sqlite:///inbox.db?synchronous=NORMAL&busy_timeout=10``. Before, anything after
    ``?`` silently became part of the file's name."""
    options: dict[str, Any] = {}
    for name, value in parse_qsl(url.partition("?")[2], keep_blank_values=True):
        if name == "synchronous":
            options[name] = value  # SQLiteStore says which values it takes
        elif name == "busy_timeout":
            try:
                options[name] = float(value)  # SQLiteStore says which numbers it takes
            except ValueError:
                raise ValidationError(
                    name, f"got {value!r}; give seconds, as in 10 or 2.5"
                ) from None
        else:
            raise ValidationError(
                "inbox",
                f"unknown option {name!r} in the SQLite inbox URL {url!r}; "
                f"it takes {' and '.join(f'{known}=' for known in SQLITE_OPTIONS)}, "
                "as in sqlite:///inbox.db?synchronous=NORMAL&busy_timeout=10",
            )
    return options


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
