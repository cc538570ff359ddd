"""Console access: a login with the console token, a signed session cookie, CSRF tokens.

Everything is derived from the token with HMAC, so nothing is stored server-side
and every worker process of ``dispatcher serve --workers N`` accepts the same
session. The cookie never holds the token itself: it holds the time it was
issued and an HMAC of that time keyed by the token. Changing the token ends
every session.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

COOKIE = "dispatcher_console"
SESSION_TTL = 12 * 3600  # seconds a login lasts
CLOCK_SKEW = 60  # seconds a session may seem to come from the future (workers' clocks)
_SESSION_LABEL = b"dispatcher-console-session:"
_CSRF_LABEL = b"dispatcher-console-csrf:"


class ConsoleAuth:
    """Checks tokens, issues and checks sessions, derives CSRF tokens.

    ``token`` is a function so a token changed on the Dispatcher takes effect at once.
    """

    def __init__(self, token: Callable[[], str | None], clock: Callable[[], float] = time.time):
        self._token = token
        self.clock = clock

    def _key(self) -> bytes:
        token = self._token()
        if not token:
            raise PermissionError("the console has no token")
        return token.encode()

    def _mac(self, label: bytes, value: str) -> str:
        return hmac.new(self._key(), label + value.encode(), hashlib.sha256).hexdigest()

    def token_ok(self, given: str) -> bool:
        token = self._token()
        if not token or not given:
            return False
        return _same(given, token)

    def new_session(self) -> str:
        issued = str(int(self.clock()))
        return f"{issued}.{self._mac(_SESSION_LABEL, issued)}"

    def session_ok(self, value: str | None) -> bool:
        if not value or not self._token():
            return False
        issued, _, mac = value.partition(".")
        if not issued.isdigit() or not _same(mac, self._mac(_SESSION_LABEL, issued)):
            return False
        age = self.clock() - int(issued)
        return -CLOCK_SKEW <= age < SESSION_TTL

    def csrf_token(self, session: str) -> str:
        """The CSRF token of a session: forms carry it, POSTs must return it."""
        return self._mac(_CSRF_LABEL, session)

    def csrf_ok(self, session: str, given: str | None) -> bool:
        return bool(given) and _same(given or "", self.csrf_token(session))


def _same(given: str, expected: str) -> bool:
    # Bytes: compare_digest refuses non-ASCII str, and a forged cookie may hold anything.
    return hmac.compare_digest(given.encode(), expected.encode())
