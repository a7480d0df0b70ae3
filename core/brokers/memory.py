"""An in-process broker with the same semantics the project relies on from RabbitMQ: durable-looking
queues, per-connection delivery tags, multiple acks, requeue of unacknowledged messages when a
connection closes, and a dead-letter queue. It serves the embedded default and the unit tests."""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from core.brokers.base import (
    DEAD_LETTER_QUEUE,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_BYTES,
    Broker,
    Connection,
    Delivery,
    QueueStats,
    Topology,
    dead_letter_headers,
)
from messages.errors import ConnectionClosed


@dataclass
class _Message:
    body: bytes
    message_id: str
    user_id: str
    kind: str
    redelivered: bool = False
    headers: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Queue:
    name: str
    messages: deque[_Message] = field(default_factory=deque)
    unacked: int = 0
    consumers: int = 0
    max_length: int | None = None
    """Publishes beyond this many ready messages are refused (RabbitMQ's ``reject-publish`` overflow)."""


class MemoryBroker(Broker):
    kind = "in-process broker"
    _shared: ClassVar[MemoryBroker | None] = None

    def __init__(self, user: str = "guest") -> None:
        self.user = user
        self.queues: dict[str, _Queue] = {DEAD_LETTER_QUEUE: _Queue(DEAD_LETTER_QUEUE)}
        self.cond = threading.Condition()

    @classmethod
    def shared(cls) -> MemoryBroker:
        if cls._shared is None:
            cls._shared = cls()
        return cls._shared

    def bound(self, queue: str, max_length: int) -> None:
        """Declare ``queue`` holding at most ``max_length`` ready messages, refusing publishes beyond."""
        with self.cond:
            self.queues.setdefault(queue, _Queue(queue)).max_length = max_length

    def connect(self) -> MemoryConnection:
        return MemoryConnection(self)

    def declare_district(self, district: str) -> None:
        with self.cond:
            for name in Topology.queues(district):
                self.queues.setdefault(name, _Queue(name))

    def queue_stats(self, queues: list[str]) -> list[QueueStats]:
        with self.cond:
            return [
                QueueStats(q.name, len(q.messages), q.unacked, q.consumers)
                for name in queues
                if (q := self.queues.get(name)) is not None
            ]


class MemoryConnection(Connection):
    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker
        self.user = broker.user
        self._tags = itertools.count(1)
        self._pending: dict[int, tuple[_Queue, _Message]] = {}
        self._consuming: list[_Queue] = []
        self._cancelled: set[str] = set()
        self._max_body = DEFAULT_MAX_BODY
        self._refused: list[str] = []
        self._closed = False

    def _check(self) -> None:
        if self._closed:
            raise ConnectionClosed("connection is closed")

    def publish(self, routing_key: str, body: bytes, *, kind: str, message_id: str,
                headers: Mapping[str, Any] | None = None) -> None:
        self._check()
        with self.broker.cond:
            queue = self.broker.queues.get(routing_key)
            self.published += 1
            if queue is None:
                self._refused.append(f"no queue for routing key {routing_key!r}")
                return
            if queue.max_length is not None and len(queue.messages) >= queue.max_length:
                self._refused.append(f"the broker refused message {self.published} (a full queue)")
                return
            queue.messages.append(_Message(bytes(body), message_id, self.user, kind, headers=dict(headers or {})))
            self.broker.cond.notify_all()

    def flush(self, timeout: float = 60.0) -> None:
        self._check()
        if self._refused:
            refused, self._refused = self._refused, []
            raise ConnectionClosed("; ".join(refused[:3]))

    def consume(self, queue: str, *, prefetch: int, max_body: int = DEFAULT_MAX_BODY) -> None:
        self._check()
        self._max_body = max_body
        with self.broker.cond:
            q = self.broker.queues.get(queue)
            if q is None:
                raise ConnectionClosed(f"queue {queue!r} does not exist")
            q.consumers += 1
            self._consuming.append(q)

    def release(self, queue: str) -> None:
        self._check()
        with self.broker.cond:
            q = next((c for c in self._consuming if c.name == queue), None)
            if q is None:
                return
            self._consuming.remove(q)
            self._cancelled.discard(queue)
            q.consumers -= 1
            self._requeue([t for t, (held, _) in self._pending.items() if held is q])
            self.broker.cond.notify_all()

    def consuming(self) -> list[str]:
        return [q.name for q in self._consuming]

    def cancel(self, queue: str) -> None:
        self._check()
        with self.broker.cond:
            self._cancelled.add(queue)

    def settled(self, queue: str) -> bool:
        with self.broker.cond:
            return not any(q.name == queue for q, _ in self._pending.values())

    def _requeue(self, tags: list[int]) -> None:
        """Put the deliveries ``tags`` back at the head of their queues, in the order they were taken."""
        for tag in sorted(tags, reverse=True):
            q, m = self._pending.pop(tag)
            q.unacked -= 1
            m.redelivered = True
            q.messages.appendleft(m)

    def fetch(self, max_count: int, timeout: float, max_bytes: int = DEFAULT_MAX_BYTES) -> list[Delivery]:
        self._check()
        deadline = time.monotonic() + timeout
        out: list[Delivery] = []
        held = 0
        with self.broker.cond:
            while True:
                for q in self._consuming:
                    while (q.name not in self._cancelled and q.messages and len(out) < max_count
                           and (not out or held < max_bytes)):
                        m = q.messages.popleft()
                        q.unacked += 1
                        tag = next(self._tags)
                        self._pending[tag] = (q, m)
                        dropped = len(m.body) if len(m.body) > self._max_body else 0
                        held += len(m.body) - dropped
                        out.append(Delivery(b"" if dropped else m.body, tag, q.name, m.message_id, m.user_id, m.kind,
                                            m.redelivered, m.headers, dropped))
                remaining = deadline - time.monotonic()
                if out or remaining <= 0 or self._closed:
                    return out
                self.broker.cond.wait(remaining)

    def _settle(self, tag: int, multiple: bool) -> list[tuple[_Queue, _Message]]:
        tags = [t for t in self._pending if t <= tag] if multiple else [tag]
        settled = [self._pending.pop(t) for t in tags if t in self._pending]
        for q, _ in settled:
            q.unacked -= 1
        return settled

    def ack(self, delivery_tag: int, *, multiple: bool = False) -> None:
        self._check()
        with self.broker.cond:
            self._settle(delivery_tag, multiple)

    def dead_letter(self, delivery: Delivery, reason: str, sender: str | None = None) -> None:
        self._check()
        with self.broker.cond:
            self.broker.queues[DEAD_LETTER_QUEUE].messages.append(_Message(
                delivery.body, delivery.message_id or "", self.user, delivery.type or "",
                headers=dead_letter_headers(delivery, reason, sender)))
            self.broker.cond.notify_all()

    def close(self) -> None:
        with self.broker.cond:
            if self._closed:
                return
            self._closed = True
            self._requeue(list(self._pending))
            for q in self._consuming:
                q.consumers -= 1
            self.broker.cond.notify_all()
