"""Hostile and malformed input against a receiver process on RabbitMQ and PostgreSQL: each message is
answered with a categorized error ack or dead-lettered, the receiver keeps consuming, and neither the state
database nor another district is touched."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pika
import pytest
from sqlalchemy import func, select

from core.db import engine
from messages import catalog as catalog_mod
from messages.codec import decode_acks, decode_manifest_part
from messages.envelope import new_id
from messages.errors import Code
from state_receiver.schema import StateSchema
from tests.conftest import new_databases, new_vhost

pytestmark = pytest.mark.slow
D1, D2 = "district-1", "district-2"
CATALOG = catalog_mod.load()


def ref(n: int) -> str:
    return f"{n:032X}"


def event(obj: str = "District", *, source: str = D1, **over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"v": 1, "msg_id": os.urandom(16).hex().upper(), "ts": "2026-11-29T08:00:00.000Z",
                           "source": source, "batch": None, "seq": 1, "object": obj, "action": "change",
                           "ref_id": os.urandom(16).hex().upper(), "year": None, "parents": {}, "data": {}}
    doc.update(over)
    return doc


def manifest_request(**over: Any) -> dict[str, Any]:
    return {"v": 1, "msg_id": os.urandom(16).hex().upper(), "ts": "2026-11-29T08:00:00.000Z", "source": D1,
            "request": os.urandom(16).hex().upper(), "objects": ["District"], "year": 2027, **over}


class Wire:
    """Raw publishing (any body, any properties) and reading of the acks and the dead-letter queue."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn = pika.BlockingConnection(pika.URLParameters(url))
        self.ch = self.conn.channel()
        self.acks: dict[str, Any] = {}
        self.manifests: dict[str, list[Any]] = {}

    def send(self, body: bytes, *, district: str = D1, user_id: str | None = "guest", kind: str = "event",
             message_id: str | None = None) -> None:
        props = pika.BasicProperties(content_type="application/json", delivery_mode=2, type=kind,
                                     user_id=user_id, message_id=message_id)
        self.ch.basic_publish("resync", f"sync.{district}", body, props)

    def ack_for(self, msg_id: str, district: str = D1) -> Any:
        self._read(lambda: msg_id in self.acks, district)
        assert msg_id in self.acks, f"no ack for {msg_id}"
        return self.acks[msg_id]

    def manifest_for(self, request: str, objects: int) -> dict[str, Any]:
        """The parts of one manifest, once every object's last part is in, by object."""
        def done() -> bool:
            return sum(p.last for p in self.manifests.get(request, [])) >= objects

        self._read(done)
        assert done(), f"no complete manifest for {request}"
        return {p.object: p for p in self.manifests.pop(request)}

    def _read(self, done: Callable[[], bool], district: str = D1) -> None:
        deadline = time.monotonic() + 60  # hang guard
        while not done() and time.monotonic() < deadline:
            method, props, body = self.ch.basic_get(f"acks.{district}", auto_ack=True)
            if method is None:
                time.sleep(0.05)
                continue
            if props.type == "manifest":
                part = decode_manifest_part(body)
                self.manifests.setdefault(part.request, []).append(part)
                continue
            for a in decode_acks(body).acks:
                self.acks[a.msg_id] = a

    def depth(self, queue: str) -> int:
        return int(self.ch.queue_declare(queue, passive=True).method.message_count)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Wire, Any, Callable[[], None]]]:
    with new_vhost() as url, new_databases() as make:
        state_db = make()
        log = (tmp_path_factory.mktemp("hostile") / "receiver.log").open("wb")
        env = {**os.environ, "RESYNC_BROKER_URL": url, "RESYNC_STATE_DB": state_db, "RESYNC_DISTRICTS": f"{D1},{D2}",
               "RESYNC_DISTRICT_USERS": "*=guest", "RESYNC_SCHOOL_YEAR": "2027", "RESYNC_MAX_BODY": "65536"}
        proc = subprocess.Popen([sys.executable, "-m", "resync", "receiver", "run"], env=env, stdout=log, stderr=log)
        wire = Wire(url)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                wire.depth("sync.district-1")
                break
            except pika.exceptions.ChannelClosedByBroker:
                wire = Wire(url)
                time.sleep(0.2)
        for district, n in ((D1, 1), (D2, 2)):  # one district record each, to point at
            doc = event(source=district, ref_id=ref(n), data={"name": district})
            wire.send(orjson.dumps(doc), district=district)
            assert wire.ack_for(doc["msg_id"], district).status == "ok"

        def still_consuming() -> None:
            good = event(data={"name": "still consuming"})
            wire.send(orjson.dumps(good))
            assert wire.ack_for(good["msg_id"]).status == "ok"

        yield wire, engine(state_db), still_consuming
        proc.terminate()
        proc.wait(timeout=30)


def _nested(depth: int) -> bytes:
    return b'{"v": 1, "data": ' + b"[" * depth + b"]" * depth + b"}"


CASES: list[tuple[str, Callable[[], tuple[bytes, dict[str, Any]]], tuple[int, str] | None]] = [
    ("not JSON", lambda: (b"{not json", {}), (12, Code.NOT_JSON)),
    ("not JSON, no usable id", lambda: (b"{not json", {"message_id": "x"}), None),
    ("JSON that is not an object", lambda: (b"[1, 2, 3]", {}), (12, Code.NOT_OBJECT)),
    ("wrong v", lambda: (orjson.dumps(event(v=2)), {}), (12, Code.BAD_VERSION)),
    ("missing msg_id", lambda: (orjson.dumps({k: v for k, v in event().items() if k != "msg_id"}),
                                {"message_id": "x"}), None),
    ("missing ref_id", lambda: (orjson.dumps({k: v for k, v in event().items() if k != "ref_id"}), {}),
     (12, Code.MISSING_FIELD)),
    ("malformed ref_id", lambda: (orjson.dumps(event(ref_id="abc")), {}), (1, Code.BAD_REFID)),
    ("unknown object", lambda: (orjson.dumps(event("Student")), {}), (1, Code.UNKNOWN_OBJECT)),
    ("unknown action", lambda: (orjson.dumps(event(action="upsert")), {}), (1, Code.UNKNOWN_ACTION)),
    ("data of the wrong type", lambda: (orjson.dumps(event(data=["x"])), {}), (1, Code.BAD_FIELD)),
    ("data field of the wrong type", lambda: (orjson.dumps(event(data={"name": 7})), {}), (1, Code.BAD_DATA)),
    ("parent of another district", lambda: (orjson.dumps(event("School", parents={"District": ref(2)})), {}),
     (4, Code.FOREIGN_PARENT)),
    ("object not enabled", lambda: (orjson.dumps(event("ReportingEntity", parents={"District": ref(1)})), {}),
     (1, Code.OBJECT_DISABLED)),
    ("body over the size limit", lambda: (orjson.dumps(event(data={"name": "x" * 900, "address": "y" * 900,
                                                                   "phone": "z" * 70_000})), {}),
     (12, Code.TOO_LARGE)),
    ("user_id does not match source", lambda: (orjson.dumps(event(source=D2)), {}), (4, Code.WRONG_SOURCE)),
    ("no user_id: set aside, never answered", lambda: (orjson.dumps(event()), {"user_id": None}), None),
    ("control message on the event queue", lambda: (orjson.dumps(event()), {"kind": "resync_request"}),
     (12, Code.UNKNOWN_TYPE)),
    ("year outside the synced years", lambda: (orjson.dumps(event("Calendar", year=2019,
                                                                 parents={"School": ref(3)})), {}),
     (1, Code.BAD_YEAR)),
    ("deeply nested JSON", lambda: (_nested(5_000), {}), (12, Code.NOT_JSON)),
    ("invalid UTF-8", lambda: (b'{"v": 1, "name": "\xff\xfe"}', {}), (12, Code.BAD_ENCODING)),
    ("manifest request without a list of objects",
     lambda: (orjson.dumps(manifest_request(objects="all")), {"kind": "manifest_request"}), (1, Code.BAD_FIELD)),
    ("verify report of the wrong shape",
     lambda: (orjson.dumps({**manifest_request(), "request_id": ref(9), "objects": [1, 2]}),
              {"kind": "verify_report"}), (1, Code.BAD_FIELD)),
]


@pytest.mark.parametrize(("body_of", "expected"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_message_is_answered_or_dead_lettered_and_changes_nothing(
        env: tuple[Wire, Any, Callable[[], None]], body_of: Callable[[], tuple[bytes, dict[str, Any]]],
        expected: tuple[int, str] | None) -> None:
    wire, state, still_consuming = env
    schema = StateSchema(CATALOG)

    def rows() -> dict[str, int]:
        with state.connect() as conn:
            return {n: conn.execute(select(func.count()).select_from(schema.tables[n])).scalar_one()
                    for n in ("District", "School", "Calendar")}

    before, dead_before, other_before = rows(), wire.depth("resync.dead-letter"), wire.depth("acks.district-2")
    body, props = body_of()
    try:  # the AMQP message_id a real publisher stamps: the body's msg_id
        msg_id = str(orjson.loads(body)["msg_id"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        msg_id = os.urandom(16).hex().upper()
    message_id = props.pop("message_id", msg_id)
    wire.send(body, message_id=message_id, **props)
    still_consuming()
    if expected is None:
        assert wire.depth("resync.dead-letter") == dead_before + 1
    else:
        ack = wire.ack_for(msg_id)
        assert ack.status == "error"
        assert (ack.error.category, ack.error.code) == expected, ack.error.desc
        assert wire.depth("resync.dead-letter") == dead_before
    after = rows()
    after["District"] -= 1  # the record still_consuming() added
    assert after == before
    assert wire.depth("acks.district-2") == other_before


def test_a_msg_id_reused_for_another_record_is_refused_and_new_content_of_the_same_record_applied(
        env: tuple[Wire, Any, Callable[[], None]]) -> None:
    wire, state, still_consuming = env
    first = event(data={"name": "first"})
    wire.send(orjson.dumps(first))
    assert wire.ack_for(first["msg_id"]).status == "ok"
    wire.acks.pop(first["msg_id"])
    other = {**first, "ref_id": new_id(), "data": {"name": "another record"}}
    wire.send(orjson.dumps(other))
    ack = wire.ack_for(first["msg_id"])
    assert ack.error is not None, ack
    assert (ack.status, ack.error.category, ack.error.code) == ("error", 9, Code.DUPLICATE_CONFLICT)
    wire.acks.pop(first["msg_id"])
    # the same record read again after a crash, with newer content: applied by its version
    wire.send(orjson.dumps({**first, "data": {"name": "changed"}}))
    assert wire.ack_for(first["msg_id"]).status == "ok"
    still_consuming()
    schema = StateSchema(CATALOG)
    t = schema.tables["District"]
    with state.connect() as conn:
        name = conn.execute(select(t.c.name).where(t.c.ref_id == first["ref_id"])).scalar_one()
        assert conn.execute(select(t.c.ref_id).where(t.c.ref_id == other["ref_id"])).first() is None
    assert name == "changed"


def test_dead_letters_are_listed_with_their_reason_and_can_be_requeued(
        env: tuple[Wire, Any, Callable[[], None]]) -> None:
    wire, _, still_consuming = env
    wire.send(b"\x00garbage", message_id="not-an-id")
    still_consuming()
    cli_env = {**os.environ, "RESYNC_BROKER_URL": wire.url}

    def dead_letters(*args: str) -> Any:
        out = subprocess.run([sys.executable, "-m", "resync", "dead-letters", "--json", *args], env=cli_env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return orjson.loads(out.stdout)

    depth = wire.depth("resync.dead-letter")
    listed = dead_letters("--limit", "1000")
    assert len(listed) == depth  # listing takes nothing away
    assert wire.depth("resync.dead-letter") == depth
    [garbage] = [d for d in listed if d["message_id"] == "not-an-id"]
    assert garbage["queue"] == "sync.district-1" and garbage["sender"] == "guest"
    assert "12.1" in garbage["reason"] and "no msg_id" in garbage["reason"]

    assert dead_letters("--requeue", "not-an-id") == {"requeued": ["not-an-id"], "not_found": [], "refused": {}}
    still_consuming()  # the receiver took it again and, still unreadable, dead-lettered it again
    again = [d for d in dead_letters("--limit", "1000") if d["message_id"] == "not-an-id"]
    assert len(again) == 1 and again[0]["reason"] == garbage["reason"] and again[0]["sender"] == "guest"


def test_a_manifest_request_is_answered_per_object_and_names_what_the_state_does_not_know(
        env: tuple[Wire, Any, Callable[[], None]]) -> None:
    wire, _, still_consuming = env
    request = manifest_request(objects=["NoSuchThing", "District", "District", "ReportingEntity"])
    wire.send(orjson.dumps(request), kind="manifest_request", message_id=request["msg_id"])
    parts = wire.manifest_for(request["request"], 3)
    still_consuming()
    assert set(parts) == {"NoSuchThing", "District", "ReportingEntity"}  # each object once
    assert "not an object the state knows" in (parts["NoSuchThing"].error or "")
    assert "not enabled at the state" in (parts["ReportingEntity"].error or "")
    district = parts["District"]
    assert district.error is None and district.last and district.part == 0
    refs = [district.entries[i:i + 32] for i in range(0, len(district.entries), 48)]
    assert ref(1) in refs and ref(2) not in refs  # this district's records only
    assert refs == sorted(refs)
