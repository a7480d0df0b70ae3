"""Per-district broker identities from `resync broker definitions`, enforced by RabbitMQ itself."""

from __future__ import annotations

import json
import subprocess
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pika
import pytest

from core.brokers import Topology
from core.brokers.rabbitmq import RabbitBroker
from core.db import engine
from core.settings import Settings
from messages import catalog as catalog_mod
from messages.codec import decode_acks
from messages.errors import BrokerRefused, Code
from state_receiver.daemon import Receiver

pytestmark = pytest.mark.slow


@pytest.fixture
def identities(rabbitmq_url: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    vhost = urllib.parse.unquote(urllib.parse.urlparse(rabbitmq_url).path[1:])
    tag = uuid.uuid4().hex[:6]
    d1, d2, state = f"d1-{tag}", f"d2-{tag}", f"state-{tag}"
    out = tmp_path / "definitions.json"
    result = subprocess.run(
        [".venv/bin/resync", "broker", "definitions", "--vhost", vhost, "--district", d1, "--district", d2,
         "--state-user", state, "--out", str(out), "--json"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    passwords = json.loads(result.stdout)["passwords"]
    # through stdin: the file is private (0600) and the broker node runs as another user
    subprocess.run(["rabbitmqctl", "-q", "import_definitions"], input=out.read_text(), text=True, check=True,
                   capture_output=True, timeout=60)

    def url(user: str) -> str:
        return f"amqp://{user}:{urllib.parse.quote(passwords[user])}@127.0.0.1:5672/{urllib.parse.quote(vhost, '')}"

    try:
        yield {"d1": d1, "d2": d2, "state": state, "url": url}
    finally:
        for user in (d1, d2, state):
            subprocess.run(["rabbitmqctl", "-q", "delete_user", user], capture_output=True, timeout=60)


def test_a_district_publishes_only_to_its_own_routing_key(identities: dict[str, Any]) -> None:
    """A permission the broker refuses is a wrong setting, not a passing failure: ``BrokerRefused`` (fatal),
    which the daemons do not retry."""
    d1, d2 = identities["d1"], identities["d2"]
    broker = RabbitBroker(identities["url"](d1))
    broker.declare_district(d1)  # not allowed to configure: uses the administrator's topology
    with broker.connect() as conn:
        conn.publish(Topology.events(d1), b"{}", kind="event", message_id="A" * 32)
        conn.flush()
    with pytest.raises(BrokerRefused, match="ACCESS_REFUSED"), broker.connect() as conn:
        conn.publish(Topology.events(d2), b"{}", kind="event", message_id="B" * 32)
        conn.flush()
    with pytest.raises(BrokerRefused, match="ACCESS_REFUSED"), broker.connect() as conn:
        conn.consume(Topology.acks(d2), prefetch=1)
        conn.fetch(1, timeout=2)
    with pytest.raises(BrokerRefused, match="ACCESS_REFUSED"), broker.connect() as conn:
        conn.consume(Topology.events(d1), prefetch=1)  # only the state reads event queues
        conn.fetch(1, timeout=2)
    assert RabbitBroker(identities["url"](identities["state"])).queue_stats([Topology.events(d1)])[0].ready == 1


def test_the_broker_refuses_a_forged_user_id(identities: dict[str, Any]) -> None:
    d1 = identities["d1"]
    conn = pika.BlockingConnection(pika.URLParameters(identities["url"](d1)))
    ch = conn.channel()
    ch.confirm_delivery()
    with pytest.raises((pika.exceptions.ChannelClosedByBroker, pika.exceptions.UnroutableError)):
        ch.basic_publish("resync", Topology.events(d1), b"{}",
                         pika.BasicProperties(user_id=identities["state"], message_id="C" * 32))
    conn.close()


def test_the_receiver_trusts_the_broker_identity_over_the_body(identities: dict[str, Any], postgres_db: Any) -> None:
    d1, d2, state = identities["d1"], identities["d2"], identities["state"]
    settings = Settings(districts=(d1, d2), district_users={d1: d1, d2: d2}, state_user=state, school_year=2027)
    receiver = Receiver(settings, RabbitBroker(identities["url"](state)), engine(postgres_db()),
                        catalog_mod.load())
    stop = threading.Event()
    thread = threading.Thread(target=receiver.run, args=(stop,), daemon=True)
    thread.start()
    try:
        forged = {"v": 1, "msg_id": "D" * 32, "ts": "2026-11-29T08:00:00.000Z", "source": d2, "batch": None,
                  "seq": 1, "object": "District", "action": "change", "ref_id": "E" * 32, "year": None,
                  "parents": {}, "data": {}}
        own = {**forged, "msg_id": "F" * 32, "source": d1, "ref_id": "1" * 32}
        district = RabbitBroker(identities["url"](d1))
        with district.connect() as conn:
            for doc in (forged, own):
                conn.publish(Topology.events(d1), orjson.dumps(doc), kind="event", message_id=doc["msg_id"])
            conn.flush()
            conn.consume(Topology.acks(d1), prefetch=10)
            acks: dict[str, Any] = {}
            for _ in range(50):
                for d in conn.fetch(10, timeout=0.5):
                    acks.update({a.msg_id: a for a in decode_acks(d.body).acks})
                    conn.ack(d.delivery_tag)
                if len(acks) == 2:
                    break
        assert acks["F" * 32].status == "ok"
        assert (acks["D" * 32].error.category, acks["D" * 32].error.code) == (4, Code.WRONG_SOURCE)
    finally:
        stop.set()
        thread.join(timeout=30)
