"""Verification at the district: ask the state for its manifest, compare it with the district's own records,
and keep the outcome (per object counts, and every differing ref_id for ``--details`` and delta batches).

A run is queued (by ``resync verify``, by the state's request, or by a delta batch), then requested (the
manifest request is on the event queue, behind every record sent before it), then completed once every
part of the state's manifest is in and compared. Parts are kept as they arrive, so an agent that
restarts carries on waiting rather than asking again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Boolean, Column, Engine, Integer, String, Table, Text, case, func, or_, select, update

from agent.store import metadata
from messages.catalog import Catalog, ref_column
from messages.envelope import ManifestPart, new_id, now_ts
from messages.fields import fields
from messages.manifest import DIFFERENCES, Comparison, compare, record_digest
from publisher.publish import rows
from publisher.schema import DistrictSchema
from resync.db import insert_many, one_of
from resync.tables import to_wire

verify_run = Table(
    "verify_run", metadata,
    Column("run_id", String(32), primary_key=True),
    Column("initiator", String(16), nullable=False),  # district | state
    Column("requested_by", String(128), nullable=False),
    Column("request_id", String(32), unique=True),  # the state's request, when the state asked
    Column("batch_id", String(32), unique=True),  # the delta batch this run plans
    Column("school_year", Integer, nullable=False),
    Column("objects", Text, nullable=False),  # JSON list, parents first
    Column("status", String(16), nullable=False),  # queued | requested | completed | failed
    Column("created_at", String(32), nullable=False),
    Column("requested_at", String(32)),
    Column("completed_at", String(32)),
    Column("message", Text),
    Column("result", Text),  # JSON: one Comparison per object
)

verify_part = Table(
    "verify_part", metadata,
    Column("run_id", String(32), primary_key=True),
    Column("object", String(64), primary_key=True),
    Column("part", Integer, primary_key=True),
    Column("last", Boolean, nullable=False),
    Column("entries", Text, nullable=False),
    Column("error", Text),
)

verify_diff = Table(
    "verify_diff", metadata,
    Column("run_id", String(32), primary_key=True),
    Column("object", String(64), primary_key=True),
    Column("ref_id", String(32), primary_key=True),
    Column("kind", String(16), nullable=False),  # district_only | state_only | mismatched
)

PENDING = ("queued", "requested")
_FLUSH = 5_000


class VerifyStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def queue(self, objects: list[str], year: int, *, initiator: str = "district",
              requested_by: str = "district administrator", request_id: str | None = None,
              batch_id: str | None = None) -> str:
        run_id = new_id()
        with self.engine.begin() as conn:
            conn.execute(verify_run.insert().values(
                run_id=run_id, initiator=initiator, requested_by=requested_by, request_id=request_id,
                batch_id=batch_id, school_year=year, objects=json.dumps(objects), status="queued",
                created_at=now_ts()))
        return run_id

    def run(self, run_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(verify_run).where(verify_run.c.run_id == run_id)).first()
        return _decoded(row)

    def for_batch(self, batch_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(verify_run).where(verify_run.c.batch_id == batch_id)).first()
        return _decoded(row)

    def pending(self) -> list[dict[str, Any]]:
        """Runs not tied to a batch that still wait for their request to go out or their manifest to come in."""
        with self.engine.connect() as conn:
            found = conn.execute(select(verify_run).where(verify_run.c.status.in_(PENDING),
                                                          verify_run.c.batch_id.is_(None))
                                 .order_by(verify_run.c.created_at)).all()
        return [r for r in map(_decoded, found) if r is not None]

    def has_request(self, request_id: str) -> bool:
        with self.engine.connect() as conn:
            found = conn.execute(select(verify_run.c.run_id).where(verify_run.c.request_id == request_id)).first()
        return found is not None

    def set(self, run_id: str, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(verify_run).where(verify_run.c.run_id == run_id).values(**values))

    def add_parts(self, parts: list[ManifestPart]) -> None:
        """Keep manifest parts; a part that arrives twice (a redelivery, a resent manifest) is kept once."""
        with self.engine.begin() as conn:
            insert_many(conn, verify_part, [
                {"run_id": p.request, "object": p.object, "part": p.part, "last": p.last, "entries": p.entries,
                 "error": p.error} for p in parts],
                conflict=lambda stmt: stmt.on_conflict_do_nothing())

    def received(self, run_id: str) -> tuple[int, bool]:
        """How many objects' manifests are complete, and whether all of them are."""
        run = self.run(run_id)
        assert run is not None
        with self.engine.connect() as conn:
            got = conn.execute(select(verify_part.c.object, func.count(),
                                      func.max(case((verify_part.c.last, verify_part.c.part + 1), else_=0)))
                               .where(verify_part.c.run_id == run_id).group_by(verify_part.c.object)).all()
        complete = sum(1 for _, n, total in got if total and n == total)
        return complete, complete == len(run["objects"])

    def finish(self, run_id: str, results: list[Comparison]) -> None:
        """Keep the counts (the differences are kept already); drop the state's manifest, compared now."""
        self.set(run_id, status="completed", completed_at=now_ts(), result=json.dumps([r.as_dict() for r in results]))
        with self.engine.begin() as conn:
            conn.execute(verify_part.delete().where(verify_part.c.run_id == run_id))

    def state_manifest(self, run_id: str, name: str) -> tuple[str, str | None]:
        with self.engine.connect() as conn:
            parts = conn.execute(select(verify_part.c.entries, verify_part.c.error).where(
                verify_part.c.run_id == run_id, verify_part.c.object == name).order_by(verify_part.c.part)).all()
        return "".join(p.entries for p in parts), next((p.error for p in parts if p.error), None)

    def diff_refs(self, run_id: str, name: str, kinds: tuple[str, ...], *, after: str = "",
                  chunk: int = 2_000) -> Iterator[list[str]]:
        """The differing ref_ids of one object, in ref_id order, a chunk at a time."""
        d = verify_diff
        query = (select(d.c.ref_id).where(d.c.run_id == run_id, d.c.object == name, d.c.kind.in_(kinds))
                 .order_by(d.c.ref_id).limit(chunk))
        last = after
        while True:
            with self.engine.connect() as conn:
                page = [r[0] for r in conn.execute(query.where(d.c.ref_id > last))]
            if not page:
                return
            yield page
            last = page[-1]

    def details(self, run_id: str) -> dict[str, dict[str, list[str]]]:
        out: dict[str, dict[str, list[str]]] = {}
        with self.engine.connect() as conn:
            for name, kind, ref in conn.execute(select(verify_diff.c.object, verify_diff.c.kind, verify_diff.c.ref_id)
                                                .where(verify_diff.c.run_id == run_id)
                                                .order_by(verify_diff.c.object, verify_diff.c.ref_id)):
                out.setdefault(name, {k: [] for k in DIFFERENCES})[kind].append(ref)
        return out


def _decoded(row: Any) -> dict[str, Any] | None:
    if row is None:
        return None
    out = dict(row._mapping)
    out["objects"] = json.loads(out["objects"])
    out["result"] = json.loads(out["result"]) if out["result"] else None
    return out


def refused(engine: Engine, catalog: Catalog, names: list[str], year: int) -> dict[str, set[str]]:
    """Per object, the district's records the state will not hold: state-excluded ones and every record under
    one, the state's own rule (parents first, over every parent the objects need)."""
    schema = DistrictSchema(catalog)
    out: dict[str, set[str]] = {}
    with engine.connect() as conn:
        for name in catalog.plan(names, check_dependencies=True):
            obj, t = catalog.get(name), schema.tables[name]
            conds = [t.c.state_exclude.is_(True)] if obj.excludable else []
            conds += [one_of(t.c[ref_column(p)], out[p], engine) for p in obj.references if out.get(p)]
            if not conds:
                out[name] = set()
                continue
            query = select(t.c.ref_id).where(or_(*conds))
            if obj.year_scoped:
                query = query.where(t.c.school_year == year)
            out[name] = {r[0] for r in conn.execute(query)}
    return out


def district_manifest(engine: Engine, schema: DistrictSchema, name: str, year: int,
                      refused_refs: set[str]) -> Iterator[tuple[str, str, bool]]:
    """Each district record of ``name``: ref_id, digest of what the agent would send, whether the state
    refuses it; in ref_id order, read in keyset chunks."""
    obj = schema.catalog.get(name)
    table = schema.tables[name]
    position = {c.name: i for i, c in enumerate(table.columns)}
    parents = [(p, position[ref_column(p)]) for p in obj.references]
    cols = [(c, position[c], k) for c, k in fields(name)]
    dated = any(k in ("date", "decimal") for _, _, k in cols)
    event_year = year if obj.year_scoped else None
    key = position["ref_id"]
    for page in rows(engine, schema, name, year, chunk=10_000):
        for row in page:
            data = ({c: to_wire(k, row[i]) for c, i, k in cols} if dated else {c: row[i] for c, i, _ in cols})
            ref = row[key]
            yield ref, record_digest(obj, event_year, {p: row[i] for p, i in parents}, data), ref in refused_refs


def compare_run(engine: Engine, catalog: Catalog, store: VerifyStore, run_id: str) -> list[Comparison]:
    """Compare every object of the run with the state's manifest; keep each difference; return the counts."""
    run = store.run(run_id)
    assert run is not None
    names, year = run["objects"], run["school_year"]
    excluded = refused(engine, catalog, names, year)
    schema = DistrictSchema(catalog)
    results = []
    with engine.begin() as conn:
        conn.execute(verify_diff.delete().where(verify_diff.c.run_id == run_id))
    for name in names:
        state, error = store.state_manifest(run_id, name)
        result = Comparison(name, error=error)
        pending: list[dict[str, Any]] = []

        def sink(kind: str, ref: str, name: str = name, pending: list[dict[str, Any]] = pending) -> None:
            pending.append({"run_id": run_id, "object": name, "ref_id": ref, "kind": kind})
            if len(pending) >= _FLUSH:
                flush(pending)

        def flush(pending: list[dict[str, Any]]) -> None:
            if pending:
                with engine.begin() as conn:
                    insert_many(conn, verify_diff, pending)
                pending.clear()

        compare(district_manifest(engine, schema, name, year, excluded[name]), state, result, sink)
        flush(pending)
        results.append(result)
    return results
