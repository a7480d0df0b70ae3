"""A day on a real network: a connection that goes silent without closing (a NAT or firewall dropping it), and a
broker that blocks publishing during a memory alarm. Each happens in the middle of a batch; afterwards every
count is exact."""

from __future__ import annotations

import json
import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.store import AgentStore
from tests.conftest import RABBIT_HOST, RABBIT_PORT, rabbitmqctl
from tests.site import YEAR, Site
from tests.test_faults import check_exact, processed

pytestmark = [pytest.mark.slow, pytest.mark.fault]
STUDENTS = 1_000  # about 27,000 records
HEARTBEAT = "4"  # seconds; a silent connection is noticed after about two of them


class SilentProxy:
    """A TCP proxy to RabbitMQ. ``silence()`` stops forwarding on every connection it carries, without closing
    any: to both ends, the peer just goes quiet. Connections made afterwards are carried as usual."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.pairs: list[tuple[socket.socket, socket.socket, threading.Event]] = []
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection((RABBIT_HOST, RABBIT_PORT))
            quiet = threading.Event()
            self.pairs.append((client, upstream, quiet))
            threading.Thread(target=self._carry, args=(client, upstream, quiet), daemon=True).start()

    def _carry(self, a: socket.socket, b: socket.socket, quiet: threading.Event) -> None:
        peer = {a: b, b: a}
        while not self.closed.is_set():
            if quiet.is_set():
                time.sleep(0.2)  # hold both sockets open and read nothing: a black hole
                continue
            readable, _, _ = select.select([a, b], [], [], 0.2)
            for s in readable:
                try:
                    data = s.recv(65536)
                    if not data:
                        raise OSError("closed")
                    peer[s].sendall(data)
                except OSError:
                    a.close()
                    b.close()
                    return

    def silence(self) -> int:
        live = [q for _, _, q in self.pairs if not q.is_set()]
        for quiet in live:
            quiet.set()
        return len(live)

    def close(self) -> None:
        self.closed.set()
        self.server.close()
        for a, b, _ in self.pairs:
            a.close()
            b.close()


@pytest.fixture
def proxy() -> Iterator[SilentProxy]:
    p = SilentProxy()
    yield p
    p.close()


def _start(site: Site) -> tuple[str, dict[str, Any], AgentStore]:
    from tests.site import district_rows

    site.cli("seed", "--students", str(STUDENTS), "--year", str(YEAR))
    rows = district_rows(site.district)
    site.start("receiver", "run")
    site.start("agent", "run")
    store = AgentStore(site.district)
    return site.json("send", "--all")["batch_id"], rows, store


def _logs(site: Site) -> str:
    return "\n".join(p.read_text() for p in sorted(Path(site.logs).glob("*.log")))


def test_a_connection_gone_silent_is_noticed_and_the_batch_completes(site: Site, proxy: SilentProxy) -> None:
    site.env["RESYNC_BROKER_URL"] = re.sub(r"@[^/]+/", f"@127.0.0.1:{proxy.port}/", site.env["RESYNC_BROKER_URL"])
    site.env["RESYNC_HEARTBEAT"] = HEARTBEAT
    batch_id, rows, store = _start(site)
    site.until("5,000 records processed", lambda: processed(store, batch_id) >= 5_000)
    vhost = site.env["RESYNC_BROKER_URL"].rsplit("/", 1)[1]
    timeouts = rabbitmqctl("list_connections", "-p", vhost, "timeout", "client_properties").split("\n")
    daemons = [line for line in timeouts if "resync agent run" in line or "resync receiver " in line]
    assert len(daemons) >= 4 and all(line.split("\t")[0] == HEARTBEAT for line in daemons), timeouts
    assert proxy.silence() >= 4  # the agent's two connections and the receiver's two
    site.until("the batch to complete", lambda: (store.batch(batch_id) or {}).get("status") == "completed")
    logs = _logs(site)
    assert "sent nothing for two heartbeats" in logs, logs[-3000:]
    check_exact(site, batch_id, rows)
    assert all(p.poll() is None for p in site.procs)  # both daemons survived it


def _watermark() -> str:
    """The broker's memory high watermark as `set_vm_memory_high_watermark` takes it back."""
    out = rabbitmqctl("eval", "vm_memory_monitor:get_vm_memory_high_watermark().").strip()
    return out if re.fullmatch(r"[0-9.]+", out) else "0.4"


def test_a_memory_alarm_blocks_publishing_and_the_batch_completes(site: Site) -> None:
    batch_id, rows, store = _start(site)
    site.until("3,000 records processed", lambda: processed(store, batch_id) >= 3_000)
    before = _watermark()
    rabbitmqctl("set_vm_memory_high_watermark", "0.0000001")
    try:
        seen = site.until("resync queue to name the block", lambda: [
            w for w in json.loads(site.cli("queue", "--json"))["warnings"] if "blocked publishing" in w])
        assert "memory" in seen[0]
        time.sleep(20)  # the alarm lasts, as a real one does; not a timing assertion
        held = processed(store, batch_id)
    finally:
        rabbitmqctl("set_vm_memory_high_watermark", before)
    assert held < sum(map(len, rows.values()))  # the alarm did hold the batch up
    site.until("the batch to complete", lambda: (store.batch(batch_id) or {}).get("status") == "completed")
    assert "the broker blocks publishing" in _logs(site)
    [alert] = [a for a in site.json("alerts") if a["name"] == "Broker blocked publishing"]
    assert alert["read"] and "cleared" in alert["detail"] and "memory" in alert["detail"]
    assert not [w for w in json.loads(site.cli("queue", "--json"))["warnings"] if "blocked" in w]
    check_exact(site, batch_id, rows)


def test_an_agent_waiting_for_the_state_keeps_its_connection(site: Site) -> None:
    """With heartbeats of 2 seconds, an agent that waits for a state that is down (its in-flight window full)
    holds its publishing connection idle for many heartbeats, and does not lose it."""
    site.env.update({"RESYNC_HEARTBEAT": "2", "RESYNC_MAX_IN_FLIGHT": "100"})
    site.cli("seed", "--students", "20", "--year", str(YEAR))
    site.start("agent", "run")
    first = site.json("send", "--all")["batch_id"]
    site.until("the window to fill", lambda: [q for q in site.json("queue")["queues"]
                                              if q["queue"] == "sync.district-1" and q["ready"] >= 50])
    time.sleep(15)  # the state is down for a while: the agent waits with its publishing connection idle
    site.start("receiver", "run")
    assert site.wait(first)["status"] == "completed"
    agent = next(Path(site.logs).glob("agent-*.log")).read_text()
    assert "failed; retrying" not in agent, agent[-3000:]
