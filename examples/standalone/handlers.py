"""Handlers for the standalone example: `dispatcher serve` wires this module in.

    dispatcher serve examples/standalone/catalog.json --handlers examples.standalone.handlers

Every `dispatcher.Router` at the top level of a handler module is included into
the dispatcher that serves the catalog, so this module needs no dispatcher at
import time and can be imported by tests as it is.
"""

from __future__ import annotations

import logging

from dispatcher import Event, Router

router = Router()
log = logging.getLogger("examples.standalone")


@router.on("payments:new-transaction")
async def record_transaction(event: Event) -> None:
    payload = event.payload
    log.info("paid: %s %s %s", payload["transaction_id"], payload["amount"], payload["currency"])


@router.on("payments:refund")
def refund(event: Event) -> None:
    # A plain function: dispatcher runs it in a worker thread, off the event loop.
    log.info("refund of %s", event.payload["transaction_id"])


@router.on("payments:*")
async def audit(event: Event) -> None:
    log.info("audit: %s delivery %s (attempt %d)", event.tag, event.id, event.attempt)


@router.on("github:issue-opened")
async def triage(event: Event) -> None:
    issue = event.payload["issue"]
    log.info("triage #%s: %s", issue["number"], issue["title"])


@router.on_unmatched()
async def unmatched(event: Event) -> None:
    log.warning("no event of %s matches delivery %s", event.webhook, event.id)


@router.on_error
async def report(event: Event, error: Exception) -> None:
    log.error("delivery %s (%s) failed: %r", event.id, event.tag, error)
