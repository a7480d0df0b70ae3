"""The receiver's apply step: one delivery batch of one district's events, in one transaction, one ack each.

Read top to bottom: take the district's lock; answer what was seen before; then, run by run of the
same object, look up every parent the run needs in one query per parent object, decide each record
(excluded, under an excluded record, parent missing, or applied), and upsert the applied ones
together. A version older than the one the state holds (or than the delete that removed the record) is
ignored, whichever arrives first; a duplicate ``msg_id`` is a no-op, and one resent with other content for
the same record is applied by its version. The state tables have no foreign-key constraints: these checks
are the referential integrity, and the lock makes them exact even if two receivers ever overlap on one
district.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any

from sqlalchemy import Connection, String, case, delete, func, literal, select, text, union_all

from core.db import insert, insert_many, one_of
from core.tables import from_wire
from messages.catalog import ref_column
from messages.envelope import Ack, Action, ErrorInfo, Event, record_msg_id
from messages.errors import Category, Code
from messages.fields import fields
from messages.manifest import record_digest
from messages.text import clean
from state_receiver.schema import StateSchema


@dataclass(slots=True)
class Incoming:
    event: Event
    digest: str


@dataclass
class _Known:
    """What this batch has learned about which records exist at the state or are excluded."""

    present: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    excluded: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))


def _error(e: Event, category: Category, code: str, desc: str, extended: str = "") -> Ack:
    return Ack(e.msg_id, "error", ErrorInfo(int(category), code, desc, extended), e.object, e.ref_id, e.batch)


def _ok(e: Event) -> Ack:
    return Ack(e.msg_id, "ok", None, e.object, e.ref_id, e.batch)


def apply(conn: Connection, schema: StateSchema, district: str, batch: list[Incoming], now: str) -> list[Ack]:
    """Apply ``batch`` (in order) inside the caller's transaction and return one ack per message."""
    lock_district(conn, district)
    answered = _previous_answers(conn, schema, district, [i.event.msg_id for i in batch])
    before = {m: a.status for m, (_, a) in answered.items()}  # answers given before this batch, to count once
    tombstones = _tombstones(conn, schema, district, [i.event for i in batch])
    acks: dict[int, Ack] = {}  # position in batch -> answer
    fresh: list[tuple[Incoming, Ack]] = []  # answers given for the first time, to remember
    kept = _Kept()
    known = _Known()
    new_excluded: list[dict[str, Any]] = []
    positions = iter(range(len(batch)))
    dates = conn.dialect.name != "postgresql"  # PostgreSQL takes rows as JSON text, dates included

    for object_name, run_iter in groupby(batch, key=lambda i: i.event.object):
        run = [(next(positions), item) for item in run_iter]
        events = [item.event for _, item in run]
        _learn_parents(conn, schema, district, object_name, events, known)
        held = _held(conn, schema, district, object_name, events)
        deleted = tombstones.setdefault(object_name, {})
        obj = schema.catalog.get(object_name)
        table = schema.tables[object_name]
        pending: list[tuple[int, Incoming, dict[str, Any], Ack]] = []  # to upsert, with the answer they get
        deleting: list[tuple[int, Incoming]] = []

        def delete_pending(deleting: list[tuple[int, Incoming]] = deleting, deleted: dict[str, int] = deleted) -> None:
            if not deleting:  # asked before every change: most runs have no deletes
                return
            for (pos, item), ack in zip(deleting, _delete(conn, schema, district, deleting, now), strict=True):
                e = item.event
                known.present[e.object].discard(e.ref_id)
                if ack.ok and e.version:
                    deleted[e.ref_id] = max(deleted.get(e.ref_id, 0), e.version)
                answered[e.msg_id] = (item.digest, ack)
                acks[pos] = ack
                fresh.append((item, ack))
            deleting.clear()

        for pos, item in run:
            e = item.event
            row_now = held.get(e.ref_id)
            # what the state row would hold; a delete writes no row
            digest = "" if e.action is Action.DELETE else record_digest(obj, e.year, e.parents, e.data)
            # 1. seen before (in an earlier batch or earlier in this one): answer the same way; the same record
            # with other content (read anew after a crash) is applied by its version like any other
            if e.msg_id in answered:
                previous_digest, previous = answered[e.msg_id]
                if previous_digest == item.digest:
                    acks[pos] = previous
                    continue
                if (previous.object, previous.ref_id) != (e.object, e.ref_id):
                    acks[pos] = _error(
                        e,
                        Category.EVENT_PROCESSING,
                        Code.DUPLICATE_CONFLICT,
                        f"message {e.msg_id} was already received for another record",
                    )
                    continue
            # ... or applied before: the record's row carries the message that last wrote it
            elif row_now is not None and row_now.last_msg_id == e.msg_id:
                before[e.msg_id] = "ok"
                if (row_now.digest, row_now.version) == (digest, e.version):
                    acks[pos] = _ok(e)
                    continue
            # 2. deletes go together, after the changes before them and before the changes after them
            if e.action is Action.DELETE:
                _upsert(conn, table, pending, acks, fresh, kept)
                pending = []
                deleting.append((pos, item))
                continue
            delete_pending()
            # 3. read before a delete the state has applied, or before a newer version: the state keeps its own
            if deleted.get(e.ref_id, -1) > e.version or (row_now is not None and (row_now.version or 0) > e.version):
                ack = _ok(e)
            # 4. the record itself, or a parent of it, is not allowed to sync
            elif obj.excludable and e.data.get("state_exclude") is True:
                ack = _error(
                    e,
                    Category.EVENT_PROCESSING,
                    Code.STATE_EXCLUDED,
                    f"{object_name} {e.ref_id} is state-excluded and is not allowed to sync",
                )
            elif excluded_parent := next((p for p in obj.references if e.parents[p] in known.excluded[p]), None):
                ack = _error(
                    e,
                    Category.EVENT_PROCESSING,
                    Code.UNDER_EXCLUDED,
                    f"{object_name} {e.ref_id} is under state-excluded {excluded_parent} "
                    f"{e.parents[excluded_parent]} and is not allowed to sync",
                )
            # 5. every parent must already be at the state
            elif missing := next((p for p in obj.references if e.parents[p] not in known.present[p]), None):
                ack = _missing_parent(conn, schema, district, e, missing)
            # 6. apply (together with the rest of the run)
            else:
                ok = _ok(e)
                pending.append((pos, item, _row(schema, district, e, digest, now, dates=dates), ok))
                if e.batch is None and row_now is not None and row_now.last_msg_id not in (None, e.msg_id):
                    # a live change takes the row from a message that may still be redelivered: its answer
                    # must outlive the row's memory of it
                    kept.superseded.append(_answer_row(district, row_now.last_msg_id, row_now.digest, None,
                                                       e.object, e.ref_id, None, ok, now))
                known.present[object_name].add(e.ref_id)
                answered[e.msg_id] = (item.digest, ok)
                continue
            if ack.error is not None and ack.error.code in (Code.STATE_EXCLUDED, Code.UNDER_EXCLUDED):
                known.excluded[object_name].add(e.ref_id)
                new_excluded.append(
                    {"district_id": district, "object": object_name, "ref_id": e.ref_id, "code": ack.error.code}
                )
            answered[e.msg_id] = (item.digest, ack)
            acks[pos] = ack
            fresh.append((item, ack))
        _upsert(conn, table, pending, acks, fresh, kept)
        delete_pending()

    # 7. remember the answers no row carries (redelivery then gets the same answer), count each message once
    # per batch and object, log the errors
    fresh = list({item.event.msg_id: (item, a) for item, a in fresh}.values())  # a msg_id answered twice: once
    _record(conn, schema, district, fresh, kept, new_excluded, now)
    _tally(conn, schema, district, fresh, before)
    answers = [acks[pos] for pos in range(len(batch))]
    _count_live(conn, schema, district, batch, answers, now)
    return answers


@dataclass
class _Kept:
    """Which answers the state rows carry after this batch, and the answers of messages a live change took a
    row from."""

    in_rows: set[str] = field(default_factory=set)
    superseded: list[dict[str, Any]] = field(default_factory=list)


def _held(conn: Connection, schema: StateSchema, district: str, name: str, events: list[Event]) -> dict[str, Any]:
    """The state's row of each record the run changes: the message that last wrote it, its digest and version."""
    refs = {e.ref_id for e in events if e.action is not Action.DELETE}
    if not refs:
        return {}
    t = schema.tables[name]
    return {r.ref_id: r for r in conn.execute(select(t.c.ref_id, t.c.last_msg_id, t.c.digest, t.c.version).where(
        t.c.district_id == district, one_of(t.c.ref_id, refs, conn.engine)))}


def _tally(conn: Connection, schema: StateSchema, district: str, fresh: list[tuple[Incoming, Ack]],
           before: dict[str, str]) -> None:
    """Add this batch's answers to their batch's counts per object: a message answered before counts once, and
    only a change of its answer (an error now ok, or the reverse) moves the error count."""
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for item, a in fresh:
        e = item.event
        if e.batch is None:
            continue
        c = counts[(e.batch, e.object)]
        was = before.get(e.msg_id)
        c[0] += was is None
        c[1] += (a.status == "error") - (was == "error")
    rows = [{"district_id": district, "batch_id": b, "object": o, "processed": n, "errors": x}
            for (b, o), (n, x) in counts.items() if n or x]
    if not rows:
        return
    t = schema.batch_counts
    insert_many(conn, t, rows, conflict=lambda stmt: stmt.on_conflict_do_update(
        index_elements=["district_id", "batch_id", "object"],
        set_={"processed": t.c.processed + stmt.excluded.processed, "errors": t.c.errors + stmt.excluded.errors}))


def _tombstones(conn: Connection, schema: StateSchema, district: str, events: list[Event]) -> dict[str, dict[str, int]]:
    """Per object, the version of each delete the state applied to these records (those it remembers): one
    query for the whole batch."""
    refs = {e.ref_id for e in events if e.action is not Action.DELETE}
    if not refs:
        return {}
    t = schema.tombstones
    found = conn.execute(select(t.c.object, t.c.ref_id, t.c.version).where(
        t.c.district_id == district, one_of(t.c.ref_id, refs, conn.engine)))
    out: dict[str, dict[str, int]] = {}
    for r in found:
        out.setdefault(r.object, {})[r.ref_id] = r.version
    return out


def _count_live(conn: Connection, schema: StateSchema, district: str, batch: list[Incoming], acks: list[Ack],
                now: str) -> None:
    """Live changes (records sent outside any batch) answered today, and how long the last ones took from the
    district's commit (their ``ts``) to here."""
    live = [(i.event, a) for i, a in zip(batch, acks, strict=True) if i.event.batch is None]
    if not live:
        return
    last = max(e.ts for e, _ in live)
    try:
        lag: int | None = int((_instant(now) - _instant(last)).total_seconds() * 1000)
    except ValueError:
        lag = None
    t = schema.live
    row = {"district_id": district, "day": now[:10], "changes": len(live),
           "errors": sum(1 for _, a in live if not a.ok), "last_change": last, "last_applied": now, "lag_ms": lag}
    stmt = insert(conn.engine)(t).values(**row)
    same_day = t.c.day == stmt.excluded.day
    conn.execute(stmt.on_conflict_do_update(index_elements=["district_id"], set_={
        "day": stmt.excluded.day,
        "changes": case((same_day, t.c.changes + stmt.excluded.changes), else_=stmt.excluded.changes),
        "errors": case((same_day, t.c.errors + stmt.excluded.errors), else_=stmt.excluded.errors),
        "last_change": stmt.excluded.last_change,
        "last_applied": stmt.excluded.last_applied, "lag_ms": stmt.excluded.lag_ms}))


def _instant(ts: str) -> dt.datetime:
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))


def _previous_answers(
    conn: Connection, schema: StateSchema, district: str, msg_ids: list[str]
) -> dict[str, tuple[str, Ack]]:
    # by key alone, filtering the district here: the index led by the key is then the only plan, even
    # before the planner has statistics on a table that grew since it was last analyzed
    t = schema.inbox
    rows = conn.execute(select(t).where(one_of(t.c.msg_id, set(msg_ids), conn.engine))).all()
    out = {}
    for r in rows:
        if r.district_id != district:
            continue
        err = ErrorInfo(r.category, r.code, r.description or "") if r.status == "error" else None
        out[r.msg_id] = (r.digest, Ack(r.msg_id, r.status, err, r.object, r.ref_id, r.batch_id))
    return out


def _learn_parents(
    conn: Connection, schema: StateSchema, district: str, object_name: str, events: list[Event], known: _Known
) -> None:
    obj = schema.catalog.get(object_name)
    for parent in obj.references:
        refs = {e.parents[parent] for e in events if e.action is not Action.DELETE}
        refs -= known.present[parent] | known.excluded[parent]
        if not refs:
            continue
        pt = schema.tables[parent]
        found = conn.execute(select(pt.c.district_id, pt.c.ref_id).where(one_of(pt.c.ref_id, refs, conn.engine)))
        known.present[parent].update(r.ref_id for r in found if r.district_id == district)
        refs -= known.present[parent]
        if refs:
            x = schema.excluded
            found = conn.execute(
                select(x.c.ref_id).where(
                    x.c.district_id == district, x.c.object == parent, one_of(x.c.ref_id, refs, conn.engine)
                )
            )
            known.excluded[parent].update(r[0] for r in found)


def _missing_parent(conn: Connection, schema: StateSchema, district: str, e: Event, parent: str) -> Ack:
    ref = e.parents[parent]
    pt = schema.tables[parent]
    elsewhere = conn.execute(
        select(pt.c.district_id).where(pt.c.ref_id == ref, pt.c.district_id != district).limit(1)
    ).first()
    if elsewhere is not None:
        return _error(
            e,
            Category.ACCESS,
            Code.FOREIGN_PARENT,
            f"{e.object} {e.ref_id} points at {parent} {ref}, which belongs to another district",
        )
    return _error(
        e,
        Category.EVENT_PROCESSING,
        Code.PARENT_MISSING,
        f"{e.object} {e.ref_id}: parent {parent} {ref} is missing at the state",
        f"resync {parent} first, or send with Check Dependencies",
    )


@dataclass(frozen=True, slots=True)
class _Layout:
    """How an object's message becomes its state row, worked out once per object."""

    parents: tuple[tuple[str, str], ...]  # (parent object, column)
    year_scoped: bool
    values: tuple[str, ...]  # fields taken as they travel
    dates: tuple[str, ...]  # date fields, which SQLite takes only as dates (PostgreSQL reads the text itself)


def _layout(schema: StateSchema, name: str) -> _Layout:
    layout = schema.layouts.get(name)
    if layout is None:
        obj = schema.catalog.get(name)
        pairs = fields(name)
        layout = schema.layouts[name] = _Layout(tuple((p, ref_column(p)) for p in obj.references), obj.year_scoped,
                                                tuple(n for n, kind in pairs if kind != "date"),
                                                tuple(n for n, kind in pairs if kind == "date"))
    return layout


def _row(schema: StateSchema, district: str, e: Event, digest: str, now: str, *, dates: bool) -> dict[str, Any]:
    layout = _layout(schema, e.object)
    row: dict[str, Any] = {"district_id": district, "ref_id": e.ref_id}
    for p, column in layout.parents:
        row[column] = e.parents[p]
    if layout.year_scoped:
        row["school_year"] = e.year
    data = e.data
    for name in layout.values:
        row[name] = data.get(name)
    for name in layout.dates:
        row[name] = from_wire("date", data.get(name)) if dates else data.get(name)
    row.update(last_msg_id=e.msg_id, source_ts=e.ts, applied_at=now, version=e.version, digest=digest)
    return row


def _upsert(
    conn: Connection,
    table: Any,
    pending: list[tuple[int, Incoming, dict[str, Any], Ack]],
    acks: dict[int, Ack],
    fresh: list[tuple[Incoming, Ack]],
    kept: _Kept,
) -> None:
    if not pending:
        return

    def newer_wins(stmt: Any) -> Any:
        return stmt.on_conflict_do_update(
            index_elements=["district_id", "ref_id"],
            set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name not in ("district_id", "ref_id")},
            where=func.coalesce(table.c.version, 0) <= stmt.excluded.version,
        )

    latest: dict[str, dict[str, Any]] = {}  # one row per record: the newest version the batch holds
    for _, _, row, _ in pending:
        seen = latest.get(row["ref_id"])
        if seen is None or seen["version"] <= row["version"]:
            latest[row["ref_id"]] = row
    insert_many(conn, table, list(latest.values()), conflict=newer_wins)
    kept.in_rows.update(row["last_msg_id"] for row in latest.values())
    for pos, item, _, ack in pending:
        acks[pos] = ack
        fresh.append((item, ack))


def _delete(conn: Connection, schema: StateSchema, district: str, items: list[tuple[int, Incoming]],
            now: str) -> list[Ack]:
    """Deletes of one object, together: one query per child object finds which still have children."""
    if not items:
        return []
    name = items[0][1].event.object
    table = schema.tables[name]
    refs = {item.event.ref_id for _, item in items}
    held = dict(conn.execute(select(table.c.ref_id, func.coalesce(table.c.version, 0)).where(
        table.c.district_id == district, one_of(table.c.ref_id, refs, conn.engine))).all())
    # read before the version the state holds: the record stays
    stale = {item.event.ref_id for _, item in items if held.get(item.event.ref_id, -1) > item.event.version}
    holding: dict[str, str] = {}  # record -> a child object that still points at it
    wanted = refs - stale
    if wanted and schema.catalog.referrers(name):
        for child, ref in _children(conn, schema, name, district, wanted):
            holding.setdefault(ref, child)
    gone = wanted - set(holding)
    if gone:
        conn.execute(delete(table).where(table.c.district_id == district, one_of(table.c.ref_id, gone, conn.engine)))
        tombs: dict[str, int] = {}
        for _, item in items:
            e = item.event
            if e.ref_id in gone and e.version:
                tombs[e.ref_id] = max(tombs.get(e.ref_id, 0), e.version)
        if tombs:
            t = schema.tombstones
            insert_many(conn, t, [{"district_id": district, "object": name, "ref_id": r, "version": v,
                                   "deleted_at": now} for r, v in tombs.items()],
                        conflict=lambda stmt: stmt.on_conflict_do_update(
                            index_elements=["district_id", "object", "ref_id"],
                            set_={"version": stmt.excluded.version, "deleted_at": stmt.excluded.deleted_at},
                            where=t.c.version < stmt.excluded.version))
    out = []
    for _, item in items:
        e = item.event
        if e.ref_id in holding:
            out.append(_error(e, Category.EVENT_PROCESSING, Code.HAS_CHILDREN,
                              f"{e.object} {e.ref_id} still has child records at the state; delete them first",
                              f"{holding[e.ref_id]} records point at it"))
        else:
            out.append(_ok(e))
    return out


_CHILD_CHECKS: dict[tuple[str, tuple[str, ...]], str] = {}


def _children(conn: Connection, schema: StateSchema, name: str, district: str, refs: set[str]) -> Any:
    """(child object, record) for each of ``refs`` that a child record still points at: one statement for every
    child object (a Calendar has 36), one round trip. On PostgreSQL the SQL is built once per object: building
    and keying a 36-part union costs more than running it."""
    if conn.dialect.name != "postgresql":
        checks = []
        for child in schema.catalog.referrers(name):
            ct = schema.tables[child]
            column = ct.c[ref_column(name)]
            checks.append(select(literal(child, String).label("child"), column.label("ref"))
                          .where(ct.c.district_id == district, column.in_(refs)))
        return conn.execute(union_all(*checks))
    key = (name, tuple(schema.catalog.referrers(name)))  # the SQL depends on nothing else
    sql = _CHILD_CHECKS.get(key)
    if sql is None:
        quote = conn.dialect.identifier_preparer.quote
        sql = _CHILD_CHECKS[key] = " UNION ALL ".join(
            f"SELECT '{child}' AS child, {quote(ref_column(name))} AS ref FROM {quote(schema.tables[child].name)} "
            f"WHERE district_id = %(district)s AND {quote(ref_column(name))} = ANY(%(refs)s)"
            for child in schema.catalog.referrers(name))
    # prepared on the server once per connection: planning a 36-part union costs more than running it
    psycopg_conn: Any = conn.connection.dbapi_connection
    return psycopg_conn.cursor().execute(sql, {"district": district, "refs": list(refs)}, prepare=True).fetchall()


def lock_district(conn: Connection, district: str) -> None:
    """Serialize writers of one district's records for the rest of the transaction (PostgreSQL; SQLite
    has a single writer anyway)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"resync district {district}"})


def _record(
    conn: Connection,
    schema: StateSchema,
    district: str,
    fresh: list[tuple[Incoming, Ack]],
    kept: _Kept,
    new_excluded: list[dict[str, Any]],
    now: str,
) -> None:
    """The inbox keeps the answers no row carries: errors, deletes, records the state kept its own version of,
    and any message whose msg_id is not derived from its record (``record_msg_id``), which only the inbox can
    tell from another record's."""
    rows = [_answer_row(district, a.msg_id, item.digest, item.event.batch, item.event.object, item.event.ref_id,
                        item.event.year, a, now)
            for item, a in fresh if a.msg_id not in kept.in_rows or not _derived(item.event)]
    if rows:
        insert_many(conn, schema.inbox, rows,
                    # a msg_id answered again for new content of its record: the answer it now gets
                    conflict=lambda stmt: stmt.on_conflict_do_update(
                        index_elements=["msg_id", "district_id"],
                        set_={c: stmt.excluded[c] for c in ("digest", "status", "category", "code", "description",
                                                            "received_at")}))
    answered = {r["msg_id"] for r in rows}
    superseded = list({r["msg_id"]: r for r in kept.superseded if r["msg_id"] not in answered}.values())
    if superseded:
        insert_many(conn, schema.inbox, superseded, conflict=lambda stmt: stmt.on_conflict_do_nothing())
    errors = [(item, a) for item, a in fresh if a.error is not None]
    if errors:
        log_errors(
            conn,
            schema,
            district,
            [(item.event.msg_id, item.event.object, item.event.ref_id, item.event.batch, a.error)
             for item, a in errors if a.error],
            now,
        )
    if new_excluded:
        insert_many(conn, schema.excluded, new_excluded, conflict=lambda stmt: stmt.on_conflict_do_nothing())


def _derived(e: Event) -> bool:
    return e.msg_id == record_msg_id(e.batch, e.object, e.ref_id, e.version)


def _answer_row(district: str, msg_id: str, digest: str, batch: str | None, obj: str, ref_id: str,
                year: int | None, a: Ack, now: str) -> dict[str, Any]:
    return {"district_id": district, "msg_id": msg_id, "digest": digest, "batch_id": batch, "object": obj,
            "ref_id": ref_id, "school_year": year, "status": a.status,
            "category": a.error.category if a.error else None, "code": a.error.code if a.error else None,
            "description": a.error.desc if a.error else None, "received_at": now}


def log_errors(
    conn: Connection,
    schema: StateSchema,
    district: str | None,
    errors: list[tuple[str | None, str | None, str | None, str | None, ErrorInfo]],
    now: str,
) -> None:
    """The state's error log: (msg_id, object, ref_id, batch, error) each; retention removes a batch's with it."""
    conn.execute(
        schema.error_log.insert(),
        [
            {
                "district_id": district,
                "msg_id": msg_id,
                "object": obj,
                "ref_id": ref,
                "batch_id": batch,
                "category": err.category,
                "code": err.code,
                "description": clean(err.desc, 2000),
                "extended": clean(err.extended or "", 4000),
                "logged_at": now,
            }
            for msg_id, obj, ref, batch, err in errors
        ],
    )
