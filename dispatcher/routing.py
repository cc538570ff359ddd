"""Handler registration and resolution: a router is a dict of lists.

Patterns: an event tag (``payments:refund``), every event of a webhook
(``payments:*``), every matched event (``*``); unmatched payloads of one
webhook or of any; and error handlers. Resolution order is fixed: specific
tag, then webhook wildcard, then ``*``, each in registration order.

A ``Router`` can live in a module of its own (no Dispatcher needed at import
time) and be included into a Dispatcher: that is how ``dispatcher serve
catalog.json --handlers myapp.hooks`` finds handlers.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, overload

from .errors import ValidationError, closest

if TYPE_CHECKING:
    from .catalog import Catalog
    from .event import Event
    from .retry import Retry

F = TypeVar("F", bound=Callable[..., Any])
UNMATCHED = "unmatched:"  # key prefix of on_unmatched registrations


@dataclass(frozen=True)
class Handler:
    """One registration: a function for a pattern. ``key`` names it stably for inbox tasks."""

    pattern: str
    func: Callable[..., Any]
    retry: Retry | None = None
    is_async: bool = field(init=False, compare=False)
    name: str = field(init=False, compare=False)  # module.qualname, for logs and outcomes
    key: str = field(init=False, compare=False)  # pattern + name: what an inbox task records

    def __post_init__(self) -> None:
        func = self.func
        module = getattr(func, "__module__", None)
        qualname = getattr(func, "__qualname__", None) or repr(func)
        name = f"{module}.{qualname}" if module else qualname
        object.__setattr__(self, "is_async", _is_async(func))
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "key", f"{self.pattern} {name}")

    async def __call__(self, event: Event) -> Any:
        if self.is_async:
            return await self.func(event)
        # Plain functions run in a worker thread so they never block the event loop.
        return await asyncio.to_thread(self.func, event)


def _is_async(func: Callable[..., Any]) -> bool:
    """``async def`` functions, and objects whose ``__call__`` is one."""
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None)  # noqa: B004
    )


class Router:
    """Handlers by pattern. ``resolve(webhook, tag)`` gives the ordered tuple to run."""

    def __init__(self) -> None:
        self.handlers: dict[str, list[Handler]] = {}  # pattern → handlers, registration order
        self.error_handlers: list[Callable[..., Any]] = []
        # resolve()'s answers, keyed by event tag, or by webhook tag for unmatched payloads
        # (no ':', so no clash). Public: the pipeline reads it first, a call less per delivery.
        self.resolved: dict[str, tuple[Handler, ...]] = {}
        self._by_key: dict[str, Handler] = {}

    # --- registration --------------------------------------------------------------------------

    @overload
    def on(
        self, tag: str, func: None = None, *, retry: Retry | None = None
    ) -> Callable[[F], F]: ...
    @overload
    def on(self, tag: str, func: F, *, retry: Retry | None = None) -> F: ...

    def on(self, tag: str, func: Any = None, *, retry: Retry | None = None) -> Any:
        """Register ``func`` for ``tag``, ``webhook:*`` or ``*``; a decorator when func is omitted."""
        _check_pattern(tag)

        def register(func: F) -> F:
            self._add(Handler(tag, func, retry))
            return func

        return register if func is None else register(func)

    def on_unmatched(
        self, webhook: Any = None, func: Any = None, *, retry: Retry | None = None
    ) -> Any:
        """Register for payloads that match no event: of ``webhook``, or of any webhook.

        ``@on_unmatched()``, ``@on_unmatched("payments")``, ``@on_unmatched`` and
        ``on_unmatched("payments", func)`` all work.
        """
        if callable(webhook) and func is None:  # bare @on_unmatched
            webhook, func = None, webhook
        if webhook is not None:
            _check_pattern(webhook, webhook_only=True)
        pattern = UNMATCHED + (webhook or "*")

        def register(func: F) -> F:
            self._add(Handler(pattern, func, retry))
            return func

        return register if func is None else register(func)

    def on_error(self, func: F) -> F:
        """Register ``func(event, exception)``, called for every handler failure."""
        if not callable(func):
            raise ValidationError("on_error", "takes a function: func(event, exception)")
        self.error_handlers.append(func)
        return func

    def include(self, other: Router) -> None:
        """Add every registration of ``other`` (a module's router) to this one."""
        for handlers in other.handlers.values():
            for handler in handlers:
                self._add(handler)
        for func in other.error_handlers:
            if func not in self.error_handlers:
                self.error_handlers.append(func)

    def _add(self, handler: Handler) -> None:
        if not callable(handler.func):
            raise ValidationError("handler", f"for {handler.pattern!r} must be callable")
        registered = self.handlers.setdefault(handler.pattern, [])
        if any(h.func is handler.func for h in registered):
            return  # the same function twice for one pattern runs once
        registered.append(handler)
        self._by_key[handler.key] = handler
        self.resolved.clear()

    # --- resolution ----------------------------------------------------------------------------

    def resolve(self, webhook: str, tag: str | None) -> tuple[Handler, ...]:
        """The handlers for an event (or, with tag None, for an unmatched payload), in order."""
        cache_key = tag or webhook  # an event tag names its webhook: no tuple to build
        found = self.resolved.get(cache_key)
        if found is None:
            get = self.handlers.get
            if tag is None:
                found = (*get(UNMATCHED + webhook, ()), *get(UNMATCHED + "*", ()))
            else:
                found = (*get(tag, ()), *get(webhook + ":*", ()), *get("*", ()))
            self.resolved[cache_key] = found
        return found

    def by_key(self, key: str) -> Handler | None:
        return self._by_key.get(key)

    def problems(self, catalog: Catalog) -> list[str]:
        """Registrations whose tag or webhook the catalog does not have, with a suggestion each."""
        problems = []
        for pattern in self.handlers:
            webhook, _, event = pattern.removeprefix(UNMATCHED).partition(":")
            if pattern == "*" or pattern == UNMATCHED + "*":
                continue
            if pattern.startswith(UNMATCHED) or event == "*":
                if webhook not in catalog.webhooks:
                    problems.append(_unknown("webhook", webhook, pattern, catalog.webhooks))
            elif pattern not in catalog.events:
                problems.append(_unknown("event", pattern, pattern, catalog.events))
        return problems


def _unknown(kind: str, tag: str, pattern: str, known: Any) -> str:
    hint = closest(tag, known)
    shown = pattern.replace(UNMATCHED, "on_unmatched ")
    return f"handler for {shown!r}: no {kind} {tag!r} in the catalog" + (
        f"; did you mean {hint!r}?" if hint else ""
    )


def _check_pattern(tag: Any, webhook_only: bool = False) -> None:
    if not isinstance(tag, str) or not tag:
        raise ValidationError("tag", f"must be a non-empty string, got {tag!r}")
    if webhook_only:
        if ":" in tag or "*" in tag:
            raise ValidationError(
                "webhook", f"{tag!r}: on_unmatched takes a webhook tag like 'payments', or nothing"
            )
        return
    if tag == "*":
        return
    webhook, colon, event = tag.partition(":")
    if not colon or not webhook or not event or "*" in webhook or ("*" in event and event != "*"):
        raise ValidationError(
            "tag",
            f"{tag!r} is not an event tag: use 'webhook:event', 'webhook:*' for every event of "
            f"a webhook, or '*' for every event"
            + (f" (did you mean '{tag}:*'?)" if not colon else ""),
        )
