"""The standalone receiver: load a target, run it under uvicorn, shut down gracefully.

A target is ``module:attribute`` (a Dispatcher, or a function returning one)
or a catalog file. Handler modules (``--handlers myapp.hooks``) are imported
and wired in: every ``dispatcher.Router`` at the module's top level is
included, and a ``register(hooks)`` function, if the module has one, is called
with the dispatcher. So a handler module needs no dispatcher at import time::

    from dispatcher import Router
    router = Router()

    @router.on("payments:refund")
    async def refund(event): ...
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from asyncio import AbstractEventLoop
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .app import Dispatcher
from .catalogfile import FORMATS
from .errors import DispatcherError, ValidationError
from .logs import logging_config
from .routing import Router

SPEC_ENV = "DISPATCHER_SERVE_SPEC"  # how --workers N hands the target to each worker process


@dataclass
class Target:
    """What to serve: the dispatcher and the handler modules to wire into it."""

    target: str
    handlers: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(
        default_factory=dict
    )  # Dispatcher(...) options for catalog files
    configure: dict[str, Any] = field(default_factory=dict)  # settings applied after loading

    def load(self) -> Dispatcher:
        if _is_catalog_file(self.target):
            hooks = Dispatcher.from_catalog(self.target, **self.options)
        else:
            hooks = _import_dispatcher(self.target)
        for module in self.handlers:
            install_handlers(hooks, module)
        if self.configure:
            hooks.configure(**self.configure)
        return hooks


def _is_catalog_file(target: str) -> bool:
    return Path(target).suffix.lower() in FORMATS or (":" not in target and Path(target).exists())


def _import(module_name: str, what: str) -> Any:
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: the current directory's modules
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and module_name.startswith(error.name):
            raise ValidationError(
                what, f"cannot import module {module_name!r}: run from the directory that holds it"
            ) from None
        raise


def _import_dispatcher(target: str) -> Dispatcher:
    module_name, colon, attribute = target.partition(":")
    if not colon or not module_name or not attribute:
        raise ValidationError(
            "target",
            f"{target!r} is neither a catalog file (.json, .toml, .yaml) nor module:attribute",
        )
    module = _import(module_name, "target")
    try:
        found = getattr(module, attribute)
    except AttributeError:
        raise ValidationError(
            "target", f"module {module_name!r} has no attribute {attribute!r}"
        ) from None
    if callable(found) and not isinstance(found, Dispatcher):
        found = found()
    if not isinstance(found, Dispatcher):
        raise ValidationError(
            "target", f"{target} is a {type(found).__name__}, not a dispatcher.Dispatcher"
        )
    return found


def install_handlers(hooks: Dispatcher, module_name: str) -> None:
    """Wire a handler module into ``hooks``: its Routers, and its ``register(hooks)``."""
    module = _import(module_name, "handlers")
    routers = [value for value in vars(module).values() if isinstance(value, Router)]
    register = getattr(module, "register", None)
    if not routers and not callable(register):
        raise ValidationError(
            "handlers",
            f"module {module_name!r} defines no dispatcher.Router and no register(hooks) function; "
            "add `router = dispatcher.Router()` and decorate handlers with @router.on(...)",
        )
    for router in routers:
        hooks.include(router)
    if callable(register):
        register(hooks)


def app_from_env() -> Dispatcher:
    """The uvicorn factory each worker process calls under ``--workers N``."""
    return Target(**orjson.loads(os.environ[SPEC_ENV])).load()


def run(target: Target, *, host: str, port: int, workers: int, log_level: str,
        graceful_timeout: float, log_format: str = "text") -> None:  # fmt: skip
    """Serve until SIGTERM/SIGINT; finish in-flight deliveries (bounded), then return."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from .http_protocol import http_protocol

    hooks = target.load()  # fail here, with a clear message, before any worker starts
    hooks.check()
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "loop": "uvloop",
        "http": http_protocol(),  # httptools', each response in one send
        "log_level": log_level,
        "access_log": False,  # the dispatcher logs one line per delivery itself
        "timeout_graceful_shutdown": graceful_timeout,
        "lifespan": "on",
    }
    common["log_config"] = logging_config(log_level, log_format)
    # uvicorn re-raises the signal it caught once its graceful shutdown is done; with the
    # default handlers in place that kills the process with -15. A no-op handler set
    # here is what it restores and re-raises into, so a clean shutdown exits 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: None)
    if workers > 1:
        os.environ[SPEC_ENV] = orjson.dumps(asdict(target)).decode()
        config = uvicorn.Config(
            "dispatcher.server:app_from_env", factory=True, workers=workers, **common
        )
        sock = config.bind_socket()
        Multiprocess(config, sockets=[sock]).run()
        return
    server = uvicorn.Server(uvicorn.Config(hooks, **common))
    server.run()
    if not server.started:
        raise DispatcherError("the receiver did not start (see the log above)")


def run_worker(target: Target, *, log_level: str, log_format: str) -> None:
    """``dispatcher worker``: run inbox workers until SIGTERM/SIGINT, then stop gracefully."""
    import asyncio
    import logging.config

    logging.config.dictConfig(logging_config(log_level, log_format))
    hooks = target.load()
    if hooks.inbox is None:
        raise ValidationError("inbox", "a worker needs an inbox: pass --inbox URL")
    hooks.check()
    concurrency = hooks.concurrency or 4  # serve --concurrency 0 means "receive only"; not here
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(_work(hooks, concurrency))


def event_loop_factory() -> Callable[[], AbstractEventLoop] | None:
    """uvloop's event loop, which ``serve`` runs on too (uvicorn's ``loop="uvloop"``), or
    None (asyncio's own) where uvloop is not installed. A worker spends most of its time
    in the loop's machinery: on uvloop a no-op task cost 15-25% less CPU (bench_inbox)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop  # type: ignore[no-any-return]


async def _work(hooks: Dispatcher, concurrency: int) -> None:
    import asyncio
    import logging

    log = logging.getLogger("dispatcher")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    inbox = hooks.inbox
    assert inbox is not None
    await inbox.open()
    await inbox.start_workers(concurrency)
    log.info(
        "worker %s running %d at a time on %s",
        inbox.worker.name if inbox.worker else "?", concurrency, type(loop).__module__.split(".")[0],
    )  # fmt: skip
    await stop.wait()
    log.info("stopping: letting running handlers finish (up to %g s)", hooks.graceful_timeout)
    await inbox.stop(hooks.graceful_timeout)
