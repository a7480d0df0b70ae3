"""One RabbitMQ connection and channel on pika's ``SelectConnection``, driven from the caller's thread.

The ``Connection`` interface is synchronous, pika's select adapter is event driven: every wait here runs
pika's I/O loop (``IOLoop.start``) until the awaited event's callback stops it, or a timer does. So
heartbeats, confirms, returns, deliveries and ``connection.blocked`` are handled whenever the caller waits,
publishes or fetches, and nothing runs in between: no thread, no lock. Publishing is pipelined: publishes are
buffered by pika and written when the loop runs, confirms are counted as they arrive, and ``publish`` waits
only when more than ``_WINDOW`` messages or ``_WINDOW_BYTES`` are unconfirmed.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import pika
import structlog
from pika.adapters.select_connection import IOLoop
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
from core.brokers.refusals import converted
from messages.errors import ConnectionClosed, ResyncError

log = structlog.get_logger()
_WINDOW = 20_000  # unconfirmed messages in flight before publish waits
_WINDOW_BYTES = 32 * 1024 * 1024  # and unconfirmed bytes
_FLUSH_BYTES = 128 * 1024  # publishes are handed to the socket about this often
_CONFIRM_TIMEOUT = 60.0  # without an alarm, longer means the broker is gone; during one, pika's own timeout


class RabbitConnection(Connection):
    def __init__(self, params: pika.ConnectionParameters, user: str, where: str, open_timeout: float = 30.0) -> None:
        self.user = user
        self.where = where
        self.published = 0
        self.blocked: str | None = None
        """Why the broker blocks this connection's publishing (its alarm), while it does."""
        self.watch: Callable[[str | None], None] | None = None
        """Told the alarm when the broker blocks publishing, and None when it lets go."""
        self._loop = IOLoop()
        self._until: Callable[[], bool] | None = None
        self._stopping = False
        self._failure: ResyncError | None = None
        self._channel: Any = None
        self._ready = False
        self._confirmed = 0
        self._sizes: deque[tuple[int, int]] = deque()  # (tag, bytes published up to it), unconfirmed
        self._bytes = self._confirmed_bytes = self._unflushed = 0
        self._refused: list[str] = []
        self._buffer: deque[Delivery] = deque()
        self._held = 0
        self._max_body = DEFAULT_MAX_BODY
        self._prefetch = -1
        self._queues: dict[str, str] = {}  # consumer tag -> queue
        self._closed = False
        self._props = BasicProperties(content_type="application/json", delivery_mode=2, user_id=user)
        self._conn = pika.SelectConnection(params, on_open_callback=self._on_open,
                                           on_open_error_callback=self._on_open_error,
                                           on_close_callback=self._on_close, custom_ioloop=self._loop)
        self._conn.add_on_connection_blocked_callback(self._on_blocked)
        self._conn.add_on_connection_unblocked_callback(self._on_unblocked)
        if not self._run(lambda: self._ready, open_timeout):
            self._abandon()
            raise ConnectionClosed(f"{where} did not open a connection in {open_timeout:.0f}s")

    # the loop -------------------------------------------------------------------------------

    def _run(self, done: Callable[[], bool], timeout: float) -> bool:
        """Run pika's loop until ``done()`` or ``timeout`` seconds; raises what closed the connection meanwhile.
        While the broker blocks publishing the clock stops: pika's blocked-connection timeout decides."""
        deadline = time.monotonic() + timeout
        while True:
            if self._failure is not None:
                raise self._failure
            if done():
                return True
            now = time.monotonic()
            if self.blocked is not None:
                deadline = max(deadline, now + 1.0)
            if now >= deadline:
                return False
            self._until, self._stopping = done, False
            timer = self._loop.call_later(min(deadline - now, 1.0), self._stop)
            try:
                self._loop.start()
            finally:
                self._until = None
                self._loop.remove_timeout(timer)

    def _turn(self) -> None:
        """One pass of the loop without waiting: write what is buffered, read what has arrived."""
        if self._failure is not None:
            raise self._failure
        self._until, self._stopping = None, False
        timer = self._loop.call_later(0, self._stop)
        try:
            self._loop.start()
        finally:
            self._loop.remove_timeout(timer)
        if self._failure is not None:
            raise self._failure

    def _stop(self) -> None:
        if not self._stopping:
            self._stopping = True
            self._loop.stop()

    def _wake(self) -> None:
        if self._until is not None and not self._stopping and self._until():
            self._stop()

    def _fail(self, error: ResyncError) -> None:
        if self._failure is None:
            self._failure = error
        self._stop()

    # opening and closing --------------------------------------------------------------------

    def _on_open(self, conn: Any) -> None:
        conn.channel(on_open_callback=self._on_channel)

    def _on_channel(self, channel: Any) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.add_on_cancel_callback(self._on_cancel)
        channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=self._on_confirming)

    def _on_confirming(self, _frame: Any) -> None:
        self._ready = True
        self._wake()

    def _on_open_error(self, _conn: Any, error: BaseException) -> None:
        self._fail(converted(error, self.where, self.user))

    def _on_close(self, _conn: Any, reason: BaseException) -> None:
        if not self._closed:
            self._fail(converted(reason, self.where, self.user))
        self._stop()

    def _on_channel_closed(self, _channel: Any, reason: BaseException) -> None:
        if not self._closed:
            self._fail(converted(reason, self.where, self.user))
            if self._conn.is_open:
                self._conn.close()

    def _on_cancel(self, frame: Any) -> None:
        queue = self._queues.get(frame.method.consumer_tag, "?")
        self._fail(ConnectionClosed(f"{self.where} cancelled the consumer of {queue} (was the queue deleted?)"))

    def _on_blocked(self, _conn: Any, frame: Any) -> None:
        self.blocked = str(getattr(frame.method, "reason", "") or "a resource alarm")
        log.warning("the broker blocks publishing; waiting for the alarm to clear", broker=self.where,
                    alarm=self.blocked)
        self._tell(self.blocked)

    def _on_unblocked(self, _conn: Any, _frame: Any) -> None:
        log.warning("the broker publishes again", broker=self.where, alarm=self.blocked)
        self.blocked = None
        self._tell(None)
        self._wake()

    def _tell(self, alarm: str | None) -> None:
        if self.watch is not None:
            try:
                self.watch(alarm)
            except Exception:  # a listener's failure must not tear down the connection
                log.exception("blocked-connection listener failed")

    def _abandon(self) -> None:
        self._closed = True
        try:
            if self._conn.is_open or self._conn.is_opening:
                self._conn.close()
                self._run(lambda: self._conn.is_closed, 5.0)
        except Exception:
            pass
        finally:
            self._loop.close()

    def close(self) -> None:
        if self._closed:
            return
        try:
            if self._failure is None:
                self._turn()  # what is buffered (acks above all) still goes out
        except ResyncError:
            pass
        self._abandon()

    # topology -------------------------------------------------------------------------------

    def _rpc(self, what: str, send: Callable[[Callable[[Any], None]], None]) -> Any:
        """Send one synchronous method (``send(callback)``) and wait for its reply frame."""
        if self._failure is not None:
            raise self._failure
        replies: list[Any] = []

        def reply(frame: Any) -> None:
            replies.append(frame)
            self._wake()

        try:
            send(reply)
        except (pika.exceptions.AMQPError, ValueError) as e:
            raise self._failure or converted(e, self.where, self.user) from None
        if not self._run(lambda: bool(replies), 30.0):
            raise ConnectionClosed(f"{self.where} did not answer {what} in 30s")
        return replies[0]

    def exchange_declare(self, name: str, kind: str) -> None:
        self._rpc(f"the declaration of exchange {name}", lambda cb: self._channel.exchange_declare(
            name, kind, durable=True, callback=cb))

    def queue_declare(self, name: str, arguments: dict[str, Any] | None = None,
                      passive: bool = False) -> tuple[int, int]:
        """Declare (or with ``passive`` look up) a durable queue: its ready messages and consumers."""
        frame = self._rpc(f"the declaration of queue {name}", lambda cb: self._channel.queue_declare(
            name, passive=passive, durable=True, arguments=arguments, callback=cb))
        return int(frame.method.message_count), int(frame.method.consumer_count)

    def queue_bind(self, queue: str, exchange: str, routing_key: str) -> None:
        self._rpc(f"the binding of queue {queue}", lambda cb: self._channel.queue_bind(
            queue, exchange, routing_key=routing_key, callback=cb))

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
        if self._failure is not None:
            raise self._failure
        props = self._props  # one object, encoded at once by basic_publish: cheaper than one per message
        props.message_id, props.type, props.headers = message_id, kind, dict(headers) if headers else None
        try:
            self._channel.basic_publish(exchange, routing_key, body, props, mandatory=True)
        except (pika.exceptions.AMQPError, ValueError) as e:
            raise self._failure or converted(e, self.where, self.user) from None
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
        if self._failure is not None:
            raise self._failure
        try:
            self._channel.basic_ack(delivery_tag, multiple=multiple)
        except (pika.exceptions.AMQPError, ValueError) as e:
            raise self._failure or converted(e, self.where, self.user) from None
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

