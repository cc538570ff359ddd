"""Request headers: case-insensitive and read-only.

Names are stored lower-cased (as ASGI delivers them). A header sent several
times keeps every value in ``raw`` and reads as the values joined with ", "
(RFC 9110 5.3).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any


class Headers(Mapping[str, str]):
    __slots__ = ("_asgi", "_map", "_raw")

    def __init__(self, items: Mapping[str, str] | Iterable[tuple[Any, Any]] | None = None) -> None:
        pairs: list[tuple[str, str]] = []
        if items is None:
            pass
        elif isinstance(items, Headers):
            pairs = list(items.raw)
        elif isinstance(items, Mapping):
            pairs = [(_text(k).lower(), _text(v)) for k, v in items.items()]
        else:
            pairs = [(_text(k).lower(), _text(v)) for k, v in items]
        self._raw: tuple[tuple[str, str], ...] | None = tuple(pairs)
        self._asgi: list[tuple[bytes, bytes]] | None = None
        self._map: dict[str, str] | None = None

    @classmethod
    def from_asgi(cls, raw: list[tuple[bytes, bytes]]) -> Headers:
        """Build from an ASGI scope's header list (names already lower-case, latin-1)."""
        self = cls.__new__(cls)
        self._asgi = raw
        self._raw = None  # decoded on demand
        merged = {}
        for key, value in raw:  # a plain loop: cheaper than a comprehension's frame on 3.11
            merged[key.decode("latin-1")] = value.decode("latin-1")
        # A repeated name (rare) must read as all its values joined: decode again, merging.
        self._map = merged if len(merged) == len(raw) else None
        return self

    def _mapping(self) -> dict[str, str]:
        if self._map is None:
            merged: dict[str, str] = {}
            for name, value in self.raw:
                merged[name] = f"{merged[name]}, {value}" if name in merged else value
            self._map = merged
        return self._map

    @property
    def raw(self) -> tuple[tuple[str, str], ...]:
        """Every header as received, repeats included, in order."""
        if self._raw is None:
            asgi = self._asgi or ()
            self._raw = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in asgi)
        return self._raw

    def __getitem__(self, name: str) -> str:
        value = self.get(name, _ABSENT)
        if value is _ABSENT:
            raise KeyError(name)
        return value

    def get(self, name: str, default: Any = None) -> Any:
        return (self._map or self._mapping()).get(name.lower(), default)

    def getlist(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self.raw if key == name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name, _ABSENT) is not _ABSENT

    def __iter__(self) -> Iterator[str]:
        return iter(self._mapping())

    def __len__(self) -> int:
        return len(self._mapping())

    def __repr__(self) -> str:
        return f"Headers({self._mapping()!r})"

    def lowered(self) -> dict[str, str]:
        """The plain dict behind the mapping (lower-case names)."""
        return self._mapping()


_ABSENT: Any = object()


def _text(value: Any) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)
