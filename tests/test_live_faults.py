"""Live sync against real RabbitMQ and PostgreSQL, the daemons as separate processes: four writers commit
interleaved transactions for 20 seconds (and one long transaction spans them all) while a full resync runs, the
agent is SIGKILLed and restarted, the broker closes every connection, and the receiver is stopped for 30
seconds. Afterwards the state is the district's, with no orphan, and every change has one outcome."""

from __future__ import annotations

import signal
import threading
import time
import urllib.parse

import pytest
from sqlalchemy import func, select

from agent import live_store
from agent.store import AgentStore
from agent.tables import agent_log, live_day
from tests.conftest import rabbitmqctl
from tests.site import CATALOG, STATE, YEAR, Site, orphans
from tests.writers import Writers

pytestmark = [pytest.mark.slow, pytest.mark.fault]


def kill_and_restart(site: Site, role: str) -> None:
    [proc] = [p for p in site.procs if p.args[3] == role and p.poll() is None]  # type: ignore[index]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    site.procs.remove(proc)
    site.start(role, "run")


def caught_up(site: Site) -> bool:
    return live_store.caught_up(site.district, CATALOG)


def test_live_changes_survive_kills_dropped_connections_a_stopped_receiver_and_a_resync(
        site: Site, rabbitmq_url: str) -> None:
    vhost = urllib.parse.unquote(urllib.parse.urlparse(rabbitmq_url).path[1:])
    site.cli("seed", "--students", "150", "--year", str(YEAR))
    assert "change capture installed" in site.cli("capture", "install")
    site.start("receiver", "run")
    site.start("agent", "run")
    store = AgentStore(site.district)
    first = site.send("--all")
    assert site.wait(first)["status"] == "completed"

    writers = Writers(site.district, connections=4)
    writing = threading.Thread(target=writers.run, args=(20.0,))
    writing.start()
    time.sleep(2)  # the timeline of the faults, not a timing assertion
    resync = site.send("--all")  # reads pages while the writers change what it reads
    time.sleep(3)
    kill_and_restart(site, "agent")
    time.sleep(3)
    rabbitmqctl("close_all_connections", "-p", vhost, "live sync fault test")
    time.sleep(3)
    [receiver] = [p for p in site.procs if p.args[3] == "receiver" and p.poll() is None]  # type: ignore[index]
    receiver.send_signal(signal.SIGTERM)
    receiver.wait()
    site.procs.remove(receiver)
    time.sleep(30)  # the outage: changes wait in the queue and the outbox
    site.start("receiver", "run")
    writing.join()
    assert sum(writers.committed.values()) > 100, writers.committed

    assert site.wait(resync)["status"] == "completed"
    site.until("live sync to catch up", lambda: caught_up(site))
    report = site.json("verify")
    assert [r for r in report["objects"] if r["differences"]] == []
    assert orphans(site.state) == []

    with site.district.connect() as conn:
        sent, answered = (int(v) for v in conn.execute(select(func.sum(live_day.c.sent),
                                                               func.sum(live_day.c.answered))).one())
        live_ids = {r[0] for r in conn.execute(select(agent_log.c.msg_id).where(agent_log.c.batch_id.is_(None)))}
        refused = {r[0] for r in conn.execute(select(agent_log.c.msg_id).where(
            agent_log.c.batch_id.is_(None), agent_log.c.status != "ok"))}
        in_batches = {r[0] for r in conn.execute(select(agent_log.c.msg_id).where(agent_log.c.batch_id.is_not(None)))}
    assert sent > 0 and answered == sent
    inbox = STATE.inbox
    with site.state.connect() as conn:  # what the state knows it answered: its inbox, and each row's last writer
        known_at_state = {r[0] for r in conn.execute(select(inbox.c.msg_id).where(inbox.c.batch_id.is_(None)))}
        for t in STATE.tables.values():
            known_at_state |= {r[0] for r in conn.execute(select(t.c.last_msg_id))}
    # each change the state answered has its one outcome in the agent log, and nothing else is there
    assert refused <= known_at_state
    assert known_at_state - in_batches <= live_ids
    assert len(live_ids) >= sent
    assert store.batch(resync) is not None
    live = site.json("live")
    assert live["captured"] is True and sum(o["sent"] for o in live["objects"]) == sent
    assert all(o["lag_seconds"] is None for o in live["objects"])
    [state_view] = site.json("live", "--state")
    assert state_view["district_id"] == "district-1" and state_view["changes"] > 0
