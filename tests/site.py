"""Running the agent and the receiver as separate processes against real services, for tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, and_, exists, func, select

from agent.store import AgentStore
from core.db import engine
from messages import catalog as catalog_mod
from messages.catalog import ref_column
from publisher.schema import DistrictSchema
from state_receiver.schema import StateSchema

CATALOG = catalog_mod.load()
YEAR = 2027
HANG_GUARD = 600  # seconds: a resync that takes this long is stuck, not slow
DISTRICT = DistrictSchema(CATALOG)
STATE = StateSchema(CATALOG)


def until(what: str, check: Any, logs: Path, hopeless: Any = lambda: False) -> Any:
    """Poll ``check`` until it returns something truthy (a hang guard, not a timing assertion), or fail with
    the daemons' logs once ``HANG_GUARD`` passes or ``hopeless()`` says waiting is no use."""
    deadline = time.monotonic() + HANG_GUARD
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if hopeless():
            break
        time.sleep(0.2)
    daemon_logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(logs.glob("*.log")))
    raise AssertionError(f"gave up waiting for {what}\n{daemon_logs}")


class Site:
    """One district and one state, with helpers to run the CLI and the daemons."""

    def __init__(self, broker_url: str, district_db: str, state_db: str, logs: Path) -> None:
        self.logs = logs
        self.env = {**os.environ, "RESYNC_BROKER_URL": broker_url, "RESYNC_DISTRICT_DB": district_db,
                    "RESYNC_STATE_DB": state_db, "RESYNC_DISTRICT": "district-1", "RESYNC_SCHOOL_YEAR": str(YEAR),
                    "RESYNC_DISTRICT_USERS": "district-1=guest",
                    "RESYNC_STATE_USER": "guest"}
        self.district, self.state = engine(district_db), engine(state_db)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.started = 0

    def cli(self, *args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "resync", *args], env=self.env, capture_output=True, text=True,
                             timeout=HANG_GUARD)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def fail(self, *args: str) -> str:
        """Run a command that must be refused; returns its one-line error."""
        out = subprocess.run([sys.executable, "-m", "resync", *args], env=self.env, capture_output=True, text=True,
                             timeout=HANG_GUARD)
        assert out.returncode != 0, out.stdout
        return out.stderr.strip()

    def json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json"))

    def until(self, what: str, check: Any) -> Any:
        """Poll ``check`` until it returns something truthy; gives up early if a daemon died."""
        return until(what, check, self.logs, lambda: any(p.poll() is not None for p in self.procs))

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        self.started += 1
        log = (self.logs / f"{args[0]}-{self.started}.log").open("wb")
        p = subprocess.Popen([sys.executable, "-m", "resync", *args], env=self.env, stdout=log, stderr=log)
        self.procs.append(p)
        return p

    def send(self, *args: str) -> str:
        return str(json.loads(self.cli("send", "--json", *args))["batch_id"])

    def wait(self, batch_id: str) -> dict[str, Any]:
        """The batch, once it is no longer queued, running or waiting for acks."""
        store = AgentStore(self.district)

        def finished() -> dict[str, Any] | None:
            b = store.batch(batch_id)
            return b if b and b["status"] not in ("queued", "running", "sent") else None

        return dict(self.until(f"batch {batch_id} to finish", finished))

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


def district_rows(eng: Engine) -> dict[str, list[dict[str, Any]]]:
    with eng.connect() as conn:
        return {n: [dict(r._mapping) for r in conn.execute(select(DISTRICT.tables[n]))] for n in CATALOG.names()}


def rejected_by_state(rows: dict[str, list[dict[str, Any]]]) -> dict[str, set[str]]:
    """What the state must refuse: state-excluded records and every record under one."""
    out: dict[str, set[str]] = {}
    for name in CATALOG.names():
        obj = CATALOG.get(name)
        out[name] = {r["ref_id"] for r in rows[name]
                     if r.get("state_exclude") or any(r[ref_column(p)] in out[p] for p in obj.references)}
    return out


def state_refs(eng: Engine) -> dict[str, set[str]]:
    with eng.connect() as conn:
        return {n: {r[0] for r in conn.execute(select(STATE.tables[n].c.ref_id))} for n in CATALOG.names()}


def delete_tree(eng: Engine, name: str, ref: str) -> dict[str, set[str]]:
    """Delete a district record and every record under it, children first, as the district's keys demand."""
    doomed: dict[str, set[str]] = {name: {ref}}
    with eng.begin() as conn:
        for child in CATALOG.names():
            t = DISTRICT.tables[child]
            for p in CATALOG.get(child).references:
                if doomed.get(p):
                    found = conn.execute(select(t.c.ref_id).where(t.c[ref_column(p)].in_(doomed[p])))
                    doomed.setdefault(child, set()).update(r[0] for r in found)
        for child in reversed(CATALOG.names()):
            if doomed.get(child):
                t = DISTRICT.tables[child]
                conn.execute(t.delete().where(t.c.ref_id.in_(doomed[child])))
    return doomed


def clone(eng: Engine, name: str, row: dict[str, Any]) -> str:
    ref = uuid.uuid4().hex.upper()
    with eng.begin() as conn:
        conn.execute(DISTRICT.tables[name].insert().values({**row, "ref_id": ref}))
    return ref


def orphans(eng: Engine) -> list[str]:
    """State records whose parent the state does not hold."""
    out = []
    with eng.connect() as conn:
        for name in CATALOG.names():
            t = STATE.tables[name]
            for p in CATALOG.get(name).references:
                pt = STATE.tables[p]
                n = conn.execute(select(func.count()).select_from(t).where(~exists().where(and_(
                    pt.c.district_id == t.c.district_id, pt.c.ref_id == t.c[ref_column(p)])))).scalar_one()
                if n:
                    out.append(f"{n} {name} without their {p}")
    return out


def expected_state(district: Engine) -> dict[str, set[str]]:
    """What the state must hold: every district record but those it refuses."""
    rows = district_rows(district)
    rejected = rejected_by_state(rows)
    return {n: {r["ref_id"] for r in rows[n]} - rejected[n] for n in CATALOG.names()}


def with_children(rows: dict[str, list[dict[str, Any]]], name: str, child: str, at_state: dict[str, set[str]]) -> str:
    """A record of ``name`` at the state that has records of ``child`` under it."""
    column = ref_column(name)
    return next(r[column] for r in rows[child] if r["ref_id"] in at_state[child] and r[column] in at_state[name])
