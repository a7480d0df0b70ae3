"""Storage measures for ``resync_bench.py``: the real mean message size, a second full resync onto a state that
already holds the district (the steady state), a resync beside other districts' records, and consecutive full
resyncs under retention with every bookkeeping table's rows and size on disk after each."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, func, inspect, select, text

from agent import retention as agent_retention
from core.settings import Settings
from messages.catalog import Catalog
from messages.codec import encode_event
from messages.envelope import Action, now_ts
from publisher.changes import versioned
from publisher.publish import record_event
from publisher.schema import DistrictSchema
from state_receiver import retention as state_retention
from state_receiver.schema import StateSchema

DISTRICT_BOOKS = ("agent_log", "agent_error_log", "resync_batch", "resync_batch_object", "resync_record_version")
STATE_BOOKS = ("receiver_inbox", "receiver_batch_count", "receiver_marker", "receiver_tombstone", "receiver_sweep",
               "receiver_sweep_log", "receiver_error_log")


def mean_event_bytes(district: Engine, catalog: Catalog, year: int, sample: int = 200) -> float:
    """The encoded size of the district's record messages, averaged over its records (a sample per object)."""
    schema = DistrictSchema(catalog)
    weighted, records = 0.0, 0
    with district.connect() as conn:
        for name in catalog.names():
            n = schema.count(district, name, year)
            table = schema.tables[name]
            rows = conn.execute(versioned(select(table), table, name).limit(sample)).all()
            if not n or not rows:
                continue
            sizes = [len(encode_event(record_event(catalog, "district-1", "0" * 32, now_ts(), "0" * 32, 1, name,
                                                   Action.CHANGE, r.ref_id, r, getattr(r, "school_year", None), 0)))
                     for r in rows]
            weighted += n * statistics.mean(sizes)
            records += n
    return weighted / max(1, records)


def copy_to_other_districts(state: Engine, catalog: Catalog, district: str, others: int) -> int:
    """The state as it is when it also holds ``others`` more districts like this one: every object table's rows
    and the inbox's, copied under other district ids and RefIds. Returns the rows added."""
    schema = StateSchema(catalog)
    added = 0
    with state.begin() as conn:
        for table in [*schema.tables.values(), schema.inbox]:
            cols = [c.name for c in table.columns]
            listed = ", ".join(cols)
            # RefIds are GUIDs, unique across districts: each district's copy gets its own (the same function of
            # the original for a record and for every reference to it)
            picked = ", ".join(":d" if c == "district_id" else f"upper(md5({c} || :salt))" if _is_ref(c) else c
                               for c in cols)
            for k in range(others):
                added += conn.execute(text(f"INSERT INTO {table.name} ({listed}) SELECT {picked} FROM {table.name} "
                                           "WHERE district_id = :src"),
                                      {"d": f"other-{k + 1}", "salt": f"other-{k + 1}", "src": district}
                                      ).rowcount
    # as a state that has held them a while: vacuumed and analyzed (else autovacuum, woken by a million new rows,
    # would run during the measured resync)
    with state.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM (ANALYZE)"))
    return added


def _is_ref(column: str) -> bool:
    return column in ("ref_id", "msg_id", "last_msg_id") or column.endswith("_ref_id")


def books(district: Engine, state: Engine) -> dict[str, dict[str, int]]:
    """Rows and bytes on disk (table and indexes) of every bookkeeping table."""
    out: dict[str, dict[str, int]] = {}
    for eng, names in ((district, DISTRICT_BOOKS), (state, STATE_BOOKS)):
        present = set(inspect(eng).get_table_names())
        with eng.connect() as conn:
            for name in names:
                if name not in present:
                    continue
                rows = int(conn.execute(select(func.count()).select_from(text(name))).scalar_one())
                size = int(conn.execute(text("SELECT pg_total_relation_size(:t)"), {"t": name}).scalar_one())
                out[name] = {"rows": rows, "bytes": size}
    return out


def retention_runs(resync: Callable[[], tuple[str, float, dict[str, float]]], district: Engine, state: Engine,
                   catalog: Catalog, settings: Settings, repeat: int, total: int) -> list[dict[str, Any]]:
    """``repeat`` full resyncs; after each, one retention pass on both sides (what the daemons run once a minute)
    and the bookkeeping tables' rows and sizes."""
    out = []
    for i in range(repeat):
        _, elapsed, _ = resync()
        agent_retention.prune(district, settings)
        state_retention.prune(state, StateSchema(catalog), settings)
        kept = books(district, state)
        print(f"resync {i + 1}: {round(total / elapsed):,}/s; " + ", ".join(
            f"{k} {v['rows']:,} rows {v['bytes'] / 1e6:.1f} MB" for k, v in kept.items()), flush=True)
        out.append({"resync": i + 1, "per_s": round(total / elapsed), "books": kept})
    return out
