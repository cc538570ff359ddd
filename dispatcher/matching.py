"""The match index of one webhook: which event is this payload?

Events are grouped by selector (canonical form). Each group compiles its
selector once and keeps a dict from selector value to event, so a match costs
one extraction per distinct selector and one dict lookup, whatever the number
of events. Groups are tried from the most fields to the fewest, then in order
of first registration; the first hit wins.

A catalog change never leaves a reader with a half-built index. A change that
is a single dict store (adding an event to a group that exists, removing one
that leaves its group non-empty, replacing an event's record under the same
value) is made in place: one store is atomic, readers see it done or not, and
creating N events one by one stays O(N). Any other change builds a new index
from the previous one, copying only the groups it touches, and the catalog
swaps it in whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .extractors import Extractor, compile_lookup, compile_selector
from .selectors import Selector

if TYPE_CHECKING:
    from .records import WebhookEvent

Matcher = Callable[[Any, Mapping[str, str], Mapping[str, str]], "WebhookEvent | None"]


@dataclass(frozen=True, slots=True)
class Group:
    """The events of one webhook that share a selector, by selector value."""

    selector: Selector
    extract: Extractor
    table: dict[Any, WebhookEvent]
    order: int  # when the group was first registered: ties break by it

    @property
    def precedence(self) -> tuple[int, int]:
        return (-len(self.selector.fields), self.order)


@dataclass(frozen=True, slots=True)
class Entry:
    """Where one event sits in the index: its group and its value key."""

    selector: Selector
    key: Any


class EventIndex:
    """An immutable index of one webhook's events. ``match(payload, headers, query)``."""

    __slots__ = ("groups", "match")

    groups: dict[str, Group]
    match: Matcher

    def __init__(self, groups: dict[str, Group] | None = None) -> None:
        self.groups = groups or {}
        ordered = sorted(self.groups.values(), key=lambda group: group.precedence)
        self.match = _matcher(ordered) if ordered else _match_nothing

    def adding(self, event: WebhookEvent, entry: Entry, new_order: Callable[[], int]) -> EventIndex:
        group = self.groups.get(entry.selector.canonical)
        if group is None:
            return self.changed(add=[(event, entry)], new_order=new_order)
        group.table[entry.key] = event  # one atomic store
        return self

    def removing(self, entry: Entry) -> EventIndex:
        group = self.groups[entry.selector.canonical]
        if len(group.table) == 1:
            return self.changed(remove=[entry])
        del group.table[entry.key]  # one atomic delete
        return self

    def replacing(
        self, old: Entry, event: WebhookEvent, entry: Entry, new_order: Callable[[], int]
    ) -> EventIndex:
        if old == entry:
            self.groups[entry.selector.canonical].table[entry.key] = event  # one atomic store
            return self
        return self.changed(remove=[old], add=[(event, entry)], new_order=new_order)

    def changed(
        self,
        remove: Iterable[Entry] = (),
        add: Iterable[tuple[WebhookEvent, Entry]] = (),
        new_order: Callable[[], int] = lambda: 0,
    ) -> EventIndex:
        """A new index with entries removed and added; untouched groups are shared.

        Each touched group is copied once, however many entries change in it, so a
        whole catalog file loads in one pass. ``new_order`` numbers new groups.
        """
        groups = dict(self.groups)
        copied: set[str] = set()

        def writable(selector: Selector) -> Group:
            canonical = selector.canonical
            group = groups.get(canonical)
            if group is None:
                group = Group(selector, compile_selector(selector), {}, new_order())
            elif canonical not in copied:
                group = Group(group.selector, group.extract, dict(group.table), group.order)
            groups[canonical] = group
            copied.add(canonical)
            return group

        for entry in remove:
            group = writable(entry.selector)
            group.table.pop(entry.key, None)
        for event, entry in add:
            writable(entry.selector).table[entry.key] = event
        for canonical in copied:
            if not groups[canonical].table:
                del groups[canonical]
        return EventIndex(groups)

    def lookup(self, entry: Entry) -> WebhookEvent | None:
        """The event registered under this selector and value, if any (for conflict checks)."""
        group = self.groups.get(entry.selector.canonical)
        return group.table.get(entry.key) if group else None

    def __len__(self) -> int:
        return sum(len(group.table) for group in self.groups.values())


def _match_nothing(payload: Any, headers: Any, query: Any) -> None:
    return None


def _matcher(groups: list[Group]) -> Matcher:
    lookups = tuple(compile_lookup(group.selector, group.extract, group.table) for group in groups)
    if len(lookups) == 1:
        return lookups[0]  # the one-selector webhook, the common case: no wrapper at all

    def match(payload: Any, headers: Any, query: Any) -> WebhookEvent | None:
        for lookup in lookups:
            event = lookup(payload, headers, query)
            if event is not None:
                return event
        return None

    return match
