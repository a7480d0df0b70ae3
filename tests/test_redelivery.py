"""A receiver SIGKILLed after it committed a delivery batch and before the broker had its acks: the batch comes
again, and each of its records is answered ``ok`` once and applied once. The state keeps no row per accepted
message, so the record's own row (the msg_id that last wrote it) is what recognises the redelivery."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from agent.store import AgentStore, agent_log
from tests.site import CATALOG, STATE, YEAR, Site, district_rows, rejected_by_state

pytestmark = [pytest.mark.fault]

# the receiver, with one change: the first time it is about to publish the answers to a batch it has committed,
# it is killed (SIGKILL: no handler runs, nothing is flushed), as a power cut at that instant would
KILLED_AFTER_COMMIT = """
import os, signal, sys
from state_receiver.daemon import Receiver

MARK = sys.argv[1]

def answer(self, conn, deliveries, answers, out=None):
    if any(acks for acks in answers.acks.values()):
        with open(MARK, "w") as f:
            f.write(str(len(deliveries)))
        os.kill(os.getpid(), signal.SIGKILL)

Receiver.answer = answer
sys.argv = ["resync", "receiver", "run"]
from resync.cli import main
main()
"""


def applied(site: Site) -> dict[str, str]:
    """When the state applied each record it holds (ref_id -> applied_at)."""
    out: dict[str, str] = {}
    with site.state.connect() as conn:
        for name in CATALOG.names():
            t = STATE.tables[name]
            out.update({r.ref_id: r.applied_at for r in conn.execute(select(t.c.ref_id, t.c.applied_at))})
    return out


def test_a_batch_committed_but_not_acknowledged_is_answered_once_and_applied_once(site: Site,
                                                                                  tmp_path: Path) -> None:
    site.cli("seed", "--students", "3", "--year", str(YEAR))
    rows = district_rows(site.district)
    total = sum(map(len, rows.values()))
    batch_id = site.send("--all")
    site.start("agent", "run")
    killed = tmp_path / "killed"
    log = (tmp_path / "killed-receiver.log").open("wb")
    victim = subprocess.Popen([sys.executable, "-c", KILLED_AFTER_COMMIT, str(killed)], env=site.env, stdout=log,
                              stderr=log)
    assert victim.wait(timeout=600) == -9 and killed.exists(), (tmp_path / "killed-receiver.log").read_text()[-3000:]
    first = applied(site)
    assert first, "the killed receiver committed its first delivery batch"
    store = AgentStore(site.district)
    assert sum(o["processed"] for o in store.batch_objects(batch_id)) == 0  # no answer left the killed receiver

    site.start("receiver", "run")
    batch = site.wait(batch_id)
    assert batch["status"] == "completed"
    rejected = rejected_by_state(rows)  # the seed's state-excluded records, refused as they should be
    for o in store.batch_objects(batch_id):  # one answer per record
        assert (o["processed"], o["errors"]) == (len(rows[o["object"]]), len(rejected[o["object"]])), o["object"]
    with site.district.connect() as conn:
        outcomes, records = conn.execute(select(func.count(), func.count(func.distinct(agent_log.c.ref_id)))
                                         .where(agent_log.c.batch_id == batch_id)).one()
    assert outcomes == records == total
    after = applied(site)
    assert {ref: after[ref] for ref in first} == first  # the redelivered records were not applied again
    seen = site.json("district-status", "--district", "district-1")
    by_object = {r["object"]: (r["processed"], r["errors"]) for r in seen["objects"] if r["processed"]}
    assert by_object == {name: (len(rows[name]), len(rejected[name])) for name in rows if rows[name]}
