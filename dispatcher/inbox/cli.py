"""``dispatcher inbox ...``: look into the inbox and act on it (replay, purge)."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import functools
import json
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import click

from dispatcher.errors import DispatcherError, NotFoundError
from dispatcher.inbox import InboxStore, open_inbox, sqlite_path

T = TypeVar("T")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """``30s``, ``15m``, ``12h``, ``7d``, ``2w``, or a plain number of seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text.lower())
    if not match:
        raise click.BadParameter(f"{text!r} is not a duration; write it like 30s, 15m, 12h or 7d")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


class _Duration(click.ParamType):
    name = "duration"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        return value if isinstance(value, float) else parse_duration(str(value))


def _run(url: str, action: Callable[[InboxStore], Awaitable[T]], *, create: bool = False) -> T:
    """Open the inbox at ``url``, run ``action``, close; any failure is one line, exit 1."""
    if not create and url.lower().startswith("sqlite:"):
        path = sqlite_path(url)
        if not path.exists():
            raise click.ClickException(
                f"no inbox at {path}; create it with: dispatcher inbox migrate {url}"
            )

    async def main() -> T:
        store = open_inbox(url)
        await store.open()
        try:
            return await action(store)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except click.ClickException:
        raise
    except NotFoundError as exc:
        raise click.ClickException(f"no {exc.kind} {exc.tag!r} in the inbox") from None
    except DispatcherError as exc:
        raise click.ClickException(str(exc)) from None
    except Exception as exc:  # a broken database or network: no traceback for operators
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None


def _guard(command: Callable[..., None]) -> Callable[..., None]:
    """Turn errors raised before the store opens (a bad URL) into one clean line."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except DispatcherError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    moment = dt.datetime.fromtimestamp(epoch, dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines)


def _first_line(text: str | None, width: int = 60) -> str:
    if not text:
        return ""
    line = text.splitlines()[0]
    return line if len(line) <= width else line[: width - 3] + "..."


@click.group("inbox")
def inbox() -> None:
    """Inspect and manage the queued-mode inbox. URL: sqlite:///path.db, postgresql://..."""


@inbox.command()
@click.argument("url")
@_guard
def migrate(url: str) -> None:
    """Create the inbox tables at URL, or bring them up to date."""

    async def action(store: InboxStore) -> None:
        await store.migrate()

    _run(url, action, create=True)
    click.echo("inbox schema is up to date")


@inbox.command()
@click.argument("url")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_guard
def stats(url: str, as_json: bool) -> None:
    """Deliveries and tasks by status, and the age of the oldest pending delivery."""
    data = _run(url, lambda store: store.stats())
    if as_json:
        _echo_json(data)
        return
    for kind in ("deliveries", "tasks"):
        counts = "  ".join(f"{status} {n}" for status, n in data[kind].items())
        click.echo(f"{kind + ':':<12}{counts}")
    click.echo(f"{'oldest pending:':<16}{_age(data['oldest_pending_age'])}")


@inbox.command("list")
@click.argument("url")
@click.option("--status", type=click.Choice(["pending", "done", "dead"]))
@click.option("--webhook", help="Only deliveries to this webhook tag.")
@click.option("--event", help="Only deliveries matched to this event tag.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_guard
def list_(
    url: str, status: str | None, webhook: str | None, event: str | None, limit: int, as_json: bool
) -> None:
    """The newest deliveries, optionally filtered."""
    rows = _run(
        url, lambda store: store.list(status=status, webhook=webhook, event=event, limit=limit)
    )
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        click.echo("no deliveries")
        return
    headers = ("ID", "WEBHOOK", "EVENT", "STATUS", "RECEIVED (UTC)", "ATTEMPTS", "LAST ERROR")
    cells = [
        (
            r["id"],
            r["webhook"],
            r["event"] or "-",
            r["status"],
            _when(r["received_at"]),
            str(r["attempts"]),
            _first_line(r["last_error"]),
        )
        for r in rows
    ]
    click.echo(_table(headers, cells))


@inbox.command()
@click.argument("url")
@click.argument("delivery_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_guard
def show(url: str, delivery_id: str, as_json: bool) -> None:
    """One delivery: headers, payload, tasks and every attempt with its error."""
    data = _run(url, lambda store: store.get(delivery_id))
    if data is None:
        raise click.ClickException(f"no delivery {delivery_id!r} in the inbox")
    body: bytes = data.pop("body")
    try:
        data["body"] = body.decode("utf-8")
    except UnicodeDecodeError:
        data["body_base64"] = base64.b64encode(body).decode("ascii")
    if as_json:
        _echo_json(data)
        return
    click.echo(f"delivery   {data['id']}")
    click.echo(f"webhook    {data['webhook']}")
    click.echo(f"event      {data['event'] or '-'}")
    click.echo(f"status     {data['status']} (series {data['series']})")
    click.echo(f"received   {_when(data['received_at'])} UTC")
    if data["idempotency_key"]:
        click.echo(f"key        {data['idempotency_key']}")
    if data["query"]:
        click.echo(f"query      {data['query']}")
    click.echo("\nheaders:")
    for name, value in data["headers"]:
        click.echo(f"  {name}: {value}")
    click.echo("\npayload:")
    click.echo(_pretty_body(data.get("body"), body))
    click.echo("\ntasks:")
    for task in data["tasks"]:
        click.echo(f"  {task['handler']}: {task['status']} (attempt {task['attempt']})")
    click.echo("\nattempts:")
    if not data["attempts"]:
        click.echo("  none yet")
    for a in data["attempts"]:
        ended = _when(a["finished_at"]) if a["finished_at"] is not None else "not finished"
        outcome = "failed" if a["error"] else ("ok" if a["finished_at"] is not None else "running")
        click.echo(
            f"  series {a['series']} attempt {a['attempt']} {a['handler']} on {a['worker']}:"
            f" {outcome}, started {_when(a['started_at'])}, ended {ended}"
        )
        if a["error"]:
            for line in a["error"].splitlines():
                click.echo(f"      {line}")


def _pretty_body(text: str | None, raw: bytes) -> str:
    if text is None:
        return f"  <{len(raw)} bytes of binary data; use --json for base64>"
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text


@inbox.command()
@click.argument("url")
@click.argument("ids", nargs=-1)
@click.option("--status", type=click.Choice(["pending", "done", "dead"]))
@click.option("--webhook", help="Only deliveries to this webhook tag.")
@_guard
def replay(url: str, ids: tuple[str, ...], status: str | None, webhook: str | None) -> None:
    """Run deliveries again as a new attempt series (dead tasks, or all when none is dead)."""
    if not ids and status is None and webhook is None:
        raise click.ClickException("name delivery IDs, or select with --status and/or --webhook")
    count = _run(url, lambda store: store.replay(list(ids) or None, status=status, webhook=webhook))
    click.echo(f"replayed {count} deliver{'y' if count == 1 else 'ies'}")


@inbox.command()
@click.argument("url")
@click.option("--status", type=click.Choice(["done", "dead"]), required=True)
@click.option("--older-than", type=_Duration(), required=True, help="Age like 30s, 15m, 12h, 7d.")
@_guard
def purge(url: str, status: str, older_than: float) -> None:
    """Delete finished deliveries (with their tasks and attempts) older than an age."""
    count = _run(url, lambda store: store.purge(status, older_than))
    click.echo(f"purged {count} deliver{'y' if count == 1 else 'ies'}")


def main() -> None:  # pragma: no cover - convenience for `python -m dispatcher.inbox.cli`
    inbox(prog_name="dispatcher inbox")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
