"""Fixtures. Every test that needs RabbitMQ gets its own vhost, every test that needs PostgreSQL its own
databases; both are removed afterwards. A missing service skips the test locally and fails it under CI."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from core.brokers.memory import MemoryBroker
from core.brokers.rabbitmq import RabbitBroker
from core.db import engine
from tests.site import Site

CI = os.environ.get("CI") == "true"
RABBIT_HOST, RABBIT_PORT = "127.0.0.1", 5672
PG_HOST, PG_PORT = "127.0.0.1", 5432


def _unavailable(reason: str) -> None:
    if CI:
        pytest.fail(f"{reason} (CI=true: integration tests may not skip)")
    pytest.skip(reason)


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def rabbitmqctl(*args: str) -> str:
    return subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=60).stdout


@contextlib.contextmanager
def new_vhost() -> Iterator[str]:
    """A RabbitMQ vhost of its own (guest may use it), removed afterwards; yields its amqp URL."""
    if not _reachable(RABBIT_HOST, RABBIT_PORT):
        _unavailable(f"RabbitMQ is not listening on {RABBIT_HOST}:{RABBIT_PORT}")
    if shutil.which("rabbitmqctl") is None:
        _unavailable("rabbitmqctl is not on PATH (needed to create a test vhost)")
    vhost = f"resync-test-{uuid.uuid4().hex[:10]}"
    try:
        rabbitmqctl("add_vhost", vhost)
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        _unavailable(f"cannot create a RabbitMQ vhost: {getattr(e, 'stderr', e)}")
    try:
        yield f"amqp://guest:guest@{RABBIT_HOST}:{RABBIT_PORT}/{vhost}"
    finally:
        rabbitmqctl("delete_vhost", vhost)


@pytest.fixture
def rabbitmq_url() -> Iterator[str]:
    with new_vhost() as url:
        yield url


@pytest.fixture
def postgres_db() -> Iterator[object]:
    with new_databases() as make:
        yield make


@contextlib.contextmanager
def new_databases() -> Iterator[Any]:
    """A factory of fresh PostgreSQL databases: ``make()`` returns a URL; all are dropped afterwards."""
    if not _reachable(PG_HOST, PG_PORT):
        _unavailable(f"PostgreSQL is not listening on {PG_HOST}:{PG_PORT}")
    import psycopg

    made: list[str] = []

    def admin() -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(f"host={PG_HOST} port={PG_PORT} user=postgres dbname=postgres", autocommit=True)

    def make() -> str:
        name = f"resync_test_{uuid.uuid4().hex[:12]}"
        with admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{name}"

    try:
        admin().close()
    except Exception as e:
        _unavailable(f"cannot connect to PostgreSQL as postgres: {e}")
    try:
        yield make
    finally:
        with admin() as conn:
            for name in made:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["memory", "rabbitmq", "rabbitmq-quorum"])
def broker(request: pytest.FixtureRequest) -> MemoryBroker | RabbitBroker:
    """The in-process broker, and RabbitMQ with classic and with quorum queues (RESYNC_QUEUE_TYPE)."""
    if request.param == "memory":
        return MemoryBroker()
    return RabbitBroker(request.getfixturevalue("rabbitmq_url"),
                        queue_type="quorum" if request.param.endswith("quorum") else "classic")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    factory = request.getfixturevalue("postgres_db")
    return factory()  # type: ignore[no-any-return,operator]


@pytest.fixture
def db(db_url: str) -> Iterator[Engine]:
    eng = engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def site(rabbitmq_url: str, postgres_db: Any, tmp_path: Path) -> Iterator[Site]:
    """A district and a state on their own vhost and databases; daemons started by the test are stopped."""
    s = Site(rabbitmq_url, postgres_db(), postgres_db(), tmp_path)
    yield s
    s.stop()
