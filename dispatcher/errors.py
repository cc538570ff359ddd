"""The exception family: every error dispatcher raises on purpose is a DispatcherError.

Messages follow one rule: say what was wrong and what to do about it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DispatcherError(Exception):
    """Base class of every error raised by dispatcher."""


class ValidationError(DispatcherError, ValueError):
    """A field has a bad value. ``field`` names it; ``location`` says where it was read."""

    def __init__(self, field: str, message: str, *, location: str | None = None) -> None:
        self.field = field
        self.message = message
        self.location = location
        super().__init__(self._text())

    def _text(self) -> str:
        where = f"{self.location}: " if self.location else ""
        return f"{where}{self.field}: {self.message}"

    def at(self, location: str) -> ValidationError:
        """The same error, placed at ``location`` (a file, webhook or event)."""
        return ValidationError(self.field, self.message, location=location)


class CatalogError(ValidationError):
    """Several validation errors found together (loading a catalog file reports them all)."""

    def __init__(self, errors: list[ValidationError], *, source: str | None = None) -> None:
        self.errors = errors
        self.source = source
        head = f"{len(errors)} error{'s' if len(errors) != 1 else ''} in catalog"
        if source:
            head += f" {source}"
        lines = [head + ":"] + [f"  - {error}" for error in errors]
        DispatcherError.__init__(self, "\n".join(lines))
        self.field = errors[0].field if errors else ""
        self.message = "\n".join(lines)
        self.location = source


class UnstorableError(DispatcherError, ValueError):
    """The inbox's database refuses a delivery's data as it is (PostgreSQL text cannot
    hold a NUL character, say): storing it again will never work."""


class NotFoundError(DispatcherError, LookupError):
    """An unknown webhook or event tag. ``suggestion`` is the closest known tag, if any."""

    def __init__(self, kind: str, tag: str, known: Iterable[str] = ()) -> None:
        self.kind = kind
        self.tag = tag
        self.suggestion = closest(tag, known)
        hint = f"; did you mean {self.suggestion!r}?" if self.suggestion else ""
        super().__init__(f"no {kind} with tag {tag!r}{hint}")


class ConflictError(DispatcherError):
    """A tag already in use, or two events that the same payload would identify."""


class HandlerRegistrationError(DispatcherError):
    """Handlers registered for tags the catalog does not have (found by ``check()``)."""


def closest(word: str, candidates: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None
