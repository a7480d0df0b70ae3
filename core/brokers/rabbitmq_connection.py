"""The ``Connection`` to RabbitMQ: publishing with pipelined confirms, and consuming, on a ``LoopedChannel``.

Publishes are buffered by pika and written when the loop runs (``_FLUSH_BYTES``), confirms are counted as they
arrive, and ``publish`` waits only when more than ``_WINDOW`` messages or ``_WINDOW_BYTES`` are unconfirmed.
Deliveries are kept as they arrive until ``fetch`` hands them out; a body over the consumer's limit is let go at
once, keeping only its size.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import pika
from pika.spec import Basic, BasicProperties

from core.brokers.base import (
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_BYTES,
    EXCHANGE,
    Connection,
    Delivery,
    dead_letter_headers,
)
from core.brokers.rabbitmq_loop import LoopedChannel
from messages.errors import ConnectionClosed

_WINDOW = 20_000  # unconfirmed messages in flight before publish waits
_WINDOW_BYTES = 32 * 1024 * 1024  # and unconfirmed bytes
_FLUSH_BYTES = 128 * 1024  # publishes are handed to the socket about this often
_CONFIRM_TIMEOUT = 60.0  # without an alarm, longer means the broker is gone; during one, pika's own timeout


class RabbitConnection(LoopedChannel, Connection):
    def __init__(self, params: pika.ConnectionParameters, user: str, where: str, open_timeout: float = 30.0) -> None:
        self.published = 0
        self._confirmed = 0
        self._sizes: deque[tuple[int, int]] = deque()  # (tag, bytes published up to it), unconfirmed
        self._bytes = self._confirmed_bytes = self._unflushed = 0
        self._refused: list[str] = []
        self._buffer: deque[Delivery] = deque()
        self._held = 0
        self._max_body = DEFAULT_MAX_BODY
        self._prefetch = -1
        self._queues: dict[str, str] = {}  # consumer tag -> queue
        self._props = BasicProperties(content_type="application/json", delivery_mode=2, user_id=user)
        super().__init__(params, user, where, open_timeout)

    def _prepare(self, channel: Any, ready: Callable[[Any], None]) -> None:
        channel.add_on_return_callback(self._on_return)
        channel.add_on_cancel_callback(self._on_cancel)
        channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=ready)

    def _on_cancel(self, frame: Any) -> None:
        queue = self._queues.get(frame.method.consumer_tag, "?")
        self._fail(ConnectionClosed(f"{self.where} cancelled the consumer of {queue} (was the queue deleted?)"))

    # publishing -----------------------------------------------------------------------------

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        tag = method.delivery_tag
        if isinstance(method, Basic.Nack):
            self._refused.append(f"{self.where} refused message {tag} (nack: a full queue, or the broker "
                                 "could not store it)")
        self._confirmed = tag if method.multiple else max(self._confirmed, tag)
        while self._sizes and self._sizes[0][0] <= self._confirmed:
            self._confirmed_bytes = self._sizes.popleft()[1]
        self._wake()

    def _on_return(self, _channel: Any, method: Any, _props: Any, _body: bytes) -> None:
        self._refused.append(f"no queue for routing key {method.routing_key!r} on exchange {method.exchange!r} "
                             f"({method.reply_code} {method.reply_text})")

    def publish(self, routing_key: str, body: bytes, *, kind: str, message_id: str,
                headers: Mapping[str, Any] | None = None, exchange: str = EXCHANGE) -> None:
        props = self._props  # one object, encoded at once by basic_publish: cheaper than one per message
        props.message_id, props.type, props.headers = message_id, kind, dict(headers) if headers else None
        self._call(self._channel.basic_publish, exchange, routing_key, body, props, mandatory=True)
        self.published += 1
        self._bytes += len(body)
        self._unflushed += len(body) + 200
        self._sizes.append((self.published, self._bytes))
        if self._unflushed >= _FLUSH_BYTES:
            self._unflushed = 0
            self._turn()
        if self.published - self._confirmed > _WINDOW or self._bytes - self._confirmed_bytes > _WINDOW_BYTES:
            self._unflushed = 0
            if not self._run(lambda: self.published - self._confirmed <= _WINDOW // 2
                             and self._bytes - self._confirmed_bytes <= _WINDOW_BYTES // 2, _CONFIRM_TIMEOUT):
                raise ConnectionClosed(f"{self.where} confirmed nothing in {_CONFIRM_TIMEOUT:.0f}s")

    def _await(self, count: int, timeout: float) -> None:
        self._unflushed = 0
        if not self._run(lambda: self._confirmed >= count, timeout):
            raise ConnectionClosed(f"{self.where} did not confirm {count - self._confirmed} message(s) in "
                                   f"{timeout:.0f}s")

    def keep_alive(self) -> None:
        self._turn()

    def flush(self, timeout: float = 60.0) -> None:
        self.confirm(self.published, timeout)

    def confirm(self, count: int, timeout: float = 60.0) -> None:
        self._await(count, timeout)
        if self._refused:
            refused, self._refused = self._refused, []
            raise ConnectionClosed("; ".join(refused[:3]))

    def dead_letter(self, delivery: Delivery, reason: str, sender: str | None = None) -> None:
        self.publish(DEAD_LETTER_QUEUE, delivery.body, kind=_short(delivery.type or ""),
                     message_id=_short(delivery.message_id or ""),
                     headers=dead_letter_headers(delivery, reason, sender), exchange=DEAD_LETTER_EXCHANGE)

    # consuming ------------------------------------------------------------------------------

    def consume(self, queue: str, *, prefetch: int, max_body: int = DEFAULT_MAX_BODY) -> None:
        """``max_body`` holds for the whole connection (the last call's value)."""
        self._max_body = max_body
        if prefetch != self._prefetch:
            self._rpc("basic.qos", lambda cb: self._channel.basic_qos(prefetch_count=prefetch, callback=cb))
            self._prefetch = prefetch
        tag = f"resync.{queue}.{id(self):x}"
        self._queues[tag] = queue
        self._rpc(f"the consumer of {queue}", lambda cb: self._channel.basic_consume(
            queue, self._on_message, consumer_tag=tag, callback=cb))

    def _on_message(self, _channel: Any, method: Any, props: BasicProperties, body: bytes) -> None:
        size = len(body)
        dropped = size if size > self._max_body else 0  # an over-size body is let go: only its size is kept
        self._buffer.append(_delivery(b"" if dropped else body, method, self._queues.get(method.consumer_tag, ""),
                                      props, dropped))
        self._held += size - dropped
        self._wake()

    def fetch(self, max_count: int, timeout: float, max_bytes: int = DEFAULT_MAX_BYTES) -> list[Delivery]:
        # past max_bytes the socket is left unread: the broker holds the rest, not this process
        def enough() -> bool:
            return len(self._buffer) >= max_count or self._held >= max_bytes

        if not self._buffer:
            self._run(lambda: bool(self._buffer), timeout)
        while not enough():  # take what has arrived meanwhile, a socket read at a time
            had = len(self._buffer)
            self._turn()
            if len(self._buffer) == had:
                break
        out: list[Delivery] = []
        taken = 0
        while self._buffer and len(out) < max_count:
            size = len(self._buffer[0].body)
            if out and taken + size > max_bytes:
                break
            out.append(self._buffer.popleft())
            taken += size
        self._held -= taken
        return out

    def ack(self, delivery_tag: int, *, multiple: bool = False) -> None:
        self._call(self._channel.basic_ack, delivery_tag, multiple=multiple)
        self._turn()


def _delivery(body: bytes, method: Any, queue: str, props: BasicProperties, dropped: int) -> Delivery:
    """A delivery with its properties as text. pika hands over a short string that is not UTF-8 as bytes; such a
    message is marked unreadable, with no properties (the daemons set it aside)."""
    message_id, user_id, kind, headers = props.message_id, props.user_id, props.type, props.headers
    if not isinstance(headers, dict):
        headers = {}
    if (message_id is None or type(message_id) is str) and (user_id is None or type(user_id) is str) \
            and (kind is None or type(kind) is str):
        return Delivery(body, method.delivery_tag, queue, message_id, user_id, kind, bool(method.redelivered),
                        headers, dropped)
    raw = [name for name, v in (("message_id", message_id), ("user_id", user_id), ("type", kind))
           if v is not None and not isinstance(v, str)]
    return Delivery(body, method.delivery_tag, queue, None, None, None, bool(method.redelivered), headers, dropped,
                    f"its AMQP properties ({', '.join(raw)}) are not UTF-8")


def _short(value: str) -> str:
    """At most an AMQP short string (255 bytes): a property read leniently can have grown past it."""
    return value.encode("utf-8", "replace")[:255].decode("utf-8", "ignore")

