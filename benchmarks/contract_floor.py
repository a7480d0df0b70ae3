"""The floor of the contract on this machine: one message per record, packed acks back, and nothing else.

    python benchmarks/contract_floor.py --records 100000 --db none|state|both

A district process publishes N persistent event messages of the seeded district's mean size (455 bytes) with
pipelined confirms, through the project's broker module, and counts the packed acks that come back on a second
connection. A state process takes the events 1,000 at a time, parses each body (``orjson``, no checks), answers
them in packed ack messages, waits for the broker's confirm, then acknowledges the deliveries: the order the
receiver keeps. ``--db state`` adds the state's one write per record: the delivery batch upserted in one
statement into a table shaped like a state object table (the same key, indexes and fillfactor), in one
transaction before the acks; ``--db both`` adds the agent log's row per record as well (the same keys and
indexes), one statement per ack message; ``--checks`` has the state side decode each event with the receiver's
codec, every field checked (the district side always decodes the acks with it). No parent checks, counts,
digests or logging: what is left is what the contract and the storage design cost (with ``--checks``, and
what no hostile message may get past), which resync cannot go below on this machine.

It prints one JSON line: the rate, its ratio to the raw round trip (one publisher, one consumer, no answers),
and CPU microseconds per record of each process, RabbitMQ and PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import psycopg

from core.brokers import Topology
from core.brokers.rabbitmq import RabbitBroker
from messages import catalog as catalog_mod
from messages.codec import MAX_ACKS, decode_acks, decode_event, encode_acks
from messages.envelope import Ack, AckPack, Event, Kind, new_id, now_ts

sys.path.insert(0, str(Path(__file__).parent))
from resync_bench import cpu_seconds, raw_round_trip, services

DISTRICT = "floor"
BATCH = 1000
STATE_TABLE = """
CREATE TABLE floor_state (district_id varchar(64), ref_id varchar(32), school_ref_id varchar(32) NOT NULL,
  name text, code text, kind text, phone text, address text, city text, zip text, last_msg_id varchar(32) NOT NULL,
  source_ts varchar(32) NOT NULL, applied_at varchar(32) NOT NULL, digest varchar(16), version bigint,
  PRIMARY KEY (district_id, ref_id)) WITH (fillfactor = 50);
CREATE INDEX ON floor_state (ref_id);
CREATE INDEX ON floor_state (district_id, school_ref_id);
"""
LOG_TABLE = """
CREATE TABLE floor_log (id serial PRIMARY KEY, msg_id varchar(32) NOT NULL, batch_id varchar(32),
  object varchar(64), ref_id varchar(32), status varchar(8) NOT NULL, category int, code varchar(8),
  description text, logged_at varchar(32) NOT NULL);
CREATE UNIQUE INDEX ON floor_log (batch_id, object, ref_id);
CREATE INDEX ON floor_log (batch_id, id);
CREATE INDEX ON floor_log (object, id);
CREATE INDEX ON floor_log (id) WHERE status = 'error';
"""
UPSERT = """
INSERT INTO floor_state SELECT * FROM json_populate_recordset(NULL::floor_state, %s)
ON CONFLICT (district_id, ref_id) DO UPDATE SET school_ref_id = excluded.school_ref_id, name = excluded.name,
  code = excluded.code, kind = excluded.kind, phone = excluded.phone, address = excluded.address,
  city = excluded.city, zip = excluded.zip, last_msg_id = excluded.last_msg_id, source_ts = excluded.source_ts,
  applied_at = excluded.applied_at, digest = excluded.digest, version = excluded.version
WHERE floor_state.version <= excluded.version
"""
LOG = """
INSERT INTO floor_log (msg_id, batch_id, object, ref_id, status, logged_at)
SELECT msg_id, batch_id, object, ref_id, status, logged_at FROM json_populate_recordset(NULL::floor_log, %s)
ON CONFLICT (batch_id, object, ref_id) DO NOTHING
"""


def bodies(n: int, size: int) -> list[tuple[str, bytes]]:
    """(msg_id, body) of n events shaped like the district's, padded to ``size`` bytes on average."""
    batch, ts, school = new_id(), now_ts(), new_id()
    out = []
    for i in range(n):
        ref = f"{i:08X}{uuid.uuid4().hex.upper()[8:]}"  # in the order a resync reads them: by ref_id
        doc: dict[str, Any] = {"v": 1, "msg_id": new_id(), "ts": ts, "source": DISTRICT, "batch": batch, "seq": i,
                               "object": "School", "action": "change", "ref_id": ref, "year": None,
                               "parents": {"District": school}, "ver": 0,
                               "data": {"name": "x", "state_school_number": "1", "school_type": "k",
                                        "address": "a"}}
        pad = size - len(orjson.dumps(doc))
        doc["data"]["address"] = "a" * max(1, pad)
        out.append((doc["msg_id"], orjson.dumps(doc)))
    return out


def state_side(url: str, dsn: str | None, n: int, ready: Any, checks: bool) -> None:
    broker = RabbitBroker(url)
    catalog = catalog_mod.load()
    db = psycopg.connect(dsn) if dsn else None
    with broker.connect() as conn, broker.connect() as out:
        conn.consume(Topology.events(DISTRICT), prefetch=3 * BATCH)
        ready.set()
        done = 0
        while done < n:
            got = conn.fetch(BATCH, timeout=60)
            if not got:
                raise SystemExit(f"state side: saw {done} of {n} records")
            if checks:  # every field checked as the receiver checks it (the codec), then used as a dict
                docs = [_as_doc(decode_event(d.body, catalog)) for d in got]
            else:
                docs = [orjson.loads(d.body) for d in got]
            if db is not None:
                now = now_ts()
                rows = [{"district_id": DISTRICT, "ref_id": d["ref_id"], "school_ref_id": d["parents"]["District"],
                         **d["data"], "last_msg_id": d["msg_id"], "source_ts": d["ts"], "applied_at": now,
                         "digest": d["msg_id"][:16], "version": d["ver"]} for d in docs]
                with db.transaction():
                    db.execute(UPSERT, (orjson.dumps(rows).decode(),))
            acks = [Ack(d["msg_id"], "ok", None, d["object"], d["ref_id"], d["batch"]) for d in docs]
            for i in range(0, len(acks), MAX_ACKS):
                out.publish(Topology.acks(DISTRICT), encode_acks(AckPack(DISTRICT, acks[i:i + MAX_ACKS])),
                            kind=Kind.ACKS, message_id=acks[i].msg_id)
            out.flush()
            conn.ack(got[-1].delivery_tag, multiple=True)
            done += len(got)


def _as_doc(e: Event) -> dict[str, Any]:
    return {"msg_id": e.msg_id, "ts": e.ts, "object": e.object, "ref_id": e.ref_id, "batch": e.batch,
            "parents": e.parents, "data": e.data, "ver": e.version}


def count_acks(url: str, dsn: str | None, n: int, counted: list[int], ready: threading.Event) -> None:
    db = psycopg.connect(dsn, autocommit=True) if dsn else None
    with RabbitBroker(url).connect() as conn:
        conn.consume(Topology.acks(DISTRICT), prefetch=50)
        ready.set()
        while counted[0] < n:
            got = conn.fetch(50, timeout=60)
            if not got:
                raise SystemExit(f"district side: counted {counted[0]} of {n} acks")
            for d in got:
                pack = decode_acks(d.body)
                if db is not None:
                    now = now_ts()
                    db.execute(LOG, (orjson.dumps([{"msg_id": a.msg_id, "batch_id": a.batch, "object": a.object,
                                                    "ref_id": a.ref_id, "status": a.status, "logged_at": now}
                                                   for a in pack.acks]).decode(),))
                counted[0] += len(pack.acks)
            conn.ack(got[-1].delivery_tag, multiple=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--size", type=int, default=455, help="mean message body in bytes (the seeded district's)")
    ap.add_argument("--db", choices=("none", "state", "both"), default="state")
    ap.add_argument("--checks", action="store_true",
                    help="the state side decodes each event with the receiver's codec (every field checked)")
    ap.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432")
    ap.add_argument("--rabbitmq", default="amqp://guest:guest@127.0.0.1:5672")
    args = ap.parse_args()
    tag = uuid.uuid4().hex[:8]
    vhost, dbname = f"floor-{tag}", f"floor_{tag}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True)
    subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"], check=True)
    admin = psycopg.connect(f"{args.postgres}/postgres", autocommit=True)
    admin.execute(f'CREATE DATABASE "{dbname}"')
    dsn = f"{args.postgres}/{dbname}"
    try:
        with psycopg.connect(dsn, autocommit=True) as setup:
            setup.execute(STATE_TABLE)
            setup.execute(LOG_TABLE)
        url = f"{args.rabbitmq}/{vhost}"
        raw = raw_round_trip(url, args.records, args.size)
        broker = RabbitBroker(url)
        broker.declare_district(DISTRICT)
        messages = bodies(args.records, args.size)
        ctx = multiprocessing.get_context("spawn")
        state_ready = ctx.Event()
        state = ctx.Process(target=state_side, args=(url, dsn if args.db != "none" else None, args.records,
                                                      state_ready, args.checks))
        state.start()
        state_ready.wait(30)
        counted, acks_ready = [0], threading.Event()
        counter = threading.Thread(target=count_acks, args=(url, dsn if args.db == "both" else None, args.records,
                                                            counted, acks_ready))
        counter.start()
        acks_ready.wait(30)
        before = {"district": cpu_seconds([os.getpid()]), "state": cpu_seconds([state.pid or 0]),
                  **{k: cpu_seconds(v) for k, v in services().items()}}
        started = time.perf_counter()
        with broker.connect() as conn:
            for msg_id, body in messages:
                conn.publish(Topology.events(DISTRICT), body, kind=Kind.EVENT, message_id=msg_id)
            conn.flush()
        counter.join()
        elapsed = time.perf_counter() - started
        after = {"district": cpu_seconds([os.getpid()]), "state": cpu_seconds([state.pid or 0]),
                 **{k: cpu_seconds(v) for k, v in services().items()}}
        state.join(60)
        rate = args.records / elapsed
        print(json.dumps({"records": args.records, "db": args.db, "checks": args.checks,
                          "raw_round_trip_per_s": round(raw),
                          "floor_per_s": round(rate), "ratio_to_raw": round(rate / raw, 3),
                          "cpu_us_per_record": {k: round((after[k] - before[k]) * 1e6 / args.records, 1)
                                                for k in after}}))
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], check=False)
        admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


if __name__ == "__main__":
    main()
