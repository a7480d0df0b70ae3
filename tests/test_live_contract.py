"""Live sync in one process on the in-process broker, against both databases: every committed change reaches the
state, a missing parent heals itself, and selective sync sends chosen records."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text, update

from agent import live_store, selection
from agent.tables import agent_log, live_day
from publisher.capture import Capture
from tests.site import CATALOG, DISTRICT, STATE, YEAR, orphans, state_refs
from tests.test_convergence_contract import World, running_world
from tests.writers import CALENDAR, SCHOOL, Writers, new_ref


@pytest.fixture(params=["sqlite", "postgresql"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    with running_world(request, tmp_path, students=40,
                       before=lambda w: Capture(w.district, CATALOG).install()) as w:
        w.resync()
        yield w


def settled(w: World) -> None:
    """Until every captured change is sent and answered (and every heal done)."""
    w.until("live sync to catch up", lambda: live_store.caught_up(w.district, CATALOG))


def day(w: World) -> dict[str, int]:
    with w.district.connect() as conn:
        row = conn.execute(select(*(func.coalesce(func.sum(live_day.c[k]), 0).label(k)
                                    for k in ("sent", "answered", "errors", "healed")))).one()
    return {k: int(v) for k, v in row._mapping.items()}


def state_row(w: World, name: str, ref: str) -> dict[str, Any] | None:
    t = STATE.tables[name]
    with w.state.connect() as conn:
        row = conn.execute(select(t).where(t.c.ref_id == ref)).first()
    return None if row is None else dict(row._mapping)


def test_every_committed_change_reaches_the_state_once(world: World) -> None:
    postgres = world.district.dialect.name == "postgresql"
    writers = Writers(world.district)
    # SQLite has one writer at a time: a transaction held open would stop the others, not interleave with them
    writers.run(6.0 if postgres else 3.0, long_transaction=postgres)
    assert sum(writers.committed.values()) > 20, writers.committed
    settled(world)
    assert all(r["differences"] == 0 for r in world.verify().values())
    assert orphans(world.state) == []
    counts = day(world)
    with world.district.connect() as conn:
        trouble = [dict(r._mapping) for r in conn.execute(select(agent_log).where(agent_log.c.status != "ok"))]
    assert counts["sent"] > 0 and counts["answered"] == counts["sent"] and counts["errors"] == 0, (counts, trouble[:5])
    with world.district.connect() as conn:
        logged = conn.execute(select(func.count()).select_from(agent_log).where(agent_log.c.batch_id.is_(None)))
        assert logged.scalar_one() == counts["sent"]  # each change's outcome once
    if postgres:
        with world.state.connect() as conn:
            [name] = conn.execute(select(STATE.tables["School"].c.name).where(
                STATE.tables["School"].c.name == "the long transaction's school")).one()
        assert name


def test_a_change_whose_parent_the_state_lost_heals_itself(world: World) -> None:
    with world.district.begin() as conn:
        school = new_ref()
        conn.execute(SCHOOL.insert().values(ref_id=school, district_ref_id=_district_ref(world), name="heal me"))
        calendar = new_ref()
        conn.execute(CALENDAR.insert().values(ref_id=calendar, school_ref_id=school, school_year=YEAR,
                                              name="first", state_exclude=False))
    settled(world)
    assert state_row(world, "Calendar", calendar) is not None
    t = STATE.tables["School"]
    with world.state.begin() as conn:  # the state loses the parent; the child stays
        conn.execute(t.delete().where(t.c.ref_id == school))
    with world.district.begin() as conn:
        conn.execute(update(CALENDAR).where(CALENDAR.c.ref_id == calendar).values(name="second"))
    settled(world)
    assert (state_row(world, "School", school) or {}).get("name") == "heal me"
    assert (state_row(world, "Calendar", calendar) or {}).get("name") == "second"
    with world.district.connect() as conn:
        outcomes = [dict(r._mapping) for r in conn.execute(select(agent_log).where(
            agent_log.c.ref_id == calendar, agent_log.c.batch_id.is_(None)).order_by(agent_log.c.id))]
    assert [o["status"] for o in outcomes] == ["ok", live_store.HEALED, "ok"], outcomes
    assert "healed" in outcomes[1]["description"]
    assert day(world)["healed"] == 1 and day(world)["errors"] == 0


def test_a_change_whose_parent_the_district_lacks_too_keeps_its_error(world: World) -> None:
    if world.district.dialect.name != "sqlite":
        pytest.skip("PostgreSQL's foreign keys cannot be switched off for one session here; SQLite's can")
    calendar, school = new_ref(), new_ref()
    with world.district.connect() as conn:
        conn.execute(text("PRAGMA foreign_keys=OFF"))
        conn.execute(CALENDAR.insert().values(ref_id=calendar, school_ref_id=school, school_year=YEAR,
                                              name="stray", state_exclude=False))
        conn.commit()
        conn.execute(text("PRAGMA foreign_keys=ON"))
    settled(world)
    with world.district.connect() as conn:
        [outcome] = [dict(r._mapping) for r in conn.execute(select(agent_log).where(agent_log.c.ref_id == calendar))]
    assert (outcome["status"], outcome["code"]) == ("error", "9.1")
    assert f"not healed: School {school} does not exist at the district either" in outcome["description"]
    assert day(world)["errors"] == 1 and state_row(world, "Calendar", calendar) is None


def test_selective_sync_sends_the_chosen_records_and_with_cascade_everything_under_them(world: World) -> None:
    s, c = STATE.tables["School"], STATE.tables["Calendar"]
    with world.state.connect() as conn:
        school = conn.execute(select(c.c.school_ref_id).where(c.c.district_id == "district-1")
                              .group_by(c.c.school_ref_id).limit(1)).scalar_one()
    with world.state.begin() as conn:  # the state's copy drifts (someone edited it by hand)
        conn.execute(update(s).where(s.c.ref_id == school).values(name="drifted"))
        conn.execute(update(c).where(c.c.school_ref_id == school).values(name="drifted"))

    def names() -> tuple[str, set[str]]:
        with world.state.connect() as conn:
            return (conn.execute(select(s.c.name).where(s.c.ref_id == school)).scalar_one(),
                    {r[0] for r in conn.execute(select(c.c.name).where(c.c.school_ref_id == school))})

    only = selection.pick(world.district, CATALOG, "School", [school], cascade=False, year=YEAR)
    assert only == {"School": [school]}
    _complete(world, selection.queue(world.store, only, year=YEAR))
    assert names()[0] != "drifted" and names()[1] == {"drifted"}

    under = selection.pick(world.district, CATALOG, "School", [school], cascade=True, year=YEAR)
    assert list(under)[:2] == ["School", "Calendar"] and len(under) > 2
    batch_id = selection.queue(world.store, under, year=YEAR)
    _complete(world, batch_id)
    with world.district.connect() as conn:
        outcomes = [dict(r._mapping) for r in conn.execute(select(agent_log).where(agent_log.c.batch_id == batch_id))]
    assert "drifted" not in names()[1], (under, outcomes)
    [b] = [h for h in world.store.history() if h["batch_id"] == batch_id]
    assert (b["kind"], b["sent"], b["processed"]) == ("selective", sum(map(len, under.values())), b["sent"])
    # nothing else was touched: a selective batch removes nothing at the state
    assert state_refs(world.state) == _before_refs(world)


def _complete(w: World, batch_id: str) -> None:
    w.until("the selective batch", lambda: (w.store.batch(batch_id) or {}).get("status") == "completed")
    time.sleep(0.2)


def _before_refs(w: World) -> dict[str, set[str]]:
    from tests.site import expected_state
    return expected_state(w.district)


def _district_ref(w: World) -> str:
    with w.district.connect() as conn:
        return str(conn.execute(select(DISTRICT.tables["District"].c.ref_id)).scalar_one())
