"""The ``Connection`` to RabbitMQ: publishing with pipelined confirms, and consuming, on a ``LoopedChannel``.

Publishes are buffered by pika and written when the loop runs (``_FLUSH_BYTES``), confirms are counted as they
arrive, and ``publish`` waits only when more than ``_WINDOW`` messages or ``_WINDOW_BYTES`` are unconfirmed.
Deliveries are kept as they arrive until ``fetch`` hands them out; a body over the consumer's limit is let go at
once, keeping only its size.

Each consumed queue has a channel of its own, with its own prefetch: a queue that floods takes only its own
credit, and one queue can be handed over while the others go on (``cancel``, then ``settled`` once all it sent
is acknowledged, then ``release``, which closes its channel). Delivery tags handed out are the connection's own,
counted across channels.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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


@dataclass
class _Consumer:
    queue: str
    channel: Any
    tag: str
    unacked: deque[tuple[int, int]] = field(default_factory=deque)
    """(the connection's delivery tag, the channel's), oldest first."""
    cancelled: bool = False
    releasing: bool = False


class RabbitConnection(LoopedChannel, Connection):
    def __init__(self, params: pika.ConnectionParameters, user: str, where: str, open_timeout: float = 30.0,
                 name: str = "resync") -> None:
        self.name = name
        self.published = 0
        self._confirmed = 0
        """Every message up to this one is confirmed (or refused)."""
        self._ahead: set[int] = set()
        """Messages confirmed beyond ``_confirmed``, past a gap."""
        self._sizes: deque[tuple[int, int, float]] = deque()  # (tag, bytes published up to it, when), unconfirmed
        self.timing: Callable[[float], None] | None = None
        self._bytes = self._confirmed_bytes = self._unflushed = 0
        self._refused: list[str] = []
        self._buffer: deque[Delivery] = deque()
        self._held = 0
        self._max_body = DEFAULT_MAX_BODY
        self._consumers: dict[str, _Consumer] = {}  # queue -> its consumer
        self._tags = itertools.count(1)
        self._props = BasicProperties(content_type="application/json", delivery_mode=2, user_id=user)
        super().__init__(params, user, where, open_timeout)

    def _prepare(self, channel: Any, ready: Callable[[Any], None]) -> None:
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=ready)

    def _on_cancel(self, consumer: _Consumer) -> None:
        self._fail(ConnectionClosed(f"{self.where} cancelled the consumer of {consumer.queue} (was the queue "
                                    "deleted?)"))

    def _on_consumer_closed(self, consumer: _Consumer, reason: BaseException) -> None:
        if not consumer.releasing and not self._closed:
            self._on_channel_closed(consumer.channel, reason)

    # publishing -----------------------------------------------------------------------------

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        tag = method.delivery_tag
        if isinstance(method, Basic.Nack):
            self._refused.append(f"{self.where} refused message {tag} (nack: a full queue, or the broker "
                                 "could not store it)")
        # Messages routed to different queues are confirmed in the order those queues store them: a single
        # confirm can come before the multiple one that covers the tags below it. Only a run with no gap counts.
        if method.multiple:
            self._confirmed = max(self._confirmed, tag)
        elif tag > self._confirmed:
            self._ahead.add(tag)
        while self._confirmed + 1 in self._ahead:
            self._confirmed += 1
        if self._ahead:
            self._ahead = {t for t in self._ahead if t > self._confirmed}
        sent = None
        while self._sizes and self._sizes[0][0] <= self._confirmed:
            _, self._confirmed_bytes, sent = self._sizes.popleft()
        if sent is not None and self.timing is not None:
            self.timing(time.monotonic() - sent)
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
        self._sizes.append((self.published, self._bytes, time.monotonic()))
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
        if queue in self._consumers:
            return
        channel = self._rpc(f"a channel for {queue}", lambda cb: self._conn.channel(on_open_callback=cb))
        consumer = _Consumer(queue, channel, f"{self.name}:{queue}")
        channel.add_on_close_callback(lambda _ch, reason: self._on_consumer_closed(consumer, reason))
        channel.add_on_cancel_callback(lambda _frame: self._on_cancel(consumer))
        self._consumers[queue] = consumer
        self._rpc("basic.qos", lambda cb: channel.basic_qos(prefetch_count=prefetch, callback=cb))
        self._rpc(f"the consumer of {queue}", lambda cb: channel.basic_consume(
            queue, lambda _ch, method, props, body: self._on_message(consumer, method, props, body),
            consumer_tag=consumer.tag, callback=cb))

    def cancel(self, queue: str) -> None:
        consumer = self._consumers.get(queue)
        if consumer is None or consumer.cancelled:
            return
        consumer.cancelled = True
        self._rpc(f"the cancel of {queue}'s consumer", lambda cb: consumer.channel.basic_cancel(consumer.tag, cb))

    def settled(self, queue: str) -> bool:
        consumer = self._consumers.get(queue)
        return consumer is None or not consumer.unacked

    def release(self, queue: str) -> None:
        consumer = self._consumers.pop(queue, None)
        if consumer is None:
            return
        self._held -= sum(len(d.body) for d in self._buffer if d.queue == queue)
        self._buffer = deque(d for d in self._buffer if d.queue != queue)
        consumer.releasing = True
        if consumer.channel.is_open:
            self._call(consumer.channel.close)
            if not self._run(lambda: consumer.channel.is_closed, 30.0):
                raise ConnectionClosed(f"{self.where} did not close the channel of {queue} in 30s")

    def consuming(self) -> list[str]:
        return list(self._consumers)

    def _on_message(self, consumer: _Consumer, method: Any, props: BasicProperties, body: bytes) -> None:
        size = len(body)
        dropped = size if size > self._max_body else 0  # an over-size body is let go: only its size is kept
        tag = next(self._tags)
        consumer.unacked.append((tag, method.delivery_tag))
        self._buffer.append(_delivery(b"" if dropped else body, tag, consumer.queue, props,
                                      bool(method.redelivered), dropped))
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
        for consumer in self._consumers.values():
            unacked, last = consumer.unacked, None
            if multiple:
                while unacked and unacked[0][0] <= delivery_tag:
                    last = unacked.popleft()[1]
            else:
                for i, (tag, theirs) in enumerate(unacked):
                    if tag == delivery_tag:
                        last = theirs
                        del unacked[i]
                        break
            if last is not None:
                self._call(consumer.channel.basic_ack, last, multiple=multiple)
        self._turn()


def _delivery(body: bytes, tag: int, queue: str, props: BasicProperties, redelivered: bool, dropped: int) -> Delivery:
    """A delivery with its properties as text. pika hands over a short string that is not UTF-8 as bytes; such a
    message is marked unreadable, with no properties (the daemons set it aside)."""
    message_id, user_id, kind, headers = props.message_id, props.user_id, props.type, props.headers
    if not isinstance(headers, dict):
        headers = {}
    if (message_id is None or type(message_id) is str) and (user_id is None or type(user_id) is str) \
            and (kind is None or type(kind) is str):
        return Delivery(body, tag, queue, message_id, user_id, kind, redelivered, headers, dropped)
    raw = [name for name, v in (("message_id", message_id), ("user_id", user_id), ("type", kind))
           if v is not None and not isinstance(v, str)]
    return Delivery(body, tag, queue, None, None, None, redelivered, headers, dropped,
                    f"its AMQP properties ({', '.join(raw)}) are not UTF-8")


def _short(value: str) -> str:
    """At most an AMQP short string (255 bytes): a property read leniently can have grown past it."""
    return value.encode("utf-8", "replace")[:255].decode("utf-8", "ignore")

