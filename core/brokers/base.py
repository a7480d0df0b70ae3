"""What the rest of the project needs from a broker, and the queue layout it relies on."""

from __future__ import annotations

import abc
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from messages.codec import MAX_MESSAGE
from messages.errors import ConfigError

EXCHANGE = "resync"
DEAD_LETTER_EXCHANGE = "resync.dlx"
DEAD_LETTER_QUEUE = "resync.dead-letter"
REASON, ORIGIN, SENDER = "x-resync-reason", "x-resync-queue", "x-resync-user"
DROPPED = "x-resync-dropped"
"""On a dead letter whose body the transport let go: the size it had. Such a message cannot be put back."""
DEFAULT_MAX_BODY = MAX_MESSAGE
"""The largest body a consumer keeps unless it says otherwise; the shipped broker configuration refuses
larger messages anyway (``docker/rabbitmq.conf``)."""
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
_DISTRICT = re.compile(r"\A[a-z0-9][a-z0-9_-]{0,62}\Z")


def check_district(district: str) -> str:
    if not _DISTRICT.match(district):
        raise ConfigError(
            f"district id {district!r} is not valid: use 1-63 lowercase letters, digits, '-' or '_'"
        )
    return district


class Topology:
    """Queue and routing-key names. Each district has three durable queues, each bound under its own name."""

    @staticmethod
    def events(district: str) -> str:
        return f"sync.{check_district(district)}"

    @staticmethod
    def acks(district: str) -> str:
        return f"acks.{check_district(district)}"

    @staticmethod
    def control(district: str) -> str:
        return f"control.{check_district(district)}"

    @staticmethod
    def district_of(queue: str) -> str:
        return queue.split(".", 1)[1]

    @classmethod
    def queues(cls, district: str) -> list[str]:
        return [cls.events(district), cls.acks(district), cls.control(district)]


QUEUE_TYPES = ("classic", "quorum")
DELIVERY_LIMIT = 20
"""Quorum queues: a message delivered this many times without being settled (a receiver that dies on it each
time) is dead-lettered by the broker, so it cannot hold its queue up for ever."""


def queue_arguments(queue: str, queue_type: str = "classic") -> dict[str, Any]:
    """The arguments every queue resync uses is declared with: dead letters go to ``resync.dlx``; a district's
    event queue has a single active consumer (per-district order); a quorum queue (replicated across a
    cluster) also has a delivery limit and dead-letters at least once, which needs publishes refused when full."""
    args: dict[str, Any] = {}
    if queue != DEAD_LETTER_QUEUE:
        args["x-dead-letter-exchange"] = DEAD_LETTER_EXCHANGE
    if queue.startswith("sync."):
        args["x-single-active-consumer"] = True
    if queue_type == "quorum":
        args["x-queue-type"] = "quorum"
        if queue != DEAD_LETTER_QUEUE:
            args.update({"x-delivery-limit": DELIVERY_LIMIT, "x-dead-letter-strategy": "at-least-once",
                         "x-overflow": "reject-publish"})
    return args


@dataclass(frozen=True, slots=True)
class Delivery:
    body: bytes
    delivery_tag: int
    queue: str
    message_id: str | None
    user_id: str | None
    type: str | None
    redelivered: bool
    headers: Mapping[str, Any] = field(default_factory=dict)
    dropped: int = 0
    """The size of a body the transport did not keep (``body`` is empty): it was over the consumer's
    ``max_body``, so an attacker's large messages cost this process nothing but their headers."""
    unreadable: str | None = None
    """Why the transport could not read the message's AMQP properties (then all of them are None)."""


def dead_letter_headers(delivery: Delivery, reason: str, sender: str | None) -> dict[str, Any]:
    """What a dead letter records: why, the queue it came from, who first sent it (``sender``, as the one
    setting it aside judged it; else the broker user that delivered it) and, if the body was let go, its size."""
    headers: dict[str, Any] = {REASON: reason[:1000], ORIGIN: delivery.queue,
                               SENDER: sender if sender is not None else delivery.user_id or ""}
    if delivery.dropped:
        headers[DROPPED] = delivery.dropped
    return headers

def sender_of(delivery: Delivery, state_user: str) -> str | None:
    """Who sent ``delivery``: the broker user RabbitMQ validated, except that a message the state put back
    from the dead-letter queue (or set aside there) names the user who first sent it; an empty record means
    the sender was not known, and it stays unknown."""
    if delivery.user_id == state_user and SENDER in delivery.headers:
        first = delivery.headers[SENDER]
        if isinstance(first, bytes):
            first = first.decode("utf-8", "replace")
        return first if isinstance(first, str) and first else None
    return delivery.user_id


@dataclass(frozen=True, slots=True)
class QueueStats:
    queue: str
    ready: int
    unacknowledged: int | None
    consumers: int


class Connection(abc.ABC):
    """One connection and channel; not shared between threads.

    Publishing is pipelined: ``publish`` returns at once and ``flush`` waits until the broker has
    confirmed everything published so far, raising ``ConnectionClosed`` if it could not.
    """

    user: str
    published: int = 0
    """How many messages have been published on this connection."""
    blocked: str | None = None
    """While the broker blocks this connection's publishing (a memory or disk alarm): the alarm."""
    watch: Callable[[str | None], None] | None = None
    """If set, told the alarm when the broker starts blocking publishing, and None when it stops."""
    timing: Callable[[float], None] | None = None
    """If set, told at each confirm from the broker how many seconds the newest message it confirms waited."""

    @abc.abstractmethod
    def publish(self, routing_key: str, body: bytes, *, kind: str, message_id: str,
                headers: Mapping[str, Any] | None = None) -> None: ...

    @abc.abstractmethod
    def flush(self, timeout: float = 60.0) -> None: ...

    def confirm(self, count: int, timeout: float = 60.0) -> None:
        """Wait until the broker has confirmed the first ``count`` messages published on this connection,
        so a publisher can go on sending while it waits for older messages only."""
        self.flush(timeout)

    def keep_alive(self) -> None:
        """Let the connection answer the broker (heartbeats) without waiting: for a connection its owner holds
        idle while it waits on something else, at least every few seconds. An in-process broker has nothing
        to answer."""
        return None

    @abc.abstractmethod
    def consume(self, queue: str, *, prefetch: int, max_body: int = DEFAULT_MAX_BODY) -> None:
        """Take deliveries from ``queue``, at most ``prefetch`` unacknowledged; a body over ``max_body``
        bytes is not kept (see ``Delivery.dropped``)."""

    @abc.abstractmethod
    def cancel(self, queue: str) -> None:
        """Stop taking new deliveries from ``queue``; those already received are still fetched and acknowledged
        (any the broker sent before it took the cancel go back to the queue, ahead of the rest). Handing a queue
        over in order: ``cancel``, finish what it delivered until ``settled``, then ``release``, and only then
        may the next consumer subscribe (a quorum queue would give it newer messages before any it had to
        return)."""

    @abc.abstractmethod
    def settled(self, queue: str) -> bool:
        """Whether every delivery of ``queue`` has been acknowledged."""

    @abc.abstractmethod
    def release(self, queue: str) -> None:
        """Stop consuming ``queue``: what it delivered and was not acknowledged goes back to the queue (a classic
        queue puts it back at the head, in order, and lets a waiting single active consumer take over from there
        in the same step). Deliveries of ``queue`` not yet fetched are let go with it."""

    @abc.abstractmethod
    def consuming(self) -> list[str]:
        """The queues this connection consumes."""

    @abc.abstractmethod
    def fetch(self, max_count: int, timeout: float, max_bytes: int = DEFAULT_MAX_BYTES) -> list[Delivery]:
        """Deliveries received on every consumed queue, waiting up to ``timeout`` for the first; stops at
        ``max_count`` deliveries or ``max_bytes`` of bodies, and reads no more from the broker meanwhile."""

    @abc.abstractmethod
    def ack(self, delivery_tag: int, *, multiple: bool = False) -> None: ...

    @abc.abstractmethod
    def dead_letter(self, delivery: Delivery, reason: str, sender: str | None = None) -> None:
        """Put a copy of ``delivery`` on the dead-letter queue with the reason, where it came from and who
        first sent it (see ``dead_letter_headers``). The caller then acknowledges the delivery (after
        ``flush``), as for any other."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Broker(abc.ABC):
    kind: str
    user: str
    """The broker user this process publishes as (RabbitMQ stamps and checks it as ``user_id``)."""

    @abc.abstractmethod
    def connect(self) -> Connection: ...

    @abc.abstractmethod
    def declare_district(self, district: str) -> None: ...

    @abc.abstractmethod
    def queue_stats(self, queues: list[str]) -> list[QueueStats]: ...

    def describe(self) -> str:
        return self.kind
