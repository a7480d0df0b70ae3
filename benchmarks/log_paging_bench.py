"""Agent log paging at depth: the console's Agent log pages by id (keyset), filtered by batch, object or errors.

    python benchmarks/log_paging_bench.py [--rows 2000000] [--postgres postgresql://postgres@127.0.0.1:5432]

Fills a scratch PostgreSQL database's agent log with ``--rows`` outcomes (40 batches of 60 objects, 0.5 %
errors), then times one page (50 rows) of each filter at the top and at the bottom of the log: the median of
five. One JSON line per filter.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid

import psycopg

from agent.store import AgentStore
from core.db import engine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432")
    args = ap.parse_args()
    name = f"bench_log_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(f"{args.postgres}/postgres", autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    eng = engine(f"{args.postgres}/{name}")
    try:
        store = AgentStore(eng)
        store.create()
        with psycopg.connect(f"{args.postgres}/{name}", autocommit=True) as conn:
            started = time.perf_counter()
            conn.execute(
                "INSERT INTO agent_log (msg_id, batch_id, object, ref_id, status, code, description, logged_at) "
                "SELECT md5(i::text), 'BATCH' || lpad((i / (%(n)s / 40))::text, 27, '0'), 'Object' || (i %% 60), "
                "upper(md5((i + 1)::text)), CASE WHEN i %% 200 = 0 THEN 'error' ELSE 'ok' END, "
                "CASE WHEN i %% 200 = 0 THEN '9.1' END, NULL, '2026-12-06T00:00:00Z' "
                "FROM generate_series(1, %(n)s) i", {"n": args.rows})
            conn.execute("ANALYZE agent_log")
            filled = time.perf_counter() - started
            lowest = conn.execute("SELECT min(id) + 1000 FROM agent_log").fetchone()[0]  # type: ignore[index]
        print(json.dumps({"rows": args.rows, "fill_s": round(filled, 1)}))
        cases = {"none": {}, "object": {"obj": "Object7"}, "errors": {"errors_only": True},
                 "batch": {"batch_id": "BATCH" + "0" * 25 + "20"}, "object+errors": {"obj": "Object0",
                                                                                  "errors_only": True}}
        for label, filters in cases.items():
            out: dict[str, object] = {"filter": label}
            for where, before in (("top", None), ("bottom", lowest)):
                times, rows = [], 0
                for _ in range(5):
                    t = time.perf_counter()
                    rows = len(store.log(limit=51, before=before, **filters))  # type: ignore[arg-type]
                    times.append((time.perf_counter() - t) * 1000)
                out[f"{where}_ms"] = round(statistics.median(times), 2)
                out[f"{where}_rows"] = rows
            print(json.dumps(out), flush=True)
    finally:
        eng.dispose()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
