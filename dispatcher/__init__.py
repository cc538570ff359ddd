"""dispatcher: an incoming-webhook dispatcher and router.

Register webhooks and their events (the Ductape webhook-events model), and the
Python handlers for them; dispatcher identifies each incoming payload's event,
verifies its sender and routes it to its handlers.
"""

from .app import Dispatcher
from .catalog import Webhook, WebhookEvent
from .errors import (
    CatalogError,
    ConflictError,
    DispatcherError,
    HandlerRegistrationError,
    NotFoundError,
    UnstorableError,
    ValidationError,
)
from .event import Event
from .headers import Headers
from .pipeline import DispatchResult, HandlerOutcome
from .retry import Retry
from .routing import Router

__all__ = [
    "CatalogError",
    "ConflictError",
    "DispatchResult",
    "Dispatcher",
    "DispatcherError",
    "Event",
    "HandlerOutcome",
    "HandlerRegistrationError",
    "Headers",
    "NotFoundError",
    "Retry",
    "Router",
    "UnstorableError",
    "ValidationError",
    "Webhook",
    "WebhookEvent",
]
