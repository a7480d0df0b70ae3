"""Statewide benchmark: many districts resyncing at once into one state, with 1, 2 and 3 receivers.

    python benchmarks/statewide_bench.py --districts 20 --records 5000 [--receivers 1,2,3] [--flood 5]

It makes its own RabbitMQ vhost and PostgreSQL databases: one district seeded with about N records, copied
(``CREATE DATABASE ... TEMPLATE``) for every other district, and a state. For each receiver count it starts that
many receivers and one agent per district (separate processes), waits until the receivers have shared the
districts out, queues a full resync in every district at once and times until every batch is complete;
then checks every batch's counts. ``--flood K`` then measures isolation with the largest receiver count: the
other districts' resync alone, and again while one district sends K times as many records, of a school year
the state does not take, so that it refuses all but the few not tied to a year (``1.8``). One JSON line each.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from agent.status import plan_batch
from agent.store import AgentStore
from core.db import engine
from core.settings import Settings
from messages import catalog as catalog_mod
from publisher.schema import DistrictSchema

sys.path.insert(0, str(Path(__file__).parent))
from resync_bench import RECORDS_PER_STUDENT, cpu_seconds, services

YEAR = "2027"


LOGS = Path(os.environ.get("BENCH_LOGS", "/tmp/statewide-bench"))


def start(env: dict[str, str], *args: str, log: str = "") -> subprocess.Popen[bytes]:
    """A daemon; with ``log``, its warnings go to that file under ``$BENCH_LOGS``."""
    out: Any = subprocess.DEVNULL
    if log:
        LOGS.mkdir(parents=True, exist_ok=True)
        out = (LOGS / f"{log}.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "resync", "--log-level", "WARNING", *args], env=env,
                            stdout=out, stderr=out)


def run(env: dict[str, str], *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "resync", *args], env=env, check=True, capture_output=True,
                          text=True).stdout


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()


def resync_all(base: dict[str, str], dbs: dict[str, str], districts: list[str],
               during: Callable[[float], None] | None = None) -> tuple[float, dict[str, tuple[int, int]]]:
    """Queue a full resync in each of ``districts`` at once; seconds until all are complete, and each district's
    records answered and refused. Raises if a batch does not complete with one answer per record. ``during`` is
    told, while it runs, the share of the records answered so far."""
    stores = {d: AgentStore(engine(dbs[d])) for d in districts}
    catalog = catalog_mod.load()
    plans = {d: plan_batch(catalog, stores[d].engine, Settings.from_env(
        {**base, "RESYNC_DISTRICT": d, "RESYNC_DISTRICT_DB": dbs[d]}), [], send_all=True, check_dependencies=False,
        year=int(YEAR)) for d in districts}
    started = time.perf_counter()  # what `resync send --all` does in each district, all at once
    batches = {d: stores[d].queue_batch(plans[d], kind="full", year=int(YEAR), check_dependencies=False)
               for d in districts}
    pending = set(districts)
    while pending:
        for d in list(pending):
            if (stores[d].batch(batches[d]) or {}).get("status") == "completed":
                pending.discard(d)
        if during is not None:
            objects = [o for d in districts for o in stores[d].batch_objects(batches[d])]
            during(sum(o["processed"] for o in objects) / max(1, sum(o["expected"] for o in objects)))
        time.sleep(0.1)
    elapsed = time.perf_counter() - started
    answered = {}
    for d in districts:
        objects = stores[d].batch_objects(batches[d])
        sent, processed = sum(o["sent"] for o in objects), sum(o["processed"] for o in objects)
        if sent != processed:
            raise SystemExit(f"{d}: {processed} answers for {sent} records")
        answered[d] = (processed, sum(o["errors"] for o in objects))
        stores[d].engine.dispose()
    return elapsed, answered


def receivers_spread(env: dict[str, str], count: int, districts: list[str]) -> list[int]:
    while True:
        shown = json.loads(run(env, "receivers", "--json"))
        loads = [len(r["consuming"]) for r in shown["receivers"] if r["running"]]
        if len(loads) == count and sum(loads) == len(districts) and max(loads) - min(loads) <= 1:
            return sorted(loads)
        time.sleep(0.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--districts", type=int, default=20)
    ap.add_argument("--records", type=int, default=5_000, help="about how many records each district has")
    ap.add_argument("--receivers", default="1,2,3", help="receiver counts to measure, comma-separated")
    ap.add_argument("--flood", type=int, default=0, metavar="K", help="then the isolation run (see above)")
    ap.add_argument("--kill", action="store_true", help="then, with the largest receiver count, a resync during "
                    "which the busiest receiver is SIGKILLed once a third of the records are answered")
    ap.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432")
    ap.add_argument("--rabbitmq", default="amqp://guest:guest@127.0.0.1:5672")
    args = ap.parse_args()

    tag = uuid.uuid4().hex[:8]
    vhost = f"bench-{tag}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True)
    subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"], check=True)
    admin = psycopg.connect(f"{args.postgres}/postgres", autocommit=True)
    districts = [f"d{i:03d}" for i in range(1, args.districts + 1)]
    names = {d: f"bench_{tag}_{d}" for d in [*districts, "flood"]}
    made: list[str] = []
    base = {**os.environ, "RESYNC_BROKER_URL": f"{args.rabbitmq}/{vhost}", "RESYNC_DISTRICT_USERS": "*=guest",
            "RESYNC_STATE_USER": "guest", "RESYNC_SCHOOL_YEAR": YEAR, "RESYNC_DISTRICTS": ",".join(districts)}
    dbs = {d: f"{args.postgres}/{n}" for d, n in names.items()}
    try:
        admin.execute(f'CREATE DATABASE "{names[districts[0]]}"')
        made.append(names[districts[0]])
        first = {**base, "RESYNC_DISTRICT": districts[0], "RESYNC_DISTRICT_DB": dbs[districts[0]]}
        students = max(1, round(args.records / RECORDS_PER_STUDENT))
        run(first, "seed", "--students", str(students), "--year", YEAR)
        seeded = engine(dbs[districts[0]])
        AgentStore(seeded).create()
        seeded.dispose()  # a template database must have no connection
        for d in districts[1:]:
            admin.execute(f'CREATE DATABASE "{names[d]}" TEMPLATE "{names[districts[0]]}"')
            made.append(names[d])
        catalog = catalog_mod.load()
        schema = DistrictSchema(catalog)
        eng = engine(dbs[districts[0]])
        per_district = sum(schema.count(eng, n, int(YEAR)) for n in catalog.names())
        eng.dispose()
        for count in (int(c) for c in args.receivers.split(",")):
            state = f"bench_{tag}_state_{count}"
            admin.execute(f'CREATE DATABASE "{state}"')
            made.append(state)
            env = {**base, "RESYNC_STATE_DB": f"{args.postgres}/{state}"}
            receivers = [start({**env, "RESYNC_RECEIVER_NAME": f"r{i}"}, "receiver", "run", log=f"{count}-r{i}")
                         for i in range(count)]
            agents = [start({**env, "RESYNC_DISTRICT": d, "RESYNC_DISTRICT_DB": dbs[d]}, "agent", "run")
                      for d in districts]
            try:
                loads = receivers_spread(env, count, districts)
                servers = {n: cpu_seconds(p) for n, p in services().items()}
                before = cpu_seconds([p.pid for p in receivers]), cpu_seconds([p.pid for p in agents])
                elapsed, answered = resync_all(env, dbs, districts)
                total = sum(n for n, _ in answered.values())
                cpu = {"receivers": cpu_seconds([p.pid for p in receivers]) - before[0],
                       "agents": cpu_seconds([p.pid for p in agents]) - before[1],
                       **{n: cpu_seconds(p) - servers[n] for n, p in services().items()}}
                size = admin.execute(f"SELECT pg_database_size('{state}')").fetchone()[0]  # type: ignore[index]
                print(json.dumps({"measure": "statewide", "districts": len(districts), "receivers": count,
                                  "spread": loads, "records": total, "per_district": per_district,
                                  "seconds": round(elapsed, 1), "records_per_s": round(total / elapsed),
                                  "state_db_mb": round(size / 2**20, 1), "state_bytes_per_record": round(size / total),
                                  "cpu_us_per_record": {k: round(v / total * 1e6, 1) for k, v in cpu.items()}}),
                      flush=True)
                if args.flood and count == max(int(c) for c in args.receivers.split(",")):
                    flood(args, dbs, env, districts, students, catalog, schema, agents)
                if args.kill and count == max(int(c) for c in args.receivers.split(",")) and count > 1:
                    # the flooding district's data is another year's by now: the others only
                    kill(env, dbs, districts[:-1] if args.flood else districts, receivers, answered)
            finally:
                stop(receivers + agents)
    finally:
        for db in made:
            admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], check=False)


def kill(env: dict[str, str], dbs: dict[str, str], districts: list[str], receivers: list[subprocess.Popen[bytes]],
         clean: dict[str, tuple[int, int]]) -> None:
    """A resync of every district during which the receiver consuming the most districts is SIGKILLed: every
    batch must complete with the answers and refusals of the undisturbed run (``clean``)."""
    shown = json.loads(run(env, "receivers", "--json"))["receivers"]
    busiest = max((r for r in shown if r["running"]), key=lambda r: len(r["consuming"]))
    victim = next(p for p in receivers if p.pid == busiest["pid"])
    killed: list[float] = []

    def during(share: float) -> None:
        if not killed and share >= 1 / 3:
            victim.send_signal(signal.SIGKILL)
            killed.append(share)

    elapsed, answered = resync_all(env, dbs, districts, during)
    wrong = {d: (answered[d], clean[d]) for d in districts if answered[d] != clean[d]}
    print(json.dumps({"measure": "receiver_killed", "districts": len(districts), "killed": busiest["name"],
                      "its_districts": len(busiest["consuming"]), "at_share_answered": round(killed[0], 2),
                      "seconds": round(elapsed, 1), "records": sum(n for n, _ in answered.values()),
                      "exact": not wrong, "differing": wrong}), flush=True)
    receivers.remove(victim)


def flood(args: Any, dbs: dict[str, str], env: dict[str, str], districts: list[str], students: int,
          catalog: Any, schema: DistrictSchema, agents: list[subprocess.Popen[bytes]]) -> None:
    """The other districts' resync alone, then beside one district sending ``args.flood`` times as many records,
    which the state refuses (they are of a school year the state does not take: ``1.8``). The flooding district
    is the last of ``districts``; its agent (the last of ``agents``) is started again for the other year."""
    others, flooder = districts[:-1], districts[-1]
    alone, _ = resync_all(env, dbs, others)
    stop(agents[-1:])
    year = str(int(YEAR) + 1)
    flooding = {**env, "RESYNC_DISTRICT": flooder, "RESYNC_DISTRICT_DB": dbs[flooder], "RESYNC_SCHOOL_YEAR": year}
    run(flooding, "seed", "--students", str(students * args.flood), "--year", year, "--reset")
    eng = engine(dbs[flooder])
    flood_records = sum(schema.count(eng, n, int(year)) for n in catalog.names())
    eng.dispose()
    agents.append(start(flooding, "agent", "run"))
    flood_batch = json.loads(run(flooding, "send", "--all", "--json"))["batch_id"]
    beside, _ = resync_all(env, dbs, others)
    store = AgentStore(engine(dbs[flooder]))
    answered = sum(o["processed"] for o in store.batch_objects(flood_batch))
    while (store.batch(flood_batch) or {}).get("status") != "completed":
        time.sleep(0.2)
    objects = store.batch_objects(flood_batch)
    print(json.dumps({"measure": "flood", "districts": len(others), "flood_records": flood_records,
                      "flood_answered_meanwhile": answered, "flood_refused": sum(o["errors"] for o in objects),
                      "others_alone_s": round(alone, 1), "others_beside_flood_s": round(beside, 1),
                      "slowdown": round(beside / alone - 1, 3)}), flush=True)


if __name__ == "__main__":
    main()
