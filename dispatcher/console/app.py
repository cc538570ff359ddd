"""The console's routes: login, catalog, try it, deliveries, replay.

Every page needs a session (see ``auth``); every POST also needs the session's
CSRF token. Links and form actions are built from ``scope["root_path"]``, so the
console works wherever the Dispatcher is mounted (``request.url_for`` would look
routes up in the parent app's router, which does not know these).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route, get_route_path
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ..errors import NotFoundError
from ..extractors import describe
from ..receiver import Receive, Scope, Send
from .auth import COOKIE, SESSION_TTL, ConsoleAuth
from .catalog_view import catalog_view
from .chart import deliveries_chart, status_totals
from .deliveries import (
    FILTERS,
    Filters,
    body_text,
    first_line,
    handler_label,
    is_failed,
    list_deliveries,
    query_pairs,
    redact_pairs,
    replayable,
    shown_status,
    store_of,
    took,
    when,
)
from .tryit import TryForm, form_for_event, try_request

HERE = Path(__file__).resolve().parent
LOGIN_FORM_LIMIT = 16 * 1024
FORM_LIMIT = 8 * 1024 * 1024  # try-it pastes whole payloads (url-encoded: up to 3x their size)
HOME = "/_ui/catalog"

Endpoint = Callable[[Request], Awaitable[Response]]

SECURITY_HEADERS = [
    # Everything is served by the package: no inline script, no other origin.
    (b"content-security-policy",
     b"default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
     b"frame-ancestors 'none'; base-uri 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]  # fmt: skip


class FormError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


async def read_form(request: Request, limit: int) -> QueryParams:
    """A url-encoded form body, read up to ``limit`` bytes (the console's forms are all url-encoded,
    so no multipart parser is needed and no unauthenticated body is read unbounded)."""
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media not in ("application/x-www-form-urlencoded", ""):
        raise FormError(415, "send the form as application/x-www-form-urlencoded")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise FormError(413, f"the form is over {limit:,} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise FormError(413, f"the form is over {limit:,} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if body and not media:
        raise FormError(415, "send the form as application/x-www-form-urlencoded")
    try:
        return QueryParams(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise FormError(400, "the form is not UTF-8") from None


def safe_next(value: str | None) -> str:
    """A console path to return to after login; anything else (another site, ..) goes home."""
    if (
        value
        and value.startswith("/_ui/")
        and not value.startswith("//")
        and ".." not in value
        and not any(c in value for c in "\\\r\n")
    ):
        return value
    return HOME


class Console:
    def __init__(self, hooks: Any) -> None:
        self.hooks = hooks
        self.auth = ConsoleAuth(lambda: hooks.console_token)
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,  # a typo in a template fails its test
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.globals.update(
            when=when,
            took=took,
            shown_status=shown_status,
            is_failed=is_failed,
            json=describe,
            first_line=first_line,
            handler_label=handler_label,
        )
        self.templates = Jinja2Templates(env=env)

    def routes(self) -> list[Any]:
        guard = self.guarded
        return [
            Route("/_ui", guard(self.home), methods=["GET"]),
            Route("/_ui/login", self.login_page, methods=["GET"]),
            Route("/_ui/login", self.login, methods=["POST"]),
            Route("/_ui/logout", guard(self.logout), methods=["POST"]),
            Route("/_ui/catalog", guard(self.catalog), methods=["GET"]),
            Route("/_ui/try", guard(self.try_page), methods=["GET"]),
            Route("/_ui/try", guard(self.try_it), methods=["POST"]),
            Route("/_ui/deliveries", guard(self.deliveries), methods=["GET"]),
            Route("/_ui/deliveries/{delivery_id}", guard(self.delivery), methods=["GET"]),
            Route("/_ui/deliveries/{delivery_id}/replay", guard(self.replay), methods=["POST"]),
            Mount("/_ui/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]

    # --- plumbing ---------------------------------------------------------------------------

    def guarded(self, endpoint: Endpoint) -> Endpoint:
        """Only with a valid session; a POST also needs the session's CSRF token."""

        async def guarded_endpoint(request: Request) -> Response:
            session = request.cookies.get(COOKIE)
            if not self.auth.session_ok(session):
                if request.method in ("GET", "HEAD"):
                    here = get_route_path(request.scope)
                    if request.url.query:
                        here += "?" + request.url.query
                    login = self.ui(request) + "/login?" + str(QueryParams({"next": here}))
                    return RedirectResponse(login, status_code=303)
                return self.problem(request, 403, "Log in first: this action needs a session.")
            request.state.session = session
            if request.method == "POST":
                try:
                    request.state.form = await read_form(request, FORM_LIMIT)
                except FormError as error:
                    return self.problem(request, error.status, error.detail)
                if not self.auth.csrf_ok(session, request.state.form.get("csrf")):  # type: ignore[arg-type]
                    return self.problem(
                        request, 403, "The form's CSRF token is missing or wrong: reload the page."
                    )
            return await endpoint(request)

        return guarded_endpoint

    @staticmethod
    def ui(request: Request) -> str:
        return request.scope.get("root_path", "") + "/_ui"

    def render(
        self, request: Request, name: str, status_code: int = 200, **context: Any
    ) -> Response:
        session = getattr(request.state, "session", None)
        context.update(
            ui=self.ui(request),
            root=request.scope.get("root_path", ""),
            csrf=self.auth.csrf_token(session) if session else "",
            logged_in=session is not None,
            queued=store_of(self.hooks) is not None,
        )
        context.setdefault("page", "")
        return self.templates.TemplateResponse(request, name, context, status_code=status_code)

    def problem(self, request: Request, status: int, message: str) -> Response:
        return self.render(request, "problem.html", status, status=status, message=message)

    # --- login ------------------------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        next_path = safe_next(request.query_params.get("next"))
        if self.auth.session_ok(request.cookies.get(COOKIE)):
            return RedirectResponse(request.scope.get("root_path", "") + next_path, 303)
        return self.render(request, "login.html", next=next_path, error=None, page="login")

    async def login(self, request: Request) -> Response:
        # No CSRF token here: this form grants nothing unless it carries the token itself.
        try:
            form = await read_form(request, LOGIN_FORM_LIMIT)
        except FormError as error:
            return self.problem(request, error.status, error.detail)
        next_path = safe_next(form.get("next"))
        if not self.auth.token_ok(form.get("token") or ""):
            return self.render(
                request, "login.html", 401, next=next_path, page="login",
                error="That is not the console token.",
            )  # fmt: skip
        response = RedirectResponse(request.scope.get("root_path", "") + next_path, 303)
        response.set_cookie(
            COOKIE,
            self.auth.new_session(),
            max_age=SESSION_TTL,
            path=self.ui(request),
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        return response

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse(self.ui(request) + "/login", 303)
        response.delete_cookie(
            COOKIE, path=self.ui(request), httponly=True, samesite="strict",
            secure=request.url.scheme == "https",
        )  # fmt: skip
        return response

    # --- pages ------------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        return RedirectResponse(self.ui(request) + "/catalog", 303)

    async def catalog(self, request: Request) -> Response:
        view = catalog_view(self.hooks)
        return self.render(request, "catalog.html", page="catalog", view=view)

    async def try_page(self, request: Request) -> Response:
        event = request.query_params.get("event")
        form = form_for_event(self.hooks, event or "")
        return self.render(request, "try.html", page="try", form=form, result=None,
                           webhooks=list(self.hooks.catalog.webhooks))  # fmt: skip

    async def try_it(self, request: Request) -> Response:
        fields = request.state.form
        form = TryForm(
            webhook=fields.get("webhook", ""),
            payload=fields.get("payload", ""),
            headers=fields.get("headers", ""),
            query=fields.get("query", ""),
        )
        result = try_request(self.hooks, form)
        return self.render(
            request, "try.html", 400 if result.error else 200, page="try", form=form,
            result=result, webhooks=list(self.hooks.catalog.webhooks),
        )  # fmt: skip

    async def deliveries(self, request: Request) -> Response:
        store = store_of(self.hooks)
        catalog = self.hooks.catalog
        filters = Filters.from_query(request.query_params)
        context: dict[str, Any] = {
            "page": "deliveries", "filters": filters, "statuses": FILTERS,
            "webhooks": list(catalog.webhooks), "events": list(catalog.events),
        }  # fmt: skip
        if store is None:
            return self.render(request, "deliveries.html", rows=[], chart=None, **context)
        rows = await list_deliveries(store, filters)
        now = time.time()
        per_minute = await store.per_minute(now - 3600)
        return self.render(
            request, "deliveries.html", rows=rows, chart=deliveries_chart(per_minute, now),
            totals=status_totals(per_minute, now), **context,
        )  # fmt: skip

    async def delivery(self, request: Request) -> Response:
        store = store_of(self.hooks)
        if store is None:
            return RedirectResponse(self.ui(request) + "/deliveries", 303)
        delivery_id = request.path_params["delivery_id"]
        found = await store.get(delivery_id)
        if found is None:
            return self.problem(request, 404, f"No delivery {delivery_id!r} in the inbox.")
        body, cut = body_text(found.get("body") or b"")
        replayed = request.query_params.get("replayed")
        return self.render(
            request, "delivery.html", page="deliveries", d=found, body=body, body_cut=cut,
            headers=redact_pairs(found.get("headers") or []),
            query=query_pairs(found.get("query") or ""), can_replay=replayable(found),
            replayed=int(replayed) if replayed and replayed.isdigit() else None,
        )  # fmt: skip

    async def replay(self, request: Request) -> Response:
        store = store_of(self.hooks)
        delivery_id = request.path_params["delivery_id"]
        if store is None:
            return self.problem(request, 404, "Deliveries are kept only in queued mode.")
        try:
            count = await store.replay(ids=[delivery_id])
        except NotFoundError:
            return self.problem(request, 404, f"No delivery {delivery_id!r} in the inbox.")
        target = f"{self.ui(request)}/deliveries/{quote(delivery_id, safe='')}?replayed={count}"
        return RedirectResponse(target, 303)


def create_app(hooks: Any) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    console = Console(hooks)
    app = Starlette(routes=console.routes())

    async def with_security_headers(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await app(scope, receive, send_with_headers)

    with_security_headers.console = console  # type: ignore[attr-defined]  # for tests
    return with_security_headers
