"""Deletes converge: when a resync batch ends, the state removes what the district no longer has.

A batch that ends (its BATCH_END marker, not a delta batch's) sent every record of each object it
closed with an OBJECT_END marker. For each such object whose records were all answered, a state
record of that district (and year, where year-scoped) that was applied before the batch started and
that the batch did not send is gone from the district. Every record under one of those goes too,
whatever object it belongs to: the district's tables keep their foreign keys, so it cannot hold a
child whose parent it deleted, and the state never keeps an orphan even after a partial resync.
Removal runs children first. A cancelled or interrupted batch never reaches this point, so it
removes nothing. It all happens in the transaction that records the marker, so it happens once.
"""

from __future__ import annotations

import structlog
from sqlalchemy import Connection, String, and_, delete, exists, func, literal, or_, select

from messages.catalog import ref_column
from messages.envelope import MarkerKind
from resync.db import insert
from state_receiver.schema import StateSchema

log = structlog.get_logger()


def sweep_batch(conn: Connection, schema: StateSchema, district: str, batch_id: str, now: str) -> dict[str, int]:
    """Remove what batch ``batch_id`` showed gone from the district; returns the records removed per object."""
    mk, inbox, sw = schema.markers, schema.inbox, schema.sweep
    catalog = schema.catalog
    started = conn.execute(select(mk.c.received_at).where(
        mk.c.district_id == district, mk.c.batch_id == batch_id, mk.c.kind == MarkerKind.BATCH_START.value)).scalar()
    if started is None:
        log.warning("batch end without a start; nothing swept", district=district, batch=batch_id)
        return {}
    ends = conn.execute(select(mk.c.object, mk.c.school_year, mk.c.count).where(
        mk.c.district_id == district, mk.c.batch_id == batch_id, mk.c.kind == MarkerKind.OBJECT_END.value)).all()
    notes: dict[str, str] = {}
    doomed: set[str] = set()
    for name, year, count in ends:
        if name not in schema.tables:
            continue
        answered = conn.execute(select(func.count()).select_from(inbox).where(
            inbox.c.district_id == district, inbox.c.batch_id == batch_id, inbox.c.object == name)).scalar_one()
        if count is None or answered < count:
            notes[name] = f"not swept: {answered} of {count} records answered"
            log.warning("object not swept: records missing", district=district, batch=batch_id, object=name,
                        answered=answered, sent=count)
            continue
        t = schema.tables[name]
        gone = select(literal(district, String), literal(name, String), t.c.ref_id).where(
            t.c.district_id == district,
            t.c.applied_at < started,  # a record synced while the batch ran is the district's, sent or not
            ~exists().where(inbox.c.district_id == district, inbox.c.batch_id == batch_id,
                            inbox.c.object == name, inbox.c.ref_id == t.c.ref_id))
        if catalog.get(name).year_scoped and year is not None:
            gone = gone.where(t.c.school_year == year)
        conn.execute(insert(conn.engine)(sw).from_select(["district_id", "object", "ref_id"], gone))
        if _holds(conn, schema, district, name):
            doomed.add(name)
    if doomed:
        for name in catalog.names():  # parents first, so each level sees every doomed record above it
            parents = [p for p in catalog.get(name).references if p in doomed]
            if not parents:
                continue
            t = schema.tables[name]
            under = select(literal(district, String), literal(name, String), t.c.ref_id).where(
                t.c.district_id == district,
                or_(*(t.c[ref_column(p)].in_(select(sw.c.ref_id).where(sw.c.district_id == district,
                                                                        sw.c.object == p)) for p in parents)))
            stmt = insert(conn.engine)(sw).from_select(["district_id", "object", "ref_id"], under)
            conn.execute(stmt.on_conflict_do_nothing())
            if _holds(conn, schema, district, name):
                doomed.add(name)
    removed: dict[str, int] = {}
    for name in reversed(catalog.names()):  # children before parents
        if name not in doomed:
            continue
        t = schema.tables[name]
        removed[name] = conn.execute(delete(t).where(and_(
            t.c.district_id == district,
            t.c.ref_id.in_(select(sw.c.ref_id).where(sw.c.district_id == district, sw.c.object == name))))).rowcount
    conn.execute(delete(sw).where(sw.c.district_id == district))
    years = {name: year for name, year, _ in ends}
    rows = [{"district_id": district, "batch_id": batch_id, "object": name, "school_year": years.get(name),
             "removed": removed.get(name, 0), "swept_at": now,
             "note": notes.get(name) or (None if name in years else "under a removed record")}
            for name in catalog.names() if name in years or name in removed]
    if rows:
        conn.execute(schema.sweep_log.insert(), rows)
    if removed:
        log.info("removed records the district no longer has", district=district, batch=batch_id, removed=removed)
    return removed


def _holds(conn: Connection, schema: StateSchema, district: str, name: str) -> bool:
    # (an INSERT ... SELECT does not report its row count through every driver)
    sw = schema.sweep
    return conn.execute(select(sw.c.ref_id).where(sw.c.district_id == district, sw.c.object == name).limit(1)).first() \
        is not None
