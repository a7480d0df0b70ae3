"""The shipped deployment files: docker-compose.yml, the broker configuration and the definitions the CLI
writes. No Docker engine runs here, so these are read and checked against what the code relies on."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import yaml

from core.brokers.base import Topology
from core.brokers.definitions import QUEUE_BYTES, definitions
from core.settings import VARIABLES, Settings
from messages.codec import MAX_BODY, MAX_MESSAGE

ROOT = Path(__file__).resolve().parent.parent


def _conf(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def test_compose_gives_rabbitmq_the_shipped_message_size_limit() -> None:
    compose: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["rabbitmq"]["volumes"]
    [conf] = [m for m in mounts if m.split(":")[1].startswith("/etc/rabbitmq/conf.d/")]
    source = ROOT / conf.split(":")[0]
    assert source.is_file()
    limit = int(_conf(source)["max_message_size"])
    # every message resync sends fits, and nothing larger than a consumer keeps gets through
    assert MAX_BODY <= limit == MAX_MESSAGE


def test_compose_runs_a_rabbitmq_that_checks_cc_and_bcc_against_topic_permissions() -> None:
    compose: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    image = compose["services"]["rabbitmq"]["image"]
    major = int(image.split(":")[1].split(".")[0])
    assert image.startswith("rabbitmq:") and major >= 4, image


def test_the_state_may_put_dead_letters_back_on_event_queues() -> None:
    defs = definitions("/", ["district-1"], "state", {"district-1": "a", "state": "b"})
    [state] = [p for p in defs["topic_permissions"] if p["user"] == "state"]
    import re

    assert re.match(state["write"], Topology.events("district-1")) and re.match(state["write"], "acks.district-1")


def test_definitions_bound_every_event_queue_and_refuse_publishes_past_it() -> None:
    defs = definitions("/", ["district-1"], "state", {"district-1": "a", "state": "b"})
    [policy] = defs["policies"]
    assert policy["definition"] == {"max-length-bytes": QUEUE_BYTES, "overflow": "reject-publish"}
    import re

    pattern = re.compile(policy["pattern"])
    assert pattern.search(Topology.events("district-1"))
    # a full ack queue would refuse the receiver's answers and stop it for every district
    assert not any(pattern.search(q) for q in (Topology.acks("district-1"), Topology.control("district-1"),
                                               "resync.dead-letter"))


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def _resync_services() -> dict[str, dict[str, Any]]:
    """The services that run resync itself (built from this repository)."""
    return {name: svc for name, svc in _compose()["services"].items() if svc.get("build") == "."}


def test_every_setting_the_services_use_is_one_resync_knows_and_holds() -> None:
    services = _resync_services()
    assert {"receiver-1", "receiver-2", "agent-1", "agent-2"} <= set(services)
    for name, svc in services.items():
        env = {k: str(v) for k, v in svc["environment"].items()}
        assert set(env) <= VARIABLES, (name, set(env) - VARIABLES)
        Settings.from_env(env)  # every mistake would be a ConfigError here, as at the daemon's start


def test_every_broker_user_is_defined_used_and_given_its_own_password() -> None:
    defs = json.loads((ROOT / "docker" / "definitions.json").read_text())
    hashes = {u["name"]: base64.b64decode(u["password_hash"]) for u in defs["users"]}
    services = _resync_services()
    used = set()
    for name, svc in services.items():
        url = urllib.parse.urlsplit(svc["environment"]["RESYNC_BROKER_URL"])
        user, password = url.username or "", url.password or ""
        salt, digest = hashes[user][:4], hashes[user][4:]
        assert hashlib.sha256(salt + password.encode()).digest() == digest, f"{name}: wrong password for {user}"
        used.add(user)
        settings = Settings.from_env({k: str(v) for k, v in svc["environment"].items()})
        assert settings.state_user in hashes
        if svc["command"][0] == "agent":  # a district's agent publishes as the user the receivers expect of it
            receivers = [Settings.from_env({k: str(v) for k, v in s["environment"].items()})
                         for s in services.values() if s["command"][0] == "receiver"]
            assert all(settings.district in r.receiver_districts and r.user_for(settings.district) == user
                       for r in receivers), name
            [topic] = [p for p in defs["topic_permissions"] if p["user"] == user]
            assert re.match(topic["write"], Topology.events(settings.district))
    assert used == set(hashes)  # no user in the definitions is left unused
    queues = {q["name"] for q in defs["queues"]}
    districts = {d for s in services.values() if s["command"][0] == "receiver"
                 for d in Settings.from_env({k: str(v) for k, v in s["environment"].items()}).receiver_districts}
    assert all(set(Topology.queues(d)) <= queues for d in districts)
    agents = {Settings.from_env({k: str(v) for k, v in s["environment"].items()}).district
              for s in services.values() if s["command"][0] == "agent"}
    assert agents == districts


def test_every_command_the_deployment_runs_exists() -> None:
    services = _resync_services()
    commands = [svc["command"] for svc in services.values()]
    commands += [svc["healthcheck"]["test"][2:] for svc in services.values()]  # ["CMD", "resync", ...]
    assert all(svc["healthcheck"]["test"][:2] == ["CMD", "resync"] for svc in services.values())
    header = (ROOT / "docker-compose.yml").read_text()
    named = re.findall(r"docker compose run --rm (\S+) (.+?)\s*(?:#|$)", header, re.MULTILINE)
    assert named and all(service in services for service, _ in named)
    commands += [args.split() for _, args in named]
    for args in commands:
        words = [w for w in args if not w.startswith("-") and not w.isdigit()]
        out = subprocess.run([sys.executable, "-m", "resync", *words, "--help"], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0 and "Usage:" in out.stdout, (args, out.stderr)
        options = [w.split("=")[0] for w in args if w.startswith("--")]
        assert all(o in out.stdout for o in options), (args, out.stdout)


def test_the_image_holds_every_package_and_the_mounted_files_exist() -> None:
    import tomllib

    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    copied = re.findall(r"^COPY (\S+) ", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert {p.split(".")[0] for p in packages} <= set(copied)
    for svc in _compose()["services"].values():
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0]
            assert (ROOT / source).exists(), source


def test_the_databases_the_services_name_are_created() -> None:
    compose = _compose()
    created = {compose["services"]["postgres"]["environment"]["POSTGRES_DB"],
               *re.findall(r"CREATE DATABASE (\w+);", (ROOT / "docker" / "init-district-db.sql").read_text())}
    for svc in _resync_services().values():
        for key in ("RESYNC_STATE_DB", "RESYNC_DISTRICT_DB"):
            if key in svc["environment"]:
                assert urllib.parse.urlsplit(svc["environment"][key]).path[1:] in created, key


def test_prometheus_scrapes_every_daemon_on_its_metrics_port() -> None:
    conf = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    targets = {t for job in conf["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    for name, svc in _resync_services().items():
        env = svc["environment"]
        assert f"{name}:{env['RESYNC_METRICS_PORT']}" in targets, name
        assert env["RESYNC_METRICS_HOST"] == "0.0.0.0"  # another container scrapes it
    assert "rabbitmq:15692" in targets
    assert "rabbitmq_prometheus" in (ROOT / "docker" / "enabled_plugins").read_text()


RABBITMQ_METRICS = {"rabbitmq_queue_messages_ready", "rabbitmq_queue_messages_unacked"}
"""What the dashboard reads of RabbitMQ's own Prometheus plugin (per-object metrics)."""


def test_the_dashboard_reads_only_metrics_that_are_exported(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from agent import metrics as agent_metrics
    from agent.store import AgentStore
    from core import metrics as core_metrics
    from core.db import engine
    from publisher.changes import Outbox
    from state_receiver import metrics as receiver_metrics
    from state_receiver.schema import StateSchema
    from tests.site import CATALOG

    registry = CollectorRegistry()
    for metric in (core_metrics.RECONNECTS, core_metrics.BLOCKED_SECONDS, core_metrics.BLOCKED,
                   core_metrics.CONFIRM_SECONDS, core_metrics.UP, agent_metrics.SENT, agent_metrics.ACKNOWLEDGED,
                   agent_metrics.REFUSED, receiver_metrics.RECORDS, receiver_metrics.REFUSED,
                   receiver_metrics.DEAD_LETTERS, receiver_metrics.APPLY_SECONDS):
        registry.register(metric)
    district, state = engine(f"sqlite:///{tmp_path / 'd.db'}"), engine(f"sqlite:///{tmp_path / 's.db'}")
    AgentStore(district).create()
    schema = StateSchema(CATALOG)
    schema.create(state)
    registry.register(agent_metrics.AgentCollector(district, Outbox(district, CATALOG)))
    registry.register(receiver_metrics.ReceiverCollector(state, schema, lambda: ({"d1"}, {"d1", "d2"})))
    exported = {line.split()[2] for line in generate_latest(registry).decode().splitlines()
                if line.startswith("# TYPE")}
    dashboard = json.loads((ROOT / "docker" / "grafana" / "dashboards" / "resync.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b((?:resync|rabbitmq)_[a-z_]+)", e)}
    for name in used:
        if name.startswith("rabbitmq_"):
            assert name in RABBITMQ_METRICS, name
            continue
        base = re.sub(r"_(total|bucket|count|sum)$", "", name)
        assert name in exported or base in exported, name
    assert {"resync_receiver_records_total", "resync_receiver_consuming", "resync_agent_batch_records",
            "resync_agent_live_lag_seconds", "resync_publish_confirm_seconds_bucket"} <= used
    provisioned = yaml.safe_load((ROOT / "docker" / "grafana" / "provisioning" / "dashboards" / "resync.yml")
                                 .read_text())
    assert provisioned["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
