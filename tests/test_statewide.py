"""Many districts, several receivers on one broker and one state database: the receivers spread the districts
within one of even, a receiver SIGKILLed mid-run loses nothing and the others finish its districts, a receiver
that joins takes its share during a resync, and every district's batches complete with exact counts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select

from agent.store import AgentStore
from core.db import engine
from state_receiver.membership import Membership, assign, members
from tests.site import HANG_GUARD, STATE, YEAR, district_rows, orphans, rejected_by_state, until

pytestmark = [pytest.mark.fault]

DISTRICTS = [f"d{i:02d}" for i in range(1, 7)]

names = st.text("abcdefghij0123456789-", min_size=1, max_size=8)


@given(st.sets(names, min_size=1, max_size=6), st.sets(names, max_size=40))
def test_the_assignment_is_within_one_of_even_and_the_same_for_every_receiver(receivers: set[str],
                                                                             districts: set[str]) -> None:
    serving = {r: set(districts) for r in receivers}
    out = assign(serving)
    assert set(out) == districts and set(out.values()) <= receivers
    load = Counter({r: 0 for r in receivers}) + Counter(out.values())
    counts = [load[r] for r in receivers]
    assert max(counts) - min(counts) <= 1
    # a receiver that lists its peers in another order works out the same assignment
    assert assign(dict(reversed(list(serving.items())))) == out


@given(st.dictionaries(names, st.sets(names, max_size=10), min_size=1, max_size=5))
def test_a_district_goes_only_to_a_receiver_that_serves_it(serving: dict[str, set[str]]) -> None:
    for district, receiver in assign(serving).items():
        assert district in serving[receiver]


def test_a_district_is_claimed_by_one_running_receiver_at_a_time(db: Any) -> None:
    """What keeps two receivers off one queue, whatever each believes the assignment is (SQLite and PostgreSQL)."""
    STATE.create(db)
    a, b = (Membership(db, STATE, name, DISTRICTS) for name in ("a", "b"))
    a.beat([]), b.beat([])
    assert a.claim(["d01", "d02"]) == {"d01", "d02"}
    assert b.claim(["d01", "d02", "d03"]) == {"d03"}  # a runs: its claims stand
    assert a.claim(["d01"]) == {"d01"}  # its own again
    a.unclaim(["d02"])
    assert b.claim(["d02"]) == {"d02"}
    with db.begin() as conn:  # a stops beating: once its lease lapses, its claims may be taken
        conn.execute(STATE.members.update().where(STATE.members.c.name == "a").values(seen=0.0))
    assert b.claim(["d01"]) == {"d01"}
    assert a.claim(["d01"]) == set()  # b runs now
    b.leave()
    assert a.claim(["d01", "d02", "d03"]) == {"d01", "d02", "d03"}
    assert {m.name for m in members(db, STATE)} == {"a"}


class Statewide:
    """Districts with their own databases and agents, receivers sharing one state database."""

    def __init__(self, broker_url: str, make_db: Any, logs: Path) -> None:
        self.logs, self.state_db = logs, make_db()
        self.base = {**os.environ, "RESYNC_BROKER_URL": broker_url, "RESYNC_STATE_DB": self.state_db,
                     "RESYNC_SCHOOL_YEAR": str(YEAR), "RESYNC_DISTRICT_USERS": "*=guest",
                     "RESYNC_STATE_USER": "guest", "RESYNC_DISTRICTS": ",".join(DISTRICTS)}
        self.district_dbs = {d: make_db() for d in DISTRICTS}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def env(self, district: str | None = None, **extra: str) -> dict[str, str]:
        env = dict(self.base, **extra)
        if district:
            env.update(RESYNC_DISTRICT=district, RESYNC_DISTRICT_DB=self.district_dbs[district])
        return env

    def cli(self, *args: str, district: str | None = None) -> str:
        out = subprocess.run([sys.executable, "-m", "resync", *args], env=self.env(district), capture_output=True,
                             text=True, timeout=HANG_GUARD)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def start(self, name: str, *args: str, **env: str) -> None:
        log = (self.logs / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen([sys.executable, "-m", "resync", *args], env=self.env(**env),
                                            stdout=log, stderr=log)

    def receiver(self, name: str) -> None:
        self.start(name, "receiver", "run", RESYNC_RECEIVER_NAME=name)

    def receivers(self) -> dict[str, Any]:
        return dict(json.loads(self.cli("receivers", "--json")))

    def consuming(self) -> dict[str, list[str]]:
        """The running receivers and the districts each consumes."""
        return {r["name"]: sorted(r["consuming"]) for r in self.receivers()["receivers"] if r["running"]}

    def until(self, what: str, check: Any) -> Any:
        return until(what, check, self.logs)  # a receiver killed on purpose is no reason to give up

    def spread(self, receivers: set[str]) -> dict[str, list[str]]:
        """Once exactly ``receivers`` consume every district, each district once, within one of even."""
        def settled() -> dict[str, list[str]] | None:
            now = self.consuming()
            taken = sorted(d for ds in now.values() for d in ds)
            counts = [len(ds) for ds in now.values()]
            return now if set(now) == receivers and taken == DISTRICTS and max(counts) - min(counts) <= 1 else None

        return dict(self.until(f"{sorted(receivers)} to share the districts within one of even", settled))

    def send_all(self) -> dict[str, str]:
        return {d: json.loads(self.cli("send", "--json", "--all", district=d))["batch_id"] for d in DISTRICTS}

    def finished(self, batches: dict[str, str]) -> None:
        stores = {d: AgentStore(engine(self.district_dbs[d])) for d in DISTRICTS}

        def done() -> bool:
            return all((b := stores[d].batch(batch_id)) is not None and b["status"] not in ("queued", "running", "sent")
                       for d, batch_id in batches.items())

        self.until("every district's batch to finish", done)
        for d, batch_id in batches.items():
            rows = district_rows(stores[d].engine)
            rejected = rejected_by_state(rows)
            assert stores[d].batch(batch_id)["status"] == "completed", d  # type: ignore[index]
            for o in stores[d].batch_objects(batch_id):  # one answer per record, the refusals exactly those due
                assert (o["processed"], o["errors"]) == (len(rows[o["object"]]), len(rejected[o["object"]])), \
                    (d, o["object"])
            stores[d].engine.dispose()

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture
def statewide(rabbitmq_url: str, postgres_db: Any, tmp_path: Path) -> Any:
    s = Statewide(rabbitmq_url, postgres_db, tmp_path)
    yield s
    s.stop()


def test_receivers_share_the_districts_and_take_over_for_each_other(statewide: Statewide) -> None:
    s = statewide
    for name in ("r1", "r2", "r3"):
        s.receiver(name)
    first = s.spread({"r1", "r2", "r3"})
    for d in DISTRICTS:
        s.cli("seed", "--students", "3", "--year", str(YEAR), district=d)
    batches = s.send_all()
    for d in DISTRICTS:
        s.start(f"agent-{d}", "agent", "run", district=d)

    # mid-run, the receiver with the most districts dies without a word; the others finish its districts
    victim = max(first, key=lambda r: len(first[r]))
    state = engine(s.state_db)

    def answered(district: str) -> int:
        with state.connect() as db:
            return int(db.execute(select(func.coalesce(func.sum(counts.c.processed), 0))
                                  .where(counts.c.district_id == district)).scalar_one())

    counts = STATE.batch_counts
    s.until("the victim to answer some records", lambda: answered(first[victim][0]) > 0)
    s.procs[victim].send_signal(signal.SIGKILL)
    survivors = s.spread({"r1", "r2", "r3"} - {victim})
    assert sorted(d for ds in survivors.values() for d in ds) == DISTRICTS
    s.finished(batches)
    gone = {r["name"]: r["running"] for r in s.receivers()["receivers"]}
    assert gone[victim] is False

    # a receiver that joins during the next resync takes its share, and nothing is lost or reordered
    batches = s.send_all()
    s.receiver("r4")
    s.spread({"r1", "r2", "r3", "r4"} - {victim})
    s.finished(batches)
    assert orphans(state) == []
    state.dispose()

    shown = s.cli("receivers")
    assert "Receivers" in shown and "Districts" in shown and victim in shown and "gone" in shown


def test_a_resync_over_quorum_queues_is_exact_and_a_receiver_restart_keeps_it_so(site: Any) -> None:
    """RESYNC_QUEUE_TYPE=quorum end to end: queues replicated in a cluster, the receiver stopped and started
    again mid-resync (a clean stop hands back nothing out of order), every count exact."""
    from tests.conftest import rabbitmqctl
    from tests.test_faults import check_exact

    site.env["RESYNC_QUEUE_TYPE"] = "quorum"
    site.cli("seed", "--students", "40", "--year", str(YEAR))
    rows = district_rows(site.district)
    receiver = site.start("receiver", "run")
    site.start("agent", "run")
    batch_id = site.send("--all")
    store = AgentStore(site.district)
    site.until("some records answered", lambda: sum(o["processed"] for o in store.batch_objects(batch_id)) > 0)
    receiver.send_signal(signal.SIGTERM)
    assert receiver.wait(timeout=120) == 0
    site.procs.remove(receiver)
    site.start("receiver", "run")
    assert site.wait(batch_id)["status"] == "completed"
    check_exact(site, batch_id, rows)
    vhost = urllib.parse.unquote(site.env["RESYNC_BROKER_URL"].rsplit("/", 1)[1])
    types = dict(line.split("\t") for line in rabbitmqctl("list_queues", "--no-table-headers", "-p", vhost, "name",
                                                          "type").splitlines() if "\t" in line)
    assert types["sync.district-1"] == types["acks.district-1"] == "quorum", types
