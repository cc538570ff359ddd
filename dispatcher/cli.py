"""The ``dispatcher`` command: validate, match, serve, worker, send, inbox."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import orjson

from .errors import CatalogError, DispatcherError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Receive, verify and route webhooks to Python handlers."""


def _fail(error: BaseException) -> None:
    """Print a DispatcherError as the user should read it, and exit 1 (never a traceback)."""
    click.echo(f"error: {error}", err=True)
    sys.exit(1)


@main.command()
@click.argument("catalog", type=click.Path(dir_okay=False))
def validate(catalog: str) -> None:
    """Check a catalog file: exit 0 with a summary, or print every error and exit 1."""
    from .app import Dispatcher

    try:
        hooks = Dispatcher.from_catalog(catalog)
    except CatalogError as error:
        click.echo(str(error), err=True)
        sys.exit(1)
    except DispatcherError as error:
        _fail(error)
    webhooks = hooks.webhooks.fetch_all()
    total = sum(len(hooks.webhooks.events.fetch_all(w.tag)) for w in webhooks)
    click.echo(f"{catalog}: OK, {len(webhooks)} webhook(s), {total} event(s)")
    for webhook in webhooks:
        events = hooks.webhooks.events.fetch_all(webhook.tag)
        click.echo(f"  {webhook.tag}: {len(events)} event(s)")
        for event in events:
            click.echo(f"    {event.tag}  {event.selector}")


@main.command()
@click.argument("catalog", type=click.Path(dir_okay=False))
@click.argument("webhook")
@click.argument("payload", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--header", "-H", "headers", multiple=True, metavar="K:V", help="A request header.")
@click.option("--query", "-q", "queries", multiple=True, metavar="K=V", help="A query parameter.")
def match(
    catalog: str, webhook: str, payload: str, headers: tuple[str, ...], queries: tuple[str, ...]
) -> None:
    """Print the event tag PAYLOAD.json matches in WEBHOOK (exit 0), or `unmatched` (exit 1)."""
    from .app import Dispatcher

    try:
        hooks = Dispatcher.from_catalog(catalog)
        data = _read_json(payload)
        event = hooks.match(
            data,
            webhook=webhook,
            headers=dict(_pair(h, ":", "--header") for h in headers),
            query=dict(_pair(q, "=", "--query") for q in queries),
        )
    except DispatcherError as error:
        _fail(error)
    if event is None:
        click.echo("unmatched")
        sys.exit(1)
    click.echo(event.tag)


def _read_json(path: str) -> Any:
    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as error:
        raise click.ClickException(f"cannot read {path}: {error.strerror or error}") from None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise click.ClickException(f"{path} is not valid JSON: {error}") from None


def _pair(text: str, sep: str, option: str) -> tuple[str, str]:
    name, found, value = text.partition(sep)
    if not found or not name.strip():
        raise click.BadParameter(f"{text!r} is not NAME{sep}VALUE", param_hint=option)
    return name.strip(), value.strip()


def _target_options(func: Any) -> Any:
    """The options that say what to load: shared by serve and worker."""
    options = [
        click.argument("target"),
        click.option("--handlers", "handler_modules", multiple=True, metavar="MODULE",
                     help="A module whose Routers (or register(hooks)) hold handlers; repeatable."),
        click.option("--inbox", default=None, metavar="URL",
                     help="Queued mode: sqlite:///inbox.db (relative), sqlite:////abs.db "
                          "(options: ?synchronous=NORMAL&busy_timeout=10), "
                          "postgresql://user@host/db (?schema=name)."),
        click.option("--lease", default=None, type=float,
                     help="Seconds a worker holds a task (renewed while it runs)  [default: 30]"),
        click.option("--concurrency", default=None, type=click.IntRange(min=0),
                     help="Handlers run at once by this process's workers (serve: 0 = none)  "
                          "[default: 4]"),
        click.option("--log-level", default="info", show_default=True,
                     type=click.Choice(["critical", "error", "warning", "info", "debug"])),
        click.option("--log-format", default="text", show_default=True,
                     type=click.Choice(["text", "json"]),
                     help="A readable line per delivery, or one JSON object per line."),
        click.option("--graceful-timeout", default=30.0, show_default=True, type=float,
                     help="Seconds to let running deliveries and handlers finish on SIGTERM."),
    ]  # fmt: skip
    for option in reversed(options):
        func = option(func)
    return func


def _settings(**given: Any) -> dict[str, Any]:
    return {name: value for name, value in given.items() if value is not None}


@main.command()
@_target_options
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="Receiver processes.")  # fmt: skip
@click.option("--unmatched", type=click.Choice(["accept", "reject"]), default=None,
              help="Answer unmatched payloads 200 (accept) or 422 (reject).")  # fmt: skip
@click.option("--console-token", default=None, help="Turn on the console at /_ui with this token.")
@click.option("--console-token-env", default=None, metavar="VAR",
              help="Read the console token from this environment variable.")  # fmt: skip
def serve(target: str, handler_modules: tuple[str, ...], inbox: str | None, lease: float | None,
          concurrency: int | None, log_level: str, log_format: str, graceful_timeout: float,
          host: str, port: int, workers: int, unmatched: str | None, console_token: str | None,
          console_token_env: str | None) -> None:  # fmt: skip
    """Run the receiver. TARGET is module:attribute (a Dispatcher) or a catalog file.

    With --inbox, every delivery is stored before it is answered (202) and this
    process's workers run the handlers (--concurrency 0: receive only).
    """
    from .server import Target, run

    try:
        token = _console_token(console_token, console_token_env)
        configure = _settings(
            unmatched=unmatched, inbox=inbox, lease=lease, concurrency=concurrency,
            graceful_timeout=graceful_timeout, console_token=token,
        )  # fmt: skip
        spec = Target(target, list(handler_modules), configure=configure)
        run(spec, host=host, port=port, workers=workers, log_level=log_level,
            graceful_timeout=graceful_timeout, log_format=log_format)  # fmt: skip
    except DispatcherError as error:
        _fail(error)


def _console_token(token: str | None, env_name: str | None) -> str | None:
    import os

    if token and env_name:
        raise click.UsageError("give --console-token or --console-token-env, not both")
    if env_name:
        token = os.environ.get(env_name, "")
        if not token:
            raise click.UsageError(f"environment variable {env_name} is not set or empty")
    return token


@main.command()
@_target_options
def worker(target: str, handler_modules: tuple[str, ...], inbox: str | None, lease: float | None,
           concurrency: int | None, log_level: str, log_format: str,
           graceful_timeout: float) -> None:  # fmt: skip
    """Run inbox workers for TARGET without a receiver (several may share one inbox).

    The inbox comes from --inbox, or from the Dispatcher TARGET names.
    """
    from .server import Target, run_worker

    try:
        configure = _settings(inbox=inbox, lease=lease, concurrency=concurrency,
                              graceful_timeout=graceful_timeout)  # fmt: skip
        run_worker(Target(target, list(handler_modules), configure=configure),
                   log_level=log_level, log_format=log_format)  # fmt: skip
    except DispatcherError as error:
        _fail(error)


def _attach_inbox_commands() -> None:
    from .inbox.cli import inbox

    main.add_command(inbox)


_attach_inbox_commands()


@main.command()
@click.argument("tag")
@click.option(
    "--catalog",
    "catalog_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="The catalog file that defines the event (and how to sign it).",
)
@click.option(
    "--url",
    required=True,
    help="Where the receiver is served, e.g. http://localhost:8000; the webhook tag is appended.",
)
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="PATH=VALUE",
    help="Set a payload field (dotted path; VALUE is JSON, else a string). Repeatable.",
)
@click.option("--timeout", default=10.0, show_default=True, type=float)
def send(tag: str, catalog_path: str, url: str, settings: tuple[str, ...], timeout: float) -> None:
    """POST event TAG's sample (signed when the catalog says how) to a running receiver."""
    from .app import Dispatcher
    from .sending import apply_settings, post

    try:
        hooks = Dispatcher.from_catalog(catalog_path)
        event = hooks.webhooks.events.fetch(tag)
        payload = apply_settings(event.sample, settings)
        changed = {k: v for k, v in payload.items() if event.sample.get(k, object()) != v}
        request = hooks.testing.sample_request(tag, **changed)
        status, body = post(url, request, timeout)
    except DispatcherError as error:
        _fail(error)
    click.echo(f"{status} {body}")
    sys.exit(0 if 200 <= status < 300 else 1)
