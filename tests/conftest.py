"""Shared fixtures: the async backend, and the local PostgreSQL server."""

from __future__ import annotations

import os
import socket

import pytest

pytest_plugins = ["pytester"]

POSTGRES_URL = os.environ.get(
    "DISPATCHER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _postgres_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def postgres_url() -> str:
    """The test database; skips outside CI when no server listens, fails under CI=true."""
    if not _postgres_reachable():
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but no PostgreSQL server on 127.0.0.1:5432")
        pytest.skip("no PostgreSQL server on 127.0.0.1:5432 (these tests run under CI=true)")
    return POSTGRES_URL
