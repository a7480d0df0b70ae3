"""Live sync benchmark (``resync_bench.py --live``): writers commit changes at a fixed rate while the agent and the
receiver run; the lag of each change from its commit to the agent counting the state's answer, the rate the
pipeline sustains, the agent's memory over a long run, and what capture costs the district's own writes.

Writers are processes of their own (psycopg, no ORM), each committing transactions of three kinds: a new school
and a calendar under it (two changes), a rename of one of its schools (one), the delete of one of its calendars
(one). The lag is measured on the inserted calendars: the agent log's ``logged_at`` minus the commit's time.
"""

from __future__ import annotations

import multiprocessing
import random
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Engine, select

from agent import live_store
from agent.tables import agent_log
from messages import catalog as catalog_mod


def _writer(dsn: str, rate: float, seconds: float, seed: int, out: str) -> None:
    rng = random.Random(seed)
    conn = psycopg.connect(dsn)
    school = conn.execute("SELECT * FROM school LIMIT 1").fetchone()
    cols = [d.name for d in conn.execute("SELECT * FROM school LIMIT 0").description or []]
    district = school[cols.index("district_ref_id")] if school else None
    conn.commit()
    mine: list[tuple[str, str]] = []
    samples: list[str] = []
    changes, started = 0, time.time()
    while (now := time.time()) - started < seconds:
        if rate and changes / rate > now - started:
            time.sleep(min(changes / rate - (now - started), 0.05))
            continue
        kind = rng.random()
        with conn.transaction():
            if kind < 0.5 or len(mine) < 10:
                s, c = uuid.uuid4().hex.upper(), uuid.uuid4().hex.upper()
                conn.execute("INSERT INTO school (ref_id, district_ref_id, name) VALUES (%s, %s, %s)",
                             (s, district, f"bench {s[:6]}"))
                conn.execute("INSERT INTO calendar (ref_id, school_ref_id, school_year, name, state_exclude) "
                             "VALUES (%s, %s, 2027, %s, false)", (c, s, f"bench {c[:6]}"))
                mine.append((s, c))
                added = c
                n = 2
            elif kind < 0.8:
                conn.execute("UPDATE school SET name = %s WHERE ref_id = %s", (f"renamed {changes}",
                                                                                rng.choice(mine)[0]))
                added, n = "", 1
            else:
                s, c = mine.pop(rng.randrange(len(mine)))
                conn.execute("DELETE FROM calendar WHERE ref_id = %s", (c,))
                added, n = "", 1
        if added:
            samples.append(f"{added} {time.time():.6f}")
        changes += n
    Path(out).write_text(f"{changes}\n" + "\n".join(samples))


def write(dsn: str, rate: float, seconds: float, writers: int, tmp: Path) -> tuple[int, dict[str, float]]:
    """Commit changes from ``writers`` processes at ``rate`` changes/s in all (0: as fast as they can). Returns
    the changes committed and each inserted calendar's commit time."""
    ctx = multiprocessing.get_context("spawn")
    outs = [str(tmp / f"writer-{i}-{uuid.uuid4().hex[:6]}.txt") for i in range(writers)]
    procs = [ctx.Process(target=_writer, args=(dsn, rate / writers, seconds, i, out)) for i, out in enumerate(outs)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    total, commits = 0, {}
    for out in outs:
        first, *rest = Path(out).read_text().splitlines()
        total += int(first)
        commits.update((ref, float(t)) for ref, t in (line.split() for line in rest))
    return total, commits


def caught_up(district: Engine) -> bool:
    return live_store.caught_up(district, catalog_mod.load())


def wait_caught_up(district: Engine, limit: float = 600) -> float:
    started = time.perf_counter()
    while not caught_up(district):
        if time.perf_counter() - started > limit:
            raise SystemExit("live sync did not catch up")
        time.sleep(0.05)
    return time.perf_counter() - started


def lags(district: Engine, commits: dict[str, float]) -> dict[str, float]:
    """Seconds from each calendar's commit to the agent logging the state's answer: p50, p99, max."""
    from datetime import datetime
    refs = list(commits)
    logged: dict[str, float] = {}
    with district.connect() as conn:
        for i in range(0, len(refs), 5000):
            for ref, at in conn.execute(select(agent_log.c.ref_id, agent_log.c.logged_at).where(
                    agent_log.c.ref_id.in_(refs[i:i + 5000]), agent_log.c.batch_id.is_(None))):
                t = datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()
                logged[ref] = min(logged.get(ref, t), t)
    values = sorted(max(0.0, logged[r] - commits[r]) for r in refs if r in logged)
    if not values:
        return {"samples": 0}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"samples": len(values), "missing": len(refs) - len(values), "p50_ms": round(q[49] * 1000, 1),
            "p99_ms": round(q[98] * 1000, 1), "max_ms": round(values[-1] * 1000, 1)}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def phase(dsn: str, district: Engine, rate: float, seconds: float, tmp: Path, writers: int = 4) -> dict[str, Any]:
    started = time.perf_counter()
    committed, commits = write(dsn, rate, seconds, writers, tmp)
    wrote = time.perf_counter() - started
    drain = wait_caught_up(district)
    return {"target_per_s": rate, "committed": committed, "committed_per_s": round(committed / wrote),
            "drain_after_s": round(drain, 2), **lags(district, commits)}


def backlog(dsn: str, district: Engine, env: dict[str, str], agent: subprocess.Popen[bytes], n_seconds: float,
            tmp: Path) -> tuple[dict[str, Any], subprocess.Popen[bytes]]:
    """The pipeline's own rate: the agent stopped, writers fill the outbox as fast as they can, then the agent
    starts and the time until every change is answered is measured."""
    agent.terminate()
    agent.wait(timeout=60)
    committed, _ = write(dsn, 0, n_seconds, 4, tmp)
    agent = subprocess.Popen([sys.executable, "-m", "resync", "--log-level", "WARNING", "agent", "run"], env=env,
                             stderr=subprocess.DEVNULL)
    drain = wait_caught_up(district)
    return {"backlog_changes": committed, "drain_s": round(drain, 1),
            "sustained_per_s": round(committed / drain)}, agent


def capture_cost(dsn: str, rows: int = 20_000) -> dict[str, Any]:
    """The district's own writes with and without capture: single-row updates each in its own transaction, and
    one statement updating every row, on a table of ``rows`` schools."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE cost_probe (LIKE school INCLUDING ALL)")
        conn.execute("INSERT INTO cost_probe (ref_id, district_ref_id, name) SELECT upper(md5(i::text)), "
                     "(SELECT ref_id FROM district LIMIT 1), 'probe' FROM generate_series(1, %s) i", (rows,))
        refs = [r[0] for r in conn.execute("SELECT ref_id FROM cost_probe")]

        def timed() -> tuple[float, float]:
            started = time.perf_counter()
            for i, ref in enumerate(refs[:5000]):
                conn.execute("UPDATE cost_probe SET name = %s WHERE ref_id = %s", (f"n{i}", ref))
            single = (time.perf_counter() - started) / 5000
            started = time.perf_counter()
            conn.execute("UPDATE cost_probe SET name = name || 'x'")
            bulk = (time.perf_counter() - started) / rows
            return single * 1e6, bulk * 1e6

        def median(runs: list[tuple[float, float]]) -> tuple[float, float]:
            return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)

        timed()  # warm the cache
        plain = median([timed() for _ in range(3)])
        conn.execute("CREATE TRIGGER resync_capture_upd AFTER UPDATE ON cost_probe REFERENCING OLD TABLE AS "
                     "old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION "
                     "resync_capture_update('CostProbe', 'n')")
        captured = median([timed() for _ in range(3)])
        conn.execute("DROP TABLE cost_probe")
        conn.execute("DELETE FROM resync_outbox WHERE object = 'CostProbe'")
    return {"single_row_txn_us": [round(plain[0], 1), round(captured[0], 1)],
            "single_row_overhead": round(captured[0] / plain[0] - 1, 3),
            "bulk_row_us": [round(plain[1], 2), round(captured[1], 2)],
            "bulk_overhead": round(captured[1] / plain[1] - 1, 3)}


def run(env: dict[str, str], district: Engine, seconds: float, minutes: float, tmp: Path) -> list[dict[str, Any]]:
    """Every measurement, in order; returns one JSON-able dict per line of the report."""
    dsn = env["RESYNC_DISTRICT_DB"]
    subprocess.run([sys.executable, "-m", "resync", "capture", "install"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    out: list[dict[str, Any]] = [{"measure": "capture_cost", **capture_cost(dsn)}]
    print(f"capture cost: {out[-1]}", flush=True)
    daemons = {role: subprocess.Popen([sys.executable, "-m", "resync", "--log-level", "WARNING", role, "run"],
                                      env=env, stderr=subprocess.DEVNULL) for role in ("receiver", "agent")}
    try:
        batch = subprocess.run([sys.executable, "-m", "resync", "send", "--all", "--wait"], env=env, check=True,
                               capture_output=True, text=True).stdout.strip().splitlines()[-1]
        print(f"first full resync: {batch}", flush=True)
        for rate in (100, 1000, 3000):
            out.append({"measure": "lag", **phase(dsn, district, rate, seconds, tmp)})
            print(f"{rate:,} changes/s: {out[-1]}", flush=True)
        result, daemons["agent"] = backlog(dsn, district, env, daemons["agent"], seconds, tmp)
        out.append({"measure": "sustained", **result})
        print(f"backlog drained: {out[-1]}", flush=True)
        if minutes:
            rss: list[float] = []
            ctx = multiprocessing.get_context("spawn")
            writer = ctx.Process(target=write, args=(dsn, 1000, minutes * 60, 4, tmp))
            writer.start()
            while writer.is_alive():
                rss.append(round(rss_mb(daemons["agent"].pid), 1))
                writer.join(10)
            wait_caught_up(district)
            out.append({"measure": "memory", "minutes": minutes, "rate_per_s": 1000, "agent_rss_mb_first": rss[:6],
                        "agent_rss_mb_last": rss[-6:], "agent_rss_mb_max": max(rss)})
            print(f"agent memory over {minutes} minutes at 1,000 changes/s: {out[-1]}", flush=True)
    finally:
        for p in daemons.values():
            p.terminate()
            p.wait(timeout=30)
    return out
