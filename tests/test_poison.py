"""Records and messages that could jam a resync: a record too large to send, a record the state's database
refuses, and a flood of messages too large to read. Each is answered on its own and everything else goes
through, at a bounded cost in transactions and in memory."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pika
import pika.adapters.blocking_connection
import pika.exceptions
import pytest
from sqlalchemy import select, text, update

from core.brokers.base import Delivery
from core.brokers.memory import MemoryBroker
from core.db import engine
from core.settings import Settings
from messages import catalog as catalog_mod
from messages.codec import decode_acks, encode_event
from messages.envelope import Ack, Action, Event, new_id, now_ts
from messages.errors import Code
from state_receiver.daemon import Receiver
from tests.site import CATALOG, DISTRICT, YEAR, Site, clone, district_rows, expected_state, orphans, state_refs

D1 = "district-1"
HANG_GUARD = 300  # seconds: a receiver that takes this long to answer is stuck, not slow


@pytest.mark.slow
def test_a_batch_with_records_too_large_to_send_completes(site: Site) -> None:
    """Two Schools whose messages are over RESYNC_MAX_BODY are not sent: the batch still completes, the log shows
    each as 12.8, and every other record the state accepts is at the state."""
    site.cli("seed", "--students", "30", "--year", str(YEAR))
    # 30 students make two Schools, with everything else under them: two more, with nothing under them, get the
    # addresses too large to send, so every record but those two must reach the state
    school = district_rows(site.district)["School"][0]
    big, huge = clone(site.district, "School", school), clone(site.district, "School", school)
    table = DISTRICT.tables["School"]
    with site.district.begin() as conn:
        conn.execute(update(table).where(table.c.ref_id == big).values(address="a" * 300_000))
        conn.execute(update(table).where(table.c.ref_id == huge).values(address="b" * 5_000_000))
    refused = {big, huge}
    rows = district_rows(site.district)
    want = expected_state(site.district)
    assert refused < want["School"] and len(want["School"]) == 4
    want["School"] -= refused
    site.start("agent", "run")
    site.start("receiver", "run")

    batch = site.send("--all")
    assert site.wait(batch)["status"] == "completed"

    total = sum(len(r) for r in rows.values())
    errors = total - sum(len(w) for w in want.values())
    [history] = [h for h in site.json("history") if h["batch_id"] == batch]
    assert (history["status"], history["sent"], history["processed"], history["errors"]) == \
        ("completed", total, total, errors)
    status = {r["object"]: r for r in site.json("status")}
    for name in CATALOG.names():
        r = status[name]
        assert r["sent"] == r["processed"] == len(rows[name]), name
        assert r["errors"] == len(rows[name]) - len(want[name]), name
    assert status["School"]["errors"] == 2

    school_errors = site.json("log", "--errors", "--object", "School")
    assert sorted((e["code"], e["ref_id"]) for e in school_errors) == sorted((Code.NOT_SENT_TOO_LARGE, r)
                                                                             for r in refused)
    assert all("RESYNC_MAX_BODY" in e["description"] for e in school_errors)
    every_error = site.json("log", "--errors", "--limit", "1000000")
    assert {e["ref_id"] for e in every_error if e["code"] == Code.NOT_SENT_TOO_LARGE} == refused
    assert {e["code"] for e in every_error if e["ref_id"] not in refused} <= {Code.STATE_EXCLUDED, Code.UNDER_EXCLUDED}

    assert state_refs(site.state) == want
    assert orphans(site.state) == []


def district_events(names: list[str]) -> list[Delivery]:
    """One delivery per name: a District record of that name, in order, as the consumer hands them over."""
    out = []
    for i, name in enumerate(names):
        e = Event(new_id(), now_ts(), D1, None, i + 1, "District", Action.CHANGE, new_id(), None, {}, {"name": name})
        out.append(Delivery(body=encode_event(e), delivery_tag=i + 1, queue="sync.district-1", message_id=e.msg_id,
                            user_id="guest", type="event", redelivered=False))
    return out


@pytest.mark.postgres
@pytest.mark.parametrize("poison", [(617,), (3, 900)], ids=["one poison record", "two poison records"])
def test_one_refused_record_costs_a_few_transactions_not_one_per_record(
        postgres_db: Callable[[], str], poison: tuple[int, ...]) -> None:
    """A record the state's database refuses (a CHECK its DBA added) is answered 11.1 on its own; the rest of
    the 1,000 are applied, and finding it costs about two transactions per halving, not one per record."""
    eng = engine(postgres_db())
    try:
        receiver = Receiver(Settings(district=D1, school_year=YEAR, district_users={"*": "guest"}), MemoryBroker(),
                            eng, catalog_mod.load())
        receiver.setup()
        table = receiver.schema.tables["District"]
        with eng.begin() as conn:
            conn.execute(text(f'ALTER TABLE "{table.name}" ADD CONSTRAINT no_poison '
                              "CHECK (name IS DISTINCT FROM 'poison')"))
        n = 1_000
        deliveries = district_events(["poison" if i in poison else f"d{i}" for i in range(n)])
        receiver.batch.transactions = 0

        answers = receiver.work(deliveries)

        spent = receiver.batch.transactions
        bound = 2 * len(poison) * math.ceil(math.log2(n)) + 2
        print(f"\n{len(poison)} poison record(s) in {n}: {spent} transactions (bound {bound})")
        assert list(answers.acks) == [D1] and answers.dead == []
        acks = answers.acks[D1]
        assert [a.msg_id for a in acks] == [d.message_id for d in deliveries]
        failed = [(a.msg_id, a.error.code if a.error else None) for a in acks if not a.ok]
        assert failed == [(deliveries[i].message_id, Code.APPLY_FAILED) for i in poison]
        assert sum(a.ok for a in acks) == n - len(poison)
        with eng.connect() as conn:
            names = {r[0] for r in conn.execute(select(table.c.name).where(table.c.district_id == D1))}
            logged = conn.execute(select(receiver.schema.error_log.c.msg_id).where(
                receiver.schema.error_log.c.code == Code.APPLY_FAILED)).scalars().all()
        assert names == {f"d{i}" for i in range(n) if i not in poison}
        assert sorted(map(str, logged)) == sorted(str(deliveries[i].message_id) for i in poison)
        assert spent <= bound
    finally:
        eng.dispose()


def vm_hwm_kb(pid: int) -> int:
    """The process's peak resident set size, in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


def channel_once_queue_exists(url: str, queue: str, proc: subprocess.Popen[bytes], log: Path
                              ) -> pika.adapters.blocking_connection.BlockingChannel:
    """A channel, once the receiver has declared ``queue`` (a passive declare of a missing queue closes it)."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    deadline = time.monotonic() + 60  # hang guard
    while time.monotonic() < deadline and proc.poll() is None:
        ch = conn.channel()
        try:
            ch.queue_declare(queue, passive=True)
            return ch
        except pika.exceptions.ChannelClosedByBroker:
            time.sleep(0.2)
    raise AssertionError(f"the receiver never declared {queue}\n{log.read_text()[-3000:]}")


@pytest.fixture
def receiver_process(rabbitmq_url: str, postgres_db: Callable[[], str], tmp_path: Path
                     ) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """``resync receiver run`` for district-1 as its own process; terminated afterwards."""
    log = tmp_path / "receiver.log"
    env = {**os.environ, "RESYNC_BROKER_URL": rabbitmq_url, "RESYNC_STATE_DB": postgres_db(),
           "RESYNC_DISTRICTS": D1, "RESYNC_DISTRICT_USERS": "*=guest", "RESYNC_STATE_USER": "guest",
           "RESYNC_SCHOOL_YEAR": str(YEAR)}
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "resync", "receiver", "run"], env=env, stdout=out, stderr=out)
        try:
            yield proc, log
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)


@pytest.mark.slow
def test_receiver_memory_stays_bounded_while_huge_messages_wait(
        rabbitmq_url: str, receiver_process: tuple[subprocess.Popen[bytes], Path]) -> None:
    """150 messages of 5 MB each, over the receiver's limit, are each answered 12.5 and a valid event behind them
    is applied, while the receiver's peak memory stays far below what the messages add up to."""
    proc, log = receiver_process
    ch = channel_once_queue_exists(rabbitmq_url, "sync.district-1", proc, log)

    def publish(body: bytes, message_id: str) -> None:
        props = pika.BasicProperties(content_type="application/json", delivery_mode=2, type="event",
                                     user_id="guest", message_id=message_id)
        ch.basic_publish("resync", "sync.district-1", body, props)

    before = vm_hwm_kb(proc.pid)
    big = [new_id() for _ in range(150)]
    filler = b"x" * 5_000_000
    for msg_id in big:
        publish(b'{"v":1,"msg_id":"' + msg_id.encode() + b'","x":"' + filler + b'"}', msg_id)
    good = Event(new_id(), now_ts(), D1, None, 1, "District", Action.CHANGE, new_id(), None, {}, {"name": "after"})
    publish(encode_event(good), good.msg_id)

    acks: dict[str, Ack] = {}
    wanted = {*big, good.msg_id}
    deadline = time.monotonic() + HANG_GUARD
    while not wanted <= acks.keys():
        assert proc.poll() is None, f"the receiver exited\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, \
            f"{len(wanted - acks.keys())} messages unanswered after {HANG_GUARD}s\n{log.read_text()[-3000:]}"
        method, _, body = ch.basic_get("acks.district-1", auto_ack=True)
        if method is None:
            time.sleep(0.1)
            continue
        acks.update((a.msg_id, a) for a in decode_acks(body).acks)
    peak = vm_hwm_kb(proc.pid)
    print(f"\nreceiver peak RSS: {before / 1024:.1f} MB before the flood, {peak / 1024:.1f} MB after "
          f"{len(big) * len(filler) / 1e6:,.0f} MB of messages")

    assert acks[good.msg_id].status == "ok"
    for msg_id in big:
        a = acks[msg_id]
        assert (a.status, a.error.code if a.error else None) == ("error", Code.TOO_LARGE), msg_id
    assert ch.queue_declare("resync.dead-letter", passive=True).method.message_count == 0
    assert peak < 150 * 1024, f"peak RSS {peak / 1024:.1f} MB"
    ch.connection.close()
