"""Retention: the per-record rows of old batches go on both sides, their counts stay; rows of a batch still
running are never touched; old live answers, errors and alerts go after their days (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from agent import retention as agent_retention
from agent.status import status_rows
from agent.tables import agent_log, batch, batch_object, process_alert
from state_receiver import retention as state_retention
from state_receiver.requests import answered, district_status
from tests.site import CATALOG, STATE, YEAR
from tests.test_convergence_contract import World, running_world


@pytest.fixture(params=["sqlite", "postgresql"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    with running_world(request, tmp_path, students=25) as w:
        yield w


def rows(eng: Any, table: Any, *where: Any) -> int:
    with eng.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def counted(w: World, *batches: str) -> list[tuple[str, str, int, int]]:
    with w.state.connect() as conn:
        return sorted(answered(conn, STATE, "district-1", list(batches)))


def state_view(w: World) -> list[dict[str, Any]]:
    return district_status(w.state, STATE, CATALOG, "district-1", YEAR, CATALOG.names())


def test_old_batches_lose_their_rows_and_keep_their_counts_while_a_batch_runs(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    w = world
    monkeypatch.setattr(agent_retention, "RECLAIM_AFTER", 1)  # reclaim space after every pass: VACUUM too runs
    monkeypatch.setattr(state_retention, "RECLAIM_AFTER", 1)  # beside the running batch
    settings = w.settings.with_(keep_batches=1)
    first = w.resync()
    second = w.resync("School", "Calendar")
    before_status = [r.as_dict() for r in status_rows(CATALOG, w.store, w.settings, YEAR)]
    before_state = counted(w, first, second)
    assert rows(w.district, agent_log, agent_log.c.batch_id == first) > 0

    # a third batch runs while both sides prune, again and again
    done = threading.Event()
    removed: dict[str, int] = {"agent": 0, "state": 0}

    def prune() -> None:
        while not done.is_set():
            removed["agent"] += agent_retention.prune(w.district, settings)["agent_log"]
            removed["state"] += state_retention.prune(w.state, STATE, settings)["receiver_inbox"]
    pruner = threading.Thread(target=prune)
    pruner.start()
    try:
        third = w.resync()
    finally:
        done.set()
        pruner.join()
    agent_retention.prune(w.district, settings)
    state_retention.prune(w.state, STATE, settings)

    # the running batch lost nothing: every record answered once, counted once
    objs = {o["object"]: o for o in w.store.batch_objects(third)}
    assert all(o["processed"] == o["sent"] == o["expected"] for o in objs.values()), objs
    assert rows(w.district, agent_log, agent_log.c.batch_id == third) == sum(o["sent"] for o in objs.values())
    # the older batches' rows are gone on both sides; their history and counts are not
    assert rows(w.state, STATE.error_log, STATE.error_log.c.batch_id == third) > 0  # the seed's refused records
    assert removed["agent"] > 0 and removed["state"] > 0
    for old in (first, second):
        assert rows(w.district, agent_log, agent_log.c.batch_id == old) == 0
        assert rows(w.state, STATE.inbox, STATE.inbox.c.batch_id == old) == 0
        assert rows(w.state, STATE.error_log, STATE.error_log.c.batch_id == old) == 0
        assert rows(w.district, batch, batch.c.batch_id == old) == 1
        assert rows(w.district, batch_object, batch_object.c.batch_id == old) > 0
    assert [r["processed"] for r in w.store.history(limit=3)][1:] == [
        sum(o["processed"] for o in w.store.batch_objects(b)) for b in (second, first)]
    # the state still counts the old batches' answers per object, now from the counts it kept
    assert counted(w, first, second) == before_state and len(before_state) > 40
    assert all(r["processed"] for r in state_view(w) if r["last_resync"])
    assert len(before_status) == len(status_rows(CATALOG, w.store, w.settings, YEAR))


def test_live_answers_errors_and_alerts_go_after_their_days(world: World) -> None:
    w = world
    with w.district.begin() as conn:
        conn.execute(agent_log.insert(), [
            {"msg_id": f"{i:032X}", "batch_id": None, "object": "School", "ref_id": f"{i:032X}", "status": "ok",
             "logged_at": at} for i, at in ((1, "2020-01-01T00:00:00.000Z"), (2, "2999-01-01T00:00:00.000Z"))])
        conn.execute(process_alert.insert(), [
            {"process": "p", "name": "old", "posted": "2020-01-01T00:00:00.000Z", "read": False},
            {"process": "p", "name": "new", "posted": "2999-01-01T00:00:00.000Z", "read": False}])
    with w.state.begin() as conn:
        conn.execute(STATE.alerts.insert(), [{"process": "p", "name": "old", "posted": "2020-01-01T00:00:00.000Z",
                                              "read": False}])
    removed = agent_retention.prune(w.district, w.settings.with_(keep_days=30))
    assert removed["agent_log"] == 1 and removed["process_alert"] == 1
    assert [r["name"] for r in w.store.alerts()] == ["new"]
    assert rows(w.district, agent_log, agent_log.c.batch_id.is_(None)) == 1
    assert state_retention.prune(w.state, STATE, w.settings.with_(keep_days=30))["state_alert"] == 1
    forever = w.settings.with_(keep_days=0, keep_batches=0)
    assert not any(agent_retention.prune(w.district, forever).values())
