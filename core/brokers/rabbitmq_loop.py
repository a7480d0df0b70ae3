"""A pika ``SelectConnection`` and one channel, whose I/O loop runs in the caller's thread whenever it waits.

pika's select adapter is event driven, the ``Connection`` interface above it synchronous: every wait here runs
pika's loop (``IOLoop.start``) until the awaited event's callback stops it, or a timer does. So heartbeats,
confirms, returns, deliveries and ``connection.blocked`` are handled whenever the caller waits, publishes or
fetches, and nothing runs in between: no thread, no lock. What pika reports is converted at once
(``refusals.py``) and raised on the caller's next call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pika
import structlog
from pika.adapters.select_connection import IOLoop

from core.brokers.refusals import converted
from messages.errors import ConnectionClosed, ResyncError

log = structlog.get_logger()


class LoopedChannel:
    def __init__(self, params: pika.ConnectionParameters, user: str, where: str, open_timeout: float = 30.0) -> None:
        self.user = user
        self.where = where
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
        self._closed = False
        self._conn = pika.SelectConnection(params, on_open_callback=self._on_open,
                                           on_open_error_callback=self._on_open_error,
                                           on_close_callback=self._on_close, custom_ioloop=self._loop)
        self._conn.add_on_connection_blocked_callback(self._on_blocked)
        self._conn.add_on_connection_unblocked_callback(self._on_unblocked)
        try:
            if not self._run(lambda: self._ready, open_timeout):
                raise ConnectionClosed(f"{where} did not open a connection in {open_timeout:.0f}s")
        except BaseException:
            self._abandon()  # a daemon retries for as long as the broker is down: nothing may leak per attempt
            raise

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
            if self.blocked is not None:  # the whole timeout again from the moment the alarm clears
                deadline = max(deadline, now + timeout)
            if now >= deadline:
                return False
            self._spin(done, min(deadline - now, 1.0))

    def _turn(self) -> None:
        """One pass of the loop without waiting: write what is buffered, read what has arrived."""
        if self._failure is not None:
            raise self._failure
        self._spin(None, 0)
        if self._failure is not None:
            raise self._failure

    def _spin(self, until: Callable[[], bool] | None, seconds: float) -> None:
        """Run pika's loop until ``until()`` holds (checked by the callbacks, see ``_wake``) or ``seconds`` pass."""
        self._until, self._stopping = until, False
        timer = self._loop.call_later(seconds, self._stop)
        try:
            self._loop.start()
        finally:
            self._until = None
            self._loop.remove_timeout(timer)

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A call into pika's channel: the connection's own failure first, if it has one; what pika raises,
        converted."""
        if self._failure is not None:
            raise self._failure
        try:
            return method(*args, **kwargs)
        except (pika.exceptions.AMQPError, ValueError) as e:
            raise self._failure or converted(e, self.where, self.user) from None

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
        self._prepare(channel, self._on_ready)

    def _prepare(self, channel: Any, ready: Callable[[Any], None]) -> None:
        """Set the new channel up, then call ``ready``: what a subclass adds (confirms, returns, cancels)."""
        ready(None)

    def _on_ready(self, _frame: Any) -> None:
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
        replies: list[Any] = []

        def reply(frame: Any) -> None:
            replies.append(frame)
            self._wake()

        self._call(send, reply)
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
