"""The receiver's apply step, run against SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from messages import catalog as catalog_mod
from messages.envelope import Action, Event, new_id, now_ts
from messages.errors import Code
from state_receiver.apply import Incoming, apply
from state_receiver.schema import StateSchema

CATALOG = catalog_mod.load()
D = "district-1"


def ev(obj: str, parents: dict[str, str] | None = None, *, ref: str | None = None, ts: str = "2026-11-29T08:00:00.000Z",
       data: dict[str, Any] | None = None, action: Action = Action.CHANGE, msg_id: str | None = None,
       version: int = 0) -> Event:
    year = 2027 if CATALOG.get(obj).year_scoped else None
    return Event(msg_id or new_id(), ts, D, None, 1, obj, action, ref or new_id(), year, parents or {}, data or {},
                 version)


@pytest.fixture
def state(db: Engine) -> StateSchema:
    schema = StateSchema(CATALOG)
    schema.create(db)
    return schema


def run(db: Engine, schema: StateSchema, *events: Event, digest: str = "d") -> list[tuple[str, str | None]]:
    with db.begin() as conn:
        acks = apply(conn, schema, D, [Incoming(e, digest) for e in events], "2026-11-29T08:00:01.000Z")
    return [(a.status, a.error.code if a.error else None) for a in acks]


def count(db: Engine, schema: StateSchema, obj: str) -> int:
    with db.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(schema.tables[obj])).scalar_one())


def chain(db: Engine, schema: StateSchema, *, exclude_calendar: bool = False) -> dict[str, Event]:
    d = ev("District")
    s = ev("School", {"District": d.ref_id})
    c = ev("Calendar", {"School": s.ref_id}, data={"state_exclude": exclude_calendar})
    ss = ev("ScheduleStructure", {"Calendar": c.ref_id})
    run(db, schema, d, s, c, ss)
    return {"District": d, "School": s, "Calendar": c, "ScheduleStructure": ss}


def test_child_whose_parent_is_missing_is_rejected_and_names_the_parent(db: Engine, state: StateSchema) -> None:
    school_ref = new_id()
    orphan = ev("Calendar", {"School": school_ref})
    with db.begin() as conn:
        [ack] = apply(conn, state, D, [Incoming(orphan, "x")], "now")
    assert ack.status == "error" and ack.error is not None
    assert (ack.error.category, ack.error.code) == (9, Code.PARENT_MISSING)
    assert "School" in ack.error.desc and school_ref in ack.error.desc
    assert count(db, state, "Calendar") == 0


def test_parents_then_children_in_one_batch_are_applied(db: Engine, state: StateSchema) -> None:
    refs = chain(db, state)
    person = ev("PersonIdentity", {"ScheduleStructure": refs["ScheduleStructure"].ref_id})
    enrollment = ev("Enrollment", {"PersonIdentity": person.ref_id, "Calendar": refs["Calendar"].ref_id},
                    data={"grade": "05", "start_date": "2026-08-20"})
    assert run(db, state, person, enrollment) == [("ok", None), ("ok", None)]
    assert [count(db, state, o) for o in ("District", "Calendar", "PersonIdentity", "Enrollment")] == [1, 1, 1, 1]


def test_excluded_calendar_and_everything_under_it_is_rejected(db: Engine, state: StateSchema) -> None:
    d = ev("District")
    s = ev("School", {"District": d.ref_id})
    c = ev("Calendar", {"School": s.ref_id}, data={"state_exclude": True})
    ss = ev("ScheduleStructure", {"Calendar": c.ref_id})
    sgl = ev("StructureGradeLevel", {"ScheduleStructure": ss.ref_id, "Calendar": c.ref_id})
    assert run(db, state, d, s, c) == [("ok", None), ("ok", None), ("error", Code.STATE_EXCLUDED)]
    # later batches still know the calendar is excluded
    assert run(db, state, ss) == [("error", Code.UNDER_EXCLUDED)]
    assert run(db, state, sgl) == [("error", Code.UNDER_EXCLUDED)]
    assert [count(db, state, o) for o in ("Calendar", "ScheduleStructure", "StructureGradeLevel")] == [0, 0, 0]


def test_redelivery_is_a_no_op_and_new_content_under_the_same_id_is_applied_by_its_version(
        db: Engine, state: StateSchema) -> None:
    d = ev("District", data={"name": "first"})
    assert run(db, state, d, digest="a") == [("ok", None)]
    assert run(db, state, d, digest="a") == [("ok", None)]
    d.data = {"name": "read again after a crash"}
    assert run(db, state, d, digest="b") == [("ok", None)]
    assert count(db, state, "District") == 1
    with db.connect() as conn:
        assert conn.execute(select(state.tables["District"].c.name)).scalar_one() == "read again after a crash"
    # the same msg_id naming another record is a conflict
    other = ev("District", msg_id=d.msg_id)
    assert run(db, state, other, digest="c") == [("error", Code.DUPLICATE_CONFLICT)]


def test_an_older_version_never_overwrites_a_newer_one_whatever_the_clock_says(db: Engine, state: StateSchema) -> None:
    ref = new_id()
    newer = ev("District", ref=ref, ts="2026-11-29T08:00:00.000Z", data={"name": "newer"}, version=7)
    older = ev("District", ref=ref, ts="2026-11-29T09:00:00.000Z", data={"name": "older"}, version=5)
    assert run(db, state, newer) == [("ok", None)]
    assert run(db, state, older) == [("ok", None)]
    with db.connect() as conn:
        assert conn.execute(select(state.tables["District"].c.name)).scalar_one() == "newer"
    # the same version again (a resync page read after the change) applies
    again = ev("District", ref=ref, data={"name": "repaired"}, version=7)
    assert run(db, state, again) == [("ok", None)]
    with db.connect() as conn:
        assert conn.execute(select(state.tables["District"].c.name)).scalar_one() == "repaired"


def test_a_page_read_before_a_delete_does_not_bring_the_record_back(db: Engine, state: StateSchema) -> None:
    ref = new_id()
    assert run(db, state, ev("District", ref=ref, version=3)) == [("ok", None)]
    assert run(db, state, ev("District", ref=ref, action=Action.DELETE, version=9)) == [("ok", None)]
    assert count(db, state, "District") == 0
    # the resync read it before the delete committed, and its page arrives after the delete
    assert run(db, state, ev("District", ref=ref, version=3)) == [("ok", None)]
    assert count(db, state, "District") == 0
    # a delete older than what the state holds leaves the record
    assert run(db, state, ev("District", ref=ref, version=12)) == [("ok", None)]
    assert run(db, state, ev("District", ref=ref, action=Action.DELETE, version=10)) == [("ok", None)]
    assert count(db, state, "District") == 1


def test_deleting_a_parent_with_children_is_refused_and_the_child_stays(db: Engine, state: StateSchema) -> None:
    refs = chain(db, state)
    delete_school = ev("School", ref=refs["School"].ref_id, action=Action.DELETE, ts="2026-11-29T10:00:00.000Z")
    assert run(db, state, delete_school) == [("error", Code.HAS_CHILDREN)]
    assert count(db, state, "School") == 1
    delete_structure = ev("ScheduleStructure", ref=refs["ScheduleStructure"].ref_id, action=Action.DELETE,
                          ts="2026-11-29T10:00:00.000Z")
    assert run(db, state, delete_structure) == [("ok", None)]
    assert count(db, state, "ScheduleStructure") == 0


def test_the_agent_counts_an_ack_once_even_when_its_replay_arrives_with_it(db: Engine) -> None:
    from agent.store import AgentStore, PlannedObject
    from messages.envelope import Ack

    store = AgentStore(db)
    store.create()
    batch = store.queue_batch([PlannedObject("District", 1)], kind="partial", year=2027, check_dependencies=False)
    ack = Ack(new_id(), "ok", None, "District", new_id(), batch)
    assert store.record_acks([ack, ack]) == 1
    assert store.record_acks([ack]) == 0
    [obj] = store.batch_objects(batch)
    assert obj["processed"] == 1


def test_the_receiver_forgets_deletes_after_a_day(db: Engine, state: StateSchema, tmp_path: Any) -> None:
    from core.brokers.memory import MemoryBroker
    from core.settings import Settings
    from state_receiver.daemon import Receiver

    old, fresh = new_id(), new_id()
    with db.begin() as conn:  # applied now, whatever day the suite runs on
        [ack] = apply(conn, state, D, [Incoming(ev("District", ref=fresh, action=Action.DELETE, version=4), "d")],
                      now_ts())
    assert ack.status == "ok"
    t = state.tombstones
    with db.begin() as conn:
        conn.execute(t.insert().values(district_id=D, object="District", ref_id=old, version=2,
                                       deleted_at="2020-01-01T00:00:00.000Z"))
    receiver = Receiver(Settings(home=tmp_path, state_db=str(db.url)), MemoryBroker(), db, CATALOG)
    assert receiver.prune_tombstones() == 1
    with db.connect() as conn:
        assert [r.ref_id for r in conn.execute(select(t.c.ref_id))] == [fresh]
