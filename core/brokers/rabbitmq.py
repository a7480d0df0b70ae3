"""RabbitMQ through pika, the only client library this project uses (see ``rabbitmq_connection.py`` for the
connection itself). The only package that imports an AMQP client is ``core.brokers``; pika's errors are
converted at this edge (``refusals.py``), so nothing above it sees an AMQP exception type.
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pika
import structlog

from core.brokers import DEFAULT_HEARTBEAT
from core.brokers.base import (
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE,
    EXCHANGE,
    Broker,
    QueueStats,
    Topology,
    queue_arguments,
)
from core.brokers.rabbitmq_connection import RabbitConnection
from messages.errors import BrokerRefused, ConfigError, ConnectionClosed

log = structlog.get_logger()
BLOCKED_TIMEOUT = 300.0
"""Seconds the broker may block publishing (a memory or disk alarm) before the connection is dropped and made
again; meanwhile nothing unconfirmed is let go."""
_KEEPALIVE = {"TCP_KEEPIDLE": 60, "TCP_KEEPINTVL": 10, "TCP_KEEPCNT": 6}


def check_url(url: str) -> str:
    """``url`` if it is an AMQP URL, else a ``ConfigError`` saying how to write one."""
    p = urllib.parse.urlsplit(url)
    if p.scheme not in ("amqp", "amqps") or not p.hostname:
        raise ConfigError(f"RESYNC_BROKER_URL {url.rsplit('@', 1)[-1][:80]!r} is not an AMQP URL: use "
                          "amqp://user:password@host:5672/vhost (amqps:// for TLS)")
    return url


class RabbitBroker(Broker):
    kind = "RabbitMQ"

    def __init__(self, url: str, management_url: str | None = None, tls: dict[str, str] | None = None,
                 heartbeat: int = DEFAULT_HEARTBEAT, name: str = "resync", queue_type: str = "classic") -> None:
        self.url = check_url(url)
        self.queue_type = queue_type
        self.tls = tls
        self.management_url = management_url
        self.heartbeat = heartbeat
        self.name = name
        parsed = urllib.parse.urlparse(url)
        self.user = urllib.parse.unquote(parsed.username or "guest")
        self.vhost = urllib.parse.unquote(parsed.path[1:]) if len(parsed.path) > 1 else "/"

    def describe(self) -> str:
        p = urllib.parse.urlparse(self.url)
        return f"RabbitMQ at {p.hostname}:{p.port or (5671 if p.scheme == 'amqps' else 5672)} vhost {self.vhost!r}"

    def parameters(self) -> pika.ConnectionParameters:
        p = urllib.parse.urlparse(self.url)
        ssl_options = None
        if p.scheme == "amqps":
            # verify the broker's certificate, against the given CA file or the system's
            context = ssl.create_default_context(cafile=(self.tls or {}).get("ca_certs"))
            if (self.tls or {}).get("certfile"):
                context.load_cert_chain((self.tls or {})["certfile"], (self.tls or {}).get("keyfile"))
            ssl_options = pika.SSLOptions(context, p.hostname)
        return pika.ConnectionParameters(
            host=p.hostname or "127.0.0.1", port=p.port or (5671 if ssl_options else 5672),
            virtual_host=self.vhost,
            credentials=pika.PlainCredentials(self.user, urllib.parse.unquote(p.password or "guest")),
            heartbeat=self.heartbeat, blocked_connection_timeout=BLOCKED_TIMEOUT, connection_attempts=1,
            socket_timeout=10, stack_timeout=30, tcp_options=_KEEPALIVE, ssl_options=ssl_options,
            client_properties={"connection_name": self.name})

    def connect(self) -> RabbitConnection:
        try:
            params = self.parameters()
        except (OSError, ValueError) as e:  # a CA or certificate file that cannot be read
            raise ConfigError(f"RESYNC_BROKER_CA_FILE / _CERT_FILE / _KEY_FILE: {e}") from None
        return RabbitConnection(params, self.user, self.describe(), name=self.name)

    def declare_district(self, district: str) -> None:
        try:
            self._declare(district)
        except BrokerRefused as e:
            if "ACCESS_REFUSED" not in str(e):
                raise
            # a district or state user may not configure: `resync broker definitions` set the topology up
            log.info("no permission to declare the topology; using the one the administrator set up",
                     district=district, user=self.user)

    def _declare(self, district: str) -> None:
        with self.connect() as conn:
            conn.exchange_declare(EXCHANGE, "topic")
            conn.exchange_declare(DEAD_LETTER_EXCHANGE, "fanout")
            conn.queue_declare(DEAD_LETTER_QUEUE, queue_arguments(DEAD_LETTER_QUEUE, self.queue_type) or None)
            conn.queue_bind(DEAD_LETTER_QUEUE, DEAD_LETTER_EXCHANGE, "")
            for name in Topology.queues(district):
                conn.queue_declare(name, queue_arguments(name, self.queue_type))
                conn.queue_bind(name, EXCHANGE, name)

    def queue_stats(self, queues: list[str]) -> list[QueueStats]:
        stats = self._management_stats(queues)
        if stats is not None:
            return stats
        out = []
        conn = self.connect()
        try:
            for q in queues:
                try:
                    ready, consumers = conn.queue_declare(q, passive=True)
                except ConnectionClosed:  # no such queue: the channel is closed, so is the connection
                    conn.close()
                    conn = self.connect()
                    continue
                out.append(QueueStats(q, ready, None, consumers))
        finally:
            conn.close()
        return out

    def _management_stats(self, queues: list[str]) -> list[QueueStats] | None:
        p = urllib.parse.urlparse(self.url)
        base = self.management_url or f"http://{p.hostname or '127.0.0.1'}:15672"
        vhost = urllib.parse.quote(self.vhost, safe="")
        auth = base64.b64encode(f"{self.user}:{urllib.parse.unquote(p.password or 'guest')}".encode()).decode()
        out = []
        for q in queues:
            req = urllib.request.Request(f"{base}/api/queues/{vhost}/{urllib.parse.quote(q, safe='')}",
                                         headers={"Authorization": f"Basic {auth}"})
            try:
                with urllib.request.urlopen(req, timeout=3) as resp:
                    doc: dict[str, Any] = json.load(resp)
            except urllib.error.HTTPError as e:
                if e.code == 404:
                    continue
                return None
            except (OSError, ValueError):
                return None
            out.append(QueueStats(q, int(doc.get("messages_ready", 0)),
                                  int(doc.get("messages_unacknowledged", 0)), int(doc.get("consumers", 0))))
        return out


