"""The dispatcher mounted into a FastAPI app.

    uvicorn examples.fastapi_app:app --port 8000
    curl -X POST localhost:8000/webhooks/payments -H 'content-type: application/json' \
         -d @examples/payloads/payments.new-transaction.json

A mounted app gets no lifespan events of its own, so hand the dispatcher's
lifespan to the parent: it checks the handlers against the catalog at start-up
(and, with an inbox, starts the workers). If you have a lifespan already, enter
``hooks.lifespan(app)`` inside it.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from dispatcher import Dispatcher, Event

hooks = Dispatcher.from_catalog(Path(__file__).parent / "catalog.json")
received: list[str] = []  # what the handlers saw: the example's test reads it


@hooks.on("payments:new-transaction")
async def new_transaction(event: Event) -> None:
    received.append(event.payload["transaction_id"])


@hooks.on("github:*")
async def github(event: Event) -> None:
    received.append(event.tag or "")


app = FastAPI(lifespan=hooks.lifespan)
app.mount("/webhooks", hooks)


@app.get("/")
async def index() -> dict[str, object]:
    return {"webhooks": [w.tag for w in hooks.webhooks.fetch_all()], "received": len(received)}
