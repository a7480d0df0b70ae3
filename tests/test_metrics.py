"""What monitoring sees: the agent's and the receiver's /metrics, /healthz and /readyz on RESYNC_METRICS_PORT,
during and after a real resync."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.site import YEAR, Site, district_rows, rejected_by_state

pytestmark = [pytest.mark.fault]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def samples(text: str, name: str) -> dict[str, float]:
    """``name``'s samples: their labels as written -> value."""
    out = {}
    for line in text.splitlines():
        m = re.match(rf"{name}(\{{[^}}]*\}})? (\S+)$", line)
        if m:
            out[m.group(1) or ""] = float(m.group(2))
    return out


def label(labels: str, key: str) -> str:
    m = re.search(rf'{key}="([^"]*)"', labels)
    return m.group(1) if m else ""


def test_agent_and_receiver_show_their_work_to_prometheus(site: Site) -> None:
    site.cli("seed", "--students", "5", "--year", str(YEAR))
    rows = district_rows(site.district)
    rejected = rejected_by_state(rows)
    total, refused = sum(map(len, rows.values())), sum(map(len, rejected.values()))
    assert refused, "the seed has records the state refuses"
    agent_port, receiver_port = free_port(), free_port()
    site.env["RESYNC_METRICS_PORT"] = str(receiver_port)
    site.start("receiver", "run")
    site.env["RESYNC_METRICS_PORT"] = str(agent_port)
    site.start("agent", "run")
    for port in (agent_port, receiver_port):
        site.until(f"port {port} to be ready", lambda p=port: get(p, "/readyz")[0] == 200)  # type: ignore[misc]
        status, body = get(port, "/healthz")
        assert status == 200 and json.loads(body)["status"] == "alive"
        assert site.cli("health", "--port", str(port)).strip() == "ready"
    batch_id = site.send("--all")
    assert site.wait(batch_id)["status"] == "completed"

    agent = get(agent_port, "/metrics")[1]
    acknowledged = samples(agent, "resync_agent_records_acknowledged_total")
    refusals = samples(agent, "resync_agent_records_refused_total")
    assert sum(acknowledged.values()) == total - refused
    assert sum(refusals.values()) == refused and all(label(k, "code") for k in refusals)
    sent = samples(agent, "resync_agent_records_sent_total")
    assert sum(v for k, v in sent.items() if label(k, "kind") == "batch") == total
    by_object = {label(k, "object"): v for k, v in acknowledged.items()}
    assert by_object["District"] == len(rows["District"])
    assert samples(agent, "resync_agent_outbox_depth") == {"": 0.0}
    assert samples(agent, "resync_publish_confirm_seconds_count")['{daemon="agent"}'] > 0
    assert samples(agent, "resync_up") == {'{daemon="agent"}': 1.0}

    receiver = get(receiver_port, "/metrics")[1]
    records = samples(receiver, "resync_receiver_records_total")
    assert {label(k, "district") for k in records} == {"district-1"}
    assert sum(v for k, v in records.items() if label(k, "result") == "ok") == total - refused
    assert sum(samples(receiver, "resync_receiver_refused_total").values()) == refused
    assert samples(receiver, "resync_receiver_consuming") == {'{district="district-1"}': 1.0}
    assert samples(receiver, "resync_receiver_apply_seconds_count")[""] > 0
    assert samples(receiver, "resync_broker_reconnects_total") == {'{daemon="receiver"}': 0.0}
    assert samples(receiver, "resync_broker_blocked") == {'{daemon="receiver"}': 0.0}


def test_readyz_says_what_a_daemon_is_waiting_for(site: Site) -> None:
    port = free_port()
    site.env["RESYNC_METRICS_PORT"] = str(port)
    # a database server that is not there: the agent waits for it, alive and not ready
    site.env["RESYNC_DISTRICT_DB"] = f"postgresql://nobody@127.0.0.1:{free_port()}/district"
    site.start("agent", "run")
    status, body = site.until("the agent to answer /readyz", lambda: (r := get(port, "/readyz"))[0] and r)
    down: dict[str, Any] = json.loads(body)["down"]
    assert status == 503 and "database" in down
    assert get(port, "/healthz")[0] == 200
    assert samples(get(port, "/metrics")[1], "resync_up") == {'{daemon="agent"}': 0.0}
    # what a container's health check runs
    probe = subprocess.run([sys.executable, "-m", "resync", "health", "--port", str(port)], env=site.env,
                           capture_output=True, text=True, timeout=60)
    assert probe.returncode == 1 and probe.stdout.startswith("not ready ("), probe.stdout
    assert "database: connection failed" in probe.stdout and "Connection refused" in probe.stdout, probe.stdout
    alive = subprocess.run([sys.executable, "-m", "resync", "health", "--live", "--port", str(port)], env=site.env,
                           capture_output=True, text=True, timeout=60)
    assert alive.returncode == 0 and alive.stdout.strip() == "alive"


def test_a_metrics_port_in_use_is_one_line_and_exit_status_2(site: Site) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        site.env["RESYNC_METRICS_PORT"] = str(busy.getsockname()[1])
        p = site.start("receiver", "run")
        assert p.wait(timeout=60) == 2
    log = next(site.logs.glob("receiver-*.log")).read_text().strip().splitlines()
    assert "RESYNC_METRICS_PORT" in log[-1] and "choose a free port" in log[-1]
