"""State-initiated requests, cancel, and previous-year resync: agent and receiver as separate processes
on RabbitMQ and PostgreSQL."""

from __future__ import annotations

import subprocess
import urllib.parse
import uuid
from typing import Any

import pytest
from sqlalchemy import select

from agent.store import AgentStore
from core.brokers import Topology
from core.brokers.rabbitmq import RabbitBroker
from messages.codec import encode_request
from messages.envelope import STATE_SOURCE, Kind, ResyncRequest, new_id, now_ts
from state_receiver.schema import StateSchema
from tests.conftest import rabbitmqctl
from tests.site import CATALOG, YEAR, Site, district_rows, rejected_by_state, state_refs

pytestmark = pytest.mark.slow
D = "district-1"


def batches(site: Site) -> list[dict[str, Any]]:
    return list(site.json("history"))


def test_a_state_request_waits_for_the_agent_runs_and_never_shows_its_objects_at_the_district(site: Site) -> None:
    site.env["RESYNC_STATE_USER"] = "guest"
    site.cli("seed", "--students", "100", "--year", str(YEAR))
    rows = district_rows(site.district)
    site.start("receiver", "run")
    request_id = site.json("request", "--district", D, "Enrollment")["request_id"]
    assert batches(site) == []  # the agent is not running: the request waits in the queue

    site.start("agent", "run")
    [batch] = site.until("the state's batch", lambda: [b for b in batches(site) if b["status"] == "completed"])
    assert batch["initiator"] == "state" and batch["requested_by"] == "state" and batch["objects"] is None

    alerts = site.json("alerts")
    assert [(a["process"], a["name"]) for a in alerts] == [("Vertical Interoperability", "State Resync Requested")]
    # nothing the district sees names the requested objects
    assert all(r["last_resync"] is None for r in site.json("status"))
    assert site.json("log", "--limit", "100000") == []
    assert all(e["object"] is None for e in site.json("errors"))
    for command in (["alerts"], ["history"], ["log"], ["errors"]):
        text = site.cli(*command)
        assert "Enrollment" not in text and "PersonIdentity" not in text, command
    assert "cannot cancel" in site.fail("cancel", batch["batch_id"])

    seen = site.json("district-status", "--district", D)
    by_object = {r["object"]: r for r in seen["objects"]}
    rejected = rejected_by_state(rows)
    for name in ("District", "School", "Calendar", "ScheduleStructure", "PersonIdentity", "Enrollment"):
        assert by_object[name]["processed"] == by_object[name]["sent"] == len(rows[name]), name
        assert by_object[name]["errors"] == len(rejected[name]), name
    assert by_object["Roster"]["processed"] == 0
    [req] = seen["requests"]
    assert (req["request_id"], req["status"], req["objects"]) == (request_id, "completed", ["Enrollment"])
    assert state_refs(site.state)["Enrollment"] == {r["ref_id"] for r in rows["Enrollment"]} - rejected["Enrollment"]
    # newest first: the request's alert, as the state's users see it too, then its completion
    assert [a["name"] for a in site.json("alerts", "--state")] == ["Resync complete", "State Resync Requested"]


def test_a_control_message_from_a_district_identity_is_rejected_and_runs_nothing(
        site: Site, rabbitmq_url: str) -> None:
    site.env["RESYNC_STATE_USER"] = "state-admin"
    site.cli("seed", "--students", "20", "--year", str(YEAR))
    vhost = urllib.parse.urlparse(rabbitmq_url).path[1:]
    user, password = f"{D}-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    rabbitmqctl("add_user", user, password)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        forged = RabbitBroker(f"amqp://{user}:{password}@127.0.0.1:5672/{vhost}")
        forged.declare_district(D)
        request = ResyncRequest(new_id(), now_ts(), STATE_SOURCE, new_id(), None, "current", "state administrator")
        with forged.connect() as conn:
            conn.publish(Topology.control(D), encode_request(request), kind=Kind.RESYNC_REQUEST,
                         message_id=request.msg_id)
            conn.flush()
        site.start("agent", "run")
        errors = site.until("the rejection", lambda: [e for e in site.json("errors") if "rejected" in e["description"]])
        assert user in errors[0]["description"] and errors[0]["code"] == "4.1"
        assert batches(site) == [] and site.json("alerts") == []
        dead = {q["queue"]: q for q in site.json("queue")["queues"]}["resync.dead-letter"]
        assert dead["ready"] == 1
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_user", user], capture_output=True, timeout=60)


def test_cancel_stops_a_large_batch_and_its_counts_stay_exact(site: Site) -> None:
    site.cli("seed", "--students", "2000", "--year", str(YEAR))
    total = sum(len(v) for v in district_rows(site.district).values())
    site.start("receiver", "run")
    site.start("agent", "run")
    batch_id = site.json("send", "--all")["batch_id"]
    store = AgentStore(site.district)
    site.until("some records sent", lambda: sum(o["sent"] for o in store.batch_objects(batch_id)) >= 5000)
    site.cli("cancel", batch_id)

    def settled() -> list[dict[str, Any]] | None:
        objs = store.batch_objects(batch_id)
        return objs if sum(o["processed"] for o in objs) == sum(o["sent"] for o in objs) else None

    objects = site.until("every sent record acknowledged", settled)
    sent = sum(o["sent"] for o in objects)
    assert store.batch(batch_id)["status"] == "cancelled"  # type: ignore[index]
    assert 5000 <= sent < total
    log = site.json("log", "--batch", batch_id, "--limit", "1000000")
    assert len(log) == sent == sum(o["processed"] for o in objects)
    assert sum(1 for r in log if r["status"] == "error") == sum(o["errors"] for o in objects)
    at_state = set().union(*state_refs(site.state).values())
    assert at_state == {r["ref_id"] for r in log if r["status"] == "ok"}
    assert "already cancelled" in site.fail("cancel", batch_id)


def test_previous_year_resync_sends_only_configured_year_scoped_objects(site: Site) -> None:
    configured = ["Calendar", "ScheduleStructure", "StructureGradeLevel", "Enrollment", "AttendanceExactCount"]
    site.env.update(RESYNC_SYNC_YEARS="previous", RESYNC_PREVIOUS_YEAR_OBJECTS=",".join(configured))
    site.cli("seed", "--students", "100", "--year", str(YEAR - 1), "--year", str(YEAR))
    rows = district_rows(site.district)
    rejected = rejected_by_state(rows)
    site.start("receiver", "run")
    site.start("agent", "run")
    assert site.wait(site.json("send", "--all")["batch_id"])["status"] == "completed"
    schema = StateSchema(CATALOG)
    enrollment = schema.tables["Enrollment"]
    with site.state.connect() as conn:
        current_before = conn.execute(select(enrollment.c.ref_id, enrollment.c.last_msg_id)).all()
    assert {r.ref_id for r in current_before} == {
        r["ref_id"] for r in rows["Enrollment"] if r["school_year"] == YEAR} - rejected["Enrollment"]

    assert [p["object"] for p in site.json("send", "--all", "--year", "previous", "--dry-run")] == configured
    assert "not tied to a school year" in site.fail("send", "PersonIdentity", "--year", "previous")
    assert "not configured" in site.fail("send", "Day", "--year", "previous")
    assert "not synced" in site.fail("send", "--all", "--year", "next")

    previous = site.json("send", "--all", "--year", "previous")["batch_id"]
    assert site.wait(previous)["status"] == "completed"
    assert [o["object"] for o in AgentStore(site.district).batch_objects(previous)] == configured
    with site.state.connect() as conn:
        by_year = {y: {r for r, in conn.execute(select(enrollment.c.ref_id).where(enrollment.c.school_year == y))}
                   for y in (YEAR - 1, YEAR)}
        current_after = conn.execute(select(enrollment.c.ref_id, enrollment.c.last_msg_id)
                                     .where(enrollment.c.school_year == YEAR)).all()
    assert by_year[YEAR - 1] == {r["ref_id"] for r in rows["Enrollment"]
                                 if r["school_year"] == YEAR - 1} - rejected["Enrollment"]
    assert sorted(current_after) == sorted(current_before)  # the current year's rows are untouched
    status = site.json("status", "--year", "previous")
    assert [r["object"] for r in status] == configured
    assert all(r["processed"] == r["sent"] > 0 for r in status)
