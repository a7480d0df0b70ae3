"""Throughput benchmark: raw broker round trip versus a full resync end to end, on RabbitMQ and PostgreSQL.

    python benchmarks/resync_bench.py --records 100000

It makes its own RabbitMQ vhost (rabbitmqctl) and PostgreSQL databases, seeds a district of about N
records (not timed), measures the raw round trip (N persistent messages of the real size, published
with pipelined confirms and consumed with acks at the same time, no database), then runs a full resync
with the agent and the receiver as separate processes, from `resync send --all` until every ack is
counted, and checks the state. Prints a human summary and, last, one JSON line.

    python benchmarks/resync_bench.py --records 1000000 --delta

``--delta`` then times, on the unchanged district, `resync verify` and a delta resync
(`resync send --all --only-changed`) against the full resync just measured.

    python benchmarks/resync_bench.py --live --records 20000 [--live-seconds 30] [--live-minutes 5]

``--live`` measures live sync instead (``benchmarks/live_bench.py``): what capture costs the district's writes,
the lag from commit to the agent counting the state's answer at 100, 1,000 and 3,000 changes/s, the rate the
pipeline sustains (a backlog drained), and with ``--live-minutes`` the agent's memory over a long run. One JSON
line per measurement.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import func, select, text

from agent.store import AgentStore
from core.brokers import Topology
from core.brokers.rabbitmq import RabbitBroker
from core.db import engine
from messages import catalog as catalog_mod
from publisher.schema import DistrictSchema
from state_receiver.schema import StateSchema

sys.path.insert(0, str(Path(__file__).parent))
import storage_bench

RECORDS_PER_STUDENT = 26.8  # what `resync seed` makes, measured at 4,000 students


def resync(env: dict[str, str], *args: str, **kw: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "resync", *args], env=env, **kw)  # type: ignore[call-overload]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _raw_consume(url: str, queue: str, n: int, ready: Any) -> None:
    with RabbitBroker(url).connect() as conn:
        conn.consume(queue, prefetch=1000)
        ready.set()
        seen = 0
        while seen < n:
            got = conn.fetch(500, timeout=30)
            if not got:
                raise SystemExit(f"raw round trip: consumer saw {seen} of {n} messages")
            seen += len(got)
            conn.ack(got[-1].delivery_tag, multiple=True)


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / os.sysconf("SC_CLK_TCK")


def services() -> dict[str, list[int]]:
    """Process ids of the local RabbitMQ and PostgreSQL, to account their CPU time (0 when they run elsewhere)."""
    out: dict[str, list[int]] = {"rabbitmq": [], "postgresql": []}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if comm == "beam.smp":
            out["rabbitmq"].append(int(entry.name))
        elif comm in ("postgres", "postmaster"):
            out["postgresql"].append(int(entry.name))
    return out


def raw_round_trip(url: str, n: int, size: int) -> float:
    """Messages per second: one process publishes n persistent messages with pipelined confirms while
    another consumes and acks them, through the same broker module the daemons use."""
    broker = RabbitBroker(url)
    broker.declare_district("bench-raw")
    queue, body = Topology.events("bench-raw"), b"x" * size
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    consumer = ctx.Process(target=_raw_consume, args=(url, queue, n, ready))
    consumer.start()
    ready.wait(30)
    started = time.perf_counter()
    with broker.connect() as conn:
        for i in range(n):
            conn.publish(queue, body, kind="event", message_id=f"{i:032X}")
        conn.flush()
    consumer.join()
    if consumer.exitcode != 0:
        raise SystemExit("raw round trip failed")
    return n / (time.perf_counter() - started)


def delta_run(env: dict[str, str], store: AgentStore, state: Any, schema: StateSchema, full_batch: str,
              procs: list[subprocess.Popen[bytes]], full_s: float) -> dict[str, Any]:
    """Verify and a delta resync of the district the full resync just made equal at the state."""
    mk = schema.markers
    while True:  # the receiver closes the full batch (and sweeps) just after its last acks
        with state.connect() as conn:
            if conn.execute(select(mk.c.msg_id).where(mk.c.batch_id == full_batch, mk.c.kind == "batch_end")).first():
                break
        time.sleep(0.1)
    started = time.perf_counter()
    verified = json.loads(subprocess.run([sys.executable, "-m", "resync", "verify", "--json"], env=env, check=True,
                                         capture_output=True, text=True).stdout)
    verify_s = time.perf_counter() - started
    started = time.perf_counter()
    batch_id = json.loads(subprocess.run([sys.executable, "-m", "resync", "send", "--all", "--only-changed", "--json"],
                                         env=env, check=True, capture_output=True, text=True).stdout)["batch_id"]
    while (store.batch(batch_id) or {}).get("status") != "completed":
        if any(p.poll() is not None for p in procs):
            raise SystemExit("a daemon died; see its log")
        time.sleep(0.1)
    delta_s = time.perf_counter() - started
    return {"verify_s": round(verify_s, 1),
            "verify_differences": sum(o["differences"] for o in verified["objects"]),
            "delta_s": round(delta_s, 1), "delta_sent": sum(o["sent"] for o in store.batch_objects(batch_id)),
            "delta_speedup": round(full_s / delta_s, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000, help="about how many records the district has")
    ap.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432")
    ap.add_argument("--rabbitmq", default="amqp://guest:guest@127.0.0.1:5672")
    ap.add_argument("--max-rate", type=int, help="send with `resync send --max-rate N` and check the cap holds")
    ap.add_argument("--py-spy", metavar="DIR", help="record py-spy flame graphs of both daemons into DIR")
    ap.add_argument("--delta", action="store_true",
                    help="then time verify and a delta resync of the unchanged district against the full resync")
    ap.add_argument("--live", action="store_true", help="measure live sync (see benchmarks/live_bench.py)")
    ap.add_argument("--live-seconds", type=float, default=30, help="length of each live sync phase")
    ap.add_argument("--live-minutes", type=float, default=0, help="then write 1,000 changes/s this long, "
                    "sampling the agent's memory")
    ap.add_argument("--steady", action="store_true", help="then a second full resync of the same district")
    ap.add_argument("--beside", type=int, default=0, metavar="N",
                    help="then a full resync with the state holding N other districts like this one")
    ap.add_argument("--repeat", type=int, default=0, metavar="N",
                    help="then N more full resyncs, each followed by a retention pass; prints the bookkeeping "
                         "tables' rows and sizes after each")
    ap.add_argument("--keep-batches", type=int, default=2, help="retention for --repeat (default 2)")
    args = ap.parse_args()

    tag = uuid.uuid4().hex[:8]
    vhost, ddb, sdb = f"bench-{tag}", f"bench_{tag}_district", f"bench_{tag}_state"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True)
    subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"], check=True)
    admin = psycopg.connect(f"{args.postgres}/postgres", autocommit=True)
    for db in (ddb, sdb):
        admin.execute(f'CREATE DATABASE "{db}"')
    url = f"{args.rabbitmq}/{vhost}"
    env = {**os.environ, "RESYNC_BROKER_URL": url, "RESYNC_DISTRICT_DB": f"{args.postgres}/{ddb}",
           "RESYNC_STATE_DB": f"{args.postgres}/{sdb}", "RESYNC_DISTRICT_USERS": "*=guest",
           "RESYNC_STATE_USER": "guest", "RESYNC_SCHOOL_YEAR": "2027", "RESYNC_LOG_LEVEL": "WARNING"}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        students = max(1, round(args.records / RECORDS_PER_STUDENT))
        subprocess.run([sys.executable, "-m", "resync", "seed", "--students", str(students), "--year", "2027"],
                       env=env, check=True, stdout=subprocess.DEVNULL)
        catalog = catalog_mod.load()
        district = engine(env["RESYNC_DISTRICT_DB"])
        if args.live:
            import tempfile

            import live_bench  # beside this script
            with tempfile.TemporaryDirectory() as tmp:
                for line in live_bench.run(env, district, args.live_seconds, args.live_minutes, Path(tmp)):
                    print(json.dumps(line))
            return
        total = sum(DistrictSchema(catalog).count(district, n, 2027) for n in catalog.names())
        AgentStore(district).create()
        size = round(storage_bench.mean_event_bytes(district, catalog, 2027))  # the district's real messages
        raw = raw_round_trip(url, total, size)

        for role in ("receiver", "agent"):
            procs.append(resync(env, "--log-level", "WARNING", role, "run", stderr=subprocess.DEVNULL))
        time.sleep(2)
        spy = str(Path(sys.executable).with_name("py-spy"))
        spies = [subprocess.Popen([spy, "record", "--pid", str(p.pid), "--rate", "50", "--format", "raw",
                                   "-o", f"{args.py_spy}/{role}.txt"], stdout=subprocess.DEVNULL)
                 for role, p in zip(("receiver", "agent"), procs, strict=True)] if args.py_spy else []
        cap = ["--max-rate", str(args.max_rate)] if args.max_rate else []
        store = AgentStore(district)

        def timed_resync() -> tuple[str, float, dict[str, float]]:
            """A full resync from `resync send --all` until every ack is counted; CPU seconds per process. It
            starts on quiet databases: what the last run left to vacuum is vacuumed first, not while it runs."""
            for db in (district, engine(env["RESYNC_STATE_DB"])):
                with db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    conn.execute(text("VACUUM (ANALYZE)"))
            daemons = {role: cpu_seconds([p.pid]) for role, p in zip(("receiver", "agent"), procs, strict=True)}
            servers = {name: cpu_seconds(pids) for name, pids in services().items()}
            started = time.perf_counter()
            batch_id = json.loads(subprocess.run([sys.executable, "-m", "resync", "send", "--all", "--json", *cap],
                                                 env=env, check=True, capture_output=True, text=True).stdout)[
                "batch_id"]
            while (store.batch(batch_id) or {}).get("status") != "completed":
                if any(p.poll() is not None for p in procs):
                    raise SystemExit("a daemon died; see its log")
                time.sleep(0.1)
            elapsed = time.perf_counter() - started
            cpu = {role: round(cpu_seconds([p.pid]) - daemons[role], 1)
                   for role, p in zip(("receiver", "agent"), procs, strict=True)}
            cpu.update({name: round(cpu_seconds(pids) - servers.get(name, 0.0), 1)
                        for name, pids in services().items()})
            return batch_id, elapsed, cpu

        batch_id, elapsed, cpu = timed_resync()
        for spy in spies:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
        rss = {role: round(peak_rss_mb(p.pid), 1) for role, p in zip(("receiver", "agent"), procs, strict=True)}

        objects = store.batch_objects(batch_id)
        ok = sum(o["processed"] - o["errors"] for o in objects)
        state = engine(env["RESYNC_STATE_DB"])
        schema = StateSchema(catalog)
        with state.connect() as conn:
            at_state = sum(conn.execute(select(func.count()).select_from(schema.tables[n])).scalar_one()
                           for n in catalog.names())
        result = {
            "records": total, "raw_round_trip_per_s": round(raw), "end_to_end_s": round(elapsed, 1),
            "end_to_end_per_s": round(total / elapsed), "ratio_to_raw": round(total / elapsed / raw, 3),
            "message_bytes": size, "peak_rss_mb": rss, "cpu_s": cpu,
            "cpu_us_per_record": {k: round(v * 1e6 / total, 1) for k, v in cpu.items()},
            "state_rows": at_state, "acked_ok": ok,
            "state_complete": at_state == ok and sum(o["sent"] for o in objects) == total,
        }
        if args.max_rate:
            b = store.batch(batch_id) or {}
            sending = (dt.datetime.fromisoformat(b["sent_at"]) - dt.datetime.fromisoformat(b["started_at"]))
            sent_rate = total / sending.total_seconds()
            result.update(max_rate=args.max_rate, sent_per_s=round(sent_rate, 1),
                          cap_deviation=round(sent_rate / args.max_rate - 1, 4))
            print(f"rate cap {args.max_rate:,}/s: the agent sent {sent_rate:,.1f} records/s "
                  f"({sent_rate / args.max_rate - 1:+.2%})")
        if args.delta:
            result.update(delta_run(env, store, state, schema, batch_id, procs, elapsed))
            result["peak_rss_after_delta_mb"] = {role: round(peak_rss_mb(p.pid), 1)
                                                 for role, p in zip(("receiver", "agent"), procs, strict=True)}
            print(f"unchanged district: verify {result['verify_s']}s ({result['verify_differences']} differences); "
                  f"delta resync {result['delta_s']}s sending {result['delta_sent']} records, "
                  f"{result['delta_speedup']}x faster than the full resync; peak RSS since start "
                  f"{result['peak_rss_after_delta_mb']}")
        if args.steady:  # the same district again, onto a state that holds it: the steady state
            _, again, again_cpu = timed_resync()
            result.update(second_resync_s=round(again, 1), second_resync_per_s=round(total / again),
                          second_to_first=round(elapsed / again, 3),
                          second_cpu_us_per_record={k: round(v * 1e6 / total, 1) for k, v in again_cpu.items()})
            print(f"second full resync: {total / again:,.0f}/s ({elapsed / again:.0%} of the first's rate)")
        if args.beside:
            added = storage_bench.copy_to_other_districts(state, catalog, "district-1", args.beside)
            _, beside, beside_cpu = timed_resync()
            result.update(beside_districts=args.beside, beside_rows_added=added, beside_resync_per_s=round(
                total / beside), beside_to_first=round(elapsed / beside, 3),
                beside_cpu_us_per_record={k: round(v * 1e6 / total, 1) for k, v in beside_cpu.items()})
            print(f"full resync beside {args.beside} other districts ({added:,} rows): {total / beside:,.0f}/s "
                  f"({elapsed / beside:.0%} of the first's rate)")
        if args.repeat:
            from core.settings import Settings
            keep = Settings(keep_batches=args.keep_batches, keep_days=0)
            result["retention_runs"] = storage_bench.retention_runs(timed_resync, district, state, catalog, keep,
                                                                    args.repeat, total)
        print(f"{total:,} records: raw round trip {raw:,.0f}/s; full resync end to end {elapsed:.1f}s = "
              f"{total / elapsed:,.0f}/s ({total / elapsed / raw:.0%} of raw); peak RSS receiver "
              f"{rss['receiver']} MB, agent {rss['agent']} MB; state holds every accepted record: "
              f"{result['state_complete']}")
        print("CPU seconds during the resync: " + ", ".join(f"{k} {v}" for k, v in cpu.items()))
        print(json.dumps(result))
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=30)
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], check=False)
        for db in (ddb, sdb):
            admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


if __name__ == "__main__":
    main()
