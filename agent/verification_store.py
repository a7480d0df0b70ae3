"""Verification at the district: ask the state for its manifest, compare it with the district's own records,
and keep the outcome (per object counts, and every differing ref_id for ``--details`` and delta batches).

A run is queued (by ``resync verify``, by the state's request, or by a delta batch), then requested (the
manifest request is on the event queue, behind every record sent before it), then completed once every
part of the state's manifest is in and compared. Parts are kept as they arrive, so an agent that
restarts carries on waiting rather than asking again.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import Engine, case, func, or_, select, update

from agent.tables import verify_diff, verify_part, verify_run
from core.db import insert_many, keyset_pages, one_of
from messages.catalog import Catalog, ref_column
from messages.envelope import ManifestPart, new_id, now_ts
from messages.errors import ConfigError
from messages.fields import fields
from messages.manifest import DIFFERENCES, Comparison, compare, values_digest
from publisher.schema import DistrictSchema

PENDING = ("queued", "requested")
T = TypeVar("T")
_FLUSH = 5_000


class VerifyStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def queue(self, objects: list[str], year: int, *, initiator: str = "district",
              requested_by: str = "district administrator", request_id: str | None = None,
              batch_id: str | None = None) -> str:
        if not objects:
            raise ConfigError(f"nothing to verify: no object is resynced for school year {year}")
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
        complete = len(self._complete(run_id))
        return complete, complete == len(run["objects"])

    def has_manifest(self, run_id: str, name: str) -> bool:
        """Whether every part of one object's manifest is in."""
        return name in self._complete(run_id, name)

    def _complete(self, run_id: str, name: str | None = None) -> list[str]:
        """The objects whose manifest is whole: its last part and every part before it are in."""
        p = verify_part
        query = (select(p.c.object, func.count(), func.max(case((p.c.last, p.c.part + 1), else_=0)))
                 .where(p.c.run_id == run_id).group_by(p.c.object))
        if name is not None:
            query = query.where(p.c.object == name)
        with self.engine.connect() as conn:
            return [obj for obj, n, total in conn.execute(query) if total and n == total]

    def finish(self, run_id: str, results: list[Comparison]) -> None:
        """Keep the counts (the differences are kept already); drop the state's manifest, compared now."""
        self.set(run_id, status="completed", completed_at=now_ts(), result=json.dumps([r.as_dict() for r in results]))
        with self.engine.begin() as conn:
            conn.execute(verify_part.delete().where(verify_part.c.run_id == run_id))

    def state_manifest(self, run_id: str, name: str) -> tuple[Iterator[str], str | None]:
        """One object's manifest from the state, a part at a time, and the error the state gave instead."""
        p = verify_part
        where = (p.c.run_id == run_id, p.c.object == name)
        with self.engine.connect() as conn:
            count = conn.execute(select(func.count()).select_from(p).where(*where)).scalar_one()
            error = conn.execute(select(p.c.error).where(*where, p.c.error.is_not(None)).limit(1)).scalar()

        def parts() -> Iterator[str]:
            for part in range(count):
                with self.engine.connect() as conn:
                    yield conn.execute(select(p.c.entries).where(*where, p.c.part == part)).scalar_one()

        return parts(), error

    def diff_refs(self, run_id: str, name: str, kinds: tuple[str, ...], *, after: str = "",
                  chunk: int = 2_000) -> Iterator[list[str]]:
        """The differing ref_ids of one object, in ref_id order, a chunk at a time."""
        d = verify_diff
        query = select(d.c.ref_id).where(d.c.run_id == run_id, d.c.object == name, d.c.kind.in_(kinds))
        for page in keyset_pages(self.engine, query, d.c.ref_id, chunk, after=after):
            yield [r.ref_id for r in page]

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


def refused(engine: Engine, schema: DistrictSchema, names: list[str]) -> dict[str, set[str]]:
    """Per object, the district's records the state will not hold: state-excluded ones and every record under
    one, the state's own rule (parents first, over every parent the objects need, in every year)."""
    catalog = schema.catalog
    out: dict[str, set[str]] = {}
    with engine.connect() as conn:
        for name in catalog.plan(names, check_dependencies=True):
            obj, t = catalog.get(name), schema.tables[name]
            conds = [t.c.state_exclude.is_(True)] if obj.excludable else []
            conds += [one_of(t.c[ref_column(p)], out[p], engine) for p in obj.references if out.get(p)]
            if not conds:
                out[name] = set()
                continue
            # every year: a record not tied to a year may sit under an excluded record of another year
            out[name] = {r[0] for r in conn.execute(select(t.c.ref_id).where(or_(*conds)))}
    return out


def district_manifest(engine: Engine, schema: DistrictSchema, name: str, year: int,
                      refused_refs: set[str]) -> Iterator[tuple[str, str, bool]]:
    """Each district record of ``name``: ref_id, digest of what the agent would send, whether the state
    refuses it; in ref_id order, streamed from one query."""
    obj = schema.catalog.get(name)
    table = schema.tables[name]
    kinds = [k for _, k in fields(name)]
    query = select(table.c.ref_id, *(table.c[ref_column(p)] for p in obj.references),
                   *(table.c[c] for c, _ in fields(name))).order_by(table.c.ref_id)
    if obj.year_scoped:
        query = query.where(table.c.school_year == year)
    event_year = year if obj.year_scoped else None
    first = 1 + len(obj.references)
    convert = [(i, _WIRE[k]) for i, k in enumerate(kinds, first) if k in _WIRE]
    for page in read_ahead(_stream(engine, query)):
        for row in page:
            values = list(row[first:])
            for i, wire in convert:
                if row[i] is not None:
                    values[i - first] = wire(row[i])
            ref = row[0]
            yield ref, values_digest(event_year, list(row[1:first]), values), ref in refused_refs


_WIRE: dict[str, Callable[[Any], Any]] = {
    # what the publisher sends (result rows through ``to_wire``) from what the driver returns: SQLite
    # keeps dates as text and booleans as integers; PostgreSQL returns decimals as Decimal
    "date": lambda v: v if isinstance(v, str) else v.isoformat(),
    "decimal": lambda v: float(v) if isinstance(v, Decimal) else v,
    "bool": bool,
}


def _stream(engine: Engine, query: Any, size: int = 2_000) -> Iterator[Sequence[Any]]:
    """Plain driver tuples in pages, from a server-side cursor on PostgreSQL: a million rows cost a third
    of what result rows cost, and never sit in memory at once."""
    compiled = query.compile(dialect=engine.dialect)
    params: Any = compiled.params
    if compiled.positional:
        params = tuple(compiled.params[k] for k in compiled.positiontup or ())
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor(name="resync_manifest") if engine.dialect.name == "postgresql" else raw.cursor()
        cursor.execute(str(compiled), params)
        while page := cursor.fetchmany(size):
            yield page
        cursor.close()
    finally:
        raw.rollback()
        raw.close()


def read_ahead(pages: Iterator[T]) -> Iterator[T]:
    """The same pages, the next one read on another thread while this one is used: the database and the
    digests work side by side. A reader whose consumer went away stops at its next page."""
    ahead: queue.Queue[tuple[T | None, BaseException | None, bool]] = queue.Queue(maxsize=1)
    gone = threading.Event()

    def put(item: tuple[T | None, BaseException | None, bool]) -> bool:
        while not gone.is_set():
            try:
                ahead.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def reader() -> None:
        try:
            for page in pages:
                if not put((page, None, False)):
                    return
        except BaseException as e:
            put((None, e, True))
        else:
            put((None, None, True))
        finally:
            close = getattr(pages, "close", None)
            if close is not None:
                close()

    threading.Thread(target=reader, name="read-ahead", daemon=True).start()
    try:
        while True:
            page, error, done = ahead.get()
            if error is not None:
                raise error
            if done or page is None:
                return
            yield page
    finally:
        gone.set()


def compare_run(engine: Engine, catalog: Catalog, store: VerifyStore, run_id: str,
                arrived: Callable[[str], bool] = lambda _: True) -> list[Comparison] | None:
    """Compare every object of the run with the state's manifest as it comes in (``arrived`` waits for one
    object's manifest; False: stop); keep each difference; return the counts, or None if stopped."""
    run = store.run(run_id)
    assert run is not None
    names, year = run["objects"], run["school_year"]
    schema = DistrictSchema(catalog)
    excluded = refused(engine, schema, names)
    results = []
    with engine.begin() as conn:
        conn.execute(verify_diff.delete().where(verify_diff.c.run_id == run_id))
    pending: list[dict[str, Any]] = []

    def flush() -> None:
        if pending:
            with engine.begin() as conn:
                insert_many(conn, verify_diff, pending)
            pending.clear()

    for name in names:
        if not arrived(name):
            return None
        state, error = store.state_manifest(run_id, name)
        result = Comparison(name, error=error)

        def sink(kind: str, ref: str, name: str = name) -> None:
            pending.append({"run_id": run_id, "object": name, "ref_id": ref, "kind": kind})
            if len(pending) >= _FLUSH:
                flush()

        compare(district_manifest(engine, schema, name, year, excluded[name]), state, result, sink)
        results.append(result)
    flush()
    return results
