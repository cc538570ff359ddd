"""The dispatcher mounted into a Starlette app.

    uvicorn examples.starlette_app:app --port 8000
    curl -X POST localhost:8000/hooks/payments -H 'content-type: application/json' \
         -d @examples/payloads/payments.refund.json

As with FastAPI, the parent app runs the dispatcher's lifespan.
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from dispatcher import Dispatcher, Event

hooks = Dispatcher.from_catalog(Path(__file__).parent / "catalog.json")
refunds: list[str] = []


@hooks.on("payments:refund")
def refund(event: Event) -> None:
    # A plain function runs in a worker thread: blocking calls are fine here.
    refunds.append(event.payload["transaction_id"])


async def index(request: Request) -> JSONResponse:
    return JSONResponse({"refunds": refunds})


app = Starlette(
    routes=[Route("/", index), Mount("/hooks", app=hooks)],
    lifespan=hooks.lifespan,
)
