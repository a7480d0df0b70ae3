"""One contract, run against the in-process broker and against RabbitMQ."""

from __future__ import annotations

from resync.brokers import Broker, Connection, Delivery, Topology
from resync.brokers.base import DEAD_LETTER_QUEUE, ORIGIN, REASON, SENDER


def _publish(broker: Broker, n: int, queue: str) -> None:
    with broker.connect() as conn:
        for i in range(n):
            conn.publish(queue, f'{{"n": {i}}}'.encode(), kind="event", message_id=f"{i:032X}")
        conn.flush()


def _drain(broker: Broker, queue: str, expect: int) -> list[bytes]:
    got: list[bytes] = []
    with broker.connect() as conn:
        conn.consume(queue, prefetch=100)
        while len(got) < expect:
            batch = conn.fetch(50, timeout=5)
            assert batch, f"only {len(got)} of {expect} messages arrived"
            got.extend(d.body for d in batch)
            conn.ack(batch[-1].delivery_tag, multiple=True)
    return got


def _take(conn: Connection, n: int) -> list[Delivery]:
    """Exactly ``n`` deliveries, however the broker batches them."""
    got: list[Delivery] = []
    while len(got) < n:
        batch = conn.fetch(n - len(got), timeout=5)
        assert batch, f"only {len(got)} of {n} messages arrived"
        got += batch
    return got


def test_publish_then_consume_keeps_order_and_properties(broker: Broker) -> None:
    broker.declare_district("d1")
    queue = Topology.events("d1")
    _publish(broker, 250, queue)
    with broker.connect() as conn:
        conn.consume(queue, prefetch=100)
        first = conn.fetch(1, timeout=5)[0]
        assert first.message_id == f"{0:032X}"
        assert first.user_id == broker.user
        assert first.type == "event"
        assert Topology.district_of(first.queue) == "d1"
        conn.ack(first.delivery_tag)
    rest = _drain(broker, queue, 249)
    assert rest[0] == b'{"n": 1}' and rest[-1] == b'{"n": 249}'
    assert [s.ready for s in broker.queue_stats([queue])] == [0]


def test_unacknowledged_messages_come_back_after_the_connection_closes(broker: Broker) -> None:
    broker.declare_district("d1")
    queue = Topology.events("d1")
    _publish(broker, 10, queue)
    with broker.connect() as conn:
        conn.consume(queue, prefetch=100)
        got = _take(conn, 10)
        conn.ack(got[4].delivery_tag, multiple=True)  # the first five are done, the rest are not
    again = _drain(broker, queue, 5)
    assert again == [f'{{"n": {i}}}'.encode() for i in range(5, 10)]


def test_dead_lettered_message_lands_in_the_dead_letter_queue(broker: Broker) -> None:
    broker.declare_district("d1")
    queue = Topology.events("d1")
    _publish(broker, 3, queue)
    with broker.connect() as conn:
        conn.consume(queue, prefetch=10)
        got = _take(conn, 3)
        conn.dead_letter(got[1], "cannot be processed")
        conn.flush()
        conn.ack(got[2].delivery_tag, multiple=True)
    with broker.connect() as conn:
        conn.consume(DEAD_LETTER_QUEUE, prefetch=10)
        [dead] = conn.fetch(10, timeout=5)
        assert dead.body == b'{"n": 1}' and dead.message_id == f"{1:032X}"
        assert dead.headers[REASON] == "cannot be processed"
        assert dead.headers[ORIGIN] == queue and dead.headers[SENDER] == broker.user
        conn.ack(dead.delivery_tag)
    assert [s.ready for s in broker.queue_stats([queue])] == [0]
