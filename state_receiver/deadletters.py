"""The dead-letter queue, as the state's administrator reads and empties it."""

from __future__ import annotations

from typing import Any

from resync.brokers import Broker, Delivery
from resync.brokers.base import DEAD_LETTER_QUEUE, ORIGIN, REASON, SENDER

MAX_SCAN = 10_000


def _describe(d: Delivery) -> dict[str, Any]:
    death = (d.headers.get("x-death") or [{}])[0]
    return {
        "message_id": d.message_id,
        "queue": d.headers.get(ORIGIN) or death.get("queue"),
        "sender": d.headers.get(SENDER) or d.user_id,
        "type": d.type,
        "reason": d.headers.get(REASON) or death.get("reason"),
        "bytes": len(d.body),
        "body": d.body[:200].decode("utf-8", "replace"),
    }


def _scan(conn: Any, limit: int) -> list[Delivery]:
    conn.consume(DEAD_LETTER_QUEUE, prefetch=limit)
    out: list[Delivery] = []
    while len(out) < limit:
        got = conn.fetch(limit - len(out), timeout=1.0)
        if not got:
            break
        out.extend(got)
    return out


def list_dead_letters(broker: Broker, limit: int = 100) -> list[dict[str, Any]]:
    """Look without taking: the messages go back to the queue, in order, when the connection closes."""
    with broker.connect() as conn:
        return [_describe(d) for d in _scan(conn, limit)]


def requeue(broker: Broker, message_ids: set[str]) -> list[str]:
    """Put these messages back on the queues they came from, for the receiver to try again."""
    done: list[str] = []
    with broker.connect() as conn:
        for d in _scan(conn, MAX_SCAN):
            info = _describe(d)
            if d.message_id not in message_ids or not info["queue"]:
                continue
            conn.publish(info["queue"], d.body, kind=d.type or "event", message_id=d.message_id or "",
                         headers={SENDER: info["sender"] or ""})
            conn.flush()
            conn.ack(d.delivery_tag)
            done.append(d.message_id or "")
    return done
