"""The operator console at ``/_ui``: catalog, try it, deliveries and replay.

Server-rendered (Starlette and Jinja2, the ``ui`` extra); no JavaScript and no
front-end build, every asset is served by the package. It is off unless the
Dispatcher has a console token, and every page asks for that token.
"""

from __future__ import annotations

from typing import Any

from ..receiver import Receive, Scope, Send, send_json

__all__ = ["build_console"]

INSTALL_HINT = "the console needs Jinja2: pip install 'webhook-dispatcher[ui]'"


def build_console(hooks: Any) -> Any:
    """The console as an ASGI app for ``hooks``; without Jinja2, an app that says so."""
    try:
        import jinja2  # noqa: F401
    except ImportError:
        return missing_extra
    from .app import create_app

    return create_app(hooks)


async def missing_extra(scope: Scope, receive: Receive, send: Send) -> None:
    await send_json(send, 404, {"error": "not_found", "detail": INSTALL_HINT})
