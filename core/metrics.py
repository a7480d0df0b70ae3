"""What a daemon shows its monitoring: Prometheus metrics on ``/metrics``, ``/healthz`` (the process runs) and
``/readyz`` (it holds its broker and database), served on ``RESYNC_METRICS_PORT`` from a thread of its own.

The metrics every daemon has are here (broker reconnects, time blocked by a broker alarm, how long the broker
takes to confirm what is published); the agent's and the receiver's own are in ``agent/metrics.py`` and
``state_receiver/metrics.py``. All live in prometheus-client's default registry, beside its process metrics.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from core.retry import reason
from messages.errors import ConfigError, StoreUnavailable

RECONNECTS = Counter("resync_broker_reconnects", "Times a connection to the broker was lost or could not be made, "
                     "and was tried again.", ["daemon"])
BLOCKED_SECONDS = Counter("resync_broker_blocked_seconds", "Time the broker blocked this daemon's publishing "
                          "(a memory or disk alarm).", ["daemon"])
BLOCKED = Gauge("resync_broker_blocked", "1 while the broker blocks this daemon's publishing.", ["daemon"])
CONFIRM_SECONDS = Histogram("resync_publish_confirm_seconds", "From publishing a group of messages to the "
                            "broker's confirm of the last of them.", ["daemon"],
                            buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))
UP = Gauge("resync_up", "1 while the daemon holds what it needs (its broker and database), as /readyz says.",
           ["daemon"])


class Health:
    """What ``/healthz`` and ``/readyz`` answer: the daemon runs; each thing it needs is up, or why not."""

    def __init__(self, daemon: str, needs: Iterable[str] = ("broker", "database")) -> None:
        self.daemon = daemon
        self.running = True
        self._lock = threading.Lock()
        self._down: dict[str, str] = {need: "not connected yet" for need in needs}
        UP.labels(daemon).set(0)
        # shown from the start at 0, so a rate or an alert on them has a series to read before the first event
        RECONNECTS.labels(daemon)
        BLOCKED_SECONDS.labels(daemon)
        BLOCKED.labels(daemon).set(0)

    def up(self, need: str) -> None:
        with self._lock:
            self._down.pop(need, None)
            UP.labels(self.daemon).set(0 if self._down else 1)

    def down(self, need: str, why: str) -> None:
        with self._lock:
            self._down[need] = why[:300]
            UP.labels(self.daemon).set(0)

    def failed(self, e: BaseException) -> None:
        """What the daemon's main step failing says of what it needs: a database error takes the database down,
        anything else its broker connection (which it then makes again: counted as a reconnect)."""
        if isinstance(e, OperationalError | DBAPIError | StoreUnavailable):
            self.down("database", reason(e))
        else:
            self.down("broker", str(e) or type(e).__name__)
            RECONNECTS.labels(self.daemon).inc()

    def failed_aside(self, e: BaseException) -> None:
        """A side thread's step failing (the agent's publisher or live sync): its connection is made again and
        counted; readiness is the main connection's to say."""
        if not isinstance(e, OperationalError | DBAPIError | StoreUnavailable):
            RECONNECTS.labels(self.daemon).inc()

    def not_ready(self) -> dict[str, str]:
        with self._lock:
            return dict(self._down)

    def watch_blocked(self, then: Callable[[str | None], None] | None = None) -> Callable[[str | None], None]:
        """A ``Connection.watch`` that counts the time the broker blocks publishing (and tells ``then``)."""
        since: list[float] = []

        def watch(alarm: str | None) -> None:
            if alarm is not None and not since:
                since.append(time.monotonic())
                BLOCKED.labels(self.daemon).set(1)
            elif alarm is None and since:
                BLOCKED_SECONDS.labels(self.daemon).inc(time.monotonic() - since.pop())
                BLOCKED.labels(self.daemon).set(0)
            if then is not None:
                then(alarm)

        return watch


class DatabaseCollector(Collector):
    """Metrics read from a database at each scrape (``_collect``): nothing is read when it is registered, and a
    database away for a moment costs the scrape these metrics, nothing more."""

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        try:
            yield from self._collect()
        except SQLAlchemyError:
            return

    def _collect(self) -> Iterator[Metric]:
        raise NotImplementedError


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes every few seconds: not worth a log line
        return None


def _app(health: Health) -> Callable[..., Iterable[bytes]]:
    metrics = make_wsgi_app()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path not in ("/healthz", "/readyz"):
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        body: dict[str, Any]
        if path == "/healthz":
            ok, body = health.running, {"status": "alive" if health.running else "stopping"}
        else:
            down = health.not_ready()
            ok, body = health.running and not down, {"status": "ready" if not down else "not ready", "down": down}
        start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]

    return app


def serve(host: str, port: int, health: Health) -> WSGIServer | None:
    """Serve the metrics and health checks on ``host:port`` from a daemon thread (port 0: not served)."""
    if not port:
        return None
    try:
        server = make_server(host, port, _app(health), server_class=_Server, handler_class=_Quiet)
    except OSError as e:
        raise ConfigError(f"RESYNC_METRICS_PORT={port} on {host} cannot be served ({e.strerror}): choose a free "
                          "port, or RESYNC_METRICS_HOST for another address") from None
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
