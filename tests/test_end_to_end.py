"""Agent and receiver as separate processes on RabbitMQ and PostgreSQL: full and partial resyncs."""

from __future__ import annotations

import json
import time

import pytest

from agent.store import AgentStore
from messages.errors import Code
from messages.status import colour
from tests.site import CATALOG, YEAR, Site, district_rows, rejected_by_state, state_refs

pytestmark = pytest.mark.slow


def test_full_resync_lands_every_allowed_record_and_counts_every_ack(site: Site) -> None:
    site.cli("seed", "--students", "800", "--year", str(YEAR))
    rows = district_rows(site.district)
    total = sum(len(v) for v in rows.values())
    assert total >= 20_000
    site.start("receiver", "run")
    site.start("agent", "run")

    started = time.monotonic()
    first = site.send("--all")
    assert site.wait(first)["status"] == "completed"
    elapsed = time.monotonic() - started
    print(f"\nfull resync of {total} records: {elapsed:.1f}s, {total / elapsed:,.0f} records/s")

    rejected = rejected_by_state(rows)
    assert sum(map(len, rejected.values())) > 0
    at_state = state_refs(site.state)
    for name in CATALOG.names():
        assert at_state[name] == {r["ref_id"] for r in rows[name]} - rejected[name], name

    status = {r["object"]: r for r in json.loads(site.cli("status", "--json"))}
    for name in CATALOG.names():
        r = status[name]
        assert r["sent"] == r["processed"] == len(rows[name]), name
        assert r["errors"] == len(rejected[name]), name
        assert r["status"] == colour(r["processed"], r["errors"], True), name
        assert r["last_resync"] is not None
    assert {"green", "yellow", "red"} <= {r["status"] for r in status.values()}
    assert status["Calendar"]["status"] == "red" and status["Enrollment"]["status"] == "yellow"

    errors = json.loads(site.cli("log", "--errors", "--object", "Enrollment", "--limit", "100000", "--json"))
    assert len(errors) == len(rejected["Enrollment"])
    assert {e["code"] for e in errors} <= {Code.STATE_EXCLUDED, Code.UNDER_EXCLUDED}

    second = site.send("--all")
    assert site.wait(second)["status"] == "completed"
    history = json.loads(site.cli("history", "--json"))
    assert [h["batch_id"] for h in history] == [second, first]
    assert all(h["processed"] == h["sent"] == total for h in history)
    assert state_refs(site.state) == at_state


def test_partial_resync_needs_its_parents_and_check_dependencies_sends_them_first(site: Site) -> None:
    site.cli("seed", "--students", "200", "--year", str(YEAR))
    rows = district_rows(site.district)
    site.start("receiver", "run")
    site.start("agent", "run")

    alone = site.send("Enrollment")
    assert site.wait(alone)["status"] == "completed"
    log = json.loads(site.cli("log", "--batch", alone, "--limit", "100000", "--json"))
    assert len(log) == len(rows["Enrollment"])
    assert all(e["status"] == "error" and e["code"] == Code.PARENT_MISSING for e in log)
    assert all("PersonIdentity" in e["description"] or "Calendar" in e["description"] for e in log)
    assert state_refs(site.state)["Enrollment"] == set()

    with_parents = site.send("Enrollment", "--check-dependencies")
    assert site.wait(with_parents)["status"] == "completed"
    objects = AgentStore(site.district).batch_objects(with_parents)
    assert [o["object"] for o in objects] == ["District", "School", "Calendar", "ScheduleStructure",
                                              "PersonIdentity", "Enrollment"]
    rejected = rejected_by_state(rows)
    assert state_refs(site.state)["Enrollment"] == {r["ref_id"] for r in rows["Enrollment"]} - rejected["Enrollment"]
    enrollment = objects[-1]
    assert enrollment["processed"] == enrollment["sent"] == len(rows["Enrollment"])
    assert enrollment["errors"] == len(rejected["Enrollment"])
