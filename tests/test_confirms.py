"""Publisher confirms as RabbitMQ sends them when one connection publishes to many queues: each queue confirms
in its own time, so a single confirm can come before the multiple one that covers the tags below it. Only a run
of confirmed messages with no gap counts as confirmed; found by 20 districts answered by one receiver, whose
answers waited for a confirm that had come."""

from __future__ import annotations

import time
from collections import deque
from types import SimpleNamespace

import pytest
from pika.spec import Basic

from core.brokers.rabbitmq_connection import RabbitConnection


def connection(published: int) -> RabbitConnection:
    """The confirm bookkeeping of a connection that has published ``published`` messages (no socket)."""
    conn = RabbitConnection.__new__(RabbitConnection)
    conn.where, conn.published, conn.timing = "test", published, None
    conn._confirmed, conn._ahead, conn._refused = 0, set(), []
    conn._sizes = deque((t, t * 100, time.monotonic()) for t in range(1, published + 1))
    conn._confirmed_bytes, conn._until, conn._stopping = 0, None, False
    return conn


def confirm(conn: RabbitConnection, tag: int, multiple: bool = False, nack: bool = False) -> None:
    method = (Basic.Nack if nack else Basic.Ack)(delivery_tag=tag, multiple=multiple)
    conn._on_confirm(SimpleNamespace(method=method))


@pytest.mark.parametrize("order", [
    [(3, False), (2, True)],  # the newest alone first, then the two below it at once
    [(2, False), (3, False), (1, False)],
    [(1, False), (3, False), (2, True)],
    [(3, True)],
])
def test_every_message_counts_once_every_one_below_it_is_confirmed(order: list[tuple[int, bool]]) -> None:
    conn = connection(3)
    for i, (tag, multiple) in enumerate(order):
        confirm(conn, tag, multiple)
        if i < len(order) - 1:
            assert conn._confirmed < 3  # a gap is left: not all confirmed
    assert conn._confirmed == 3 and not conn._ahead and not conn._sizes and conn._confirmed_bytes == 300


def test_a_confirm_past_a_gap_does_not_count_the_gap() -> None:
    conn = connection(5)
    confirm(conn, 4)
    confirm(conn, 5)
    assert conn._confirmed == 0  # messages 1 to 3 may still be lost
    confirm(conn, 2, multiple=True)
    assert conn._confirmed == 2
    confirm(conn, 3, nack=True)  # refused is settled too, and said
    assert conn._confirmed == 5 and conn._refused
