"""The state's pages: every district at a glance, one district as the state received it (and requests to it),
requests, verification requests, the dead-letter queue with requeue, and alerts."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Engine, select
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from agent.status import year_objects
from core.brokers import broker_for
from core.brokers.base import check_district
from messages.catalog import Catalog
from messages.envelope import Kind, MarkerKind
from messages.status import SEVERITY
from resync.web import security
from resync.web.app import console_of, db, page, signed_in
from resync.web.users import Role
from state_receiver.requests import district_status, list_requests, send_request, state_alerts
from state_receiver.schema import StateSchema

SIDE = "state"
SORTS = ("district", "last_batch", "worst", "lag_ms", "errors_today", "changes_today")


def overview(engine: Engine, catalog: Catalog, known: tuple[str, ...], year: int,
             objects: list[str]) -> list[dict[str, Any]]:
    """One row per district: its last batch, the worst status of its objects, live lag, errors today."""
    from resync.cli.live import state_live

    schema = StateSchema(catalog)
    mk = schema.markers
    with engine.connect() as conn:
        last = {d: (b, at) for d, b, at in conn.execute(  # in time order: each district's latest is kept
            select(mk.c.district_id, mk.c.batch_id, mk.c.received_at)
            .where(mk.c.kind == MarkerKind.BATCH_START.value).order_by(mk.c.received_at))}
        seen = {d for (d,) in conn.execute(select(mk.c.district_id).distinct())}
        asked = {d for (d,) in conn.execute(select(schema.requests.c.district_id).distinct())}
    live = {r["district_id"]: r for r in state_live(engine, catalog)}
    rows = []
    for d in sorted(set(known) | seen | asked | set(live)):
        status = district_status(engine, schema, catalog, d, year, objects)
        colours = [r["status"] for r in status if r["status"]]
        worst = ("gray" if "gray" in colours else max(colours, key=SEVERITY.index)) if colours else None
        batch, at = last.get(d, (None, None))
        lv = live.get(d, {})
        rows.append({"district": d, "last_batch": at, "batch_id": batch, "worst": worst,
                     "processed": sum(r["processed"] for r in status), "errors": sum(r["errors"] for r in status),
                     "lag_ms": lv.get("lag_ms"), "errors_today": lv.get("errors", 0),
                     "changes_today": lv.get("changes", 0)})
    return rows


def _sort_key(key: str) -> Any:
    rank = {None: -1, "green": 0, "gray": 1, "yellow": 2, "red": 3}

    def value(r: dict[str, Any]) -> Any:
        v = r[key]
        return rank.get(v, 0) if key == "worst" else (v is not None, v or 0) if key != "district" else v
    return value


async def districts(request: Request) -> Response:
    who = await signed_in(request, SIDE)
    c = console_of(request)
    year = c.settings.school_year
    objects = await db(year_objects, c.catalog, c.settings, year)
    rows = await db(overview, c.engines[SIDE], c.catalog, c.settings.receiver_districts, year, objects)
    sort = request.query_params.get("sort", "district")
    sort = sort if sort in SORTS else "district"
    desc = request.query_params.get("dir") == "desc"
    rows.sort(key=_sort_key(sort), reverse=desc)
    return page(request, "districts.html", who, SIDE, rows=rows, sort=sort, desc=desc)


async def district(request: Request) -> Response:
    who = await signed_in(request, SIDE)
    c = console_of(request)
    d = check_district(request.path_params["district"])
    label = request.query_params.get("year") or "current"
    year = c.settings.resolve_year(label)
    objects = await db(year_objects, c.catalog, c.settings, year)
    schema = StateSchema(c.catalog)
    rows = await db(district_status, c.engines[SIDE], schema, c.catalog, d, year, objects)
    requests = await db(list_requests, c.engines[SIDE], schema, d)
    return page(request, "district.html", who, SIDE, district=d, rows=rows, requests=requests, year=year,
                objects=c.catalog.names(), year_label=label)


def _broker(request: Request) -> Any:
    return broker_for(console_of(request).settings, "resync web")


async def request_resync(request: Request) -> Response:
    who = await signed_in(request, SIDE, Role.RUN, "requesting a resync or a verification")
    c = console_of(request)
    data = await security.form(request)
    d = check_district(request.path_params.get("district") or (data.get("district") or [""])[0])
    names = data.get("object", [])
    full = (data.get("full") or [""])[0] == "1"
    if not full and not names:
        raise HTTPException(400, "pick at least one object, or every object")
    year = (data.get("year") or ["current"])[0]
    if year not in ("current", "previous", "next"):
        raise HTTPException(400, "the year is current, previous or next")
    kind = Kind.VERIFY_REQUEST if (data.get("verify") or [""])[0] == "1" else Kind.RESYNC_REQUEST
    await db(send_request, _broker(request), c.engines[SIDE], StateSchema(c.catalog), d, None if full else names,
             year, f"{who.name} (console)", kind=kind)
    return RedirectResponse("/state/verifications" if kind is Kind.VERIFY_REQUEST else f"/state/districts/{d}",
                            status_code=303)


async def requests_page(request: Request) -> Response:
    who = await signed_in(request, SIDE)
    c = console_of(request)
    rows = await db(list_requests, c.engines[SIDE], StateSchema(c.catalog))
    return page(request, "requests.html", who, SIDE, rows=rows)


def _verifications(engine: Engine, catalog: Catalog) -> list[dict[str, Any]]:
    t = StateSchema(catalog).verifications
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(select(t).order_by(t.c.requested_at.desc()).limit(100))]
    for r in rows:
        r["result"] = json.loads(r["result"]) if r["result"] else None
        r["objects"] = json.loads(r["objects"]) if r["objects"] else None
    return rows


async def verifications(request: Request) -> Response:
    who = await signed_in(request, SIDE)
    c = console_of(request)
    rows = await db(_verifications, c.engines[SIDE], c.catalog)
    return page(request, "verifications.html", who, SIDE, rows=rows,
                districts=sorted(set(c.settings.receiver_districts) | {r["district_id"] for r in rows}))


async def dead_letters(request: Request) -> Response:
    who = await signed_in(request, SIDE)
    from state_receiver.deadletters import list_dead_letters, requeue

    c = console_of(request)
    if request.method == "POST":
        security.need(who, Role.DELETE, "requeueing dead letters")
        data = await security.form(request)
        done = await db(requeue, _broker(request), set(data.get("id", [])), c.settings.state_user)
        refused = "".join(f"; {m}: {why}" for m, why in list(done.refused.items())[:3])
        more = f"; {len(done.refused) - 3} more refused" if len(done.refused) > 3 else ""
        request.session["flash"] = (f"requeued {len(done.requeued)} message(s)" + refused)[:600] + more
        return RedirectResponse("/state/dead-letters", status_code=303)
    rows = await db(list_dead_letters, _broker(request), c.settings.state_user, 200)
    return page(request, "deadletters.html", who, SIDE, rows=rows, flash=request.session.pop("flash", None))


async def alerts(request: Request) -> Response:
    who = await signed_in(request, SIDE)
    c = console_of(request)
    return page(request, "alerts.html", who, SIDE, rows=await db(state_alerts, c.engines[SIDE],
                                                                StateSchema(c.catalog)), delete_side=None)


routes = [
    Route("/state", districts), Route("/state/districts/{district:str}", district),
    Route("/state/districts/{district:str}/request", request_resync, methods=["POST"]),
    Route("/state/requests", requests_page), Route("/state/verifications", verifications),
    Route("/state/verifications", request_resync, methods=["POST"]),
    Route("/state/dead-letters", dead_letters, methods=["GET", "POST"]), Route("/state/alerts", alerts),
]
