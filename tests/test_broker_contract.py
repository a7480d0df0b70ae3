"""One contract, run against the in-process broker and against RabbitMQ."""

from __future__ import annotations

import socket
import struct

import pika
import pytest

from core.brokers import Broker, Connection, Delivery, Topology
from core.brokers.base import DEAD_LETTER_QUEUE, ORIGIN, REASON, SENDER
from core.brokers.memory import MemoryBroker
from core.brokers.rabbitmq import RabbitBroker
from messages.errors import ConnectionClosed


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


def _returns_in_order(broker: Broker) -> bool:
    """Whether what a consumer that went away held comes back ahead of newer messages. A quorum queue (RabbitMQ
    3.10 here) can hand newer messages to the next consumer first, and its returns in another order: that is why
    a receiver hands a district over by finishing what it holds (``cancel``) rather than by returning it."""
    return getattr(broker, "queue_type", "classic") != "quorum"


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
    if _returns_in_order(broker):
        assert rest[0] == b'{"n": 1}' and rest[-1] == b'{"n": 249}'
    assert sorted(rest) == sorted(f'{{"n": {i}}}'.encode() for i in range(1, 250))
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
    expected = [f'{{"n": {i}}}'.encode() for i in range(5, 10)]
    assert again == expected if _returns_in_order(broker) else sorted(again) == expected


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


def _bounded_queue(broker: Broker, name: str) -> None:
    """A queue that holds one message and refuses publishes beyond it (RabbitMQ's reject-publish overflow)."""
    if isinstance(broker, MemoryBroker):
        broker.bound(name, max_length=1)
        return
    assert isinstance(broker, RabbitBroker)
    conn = pika.BlockingConnection(pika.URLParameters(broker.url))
    try:
        ch = conn.channel()
        ch.queue_declare(name, durable=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
        ch.queue_bind(name, "resync", name)
    finally:
        conn.close()


@pytest.mark.parametrize("size", [1, 131_073, 5_000_000])
def test_bodies_of_any_size_arrive_intact(broker: Broker, size: int) -> None:
    """One byte; one past the default frame_max, so the body spans two frames; 5 MB, over the default
    consumer limit, so the consumer asks for it."""
    broker.declare_district("d1")
    queue = Topology.events("d1")
    body = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    with broker.connect() as conn:
        conn.publish(queue, body, kind="event", message_id="S" * 32)
        conn.flush()
    with broker.connect() as conn:
        conn.consume(queue, prefetch=10, max_body=6_000_000)
        [got] = _take(conn, 1)
        assert (len(got.body), got.body == body, got.dropped, got.message_id) == (size, True, 0, "S" * 32)
        conn.ack(got.delivery_tag)


def test_a_body_over_the_consumers_limit_is_let_go_and_its_size_kept(broker: Broker) -> None:
    broker.declare_district("d1")
    queue = Topology.events("d1")
    with broker.connect() as conn:
        conn.publish(queue, b"x" * 5000, kind="event", message_id="T" * 32)
        conn.flush()
    with broker.connect() as conn:
        conn.consume(queue, prefetch=10, max_body=4096)
        [got] = _take(conn, 1)
        assert (got.body, got.dropped, got.message_id) == (b"", 5000, "T" * 32)
        conn.ack(got.delivery_tag)


def test_an_unroutable_publish_is_reported_not_lost(broker: Broker) -> None:
    broker.declare_district("d1")
    with pytest.raises(ConnectionClosed, match="no queue"), broker.connect() as conn:
        conn.publish("sync.nobody-listens", b"{}", kind="event", message_id="U" * 32)
        conn.flush()


def test_a_publish_the_broker_refuses_is_reported(broker: Broker) -> None:
    broker.declare_district("d1")
    _bounded_queue(broker, "sync.bounded")
    with pytest.raises(ConnectionClosed, match="refused"), broker.connect() as conn:
        for i in range(3):
            conn.publish("sync.bounded", b"{}", kind="event", message_id=f"{i:032X}")
        conn.flush()
    assert [s.ready for s in broker.queue_stats(["sync.bounded"])] == [1]


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + b"\xce"


def _read_frame(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while len(data) < 7 or len(data) < 8 + struct.unpack(">I", data[3:7])[0]:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data[0], data[7:7 + struct.unpack(">I", data[3:7])[0]]


def test_a_header_table_the_consumer_could_not_decode_never_reaches_a_queue(rabbitmq_url: str) -> None:
    """pika refuses to decode an AMQP table with a field type the protocol does not define; a sender who crafts
    one by hand is stopped by RabbitMQ itself, which closes its connection: no consumer ever sees it."""
    from pika import frame, spec

    broker = RabbitBroker(rabbitmq_url)
    broker.declare_district("d1")
    with socket.create_connection(("127.0.0.1", 5672), timeout=10) as sock:
        sock.sendall(b"AMQP\x00\x00\x09\x01")
        _read_frame(sock)  # connection.start
        sock.sendall(frame.Method(0, spec.Connection.StartOk(
            client_properties={}, mechanism="PLAIN", response="\0guest\0guest", locale="en_US")).marshal())
        _read_frame(sock)  # connection.tune
        sock.sendall(frame.Method(0, spec.Connection.TuneOk(channel_max=10, frame_max=131072, heartbeat=0)).marshal())
        sock.sendall(frame.Method(0, spec.Connection.Open(virtual_host=broker.vhost)).marshal())
        _read_frame(sock)  # connection.open-ok
        sock.sendall(frame.Method(1, spec.Channel.Open()).marshal())
        _read_frame(sock)  # channel.open-ok
        body, table = b"{}", b"\x01kZ\x00\x00\x00\x00"  # one field of type 'Z', which AMQP does not define
        props = struct.pack(">I", len(table)) + table + b"\x02" + b"\x20" + b"B" * 32  # headers, persistent, id
        header = struct.pack(">HHQH", 60, 0, len(body), (1 << 13) | (1 << 12) | (1 << 7)) + props
        sock.sendall(frame.Method(1, spec.Basic.Publish(exchange="resync", routing_key=Topology.events("d1")))
                     .marshal() + _frame(2, 1, header) + _frame(3, 1, body))
        kind, payload = _read_frame(sock)
        assert (kind, payload[:4]) == (1, struct.pack(">HH", 10, 50)), payload  # connection.close from the broker
    assert [s.ready for s in broker.queue_stats([Topology.events("d1")])] == [0]


def test_a_queue_handed_over_goes_on_in_order_with_the_next_consumer(broker: Broker) -> None:
    """Handing a district to another receiver: the first stops taking the queue's messages, finishes those it
    was sent, lets the queue go; the next consumer goes on from the first message after them. The first keeps
    its other queues meanwhile."""
    broker.declare_district("d1")
    broker.declare_district("d2")
    queue, other = Topology.events("d1"), Topology.events("d2")
    _publish(broker, 30, queue)
    _publish(broker, 3, other)
    with broker.connect() as first, broker.connect() as second:
        first.consume(queue, prefetch=10)
        first.consume(other, prefetch=10)
        got = _take(first, 13)
        first.cancel(queue)
        while more := first.fetch(50, timeout=0.5):  # what the broker sent before the cancel is still the first's
            got += more
        mine = [d for d in got if d.queue == queue]
        assert 10 <= len(mine) < 30 and not first.settled(queue)
        theirs = [d for d in got if d.queue == other]
        theirs += _take(first, 3 - len(theirs))
        first.ack(max(d.delivery_tag for d in got + theirs), multiple=True)
        assert first.settled(queue)
        first.release(queue)
        assert first.consuming() == [other]
        second.consume(queue, prefetch=100)
        taken = _take(second, 30 - len(mine))
        assert [d.body for d in taken] == [f'{{"n": {i}}}'.encode() for i in range(len(mine), 30)]
        second.ack(taken[-1].delivery_tag, multiple=True)
    assert [s.ready for s in broker.queue_stats([queue, other])] == [0, 0]


def test_a_classic_queue_keeps_a_waiting_consumer_idle_until_the_active_one_lets_go(rabbitmq_url: str) -> None:
    """Single active consumer: a second receiver subscribed early is a standby; when the first lets go with
    messages unacknowledged (as when it dies), a classic queue puts them back at its head and the standby
    takes over from the first of them."""
    broker = RabbitBroker(rabbitmq_url)
    broker.declare_district("d1")
    queue = Topology.events("d1")
    _publish(broker, 20, queue)
    with broker.connect() as first, broker.connect() as second:
        first.consume(queue, prefetch=5)
        got = _take(first, 5)
        first.ack(got[1].delivery_tag, multiple=True)
        second.consume(queue, prefetch=100)
        assert second.fetch(10, timeout=0.5) == []
        first.release(queue)
        taken = _take(second, 18)
        assert [d.body for d in taken] == [f'{{"n": {i}}}'.encode() for i in range(2, 20)]
