"""Property-based hostile input against a running receiver and agent (processes, RabbitMQ, PostgreSQL).

Every message type either daemon reads is generated as a structurally valid message with hostile values
put in (huge and negative numbers, long strings, control characters in values and keys, odd Unicode,
wrong types, deep nesting). After each one, both daemons are still consuming (a valid message sent
after it is handled), and the hostile message was answered, stored as valid, or dead-lettered with a
reason. The examples of the issue that found the classes are regression tests below.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pika
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select

from agent.store import agent_log, batch
from core.db import engine
from messages import catalog as catalog_mod
from messages.codec import decode_acks, decode_manifest_part, decode_request
from messages.envelope import REFID
from messages.errors import DecodeError
from state_receiver.schema import StateSchema
from tests.conftest import new_databases, new_vhost, rabbitmqctl

pytestmark = pytest.mark.slow
D1 = "district-1"
CATALOG = catalog_mod.load()
STATE = StateSchema(CATALOG)
GUARD = 60.0  # seconds: a hang guard, not a timing assertion
EXAMPLES = 200
CASES: Counter[str] = Counter()
"""Generated cases run per message type, for the record (printed at the end of the module)."""
TS = "2026-11-29T08:00:00.000Z"


def rid() -> str:
    return uuid.uuid4().hex.upper()


def ref(n: int) -> str:
    return f"{n:032X}"


def dumps(doc: Any) -> bytes:
    try:
        return orjson.dumps(doc)
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")


class Wire:
    """Raw publishing as one broker user, and a look at queue depths."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn = pika.BlockingConnection(pika.URLParameters(url))
        self.ch = self.conn.channel()
        self.user = pika.URLParameters(url).credentials.username

    def send(self, queue: str, body: bytes, *, kind: str | bytes, message_id: str | bytes | None,
             user_id: str | None = "", cc: list[str] | None = None) -> None:
        props = pika.BasicProperties(content_type="application/json", delivery_mode=2, type=kind,
                                     user_id=self.user if user_id == "" else user_id, message_id=message_id,
                                     headers={"CC": cc} if cc else None)
        self.ch.basic_publish("resync", queue, body, props)

    def depth(self, queue: str) -> int:
        return int(self.ch.queue_declare(queue, passive=True).method.message_count)


@dataclass
class Env:
    wire: Wire
    intruder: Wire
    state: Engine
    district: Engine
    cli_env: dict[str, str]
    procs: list[subprocess.Popen[bytes]]

    def until(self, what: str, check: Callable[[], Any]) -> Any:
        deadline = time.monotonic() + GUARD
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            assert all(p.poll() is None for p in self.procs), f"a daemon died waiting for {what}"
            time.sleep(0.02)
        raise AssertionError(f"gave up waiting for {what}")

    def logged(self, msg_id: str) -> dict[str, Any] | None:
        """The agent's log row for ``msg_id``: the receiver's answer, as the district counted it."""
        with self.district.connect() as conn:
            row = conn.execute(select(agent_log).where(agent_log.c.msg_id == msg_id)).first()
        return dict(row._mapping) if row else None

    def dead(self) -> int:
        return self.wire.depth("resync.dead-letter")

    def receiver_alive(self) -> None:
        good = event(data={"name": "still consuming"})
        self.wire.send(f"sync.{D1}", dumps(good), kind="event", message_id=good["msg_id"])
        assert self.until("the receiver's answer to a valid record", lambda: self.logged(good["msg_id"]))[
            "status"] == "ok"

    def agent_alive(self) -> None:
        msg_id = rid()
        pack = {"v": 1, "district": D1, "acks": [{"msg_id": msg_id, "status": "ok"}]}
        self.wire.send(f"acks.{D1}", dumps(pack), kind="acks", message_id=msg_id)
        self.until("the agent to count a valid ack", lambda: self.logged(msg_id))


def event(obj: str = "District", **over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"v": 1, "msg_id": rid(), "ts": TS, "source": D1, "batch": None, "seq": 1,
                           "object": obj, "action": "change", "ref_id": rid(), "year": None, "parents": {},
                           "data": {}}
    return {**doc, **over}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with new_vhost() as url, new_databases() as make:
        vhost = url.rsplit("/", 1)[1]
        intruder, password = f"intruder-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
        rabbitmqctl("add_user", intruder, password)
        procs: list[subprocess.Popen[bytes]] = []
        try:
            rabbitmqctl("set_permissions", "-p", vhost, intruder, ".*", ".*", ".*")
            state_db, district_db = make(), make()
            logs = tmp_path_factory.mktemp("hostile-properties")
            cli_env = {**os.environ, "RESYNC_BROKER_URL": url, "RESYNC_STATE_DB": state_db,
                       "RESYNC_DISTRICT_DB": district_db, "RESYNC_DISTRICT": D1, "RESYNC_DISTRICT_USERS": "*=guest",
                       "RESYNC_STATE_USER": "guest", "RESYNC_SCHOOL_YEAR": "2027"}
            for role in ("receiver", "agent"):
                out = (logs / f"{role}.log").open("wb")
                procs.append(subprocess.Popen([sys.executable, "-m", "resync", role, "run"], env=cli_env,
                                              stdout=out, stderr=out))
            wire = Wire(url)
            deadline = time.monotonic() + GUARD
            while True:
                try:
                    for q in (f"sync.{D1}", f"acks.{D1}", f"control.{D1}"):
                        wire.depth(q)
                    break
                except pika.exceptions.ChannelClosedByBroker:
                    assert time.monotonic() < deadline, "the daemons did not declare their queues"
                    wire = Wire(url)
                    time.sleep(0.2)
            e = Env(wire, Wire(url.replace("guest:guest", f"{intruder}:{password}")), engine(state_db),
                    engine(district_db), cli_env, procs)
            first = event(ref_id=ref(1), data={"name": "the district"})
            wire.send(f"sync.{D1}", dumps(first), kind="event", message_id=first["msg_id"])
            e.until("the first record", lambda: e.logged(first["msg_id"]))
            yield e
            print(f"\ngenerated cases per message type: {dict(CASES)}")
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(timeout=30)
            rabbitmqctl("delete_user", intruder)


# hostile values ----------------------------------------------------------------------------------


def _nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


ODD = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=["Cs"]), max_size=40)
WITH_NUL = st.builds(lambda a, b: f"{a}\x00{b}", ODD, ODD)
HOSTILE = st.one_of(
    WITH_NUL,
    st.dictionaries(st.one_of(WITH_NUL, ODD), st.one_of(WITH_NUL, ODD, st.integers()), min_size=1, max_size=3),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.sampled_from([2**31, 2**40, -1, 0, 2**63, 10**30, 1e300, -0.0]),
    ODD,
    st.text(alphabet="\x00\x01\x1f\x7f\u200b\ufeff\U0001f600é", max_size=20),
    st.integers(60, 5000).map(lambda n: "X" * n),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(ODD, ODD, max_size=3),
    st.integers(1, 600).map(_nested),
    st.sampled_from(["9999-12-31T23:59:59Z", "zzz", "2026-11-29", "1970-01-01T00:00:00Z", "A" * 100, "a" * 40,
                     ref(1), "District", "state", "district-2", "2027", "current"]),
)


STRINGS = st.one_of(WITH_NUL, WITH_NUL, ODD, st.integers(900, 5000).map(lambda n: "é" * n))


def _leaves(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into ``doc``: its keys and, through objects and lists, every value below them."""
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    out = []
    for key, value in items:
        out.append((*prefix, key))
        out += _leaves(value, (*prefix, key))
    return out


def _hostile_for(value: Any) -> st.SearchStrategy[Any]:
    """A value hostile to what ``value`` is: a string for a string, a number for a number, else anything."""
    if isinstance(value, str):
        return st.one_of(STRINGS, STRINGS, HOSTILE)
    if isinstance(value, int) and not isinstance(value, bool):
        return st.one_of(st.integers(min_value=-(2**64), max_value=2**64), HOSTILE)
    return HOSTILE


def mutated(base: Callable[[], dict[str, Any]],
            extra: Sequence[tuple[Any, ...]] = ()) -> st.SearchStrategy[dict[str, Any]]:
    """A structurally valid ``base()`` with one or two values anywhere in it (a key of its own, a field of a
    nested object, an item of a list) replaced by a value hostile to what stood there; ``extra`` adds paths
    that are not in the base (an unexpected key)."""
    def put(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
        target: Any = doc
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        doc = base()
        paths = _leaves(doc) + list(extra)
        for _ in range(draw(st.integers(1, 2))):
            path = draw(st.sampled_from(sorted(paths, key=repr)))
            try:
                current: Any = doc
                for step in path:
                    current = current[step]
            except (KeyError, IndexError, TypeError):
                current = None
            try:
                put(doc, path, draw(_hostile_for(current)))
            except (KeyError, IndexError, TypeError):
                continue  # the path went away with an earlier change
        return doc

    return build()


HOSTILE_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                   HealthCheck.data_too_large])


def _to_receiver(env: Env, kind: str, doc: dict[str, Any], label: str | None = None) -> None:
    """Send a hostile message to the receiver; afterwards it still consumes, and the message was answered
    (the agent logged the answer under its msg_id or AMQP message_id), accepted, or dead-lettered."""
    CASES[label or kind] += 1
    body = dumps(doc)
    msg_id = doc.get("msg_id")
    # what a real publisher stamps: the body's msg_id; else an id of its own, so an answer can still be counted
    message_id = msg_id if isinstance(msg_id, str) and REFID.match(msg_id) else rid()
    dead_before = env.dead()
    env.wire.send(f"sync.{D1}", body, kind=kind, message_id=message_id)
    env.receiver_alive()
    answered = env.logged(message_id)
    if answered is None and env.dead() == dead_before:
        assert kind != "event", f"an event was neither answered nor dead-lettered: {body[:300]!r}"
        # a marker, report or manifest request the receiver took as valid: nothing to answer


@HOSTILE_SETTINGS
@given(doc=mutated(lambda: event("School", parents={"District": ref(1)}, data={"name": "a school"}),
                   [("parents", "X\x00"), ("data", "na\x00me"), ("data", "address"), ("data", "phone")]))
def test_hostile_events(env: Env, doc: dict[str, Any]) -> None:
    _to_receiver(env, "event", doc)


DISTRICT_FIELDS = ("name", "state_district_number", "address", "phone")
CONTENTS = st.builds(
    lambda known, extra: {**extra, **known},
    st.fixed_dictionaries({}, optional={k: st.one_of(STRINGS, STRINGS, HOSTILE) for k in DISTRICT_FIELDS}),
    st.one_of(st.just({}), st.just({}), st.dictionaries(st.one_of(WITH_NUL, ODD), HOSTILE, max_size=2)))


@HOSTILE_SETTINGS
@given(data=CONTENTS, action=st.sampled_from(["add", "change"]))
def test_hostile_event_contents(env: Env, data: dict[str, Any], action: str) -> None:
    """A well-formed event whose record values (and sometimes keys) are hostile: what reaches the state's
    columns."""
    _to_receiver(env, "event", event(data=data, action=action), "event contents")


@HOSTILE_SETTINGS
@given(doc=mutated(lambda: {"v": 1, "msg_id": rid(), "ts": TS, "source": D1, "batch": rid(), "kind": "object_end",
                            "object": "District", "year": None, "count": 3, "request": None}, []))
def test_hostile_markers(env: Env, doc: dict[str, Any]) -> None:
    _to_receiver(env, "marker", doc)


@HOSTILE_SETTINGS
@given(doc=mutated(lambda: {"v": 1, "msg_id": rid(), "ts": TS, "source": D1, "request_id": rid(), "year": 2027,
                            "error": None, "objects": [{"object": "District", "district": 1, "state": 1,
                                                        "details": {"state_only": []}}]},
                   [("objects", 0, "details", "mismatched"), ("objects", 0, "error"), ("objects", 0, "x\x00")]))
def test_hostile_verify_reports(env: Env, doc: dict[str, Any]) -> None:
    _to_receiver(env, "verify_report", doc)


@HOSTILE_SETTINGS
@given(doc=mutated(lambda: {"v": 1, "msg_id": rid(), "ts": TS, "source": D1, "request": rid(),
                            "objects": ["District"], "year": 2027}))
def test_hostile_manifest_requests(env: Env, doc: dict[str, Any]) -> None:
    _to_receiver(env, "manifest_request", doc)


def _to_agent(env: Env, queue: str, kind: str, doc: dict[str, Any], decode: Callable[[bytes], Any]) -> None:
    """Send a hostile message to the agent; afterwards it still consumes, and what it could not take is on
    the dead-letter queue."""
    CASES[kind] += 1
    body = dumps(doc)
    dead_before = env.dead()
    env.wire.send(f"{queue}.{D1}", body, kind=kind, message_id=rid())
    env.agent_alive()
    try:
        decode(body)
    except DecodeError:
        env.until("the unreadable message on the dead-letter queue", lambda: env.dead() > dead_before)


@HOSTILE_SETTINGS
@given(doc=mutated(lambda: {"v": 1, "district": D1, "acks": [
    {"msg_id": rid(), "status": "error", "object": "School", "ref_id": rid(), "batch": rid(),
     "error": {"category": 9, "code": "9.1", "desc": "parent missing", "extended": ""}},
    {"msg_id": rid(), "status": "ok", "object": "District", "ref_id": rid(), "batch": None}]},
    [("acks", 0, "x\x00")]))
def test_hostile_ack_packs(env: Env, doc: dict[str, Any]) -> None:
    _to_agent(env, "acks", "acks", doc, decode_acks)


@HOSTILE_SETTINGS
@given(texts=st.lists(st.tuples(STRINGS, st.one_of(STRINGS, st.none())), min_size=1, max_size=5))
def test_hostile_ack_texts(env: Env, texts: list[tuple[str, str | None]]) -> None:
    """Well-formed error acks whose descriptions are hostile text: the state's own words reach the district's
    logs, cleaned, and are counted."""
    pack = {"v": 1, "district": D1, "acks": [
        {"msg_id": rid(), "status": "error", "object": "District", "ref_id": rid(), "batch": None,
         "error": {"category": 9, "code": "9.1", "desc": desc, "extended": extended}} for desc, extended in texts]}
    _to_agent(env, "acks", "acks", pack, decode_acks)
    for ack in pack["acks"]:
        assert env.until("the ack in the agent log", lambda a=ack: env.logged(a["msg_id"]))["code"] == "9.1"


@HOSTILE_SETTINGS
@given(doc=mutated(lambda: {"v": 1, "request": rid(), "object": "District", "part": 0, "last": True,
                            "entries": ref(1) + "0123456789abcdef", "error": None}))
def test_hostile_manifest_parts(env: Env, doc: dict[str, Any]) -> None:
    _to_agent(env, "acks", "manifest", doc, decode_manifest_part)


@HOSTILE_SETTINGS
@given(doc=mutated(lambda: {"v": 1, "msg_id": rid(), "ts": TS, "source": "state", "request_id": rid(),
                            "objects": ["NoSuchObject"], "year": "current", "requested_by": "state"}),
       kind=st.sampled_from(["resync_request", "verify_request"]))
def test_hostile_control_requests(env: Env, doc: dict[str, Any], kind: str) -> None:
    _to_agent(env, "control", kind, doc, decode_request)


# the examples that found the classes ---------------------------------------------------------------


def _answer(env: Env, doc: dict[str, Any], kind: str = "event") -> dict[str, Any]:
    env.wire.send(f"sync.{D1}", dumps(doc), kind=kind, message_id=doc["msg_id"])
    row: dict[str, Any] = env.until(f"an answer to {doc['msg_id']}", lambda: env.logged(doc["msg_id"]))
    env.receiver_alive()
    return row


@pytest.mark.parametrize(("kind", "doc", "code"), [
    ("event", event("School", parents={"District": ref(1), "Dis\x00trict": ref(1)}), "1.2"),
    ("event", event(batch="B" * 40), "1.3"),
    ("event", event(data={"name": "a\x00b"}), "1.6"),
    ("event", event(ts="9999-12-31T23:59:59Z"), "1.2"),
    ("event", event(ts="zzz"), "1.2"),
    ("marker", {"v": 1, "msg_id": rid(), "ts": TS, "source": D1, "batch": rid(), "kind": "object_end",
                "object": "District", "year": None, "count": 2**31, "request": None}, "1.2"),
    ("marker", {"v": 1, "msg_id": rid(), "ts": TS, "source": D1, "batch": rid(), "kind": "object_end",
                "object": "O" * 100, "year": None, "count": 1, "request": None}, "1.2"),
    ("verify_report", {"v": 1, "msg_id": rid(), "ts": TS, "source": D1, "request_id": rid(), "year": 2**40,
                       "objects": [], "error": None}, "1.8"),
    ("manifest_request", {"v": 1, "msg_id": rid(), "ts": TS, "source": D1, "request": rid(), "objects": ["O" * 100],
                          "year": 2027}, "1.2"),
    ("marker", {"v": 1, "msg_id": rid(), "ts": TS, "source": D1, "batch": rid(), "kind": "batch_end",
                "object": None, "year": 2026, "count": None, "request": None}, "1.8"),
    ("marker", {"v": 1, "msg_id": rid(), "ts": TS, "source": D1, "batch": rid(), "kind": "object_end",
                "object": "Calendar", "year": None, "count": 0, "request": None}, "1.8"),
    ("event", event("CourseCode", data={"credits": 999_999_999_999.996}), "1.6"),
], ids=["NUL in a parents key", "40-character batch", "NUL in a value", "ts in 9999", "ts zzz", "marker count 2**31",
        "marker object of 100 characters", "verify report year 2**40", "manifest request object of 100 characters",
        "marker of a year not synced (it would sweep it)", "year-scoped object end without a year",
        "a decimal that rounds past its column"])
def test_each_example_is_answered_with_its_code(env: Env, kind: str, doc: dict[str, Any], code: str) -> None:
    row = _answer(env, doc, kind)
    assert (row["status"], row["code"]) == ("error", code), row["description"]


def test_a_record_stamped_far_ahead_does_not_block_later_changes(env: Env) -> None:
    target = rid()
    assert _answer(env, event(ref_id=target, ts="9999-12-31T23:59:59Z", data={"name": "future"}))["code"] == "1.2"
    assert _answer(env, event(ref_id=target, data={"name": "now"}))["status"] == "ok"
    assert _answer(env, event(ref_id=target, ts="2026-11-29T09:00:00+01:00", data={"name": "later"}))[
        "status"] == "ok"
    t = STATE.tables["District"]
    with env.state.connect() as conn:
        name, ts = conn.execute(select(t.c.name, t.c.source_ts).where(t.c.ref_id == target)).one()
    assert (name, ts) == ("later", "2026-11-29T08:00:00.000Z")  # one canonical form: UTC, milliseconds


def test_acks_from_anyone_but_the_state_are_set_aside_not_counted(env: Env) -> None:
    msg_id = rid()
    pack = {"v": 1, "district": D1, "acks": [{"msg_id": msg_id, "status": "ok"}]}
    dead = env.dead()
    env.intruder.send(f"acks.{D1}", dumps(pack), kind="acks", message_id=msg_id)
    env.until("the forged ack pack on the dead-letter queue", lambda: env.dead() > dead)
    env.agent_alive()
    assert env.logged(msg_id) is None


def test_an_ack_echoing_a_batch_id_that_does_not_fit_is_set_aside(env: Env) -> None:
    msg_id = rid()
    pack = {"v": 1, "district": D1, "acks": [{"msg_id": msg_id, "status": "ok", "object": "District",
                                              "ref_id": rid(), "batch": "B" * 40}]}
    dead = env.dead()
    env.wire.send(f"acks.{D1}", dumps(pack), kind="acks", message_id=msg_id)
    env.until("the unreadable ack pack on the dead-letter queue", lambda: env.dead() > dead)
    env.agent_alive()
    assert env.logged(msg_id) is None


def _cli(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "resync", *args], env=env.cli_env, capture_output=True, text=True,
                          timeout=120)


def test_a_forged_resync_request_is_never_laundered_by_a_requeue(env: Env) -> None:
    request = {"v": 1, "msg_id": rid(), "ts": TS, "source": "state", "request_id": rid(), "objects": None,
               "year": "current", "requested_by": "state"}
    dead = env.dead()
    env.intruder.send(f"control.{D1}", dumps(request), kind="resync_request", message_id=request["msg_id"])
    env.until("the forged request on the dead-letter queue", lambda: env.dead() > dead)
    listed = json.loads(_cli(env, "dead-letters", "--json", "--limit", "1000").stdout)
    [forged] = [d for d in listed if d["message_id"] == request["msg_id"]]
    assert forged["sender"] == env.intruder.user and forged["queue"] == f"control.{D1}"

    out = _cli(env, "dead-letters", "--json", "--requeue", request["msg_id"])
    assert out.returncode == 1
    result = json.loads(out.stdout)
    assert result["requeued"] == [] and "not from the state" in result["refused"][request["msg_id"]]
    env.agent_alive()
    with env.district.connect() as conn:
        assert conn.execute(select(func.count()).select_from(batch).where(
            batch.c.request_id == request["request_id"])).scalar_one() == 0


def test_a_dead_daemon_is_named_by_queue_and_status(env: Env, tmp_path: Path) -> None:
    other = {**env.cli_env, "RESYNC_DISTRICT": "district-9"}
    subprocess.run([sys.executable, "-c", "from core.brokers import open_broker; import os; "
                    "open_broker(os.environ['RESYNC_BROKER_URL']).declare_district('district-9')"],
                   env=other, check=True, timeout=60)
    queue = subprocess.run([sys.executable, "-m", "resync", "queue", "--json"], env=other, capture_output=True,
                           text=True, timeout=60)
    warnings = json.loads(queue.stdout)["warnings"]
    assert any("no receiver is consuming sync.district-9" in w for w in warnings), warnings
    assert any("no agent is consuming acks.district-9" in w for w in warnings), warnings
    status = subprocess.run([sys.executable, "-m", "resync", "status"], env=other, capture_output=True, text=True,
                            timeout=60)
    assert "no receiver is consuming sync.district-9" in " ".join(status.stdout.split())
    ours = json.loads(_cli(env, "queue", "--json").stdout)["warnings"]
    assert ours == []  # both daemons of district-1 are running


@pytest.mark.parametrize("queue", [f"sync.{D1}", f"control.{D1}", f"acks.{D1}"])
def test_amqp_properties_that_are_not_utf8_are_set_aside_not_fatal(env: Env, queue: str) -> None:
    dead = env.dead()
    env.intruder.send(queue, b"{}", kind=b"\xff\xfe", message_id=b"\xff\xfebad")
    env.until("the unreadable message on the dead-letter queue", lambda: env.dead() > dead)
    env.receiver_alive()
    env.agent_alive()
    listed = json.loads(_cli(env, "dead-letters", "--json", "--limit", "1000").stdout)  # the listing survives too
    assert len(listed) == env.dead()


def test_a_message_from_another_broker_user_is_never_answered_in_the_districts_name(env: Env) -> None:
    """An answer would reach the district under a msg_id the intruder chose, in place of the real one."""
    doc = event(data={"name": "forged"})
    dead = env.dead()
    env.intruder.send(f"sync.{D1}", dumps(doc), kind="event", message_id=doc["msg_id"])
    env.until("the forged record on the dead-letter queue", lambda: env.dead() > dead)
    env.receiver_alive()
    assert env.logged(doc["msg_id"]) is None
    assert _answer(env, doc)["status"] == "ok"  # the district's own message of that id is answered as usual


def test_a_message_of_an_unknown_sender_cannot_be_requeued_as_the_states(env: Env) -> None:
    request = {"v": 1, "msg_id": rid(), "ts": TS, "source": "state", "request_id": rid(), "objects": None,
               "year": "current", "requested_by": "state"}
    doc = event(data={"name": "anonymous"})
    dead = env.dead()
    env.intruder.send(f"control.{D1}", dumps(request), kind="resync_request", message_id=request["msg_id"],
                      user_id=None)
    env.intruder.send(f"sync.{D1}", dumps(doc), kind="event", message_id=doc["msg_id"], user_id=None)
    env.until("both on the dead-letter queue", lambda: env.dead() >= dead + 2)
    listed = {d["message_id"]: d for d in json.loads(_cli(env, "dead-letters", "--json", "--limit", "1000").stdout)}
    assert listed[request["msg_id"]]["sender"] is None and listed[doc["msg_id"]]["sender"] is None
    out = _cli(env, "dead-letters", "--json", "--requeue", request["msg_id"], "--requeue", doc["msg_id"])
    result = json.loads(out.stdout)
    assert out.returncode == 1 and result["requeued"] == []
    assert all("not known" in why for why in result["refused"].values()) and len(result["refused"]) == 2


def test_a_message_is_judged_by_the_queue_it_came_from_not_by_its_routing_key(env: Env) -> None:
    """With a CC header a message reaches queues its routing key does not name: the district is the queue's."""
    dead = env.dead()
    strange = event(data={"name": "by another route"})
    env.intruder.send("sync.BAD_District", dumps(strange), kind="event", message_id=strange["msg_id"],
                      cc=[f"sync.{D1}"])
    env.until("the intruder's message on the dead-letter queue", lambda: env.dead() > dead)
    ghost = event(source="district-9", data={"name": "ghost district"})
    env.wire.send("sync.district-9", dumps(ghost), kind="event", message_id=ghost["msg_id"], cc=[f"sync.{D1}"])
    row = env.until("the answer to the ghost record", lambda: env.logged(ghost["msg_id"]))
    assert (row["status"], row["code"]) == ("error", "4.1")  # read from district-1's queue: not district-9's
    env.receiver_alive()
    t = STATE.tables["District"]
    with env.state.connect() as conn:
        assert conn.execute(select(func.count()).select_from(t).where(t.c.district_id != D1)).scalar_one() == 0
    listed = {d["message_id"]: d for d in json.loads(_cli(env, "dead-letters", "--json", "--limit", "1000").stdout)}
    assert listed[strange["msg_id"]]["queue"] == f"sync.{D1}"
