"""Deletes converge: when a resync batch ends, the state removes what the district no longer has.

A batch that ends (its BATCH_END marker, not a delta batch's) sent every record of each object it
closed with an OBJECT_END marker. For each such object whose records were all answered, a state
record of that district (and year, where year-scoped) that was applied before the batch started and
that the batch did not send is gone from the district.

Such a record that still has a child at the state, which is not going too, waits: the district may have
moved that child under another parent, and its new version has not come yet (its object or its year
was not in this batch). The record is kept and noted (``receiver_deferred``), and it goes at the end
of a later batch once no child points at it. So the state never holds an orphan and never removes a
record the district still has. Removal runs children before parents, in the transaction that
records the batch's end, so it happens once. A cancelled or interrupted batch never gets here.
"""

from __future__ import annotations

from typing import Any

import structlog
from sqlalchemy import Connection, String, and_, delete, exists, literal, select

from core.db import insert
from messages.catalog import ref_column
from messages.envelope import MarkerKind
from state_receiver.schema import StateSchema

log = structlog.get_logger()
SWEPT = ["district_id", "object", "ref_id"]


def sweep_batch(conn: Connection, schema: StateSchema, district: str, batch_id: str, now: str) -> dict[str, int]:
    """Remove what batch ``batch_id`` showed gone from the district; returns the records removed per object."""
    mk, sw = schema.markers, schema.sweep
    started = conn.execute(select(mk.c.received_at).where(
        mk.c.district_id == district, mk.c.batch_id == batch_id, mk.c.kind == MarkerKind.BATCH_START.value)).scalar()
    if started is None:
        log.warning("batch end without a start; nothing swept", district=district, batch=batch_id)
        return {}
    ends = conn.execute(select(mk.c.object, mk.c.school_year, mk.c.count).where(
        mk.c.district_id == district, mk.c.batch_id == batch_id, mk.c.kind == MarkerKind.OBJECT_END.value)).all()
    notes: dict[str, str] = {}
    for name, year, count in ends:
        if name in schema.tables:
            notes[name] = _gone(conn, schema, district, batch_id, name, year, count, started)
    _retry_deferred(conn, schema, district)
    candidates = {name for (name,) in conn.execute(select(sw.c.object).where(sw.c.district_id == district)
                                                    .group_by(sw.c.object))}
    removed: dict[str, int] = {}
    for name in reversed(schema.catalog.names()):  # children first: a child that stays holds its parent
        if name not in candidates:
            continue
        held = _hold_parents_of_staying_children(conn, schema, district, name, now)
        if held:
            notes[name] = (notes.get(name) or "") + f"{held} kept while records under them remain at the state"
        t = schema.tables[name]
        doomed = select(sw.c.ref_id).where(sw.c.district_id == district, sw.c.object == name)
        removed[name] = conn.execute(delete(t).where(and_(t.c.district_id == district,
                                                          t.c.ref_id.in_(doomed)))).rowcount
        f = schema.deferred
        conn.execute(delete(f).where(f.c.district_id == district, f.c.object == name, f.c.ref_id.in_(doomed)))
    conn.execute(delete(sw).where(sw.c.district_id == district))
    years = {name: year for name, year, _ in ends}
    rows = [{"district_id": district, "batch_id": batch_id, "object": name, "school_year": years.get(name),
             "removed": removed.get(name, 0), "swept_at": now, "note": notes.get(name) or None}
            for name in schema.catalog.names() if name in years or name in removed]
    if rows:
        conn.execute(schema.sweep_log.insert(), rows)
    if any(removed.values()):
        log.info("removed records the district no longer has", district=district, batch=batch_id,
                 removed={k: v for k, v in removed.items() if v})
    return removed


def _gone(conn: Connection, schema: StateSchema, district: str, batch_id: str, name: str, year: int | None,
          count: int | None, started: str) -> str:
    """Put the object's records the batch did not send in the sweep; returns a note for the log."""
    inbox, sw, counts = schema.inbox, schema.sweep, schema.batch_counts
    answered = conn.execute(select(counts.c.processed).where(
        counts.c.district_id == district, counts.c.batch_id == batch_id, counts.c.object == name)).scalar() or 0
    if count is None or answered < count:
        log.warning("object not swept: records missing", district=district, batch=batch_id, object=name,
                    answered=answered, sent=count)
        return f"not swept: {answered} of {count} records answered; "
    t = schema.tables[name]
    # a record applied in this batch has applied_at after its start; one the batch sent and the state did
    # not apply (refused, or kept at a newer version) has its answer in the inbox
    sent = select(inbox.c.ref_id).where(inbox.c.district_id == district, inbox.c.batch_id == batch_id,
                                        inbox.c.object == name, inbox.c.ref_id.is_not(None))
    # PostgreSQL turns NOT EXISTS into a hash anti-join; SQLite runs it per row, but indexes a NOT IN list
    not_sent: Any = (~exists(sent.where(inbox.c.ref_id == t.c.ref_id)) if conn.dialect.name == "postgresql"
                     else t.c.ref_id.not_in(sent))
    gone = select(literal(district, String), literal(name, String), t.c.ref_id).where(
        t.c.district_id == district,
        t.c.applied_at < started,  # a record synced while the batch ran is the district's, sent or not
        not_sent)
    if schema.catalog.get(name).year_scoped and year is not None:
        gone = gone.where(t.c.school_year == year)
    conn.execute(insert(conn.engine)(sw).from_select(SWEPT, gone).on_conflict_do_nothing())
    return ""


def _retry_deferred(conn: Connection, schema: StateSchema, district: str) -> None:
    """Records held back by an earlier batch go again, unless the district has sent them since."""
    f, sw = schema.deferred, schema.sweep
    for (name,) in conn.execute(select(f.c.object).where(f.c.district_id == district).group_by(f.c.object)).all():
        if name not in schema.tables:
            continue
        t = schema.tables[name]
        still_gone = exists().where(t.c.district_id == district, t.c.ref_id == f.c.ref_id,
                                    t.c.applied_at < f.c.deferred_at)
        conn.execute(delete(f).where(f.c.district_id == district, f.c.object == name, ~still_gone))
        again = select(f.c.district_id, f.c.object, f.c.ref_id).where(f.c.district_id == district, f.c.object == name)
        conn.execute(insert(conn.engine)(sw).from_select(SWEPT, again).on_conflict_do_nothing())


def _hold_parents_of_staying_children(conn: Connection, schema: StateSchema, district: str, name: str,
                                      now: str) -> int:
    """Take out of the sweep each record of ``name`` that a staying record points at; note it as deferred."""
    sw, f = schema.sweep, schema.deferred
    going = sw.alias("going")
    held = 0
    for child in schema.catalog.referrers(name):
        ct = schema.tables[child]
        staying_child = exists().where(
            ct.c.district_id == district, ct.c[ref_column(name)] == sw.c.ref_id,
            ~exists().where(going.c.district_id == district, going.c.object == child, going.c.ref_id == ct.c.ref_id))
        hold = select(sw.c.district_id, sw.c.object, sw.c.ref_id, literal(child, String), literal(now, String)).where(
            sw.c.district_id == district, sw.c.object == name, staying_child)
        conn.execute(insert(conn.engine)(f).from_select([*SWEPT, "held_by", "deferred_at"], hold)
                     .on_conflict_do_nothing())  # held before: it keeps the time it was first held
        held += conn.execute(delete(sw).where(sw.c.district_id == district, sw.c.object == name,
                                              staying_child)).rowcount
    return held
