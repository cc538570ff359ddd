"""Request headers: case-insensitive and read-only.

Names are stored lower-cased (as ASGI delivers them), so a lookup is one dict
access. A header sent several times keeps every value in ``raw`` and reads as
the values joined with ", " (RFC 9110 5.3).
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
        self._asgi = None
        merged: dict[str, str] = {}
        for name, value in pairs:
            merged[name] = f"{merged[name]}, {value}" if name in merged else value
        self._map = merged

    @classmethod
    def from_asgi(cls, raw: Iterable[tuple[bytes, bytes]]) -> Headers:
        """Build from an ASGI scope's header list (names already lower-case, latin-1)."""
        self = cls.__new__(cls)
        merged: dict[str, str] = {}
        for key, data in raw:  # one pass: this runs for every delivery
            name = key.decode("latin-1")
            if name in merged:
                merged[name] = f"{merged[name]}, {data.decode('latin-1')}"
            else:
                merged[name] = data.decode("latin-1")
        self._map = merged
        self._asgi = raw
        self._raw = None  # decoded when someone asks
        return self

    @property
    def raw(self) -> tuple[tuple[str, str], ...]:
        """Every header as received, repeats included, in order."""
        if self._raw is None:
            asgi = self._asgi or ()
            self._raw = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in asgi)
        return self._raw

    def __getitem__(self, name: str) -> str:
        return self._map[name.lower()]

    def get(self, name: str, default: Any = None) -> Any:
        return self._map.get(name.lower(), default)

    def getlist(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self.raw if key == name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._map

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def __repr__(self) -> str:
        return f"Headers({self._map!r})"

    def lowered(self) -> dict[str, str]:
        """The plain dict behind the mapping (lower-case names): the matcher reads it directly."""
        return self._map


def _text(value: Any) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)
