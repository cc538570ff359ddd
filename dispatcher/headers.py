"""Request headers: case-insensitive and read-only.

Built from an ASGI scope, nothing is decoded or indexed up front: the header
list is kept as it is, becomes a dict keyed by the raw (lower-case) name bytes
(one C-level call) on the first lookup by name that needs one, and a name or
value is decoded only when someone reads it. Decoding every header of every
request was the largest single cost of the receiver's hot path; indexing every
name, for the one header the receiver itself reads, cost more than a scan.

A header sent several times keeps every value in ``raw`` and reads as the
values joined with ", " (RFC 9110 5.3).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

_ABSENT: Any = object()
#: The Content-Type pair of nearly every webhook request, as ASGI servers give it (and of
#: every answer the receiver sends itself).
JSON_CONTENT_TYPE = (b"content-type", b"application/json")


class Headers(Mapping[str, str]):
    __slots__ = ("_asgi", "_indexed")

    def __init__(self, items: Mapping[str, Any] | Iterable[tuple[Any, Any]] | None = None) -> None:
        if items is None:
            pairs: list[tuple[bytes, bytes]] = []
        elif isinstance(items, Headers):
            pairs = list(items._asgi)
        elif isinstance(items, Mapping):
            pairs = [(_bytes(k).lower(), _bytes(v)) for k, v in items.items()]
        else:
            pairs = [(_bytes(k).lower(), _bytes(v)) for k, v in items]
        self._asgi = pairs
        self._indexed: dict[bytes, bytes] | None = _index(pairs)

    @classmethod
    def from_asgi(cls, raw: list[tuple[bytes, bytes]]) -> Headers:
        """Wrap an ASGI scope's header list (names already lower-case), as it is: indexed
        by name only on the first lookup that needs it. The receiver itself reads one
        header (``value``), and indexing every name for that one cost more (hashing
        each new bytes name) than scanning the list."""
        self = cls.__new__(cls)
        self._asgi = raw
        self._indexed = None
        return self

    @classmethod
    def from_raw(cls, raw: Iterable[tuple[str, str]]) -> Headers:
        """Headers again from their ``raw`` (the inbox stores them so): pairs of str, every
        one latin-1, so no per-header type checks (a rebuilt task paid ~5 us for them)."""
        try:
            pairs = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in raw]
        except (UnicodeEncodeError, AttributeError):  # not what raw gives: the general path
            return cls(raw)
        return cls.from_asgi(pairs)

    @property
    def _by_name(self) -> dict[bytes, bytes]:
        indexed = self._indexed
        if indexed is None:
            indexed = self._indexed = _index(self._asgi)
        return indexed

    def value(self, name: bytes) -> bytes | None:
        """The raw value of a lower-case header name, undecoded (the receiver's own lookups);
        before the headers are indexed, found by a scan."""
        indexed = self._indexed
        if indexed is not None:
            return indexed.get(name)
        found = None
        for key, value in self._asgi:
            if key == name:
                if found is not None:  # sent more than once: the values joined, as indexed
                    return self._by_name.get(name)
                found = value
        return found

    def get(self, name: str, default: Any = None) -> Any:
        value = self._by_name.get(name.lower().encode("latin-1"))
        return default if value is None else value.decode("latin-1")

    def __getitem__(self, name: str) -> str:
        value = self._by_name.get(name.lower().encode("latin-1"))
        if value is None:
            raise KeyError(name)
        return value.decode("latin-1")

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower().encode("latin-1") in self._by_name

    def __iter__(self) -> Iterator[str]:
        return (name.decode("latin-1") for name in self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def __repr__(self) -> str:
        return f"Headers({dict(self.items())!r})"

    @property
    def raw(self) -> tuple[tuple[str, str], ...]:
        """Every header as received, repeats included, in order."""
        return tuple([(k.decode("latin-1"), v.decode("latin-1")) for k, v in self._asgi])

    def getlist(self, name: str) -> list[str]:
        key = name.lower().encode("latin-1")
        return [v.decode("latin-1") for k, v in self._asgi if k == key]


def _index(pairs: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    by_name = dict(pairs)  # one C call; later repeats overwrite earlier ones...
    if len(by_name) != len(pairs):  # ...so a repeated name (rare) is merged by hand
        by_name = {}
        for name, value in pairs:
            by_name[name] = by_name[name] + b", " + value if name in by_name else value
    return by_name


def _bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    text = str(value)
    try:
        return text.encode("latin-1")  # what HTTP carries
    except UnicodeEncodeError:
        return text.encode("utf-8")
