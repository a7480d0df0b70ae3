"""Convergence in one process on the in-process broker, against both databases (SQLite, PostgreSQL): the
same story as ``test_convergence.py`` with the SQL of the sweep, the manifest and the delta on each."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, update

from agent.status import plan_batch
from agent.store import AgentStore
from agent.verification_store import VerifyStore
from core.brokers.memory import MemoryBroker
from core.db import engine
from core.settings import Settings
from messages.manifest import DIFFERENCES, DISTRICT_ONLY, MISMATCHED, STATE_ONLY
from publisher.seed import seed
from resync.local import local_site
from tests.site import (
    CATALOG,
    DISTRICT,
    STATE,
    YEAR,
    clone,
    delete_tree,
    district_rows,
    expected_state,
    orphans,
    state_refs,
    with_children,
)

HANG_GUARD = 300.0


class World:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.district, self.state = engine(settings.district_db_url), engine(settings.state_db_url)
        self.store, self.runs = AgentStore(self.district), VerifyStore(self.district)

    def until(self, what: str, check: Any) -> Any:
        deadline = time.monotonic() + HANG_GUARD
        while time.monotonic() < deadline:
            if value := check():
                return value
            time.sleep(0.05)
        raise AssertionError(f"gave up waiting for {what}")

    def resync(self, *names: str, delta: bool = False) -> str:
        plan = plan_batch(CATALOG, self.district, self.settings, list(names), send_all=not names,
                          check_dependencies=False, year=YEAR)
        batch_id = self.store.queue_batch(plan, kind="partial" if names else "full", year=YEAR,
                                          check_dependencies=False, delta=delta)
        self.until("the batch", lambda: (self.store.batch(batch_id) or {}).get("status") == "completed")
        mk = STATE.markers

        def closed() -> bool:
            with self.state.connect() as conn:
                return conn.execute(select(mk.c.msg_id).where(mk.c.batch_id == batch_id,
                                                              mk.c.kind == "batch_end")).first() is not None

        self.until("the receiver to close the batch", closed)
        return batch_id

    def verify(self) -> dict[str, dict[str, Any]]:
        run_id = self.runs.queue(CATALOG.names(), YEAR)
        run = self.until("the verification", lambda: (r := self.runs.run(run_id)) and r["status"] == "completed"
                         and r)
        details = self.runs.details(run_id)
        return {r["object"]: {**r, **{k: set(details.get(r["object"], {}).get(k, [])) for k in DIFFERENCES}}
                for r in run["result"]}


@contextlib.contextmanager
def running_world(request: pytest.FixtureRequest, tmp_path: Path, *, students: int,
                  before: Callable[[World], None] = lambda _: None) -> Iterator[World]:
    """A seeded district and a state on ``request.param``'s database, with both daemons running in this process."""
    if request.param == "sqlite":
        urls = (f"sqlite:///{tmp_path / 'district.db'}", f"sqlite:///{tmp_path / 'state.db'}")
    else:
        make = request.getfixturevalue("postgres_db")
        urls = (make(), make())
    settings = Settings(home=tmp_path, district_db=urls[0], state_db=urls[1], school_year=YEAR,
                        district_users={"*": "guest"})
    w = World(settings)
    seed(w.district, CATALOG, students=students, years=[YEAR])
    before(w)
    with local_site(settings, CATALOG, MemoryBroker()):
        yield w
    w.district.dispose()
    w.state.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    with running_world(request, tmp_path, students=60) as w:
        yield w


def change(eng: Engine, name: str, refs: set[str], column: str, value: str) -> None:
    t = DISTRICT.tables[name]
    with eng.begin() as conn:
        conn.execute(update(t).where(t.c.ref_id.in_(refs)).values({column: value}))


def test_verify_delta_and_sweep_converge_on_each_database(world: World) -> None:
    world.resync()
    assert all(r["differences"] == 0 for r in world.verify().values())

    before = state_refs(world.state)
    rows = district_rows(world.district)
    deleted = delete_tree(world.district, "Test", with_children(rows, "Test", "TestScore", before))
    person = sorted(before["PersonIdentity"])[0]
    change(world.district, "PersonIdentity", {person}, "first_name", "Renamed")
    fine = expected_state(world.district)
    added = clone(world.district, "BehaviorType",
                  next(r for r in rows["BehaviorType"] if r["ref_id"] in fine["BehaviorType"]))

    found = world.verify()
    for name in CATALOG.names():
        want = {STATE_ONLY: before[name] & deleted.get(name, set()),
                MISMATCHED: {person} if name == "PersonIdentity" else set(),
                DISTRICT_ONLY: {added} if name == "BehaviorType" else set()}
        assert {k: found[name][k] for k in DIFFERENCES} == want, name

    delta = world.resync(delta=True)
    sent = {o["object"]: o["sent"] for o in world.store.batch_objects(delta)}
    assert {n: c for n, c in sent.items() if c} == {"Test": 1, "TestScore": len(deleted["TestScore"]),
                                                   "PersonIdentity": 1, "BehaviorType": 1}
    assert all(r["differences"] == 0 for r in world.verify().values())
    assert state_refs(world.state) == expected_state(world.district)

    # a parent resynced alone waits while records under it remain at the state: one of them the district
    # moved under another parent, the others it deleted with it
    person = with_children(rows, "PersonIdentity", "Enrollment", before)
    moved = next(r for r in rows["Enrollment"]
                 if r["person_identity_ref_id"] == person and r["ref_id"] in fine["Enrollment"])
    other = next(p for p in sorted(fine["PersonIdentity"]) if p != person)
    change(world.district, "Enrollment", {moved["ref_id"]}, "person_identity_ref_id", other)
    gone = delete_tree(world.district, "PersonIdentity", person)
    assert moved["ref_id"] not in gone.get("Enrollment", set())
    world.resync("PersonIdentity")
    now = state_refs(world.state)
    assert person in now["PersonIdentity"] and moved["ref_id"] in now["Enrollment"]
    assert orphans(world.state) == []
    world.resync("Enrollment")  # the moved one now points elsewhere; the deleted ones go
    now = state_refs(world.state)
    assert moved["ref_id"] in now["Enrollment"] and not now["Enrollment"] & gone.get("Enrollment", set())
    assert orphans(world.state) == []
    world.resync()  # and the rest under the person, then the person itself
    assert state_refs(world.state) == expected_state(world.district)
    assert orphans(world.state) == []


def test_a_delta_moves_a_child_before_it_deletes_its_old_parent(world: World) -> None:
    world.resync()
    rows = district_rows(world.district)
    fine = expected_state(world.district)
    person = with_children(rows, "PersonIdentity", "Enrollment", fine)
    other = next(p for p in sorted(fine["PersonIdentity"]) if p != person)
    with world.district.begin() as conn:  # every record under the person moves to another one
        for name in CATALOG.referrers("PersonIdentity"):
            t = DISTRICT.tables[name]
            conn.execute(update(t).where(t.c.person_identity_ref_id == person).values(person_identity_ref_id=other))
        people = DISTRICT.tables["PersonIdentity"]
        conn.execute(people.delete().where(people.c.ref_id == person))
    found = world.verify()
    assert found["PersonIdentity"][STATE_ONLY] == {person} and found["Enrollment"][MISMATCHED]
    delta = world.resync(delta=True)
    assert sum(o["errors"] for o in world.store.batch_objects(delta)) == 0
    assert all(r["differences"] == 0 for r in world.verify().values())
    assert state_refs(world.state) == expected_state(world.district)
    assert orphans(world.state) == []
