"""The shipped deployment files: docker-compose.yml, the broker configuration and the definitions the CLI
writes. No Docker engine runs here, so these are read and checked against what the code relies on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from core.brokers.base import Topology
from core.brokers.definitions import QUEUE_BYTES, definitions
from core.settings import Settings
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


def test_compose_services_share_one_identity_for_both_sides() -> None:
    compose: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    env = compose["services"]["receiver"]["environment"]
    assert compose["services"]["agent"]["environment"] == env
    users = dict(p.split("=") for p in env["RESYNC_DISTRICT_USERS"].split(","))
    user = env["RESYNC_BROKER_URL"].split("//")[1].split(":")[0]
    # the agent takes answers only from the state's identity: here the one user both services connect as
    assert env["RESYNC_STATE_USER"] == user == users[env["RESYNC_DISTRICT"]]
    settings = Settings.from_env(env)
    assert settings.max_body <= MAX_MESSAGE


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
