"""RabbitMQ through py-amqp (kombu's transport). The only module that imports an AMQP client.

Publisher confirms are pipelined: messages go out without waiting and the broker's (multiple)
acks are counted as they arrive; ``flush`` waits for the rest. The two hot paths, publishing and
delivery, bypass py-amqp's per-message machinery (see ``frames.py``): publishes are packed into one
write buffer, and deliveries are parsed straight from large socket reads, while every other frame
still goes to py-amqp. Third-party errors are converted here into ``ConnectionClosed`` so nothing
above this module sees an AMQP exception type.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import struct
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

import amqp
import kombu
import structlog
from amqp.exceptions import AccessRefused, AMQPError
from amqp.serialization import decode_properties_basic

from messages.errors import ConnectionClosed
from resync.brokers.base import (
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_BYTES,
    EXCHANGE,
    Broker,
    Connection,
    Delivery,
    QueueStats,
    Topology,
    dead_letter_headers,
)
from resync.brokers.frames import (
    BASIC_DELIVER,
    BODY,
    HEADER,
    METHOD,
    FrameReader,
    body_size,
    parse_deliver,
    publish_frames,
)

log = structlog.get_logger()
_ERRORS = (AMQPError, OSError, ConnectionError, socket.timeout)
_WINDOW = 20_000  # unconfirmed messages allowed in flight before publish waits
_WRITE_SIZE = 128 * 1024  # publishes are written to the socket in chunks of about this size


class RabbitBroker(Broker):
    kind = "RabbitMQ"

    def __init__(self, url: str, management_url: str | None = None, tls: dict[str, str] | None = None) -> None:
        self.url = url
        self.tls = tls
        self.management_url = management_url
        parsed = urllib.parse.urlparse(url)
        self.user = urllib.parse.unquote(parsed.username or "guest")
        self.vhost = urllib.parse.unquote(parsed.path[1:]) if len(parsed.path) > 1 else "/"

    def describe(self) -> str:
        p = urllib.parse.urlparse(self.url)
        return f"RabbitMQ at {p.hostname}:{p.port or 5672} vhost {self.vhost!r}"

    def connect(self) -> RabbitConnection:
        return RabbitConnection(self.url, self.user, self.tls)

    def declare_district(self, district: str) -> None:
        with self.connect() as conn:
            conn.declare(district)

    def queue_stats(self, queues: list[str]) -> list[QueueStats]:
        stats = self._management_stats(queues)
        if stats is not None:
            return stats
        out = []
        with self.connect() as conn:
            for q in queues:
                try:
                    _, ready, consumers = conn.channel.queue_declare(q, passive=True)
                except _ERRORS:
                    conn.close()
                    conn = self.connect()
                    continue
                out.append(QueueStats(q, ready, None, consumers))
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


class RabbitConnection(Connection):
    def __init__(self, url: str, user: str, tls: dict[str, str] | None = None) -> None:
        self.user = user
        ssl_options: Any = None
        if url.startswith("amqps://"):
            # verify the broker's certificate, against the given CA file or the system's
            ssl_options = {"cert_reqs": ssl.CERT_REQUIRED, **(tls or {})}
        try:
            self._kombu = kombu.Connection(url, heartbeat=0, connect_timeout=10, ssl=ssl_options or False)
            self._kombu.connect()
            self.conn: amqp.Connection = self._kombu.connection
            self.channel: amqp.Channel = self.conn.channel()
        except _ERRORS as e:
            raise ConnectionClosed(f"cannot connect to RabbitMQ: {e}") from None
        transport = self.conn.transport
        self._sock = transport.sock
        self._reader = FrameReader(self._sock.recv)
        transport.read_frame = self._reader.frame  # py-amqp reads its frames from the same buffer
        self._channel_id: int = self.channel.channel_id
        self._frame_max: int = self.conn.frame_max
        self._out = bytearray()
        self._delivering: tuple[int, bool, bytes] | None = None
        self._queues: dict[bytes, str] = {}  # consumer tag -> the queue it consumes
        self._properties: dict[str, Any] = {}
        self._body: list[bytes] = []
        self._remaining = 0
        self._size = 0  # of the body being delivered
        self._max_body = DEFAULT_MAX_BODY
        self._held = 0  # bytes of the bodies in self._buffer
        self._prefetch = -1
        self._unreadable: str | None = None  # why the delivery being read has no properties
        self._confirming = False
        self.published = 0
        self._confirmed = 0
        self._failures: list[str] = []
        self._buffer: list[Delivery] = []
        self._closed = False

    # topology -------------------------------------------------------------------------------

    def declare(self, district: str) -> None:
        ch = self.channel
        try:
            ch.exchange_declare(EXCHANGE, "topic", durable=True, auto_delete=False)
            ch.exchange_declare(DEAD_LETTER_EXCHANGE, "fanout", durable=True, auto_delete=False)
            ch.queue_declare(DEAD_LETTER_QUEUE, durable=True, auto_delete=False)
            ch.queue_bind(DEAD_LETTER_QUEUE, DEAD_LETTER_EXCHANGE, "")
            for name in Topology.queues(district):
                args: dict[str, Any] = {"x-dead-letter-exchange": DEAD_LETTER_EXCHANGE}
                if name == Topology.events(district):
                    args["x-single-active-consumer"] = True
                ch.queue_declare(name, durable=True, auto_delete=False, arguments=args)
                ch.queue_bind(name, EXCHANGE, name)
        except AccessRefused:
            # a district or state user may not configure: `resync broker definitions` set the topology up
            log.info("no permission to declare the topology; using the one the administrator set up",
                     district=district, user=self.user)
        except _ERRORS as e:
            raise ConnectionClosed(f"cannot declare the queues of {district}: {e}") from None

    # publishing -----------------------------------------------------------------------------

    def _on_ack(self, tag: int, multiple: bool) -> None:
        self._confirmed = tag if multiple else max(self._confirmed, tag)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self._failures.append(f"broker refused message {tag}")
        self._on_ack(tag, multiple)

    def _on_return(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        self._failures.append(f"no queue for routing key {routing_key!r}: {exc}")

    def publish(self, routing_key: str, body: bytes, *, kind: str, message_id: str,
                headers: Mapping[str, Any] | None = None, exchange: str = EXCHANGE) -> None:
        try:
            if not self._confirming:
                # no wait for select-ok: py-amqp would read (and decode) deliveries meanwhile; see consume
                self.channel.confirm_select(nowait=True)
                self.channel.events["basic_ack"].add(self._on_ack)
                self.channel.events["basic_nack"].add(self._on_nack)
                self.channel.events["basic_return"].add(self._on_return)
                self._confirming = True
            if headers:
                self._send()
                msg = amqp.Message(body, content_type="application/json", delivery_mode=2,
                                   message_id=message_id, type=kind, user_id=self.user,
                                   application_headers=dict(headers))
                self.channel.basic_publish(msg, exchange=exchange, routing_key=routing_key, mandatory=True)
            else:
                self._out += publish_frames(self._channel_id, self._frame_max, exchange, routing_key, body,
                                            content_type="application/json", message_id=message_id, type_=kind,
                                            user_id=self.user)
                if len(self._out) >= _WRITE_SIZE:
                    self._send()
            self.published += 1
            if self.published - self._confirmed > _WINDOW:
                self._drain_until(self.published - _WINDOW // 2, 60.0)
        except _ERRORS as e:
            raise ConnectionClosed(f"publish failed: {e}") from None

    def _send(self) -> None:
        if self._out:
            self._sock.sendall(self._out)
            self._out.clear()

    def _drain_until(self, tag: int, timeout: float) -> None:
        self._send()
        deadline = time.monotonic() + timeout
        while self._confirmed < tag:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ConnectionClosed(f"broker did not confirm {tag - self._confirmed} message(s) in {timeout}s")
            self._pump(min(remaining, 1.0))

    # reading --------------------------------------------------------------------------------

    def _pump(self, timeout: float) -> bool:
        """Handle the next frame, waiting up to ``timeout`` for it; False when none came."""
        if not self._reader.has_frame():
            self._sock.settimeout(max(timeout, 0.0001))
            try:
                frame = self._reader.frame()
            except TimeoutError:
                return False
            finally:
                self._sock.settimeout(None)  # writes must never time out halfway through a frame
        else:
            frame = self._reader.frame()
        kind, channel, payload = frame
        if channel == self._channel_id:
            if self._delivering is None and kind == METHOD and payload[:4] == BASIC_DELIVER:
                self._delivering = parse_deliver(payload)
                return True
            if self._delivering is not None:
                if kind == HEADER:
                    self._remaining = self._size = body_size(payload)
                    try:
                        self._properties, self._unreadable = decode_properties_basic(payload, 12)[0], None
                    except (ValueError, struct.error, IndexError) as e:  # UnicodeDecodeError is a ValueError
                        self._properties, self._unreadable = {}, f"its AMQP properties cannot be read: {e}"[:300]
                    self._body = []
                elif kind == BODY:
                    if self._size <= self._max_body:  # an over-size body is read off the socket and let go
                        self._body.append(payload)
                    self._remaining -= len(payload)
                if self._remaining <= 0:
                    self._delivered()
                return True
        self.conn.on_inbound_frame(frame)  # confirms, returns, cancels, closes: py-amqp's
        return True

    def _delivered(self) -> None:
        assert self._delivering is not None
        tag, redelivered, consumer_tag = self._delivering
        queue = self._queues.get(consumer_tag, "")
        dropped = self._size if self._size > self._max_body else 0
        self._buffer.append(_delivery(b"".join(self._body), tag, queue, redelivered, self._properties,
                                      dropped, self._unreadable))
        self._held += self._size - dropped
        self._body, self._delivering = [], None

    def flush(self, timeout: float = 60.0) -> None:
        self.confirm(self.published, timeout)

    def confirm(self, count: int, timeout: float = 60.0) -> None:
        try:
            self._drain_until(count, timeout)
        except _ERRORS as e:
            raise ConnectionClosed(f"waiting for confirms failed: {e}") from None
        if self._failures:
            failures, self._failures = self._failures, []
            raise ConnectionClosed("; ".join(failures[:3]))

    # consuming ------------------------------------------------------------------------------

    def _on_message(self, message: amqp.Message) -> None:
        """A delivery py-amqp read itself (while it waited for a reply of its own)."""
        body, info = message.body, message.delivery_info
        raw = body.encode() if isinstance(body, str) else bytes(body)
        dropped = len(raw) if len(raw) > self._max_body else 0
        queue = self._queues.get(str(info.get("consumer_tag", "")).encode(), "")
        self._buffer.append(_delivery(b"" if dropped else raw, info["delivery_tag"], queue,
                                      bool(info.get("redelivered")), message.properties, dropped))
        self._held += len(raw) - dropped

    def consume(self, queue: str, *, prefetch: int, max_body: int = DEFAULT_MAX_BODY) -> None:
        """``max_body`` holds for the whole connection (the last call's value)."""
        self._max_body = max_body
        try:
            self._send()
            if prefetch != self._prefetch:
                self.channel.basic_qos(0, prefetch, False)
                self._prefetch = prefetch
            # nowait: once a consumer runs, only _pump reads deliveries, and it survives properties py-amqp
            # could not decode (a sender's non-UTF-8 message_id would raise inside py-amqp's own reader)
            consumer_tag = f"resync.{queue}.{id(self):x}"
            self._queues[consumer_tag.encode()] = queue
            self.channel.basic_consume(queue, consumer_tag=consumer_tag, callback=self._on_message, no_ack=False,
                                       nowait=True)
        except _ERRORS as e:
            raise ConnectionClosed(f"cannot consume {queue}: {e}") from None

    def fetch(self, max_count: int, timeout: float, max_bytes: int = DEFAULT_MAX_BYTES) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        try:
            # past max_bytes the socket is left unread: the broker holds the rest, not this process
            while len(self._buffer) < max_count and self._held < max_bytes:
                if self._reader.has_frame():
                    self._pump(0)
                    continue
                wait = deadline - time.monotonic() if not self._buffer else 0.002
                if wait <= 0:
                    break
                if not self._pump(wait) and (self._buffer or time.monotonic() >= deadline):
                    break
        except _ERRORS as e:
            raise ConnectionClosed(f"consuming failed: {e}") from None
        out: list[Delivery] = []
        taken = 0
        for d in self._buffer:
            if len(out) == max_count or (out and taken + len(d.body) > max_bytes):
                break
            out.append(d)
            taken += len(d.body)
        self._buffer = self._buffer[len(out):]
        self._held -= taken
        return out

    def ack(self, delivery_tag: int, *, multiple: bool = False) -> None:
        try:
            self._send()
            self.channel.basic_ack(delivery_tag, multiple=multiple)
        except _ERRORS as e:
            raise ConnectionClosed(f"ack failed: {e}") from None

    def dead_letter(self, delivery: Delivery, reason: str, sender: str | None = None) -> None:
        self.publish(DEAD_LETTER_QUEUE, delivery.body, kind=_short(delivery.type or ""),
                     message_id=_short(delivery.message_id or ""),
                     headers=dead_letter_headers(delivery, reason, sender), exchange=DEAD_LETTER_EXCHANGE)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._send()
        except _ERRORS:
            pass
        try:
            self._kombu.release()
        except Exception:
            pass


def _delivery(body: bytes, tag: int, queue: str, redelivered: bool, props: Mapping[str, Any],
              dropped: int = 0, unreadable: str | None = None) -> Delivery:
    headers = props.get("application_headers")
    return Delivery(body, tag, queue, _text(props.get("message_id")), _text(props.get("user_id")),
                    _text(props.get("type")), redelivered, dict(headers) if isinstance(headers, dict) else {},
                    dropped, unreadable)


def _short(value: str) -> str:
    """At most an AMQP short string (255 bytes): a property read leniently can have grown past it."""
    return value.encode("utf-8", "replace")[:255].decode("utf-8", "ignore")


def _text(value: Any) -> str | None:
    """A short-string property as text whatever the sender put there (py-amqp may hand over bytes)."""
    if value is None or isinstance(value, str):
        return value
    return bytes(value).decode("utf-8", "replace") if isinstance(value, bytes | bytearray) else str(value)
