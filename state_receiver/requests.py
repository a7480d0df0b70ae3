"""The state's side of a resync: requesting one from a district, following its progress from the
markers and acks the receiver handled, and the per-object results the district itself sees."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from sqlalchemy import Connection, Engine, select, update

from core.brokers import Broker, Topology
from messages.catalog import Catalog
from messages.codec import encode_request
from messages.envelope import STATE_SOURCE, Kind, Marker, MarkerKind, ResyncRequest, new_id, now_ts
from messages.status import SEVERITY, colour
from state_receiver.schema import StateSchema


def send_request(broker: Broker, engine: Engine, schema: StateSchema, district: str, objects: list[str] | None,
                 year: str, requested_by: str, *, kind: Kind = Kind.RESYNC_REQUEST) -> str:
    """Record the request (a resync, or a verification with ``Kind.VERIFY_REQUEST``) and put it on the
    district's control queue, where it waits durably until the district's agent runs."""
    names = None if objects is None else [schema.catalog.get(o).name for o in objects]
    request = ResyncRequest(new_id(), now_ts(), STATE_SOURCE, new_id(), names, year, requested_by)
    broker.declare_district(district)
    table = schema.verifications if kind is Kind.VERIFY_REQUEST else schema.requests
    with engine.begin() as conn:
        conn.execute(table.insert().values(
            request_id=request.request_id, district_id=district, objects=json.dumps(names), year=year,
            requested_by=requested_by, requested_at=request.ts, status="requested"))
        if kind is Kind.RESYNC_REQUEST:  # as the vendor's page says: the state's users see the alert too
            conn.execute(schema.alerts.insert().values(
                process="Vertical Interoperability", name="State Resync Requested", posted=request.ts, read=False,
                detail=f"request {request.request_id} to {district}: {year} school year, "
                       + ("every object" if names is None else ", ".join(names)) + f"; by {requested_by}"))
    with broker.connect() as conn:
        conn.publish(Topology.control(district), encode_request(request), kind=kind, message_id=request.msg_id)
        conn.flush()
    return request.request_id


def on_markers(conn: Connection, schema: StateSchema, district: str, markers: list[Marker], now: str) -> None:
    """Follow the state's own requests as their batches start and end (in the receiver's transaction,
    after the batch's records, so the totals are complete). ``markers`` are new: each is seen once."""
    r = schema.requests
    for m in markers:
        if m.request is None:
            continue
        where = (r.c.request_id == m.request) & (r.c.district_id == district)
        if m.kind is MarkerKind.BATCH_START:
            conn.execute(update(r).where(where).values(status="running", batch_id=m.batch, school_year=m.year,
                                                       started_at=now))
        elif m.kind in (MarkerKind.BATCH_END, MarkerKind.BATCH_CANCELLED):
            done = "completed" if m.kind is MarkerKind.BATCH_END else "cancelled"
            conn.execute(update(r).where(where).values(status=done, completed_at=now, batch_id=m.batch))
            totals = _batch_totals(conn, schema, district, m.batch)
            processed = sum(p for p, _ in totals.values())
            errors = sum(e for _, e in totals.values())
            worst = max((colour(p, e, True) for p, e in totals.values()), key=SEVERITY.index, default="green")
            conn.execute(schema.alerts.insert().values(
                process="Vertical Interoperability", name="Resync complete", posted=now, read=False,
                detail=f"request {m.request} to {district}: batch {m.batch} {done}; {len(totals)} objects "
                       f"({', '.join(totals)}); processed {processed}, errors {errors}; worst status {worst}"))


def _batch_totals(conn: Connection, schema: StateSchema, district: str, batch: str) -> dict[str, tuple[int, int]]:
    rows = [(o, n, e) for _, o, n, e in answered(conn, schema, district, [batch])]
    order = {n: i for i, n in enumerate(schema.catalog.names())}
    return dict(sorted(((o, (int(n), int(e or 0))) for o, n, e in rows if o), key=lambda kv: order.get(kv[0], 0)))


def answered(conn: Connection, schema: StateSchema, district: str,
             batches: list[str]) -> list[tuple[str, str, int, int]]:
    """(batch, object, processed, errors) of ``batches``: every message answered once, counted as it was
    answered (``receiver_batch_count``)."""
    kept = schema.batch_counts
    return [(b, o, n, e) for b, o, n, e in conn.execute(
        select(kept.c.batch_id, kept.c.object, kept.c.processed, kept.c.errors).where(
            kept.c.district_id == district, kept.c.batch_id.in_(batches)))]


def district_status(engine: Engine, schema: StateSchema, catalog: Catalog, district: str, year: int,
                    objects: list[str]) -> list[dict[str, Any]]:
    """The district's Resync State Data table as the state sees it, built from the acks it sent."""
    mk = schema.markers
    with engine.connect() as conn:
        starts = {b: (at, k) for b, at, k in conn.execute(
            select(mk.c.batch_id, mk.c.received_at, mk.c.kind).where(
                mk.c.district_id == district, mk.c.school_year == year,
                mk.c.kind.in_([MarkerKind.BATCH_START.value]))).all()}
        ended = {b for (b,) in conn.execute(select(mk.c.batch_id).where(
            mk.c.district_id == district,
            mk.c.kind.in_([MarkerKind.BATCH_END.value, MarkerKind.BATCH_CANCELLED.value])))}
        counts = {(b, o): c for b, o, c in conn.execute(select(mk.c.batch_id, mk.c.object, mk.c.count).where(
            mk.c.district_id == district, mk.c.kind == MarkerKind.OBJECT_END.value))}
        acked: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
        if starts:
            for b, o, n, e in answered(conn, schema, district, list(starts)):
                acked[o].append((b, n, e))
    rows = []
    for name, depth in catalog.tree():
        if name not in objects:
            continue
        obj = catalog.get(name)
        row: dict[str, Any] = {"object": name, "parent": obj.immediate[0] if obj.immediate else None, "depth": depth,
                               "last_resync": None, "batch_id": None, "sent": None, "processed": 0, "errors": 0,
                               "status": None}
        if acked.get(name):
            batch, processed, errors = max(acked[name], key=lambda x: starts[x[0]][0])
            sent = counts.get((batch, name))
            finished = batch in ended or (sent is not None and processed >= sent)
            row.update(last_resync=starts[batch][0], batch_id=batch, sent=sent, processed=processed, errors=errors,
                       status=colour(processed, errors, finished))
        rows.append(row)
    return rows


def list_requests(engine: Engine, schema: StateSchema, district: str | None = None) -> list[dict[str, Any]]:
    r = schema.requests
    with engine.connect() as conn:
        query = select(r).order_by(r.c.requested_at.desc())
        if district:
            query = query.where(r.c.district_id == district)
        out = []
        for row in conn.execute(query).all():
            d = dict(row._mapping)
            d["objects"] = json.loads(d["objects"]) if d["objects"] else None
            d["processed"] = d["errors"] = 0
            if d["batch_id"]:
                counts = answered(conn, schema, d["district_id"], [d["batch_id"]])
                d["processed"], d["errors"] = sum(c[2] for c in counts), sum(c[3] for c in counts)
            out.append(d)
    return out


def state_alerts(engine: Engine, schema: StateSchema) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(schema.alerts).order_by(schema.alerts.c.id.desc()))]
