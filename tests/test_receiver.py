"""The receiver daemon's handling of one delivery batch, on SQLite and PostgreSQL: good records are
applied, bad ones answered with a categorized error or dead-lettered, and nothing blocks the queue."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, func, select, text

from core.brokers import Topology
from core.brokers.base import DEAD_LETTER_QUEUE
from core.brokers.memory import MemoryBroker
from core.db import engine
from core.settings import Settings
from messages import catalog as catalog_mod
from messages.codec import decode_acks, encode_event
from messages.envelope import Ack, Action, Event, Kind, new_id
from messages.errors import Code
from state_receiver.daemon import Receiver

CATALOG = catalog_mod.load()
D = "district-1"


def event(obj: str, data: dict[str, object], *, source: str = D) -> Event:
    return Event(new_id(), "2026-11-29T08:00:00.000Z", source, None, 1, obj, Action.ADD, new_id(), None, {}, data)


@pytest.fixture
def receiver(db: Engine) -> tuple[Receiver, MemoryBroker]:
    broker = MemoryBroker(user=D)
    r = Receiver(Settings(district=D), broker, db, CATALOG)
    r.setup()
    return r, broker


def deliver(r: Receiver, broker: MemoryBroker, bodies: list[bytes]) -> list[Ack]:
    with broker.connect() as conn:
        for body in bodies:
            # a body that is not even JSON can still be answered by its AMQP message_id; without one it
            # can only be dead-lettered
            conn.publish(Topology.events(D), body, kind=Kind.EVENT,
                         message_id="no-usable-id" if body == b"not json" else new_id())
        conn.consume(Topology.events(D), prefetch=100)
        r.handle(conn, conn.fetch(100, timeout=1))
        conn.consume(Topology.acks(D), prefetch=100)
        return [a for d in conn.fetch(100, timeout=1) if d.queue == Topology.acks(D)
                for a in decode_acks(d.body).acks]


def test_bad_messages_are_answered_or_dead_lettered_and_good_ones_applied(
        receiver: tuple[Receiver, MemoryBroker], db: Engine) -> None:
    r, broker = receiver
    good = event("District", {"name": "Example"})
    foreign = event("District", {"name": "Other"}, source="district-2")
    bad_data = orjson.loads(encode_event(event("District", {"name": 5})))
    acks = deliver(r, broker, [b"not json", encode_event(good), encode_event(foreign), orjson.dumps(bad_data)])

    codes = {a.msg_id: (a.status, a.error.category if a.error else None, a.error.code if a.error else None)
             for a in acks}
    assert codes == {good.msg_id: ("ok", None, None), foreign.msg_id: ("error", 4, Code.WRONG_SOURCE),
                     bad_data["msg_id"]: ("error", 1, Code.BAD_DATA)}
    assert broker.queue_stats([DEAD_LETTER_QUEUE])[0].ready == 1
    assert broker.queue_stats([Topology.events(D)])[0].ready == 0
    with db.connect() as conn:
        assert conn.execute(select(r.schema.tables["District"].c.name)).scalars().all() == ["Example"]
        logged = conn.execute(select(func.count()).select_from(r.schema.error_log)).scalar_one()
    assert logged == 3


def test_a_record_the_database_refuses_gets_a_system_error_and_the_rest_still_apply(postgres_db: Any) -> None:
    # a rule the state's database administrator added, which the codec cannot know
    db = engine(postgres_db())
    broker = MemoryBroker(user=D)
    r = Receiver(Settings(district=D), broker, db, CATALOG)
    r.setup()
    with db.begin() as conn:
        conn.execute(text(f"ALTER TABLE {r.schema.tables['CourseCode'].name} ADD CONSTRAINT no_math "
                          "CHECK (code <> 'MATH')"))
    poison = event("CourseCode", {"code": "MATH", "credits": 1.0})
    fine = [event("CourseCode", {"code": f"C{i}", "credits": 1.0}) for i in range(3)]
    acks = deliver(r, broker, [encode_event(fine[0]), encode_event(poison), *map(encode_event, fine[1:])])
    by_id = {a.msg_id: a for a in acks}
    assert by_id[poison.msg_id].error is not None
    assert (by_id[poison.msg_id].error.category, by_id[poison.msg_id].error.code) == (11, Code.APPLY_FAILED)
    assert all(by_id[e.msg_id].ok for e in fine)
    with db.connect() as conn:
        assert sorted(conn.execute(select(r.schema.tables["CourseCode"].c.code)).scalars()) == ["C0", "C1", "C2"]
    assert broker.queue_stats([Topology.events(D)])[0].ready == 0
