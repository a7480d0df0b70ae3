"""Real faults during one large batch: SIGKILLed daemons, dropped broker connections, a stopped database,
a restarted broker. Afterwards the state holds exactly what it should, and every count is exact."""

from __future__ import annotations

import signal
import subprocess
import urllib.parse
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select

from agent.store import AgentStore, agent_log
from tests.conftest import rabbitmqctl
from tests.site import CATALOG, YEAR, Site, district_rows, rejected_by_state, state_refs

pytestmark = [pytest.mark.slow, pytest.mark.fault]
STUDENTS = 4_000  # about 107,000 records


def processed(store: AgentStore, batch_id: str) -> int:
    return sum(o["processed"] for o in store.batch_objects(batch_id))


def run_with_faults(site: Site, faults: list[tuple[int, Callable[[], None]]]) -> tuple[str, dict[str, Any]]:
    """Seed, start both daemons, send a full resync, and inject each fault once ``processed`` passes its mark."""
    site.cli("seed", "--students", str(STUDENTS), "--year", str(YEAR))
    rows = district_rows(site.district)
    assert sum(map(len, rows.values())) >= 100_000
    site.start("receiver", "run")
    site.start("agent", "run")
    store = AgentStore(site.district)
    batch_id = site.json("send", "--all")["batch_id"]
    for mark, fault in faults:
        site.until(f"{mark} records processed", lambda mark=mark: processed(store, batch_id) >= mark)
        fault()
    site.until("the batch to complete", lambda: (store.batch(batch_id) or {}).get("status") == "completed")
    return batch_id, rows


def check_exact(site: Site, batch_id: str, rows: dict[str, Any]) -> None:
    rejected = rejected_by_state(rows)
    at_state = state_refs(site.state)
    for name in CATALOG.names():
        assert at_state[name] == {r["ref_id"] for r in rows[name]} - rejected[name], name
    store = AgentStore(site.district)
    for o in store.batch_objects(batch_id):
        assert o["processed"] == o["sent"] == len(rows[o["object"]]), o["object"]
        assert o["errors"] == len(rejected[o["object"]]), o["object"]
    total = sum(map(len, rows.values()))
    with site.district.connect() as conn:
        outcomes, records = conn.execute(select(func.count(), func.count(func.distinct(agent_log.c.ref_id)))
                                         .where(agent_log.c.batch_id == batch_id)).one()
    assert outcomes == records == total  # exactly one final outcome per record
    queues = {q["queue"]: q for q in site.json("queue")["queues"]}
    assert queues["resync.dead-letter"]["ready"] == 0


def restart(site: Site, role: str) -> Callable[[], None]:
    def fault() -> None:
        [proc] = [p for p in site.procs if p.args[3] == role and p.poll() is None]  # type: ignore[index]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        site.procs.remove(proc)
        site.start(role, "run")
    return fault


def test_killed_daemons_and_dropped_connections_lose_and_duplicate_nothing(site: Site, rabbitmq_url: str) -> None:
    vhost = urllib.parse.unquote(urllib.parse.urlparse(rabbitmq_url).path[1:])

    def drop_connections() -> None:
        rabbitmqctl("close_all_connections", "-p", vhost, "fault test")

    batch_id, rows = run_with_faults(site, [
        (8_000, restart(site, "receiver")),
        (20_000, drop_connections),
        (32_000, restart(site, "agent")),
        (45_000, restart(site, "receiver")),
        (60_000, drop_connections),
        (75_000, restart(site, "receiver")),
    ])
    check_exact(site, batch_id, rows)


def test_the_state_database_stopping_for_30_seconds_loses_nothing(site: Site) -> None:
    cluster = subprocess.run("ls /etc/postgresql", shell=True, capture_output=True, text=True).stdout.split()
    if not cluster:
        pytest.skip("no local PostgreSQL cluster to stop")

    def stop_postgres() -> None:
        ctl = ["pg_ctlcluster", "--skip-systemctl-redirect", cluster[0], "main"]
        subprocess.run([*ctl, "stop", "-m", "fast"], check=True, timeout=60)
        try:
            import time
            time.sleep(30)  # the outage itself, not a timing assertion
        finally:
            subprocess.run([*ctl, "start"], check=True, timeout=60)

    batch_id, rows = run_with_faults(site, [(20_000, stop_postgres)])
    check_exact(site, batch_id, rows)


def test_restarting_rabbitmq_mid_batch_loses_nothing(site: Site) -> None:
    def restart_rabbitmq() -> None:
        rabbitmqctl("stop_app")
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")

    batch_id, rows = run_with_faults(site, [(20_000, restart_rabbitmq)])
    check_exact(site, batch_id, rows)
