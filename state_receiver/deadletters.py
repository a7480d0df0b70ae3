"""The dead-letter queue, as the state's administrator reads and empties it.

Requeueing never changes who a message is from. The state's receiver records, on each message it sets
aside, the queue it came from and the broker user who sent it; only those records are believed. A
message that someone else put on the dead-letter queue is from that someone, whatever its headers
claim. A message is put back with its first sender named (the receiver and the agent judge it by that
sender, not by the state who put it back), and a control message or an answer is put back only if the
state itself first sent it: a forged resync request is never laundered into the state's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from core.brokers import Broker, Delivery, Topology
from core.brokers.base import DEAD_LETTER_QUEUE, DROPPED, ORIGIN, REASON, SENDER, sender_of
from messages.codec import MAX_MESSAGE

MAX_SCAN = 10_000
LISTED_BODY = 64 * 1024
"""A listing shows the start of a body: a larger one is not read into memory (its size is shown)."""


@dataclass(frozen=True, slots=True)
class Origin:
    queue: str | None
    sender: str | None


@dataclass
class Requeued:
    requeued: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    """message id -> why it was not put back"""


def origin(d: Delivery, state_user: str) -> Origin:
    """Where ``d`` came from and who sent it, as far as it can be believed."""
    death = (d.headers.get("x-death") or [{}])[0]
    queue = d.headers.get(ORIGIN) or (death.get("queue") if isinstance(death, dict) else None)
    return Origin(_text(queue), sender_of(d, state_user))


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) and value else None


def _describe(d: Delivery, state_user: str) -> dict[str, Any]:
    where = origin(d, state_user)
    return {
        "message_id": d.message_id,
        "queue": where.queue,
        "sender": where.sender,
        "type": d.type,
        "reason": _text(d.headers.get(REASON)) or ((d.headers.get("x-death") or [{}])[0] or {}).get("reason"),
        "bytes": d.headers.get(DROPPED) or d.dropped or len(d.body),
        "body": d.body[:200].decode("utf-8", "replace"),
    }


def _scan(conn: Any, limit: int, max_body: int) -> Iterator[Delivery]:
    """The queue's messages, oldest first, a fetch at a time: what the caller lets go of is not held (anyone
    may dead-letter, so the queue can hold thousands of large messages). A body over ``max_body`` is not
    kept."""
    conn.consume(DEAD_LETTER_QUEUE, prefetch=limit, max_body=max_body)
    seen = 0
    while seen < limit:
        got = conn.fetch(min(100, limit - seen), timeout=1.0)
        if not got:
            return
        seen += len(got)
        yield from got


def list_dead_letters(broker: Broker, state_user: str, limit: int = 100) -> list[dict[str, Any]]:
    """Look without taking: the messages go back to the queue, in order, when the connection closes."""
    with broker.connect() as conn:
        return [_describe(d, state_user) for d in _scan(conn, limit, LISTED_BODY)]


def refusal(where: Origin, state_user: str) -> str | None:
    """Why a message from ``where`` may not be put back, or None."""
    if where.queue is None:
        return "it does not say which queue it came from"
    if where.sender is None:
        return "its first sender is not known: put back, it would pass for the state's own"
    if where.queue.startswith(("control.", "acks.")) and where.sender != state_user:
        return (f"it is a message to a district's agent from broker user {where.sender!r}, not from the state "
                f"({state_user!r}); putting it back would make it the state's")
    if not where.queue.startswith(("sync.", "control.", "acks.")) or not Topology.district_of(where.queue):
        return f"{where.queue!r} is not a queue of this system"
    return None


def requeue(broker: Broker, message_ids: set[str], state_user: str) -> Requeued:
    """Put these messages back on the queues they came from, for the receiver to try again."""
    done = Requeued()
    # put back on a connection of its own: the scanning one is read only as the scan goes
    with broker.connect() as conn, broker.connect() as out:
        for d in _scan(conn, MAX_SCAN, MAX_MESSAGE):
            if d.message_id not in message_ids or d.message_id in done.requeued:
                continue
            where = origin(d, state_user)
            why = refusal(where, state_user)
            if d.headers.get(DROPPED) or d.dropped:
                why = f"its body of {d.headers.get(DROPPED) or d.dropped} bytes was over the limit and was not kept"
            if d.unreadable:
                why = d.unreadable
            if why is not None:
                done.refused[d.message_id] = why
                continue
            assert where.queue is not None
            out.publish(where.queue, d.body, kind=d.type or "event", message_id=d.message_id or "",
                        headers={SENDER: where.sender or ""})
            out.flush()
            conn.ack(d.delivery_tag)
            done.requeued.append(d.message_id or "")
    return done
