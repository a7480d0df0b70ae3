"""Convergence on RabbitMQ and PostgreSQL, agent and receiver as separate processes: verification reports
exactly what differs, a delta batch sends exactly that, a finished resync removes what the district
deleted (and everything under it), and an interrupted or cancelled batch removes nothing."""

from __future__ import annotations

import signal
from typing import Any

import pytest
from sqlalchemy import func, select, update

from agent.store import AgentStore
from messages.manifest import DIFFERENCES, DISTRICT_ONLY, MISMATCHED, STATE_ONLY
from tests.site import (
    CATALOG,
    DISTRICT,
    STATE,
    YEAR,
    Site,
    clone,
    delete_tree,
    district_rows,
    expected_state,
    orphans,
    state_refs,
    with_children,
)

pytestmark = pytest.mark.slow


def finished(site: Site, batch_id: str) -> dict[str, Any]:
    """The batch, once the agent has every ack and the receiver has closed it (and swept after it): the
    batch's end marker may reach the receiver after the acks of its last records have gone out."""
    batch = site.wait(batch_id)
    mk = STATE.markers

    def closed() -> bool:
        with site.state.connect() as conn:
            return conn.execute(select(mk.c.msg_id).where(mk.c.batch_id == batch_id, mk.c.kind.in_(
                ["batch_end", "batch_cancelled"]))).first() is not None

    site.until(f"the receiver to close batch {batch_id}", closed)
    return batch


def test_verify_reports_exactly_what_differs_and_a_delta_batch_sends_exactly_that(site: Site) -> None:
    site.env["RESYNC_STATE_USER"] = "guest"  # the state's requests come from the test's broker user
    site.cli("seed", "--students", "300", "--year", str(YEAR))
    site.start("receiver", "run")
    site.start("agent", "run")
    assert finished(site, site.send("--all"))["status"] == "completed"
    clean = site.json("verify")
    assert all(r["differences"] == 0 and not r["resync_recommended"] for r in clean["objects"])
    assert sum(r["excluded"] for r in clean["objects"]) > 0

    before = state_refs(site.state)
    rows = district_rows(site.district)
    # deletes in several objects, among them a parent with children (each deleted with everything under it)
    deleted = delete_tree(site.district, "Test", with_children(rows, "Test", "TestScore", before))
    for name, ref in (("PersonIdentity", with_children(rows, "PersonIdentity", "Enrollment", before)),
                      ("VaccineShot", rows["VaccineShot"][0]["ref_id"])):
        for obj, refs in delete_tree(site.district, name, ref).items():
            deleted.setdefault(obj, set()).update(refs)
    # changes
    changed: dict[str, set[str]] = {"PersonIdentity": set(), "Test": set()}
    with site.district.begin() as conn:
        for name, column, value in (("PersonIdentity", "first_name", "Renamed"), ("Test", "test_name", "Retaken")):
            t = DISTRICT.tables[name]
            refs = [r[0] for r in conn.execute(select(t.c.ref_id).where(t.c.ref_id.in_(before[name]))
                                               .order_by(t.c.ref_id).limit(2))]
            conn.execute(update(t).where(t.c.ref_id.in_(refs)).values({column: value}))
            changed[name].update(refs)
    # adds
    rows = district_rows(site.district)
    fine = expected_state(site.district)
    added = {name: {clone(site.district, name, next(r for r in rows[name] if r["ref_id"] in fine[name]))}
             for name in ("TestScore", "BehaviorType")}

    want: dict[str, dict[str, set[str]]] = {}
    for name in CATALOG.names():
        want[name] = {STATE_ONLY: before[name] & deleted.get(name, set()), MISMATCHED: changed.get(name, set()),
                      DISTRICT_ONLY: added.get(name, set())}
    assert sum(len(want[n][STATE_ONLY]) for n in want) > 3
    report = site.json("verify", "--details")
    got = {r["object"]: r for r in report["objects"]}
    assert set(got) == set(CATALOG.names())
    for name in CATALOG.names():
        r = got[name]
        assert {k: set(r["details"][k]) for k in DIFFERENCES} == want[name], name
        assert r["differences"] == sum(len(v) for v in want[name].values()), name
        assert r["resync_recommended"] == (r["differences"] > 0), name
        assert r["state"] == len(before[name]), name

    # the state asks the same question and gets the same answer
    state_side = {r["object"]: r for r in site.json("verify", "--district", "district-1")["objects"]}
    assert {n: (r["district_only"], r["state_only"], r["mismatched"]) for n, r in state_side.items()} == \
        {n: (r["district_only"], r["state_only"], r["mismatched"]) for n, r in got.items()}

    delta = site.send("--all", "--only-changed")
    assert finished(site, delta)["status"] == "completed"
    for o in AgentStore(site.district).batch_objects(delta):
        n = sum(len(v) for v in want[o["object"]].values())
        assert o["sent"] == o["processed"] == o["expected"] == n, o["object"]
        assert o["errors"] == 0, o["object"]
    history = site.json("history")
    assert history[0]["batch_id"] == delta and history[0]["delta"] is True
    assert history[0]["sent"] == sum(len(v) for w in want.values() for v in w.values())

    after = site.json("verify")
    assert [r["object"] for r in after["objects"] if r["differences"]] == []
    assert state_refs(site.state) == expected_state(site.district)
    assert orphans(site.state) == []


def test_a_finished_resync_removes_what_the_district_deleted_once_nothing_points_at_it(site: Site) -> None:
    site.cli("seed", "--students", "300", "--year", str(YEAR))
    site.start("receiver", "run")
    site.start("agent", "run")
    assert finished(site, site.send("--all"))["status"] == "completed"
    before = state_refs(site.state)
    rows = district_rows(site.district)
    person = with_children(rows, "PersonIdentity", "Enrollment", before)
    gone = delete_tree(site.district, "PersonIdentity", person)
    test = delete_tree(site.district, "Test", next(r["ref_id"] for r in rows["Test"] if r["ref_id"] in before["Test"]
                                                  and r["person_identity_ref_id"] != person))
    assert len(gone) > 2 and test["TestScore"]

    def removed() -> dict[str, int]:
        with site.state.connect() as conn:
            return {r.object: r.removed for r in conn.execute(select(STATE.sweep_log).order_by(STATE.sweep_log.c.id))}

    deleted_tests = (test["Test"] | gone.get("Test", set())) & before["Test"]
    deleted_scores = (test["TestScore"] | gone.get("TestScore", set())) & before["TestScore"]
    with_scores = {r["test_ref_id"] for r in rows["TestScore"] if r["ref_id"] in before["TestScore"]}
    held = deleted_tests & with_scores
    assert test["Test"] <= held

    # a parent resynced alone waits while its children are at the state: kept, and nothing is orphaned; a
    # deleted parent with no child at the state goes at once
    assert finished(site, site.send("Test"))["status"] == "completed"
    now = state_refs(site.state)
    assert now["Test"] == before["Test"] - (deleted_tests - held)
    assert now["TestScore"] == before["TestScore"]
    assert removed()["Test"] == len(deleted_tests - held)
    assert orphans(site.state) == []
    # once its children's object is resynced, they go, and the parent with them
    assert finished(site, site.send("TestScore"))["status"] == "completed"
    now = state_refs(site.state)
    assert now["Test"] == before["Test"] - deleted_tests
    assert now["TestScore"] == before["TestScore"] - deleted_scores
    assert (removed()["Test"], removed()["TestScore"]) == (len(held), len(deleted_scores))
    assert orphans(site.state) == []

    # a whole resync removes a deleted record and everything under it, children first, in one batch
    assert finished(site, site.send("--all"))["status"] == "completed"
    assert state_refs(site.state) == expected_state(site.district)
    assert removed()["PersonIdentity"] == 1
    assert removed()["Enrollment"] == len(before["Enrollment"] & gone["Enrollment"]) > 0
    assert orphans(site.state) == []


def test_a_cancelled_or_interrupted_batch_removes_nothing(site: Site) -> None:
    site.cli("seed", "--students", "600", "--year", str(YEAR))
    site.start("receiver", "run")
    agent = site.start("agent", "run")
    assert finished(site, site.send("--all"))["status"] == "completed"
    before = state_refs(site.state)
    rows = district_rows(site.district)
    gone = delete_tree(site.district, "PersonIdentity", with_children(rows, "PersonIdentity", "Enrollment", before))
    held = {n: before[n] & refs for n, refs in gone.items() if before[n] & refs}
    store = AgentStore(site.district)

    def past_people(batch_id: str) -> bool:
        # the deleted person's object and the next few are complete: a per-object sweep would have run
        objs = store.batch_objects(batch_id)
        done = [o["object"] for o in objs if o["sent_at"]]
        return "PersonIdentity" in done and len(done) >= done.index("PersonIdentity") + 3

    def still_held() -> bool:
        now = state_refs(site.state)
        return all(refs <= now[n] for n, refs in held.items())

    cancelled = site.send("--all", "--max-rate", "2000")
    site.until("the batch past PersonIdentity", lambda: past_people(cancelled))
    site.cli("cancel", cancelled)
    site.until("every sent record answered", lambda: all(
        o["processed"] == o["sent"] for o in store.batch_objects(cancelled)))
    assert store.batch(cancelled)["status"] == "cancelled"  # type: ignore[index]
    assert still_held()

    interrupted = site.send("--all", "--max-rate", "2000")
    site.until("the batch past PersonIdentity", lambda: past_people(interrupted))
    agent.send_signal(signal.SIGKILL)
    agent.wait()
    site.procs.remove(agent)
    sent = sum(o["sent"] for o in store.batch_objects(interrupted))

    def answered() -> bool:
        with site.state.connect() as conn:
            counts = STATE.batch_counts
            return (conn.execute(select(func.sum(counts.c.processed)).where(
                counts.c.batch_id == interrupted)).scalar() or 0) >= sent

    site.until("the receiver through what the agent sent", answered)
    assert still_held()

    site.start("agent", "run")  # resumes the interrupted batch; once it ends, the sweep runs
    assert finished(site, interrupted)["status"] == "completed"
    assert state_refs(site.state) == expected_state(site.district)
    assert orphans(site.state) == []
