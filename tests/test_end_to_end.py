"""Agent and receiver as separate processes on RabbitMQ and PostgreSQL: full and partial resyncs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from agent.status import colour
from agent.store import AgentStore
from messages import catalog as catalog_mod
from messages.catalog import ref_column
from messages.errors import Code
from publisher.schema import DistrictSchema
from resync.db import engine
from state_receiver.schema import StateSchema

pytestmark = pytest.mark.slow
CATALOG = catalog_mod.load()
YEAR = 2027
HANG_GUARD = 600  # seconds: a resync that takes this long is stuck, not slow


class Site:
    """One district and one state, with helpers to run the CLI and the daemons."""

    def __init__(self, broker_url: str, district_db: str, state_db: str, logs: Path) -> None:
        self.logs = logs
        self.env = {**os.environ, "RESYNC_BROKER_URL": broker_url, "RESYNC_DISTRICT_DB": district_db,
                    "RESYNC_STATE_DB": state_db, "RESYNC_DISTRICT": "district-1", "RESYNC_SCHOOL_YEAR": str(YEAR),
                    "RESYNC_DISTRICT_USERS": "district-1=guest"}
        self.district, self.state = engine(district_db), engine(state_db)
        self.procs: list[subprocess.Popen[bytes]] = []

    def cli(self, *args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "resync", *args], env=self.env, capture_output=True, text=True,
                             timeout=HANG_GUARD)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{args[0]}-{len(self.procs)}.log").open("wb")
        p = subprocess.Popen([sys.executable, "-m", "resync", *args], env=self.env, stdout=log, stderr=log)
        self.procs.append(p)
        return p

    def send(self, *args: str) -> str:
        return str(json.loads(self.cli("send", "--json", *args))["batch_id"])

    def wait(self, batch_id: str) -> dict[str, Any]:
        store = AgentStore(self.district)
        deadline = time.monotonic() + HANG_GUARD
        while time.monotonic() < deadline:
            b = store.batch(batch_id)
            if b and b["status"] not in ("queued", "running", "sent"):
                return b
            if any(p.poll() is not None for p in self.procs):
                break
            time.sleep(0.2)
        daemon_logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in self.logs.glob("*.log"))
        raise AssertionError(f"batch {batch_id} did not finish: {store.batch_objects(batch_id)}\n{daemon_logs}")

    def stop(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        self.district.dispose()
        self.state.dispose()


@pytest.fixture
def site(rabbitmq_url: str, postgres_db: Any, tmp_path: Path) -> Iterator[Site]:
    s = Site(rabbitmq_url, postgres_db(), postgres_db(), tmp_path)
    yield s
    s.stop()


def district_rows(eng: Engine) -> dict[str, list[dict[str, Any]]]:
    schema = DistrictSchema(CATALOG)
    with eng.connect() as conn:
        return {n: [dict(r._mapping) for r in conn.execute(select(schema.tables[n]))] for n in CATALOG.names()}


def rejected_by_state(rows: dict[str, list[dict[str, Any]]]) -> dict[str, set[str]]:
    """What the state must refuse: state-excluded records and every record under one."""
    out: dict[str, set[str]] = {}
    for name in CATALOG.names():
        obj = CATALOG.get(name)
        out[name] = {r["ref_id"] for r in rows[name]
                     if r.get("state_exclude") or any(r[ref_column(p)] in out[p] for p in obj.references)}
    return out


def state_refs(eng: Engine) -> dict[str, set[str]]:
    schema = StateSchema(CATALOG)
    with eng.connect() as conn:
        return {n: {r[0] for r in conn.execute(select(schema.tables[n].c.ref_id))} for n in CATALOG.names()}


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
