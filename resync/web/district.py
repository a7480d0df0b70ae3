"""The district's pages: Resync State Data (and sending a resync from it), a batch's progress, Verification
Summary, Batch history, Agent log, Error log, Alerts, Queue and Live sync."""

from __future__ import annotations

import re
import time
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from agent.status import plan_batch, status_rows, year_objects
from agent.store import ACTIVE, STATE
from resync.web import security
from resync.web.app import console_of, db, page, signed_in
from resync.web.users import Role

SIDE = "district"
PAGE = 50
ID = re.compile(r"[0-9]{1,9}")
SHOWN = ("batch_id", "kind", "initiator", "requested_by", "school_year", "check_dependencies", "status", "created_at",
         "started_at", "sent_at", "completed_at", "delta")
"""What a batch's page and its JSON show; a state-initiated batch also hides its objects and its message."""


def _year(request: Request, value: str | None) -> int:
    return console_of(request).settings.resolve_year(value or None)


def _years(request: Request) -> list[tuple[str, int, str]]:
    s = console_of(request).settings
    return [(label, s.resolve_year(label), s.year_label(s.resolve_year(label)))
            for label in ("previous", "current", "next") if label == "current" or label in s.sync_years]


async def status(request: Request) -> Response:
    who = await signed_in(request, SIDE)
    c = console_of(request)
    year = _year(request, request.query_params.get("year"))
    hide = request.query_params.get("hide") == "1"
    rows = await db(status_rows, c.catalog, c.store, c.settings, year, hide_completed=hide)
    return page(request, "status.html", who, SIDE, rows=rows, year=year, hide=hide, years=_years(request),
                year_label=c.settings.year_label(year), check_dependencies=True)


async def resync(request: Request) -> Response:
    who = await signed_in(request, SIDE, Role.RUN, "sending a resync")
    c = console_of(request)
    data = await security.form(request)
    year = _year(request, (data.get("year") or [""])[0])
    full = (data.get("full") or [""])[0] == "1"
    names = [] if full else data.get("object", [])  # the page ticks every box with the top one
    deps = (data.get("check_dependencies") or [""])[0] == "1"
    delta = (data.get("delta") or [""])[0] == "1"
    if not full and not names:
        raise HTTPException(400, "pick at least one object, or the top checkbox for a full resync")
    plan = await db(plan_batch, c.catalog, c.store.engine, c.settings, names, send_all=full,
                    check_dependencies=deps, year=year)
    batch_id = await db(c.store.queue_batch, plan, kind="full" if full else "partial", year=year,
                        check_dependencies=deps, delta=delta, requested_by=f"{who.name} (console)")
    return RedirectResponse(f"/district/batches/{batch_id}", status_code=303)


def whole(value: str | None) -> int | None:
    """A row id from the request: digits that fit the id columns, or None."""
    return int(value) if value and ID.fullmatch(value) else None


async def _batch(request: Request) -> dict[str, Any]:
    c = console_of(request)
    found = await db(c.store.batch, request.path_params["batch_id"])
    if found is None:
        raise HTTPException(404, "no such batch")
    objects = await db(c.store.batch_objects, found["batch_id"])
    shown: dict[str, Any] = {k: found[k] for k in SHOWN}
    shown["totals"] = {k: sum(o[k] for o in objects) for k in ("expected", "sent", "processed", "errors")}
    # the district never sees which objects a state-initiated resync holds
    state = found["initiator"] == STATE
    shown["objects"] = None if state else objects
    shown["message"] = None if state else found["message"]
    shown["active"] = found["status"] in ACTIVE
    return shown


async def batch_page(request: Request) -> Response:
    who = await signed_in(request, SIDE)
    return page(request, "batch.html", who, SIDE, batch=await _batch(request))


async def batch_json(request: Request) -> Response:
    await signed_in(request, SIDE)
    b = await _batch(request)
    b["now"] = time.time()
    return JSONResponse(b)


async def cancel(request: Request) -> Response:
    await signed_in(request, SIDE, Role.RUN, "cancelling a batch")
    await security.form(request)
    b = await _batch(request)
    if b["initiator"] == STATE:
        raise HTTPException(403, "a district cannot cancel a resync the state requested")
    if b["active"]:
        await db(console_of(request).store.cancel, b["batch_id"])
    return RedirectResponse(f"/district/batches/{b['batch_id']}", status_code=303)


async def history(request: Request) -> Response:
    who = await signed_in(request, SIDE)
    rows = await db(console_of(request).store.history, limit=100)
    return page(request, "history.html", who, SIDE, rows=rows)


async def agent_log(request: Request) -> Response:
    who = await signed_in(request, SIDE)
    c = console_of(request)
    q = request.query_params
    obj = q.get("object") or None
    if obj:
        obj = c.catalog.get(obj).name
    before = whole(q.get("before"))
    rows = await db(c.store.log, batch_id=q.get("batch") or None, obj=obj, errors_only=q.get("errors") == "1",
                    limit=PAGE + 1, before=before)
    more = len(rows) > PAGE
    return page(request, "log.html", who, SIDE, rows=rows[:PAGE], more=more, objects=c.catalog.names(),
                filters={"batch": q.get("batch", ""), "object": obj or "", "errors": q.get("errors") == "1"},
                next_before=rows[PAGE - 1]["id"] if more else None)


async def errors(request: Request) -> Response:
    who = await signed_in(request, SIDE)
    return page(request, "errors.html", who, SIDE, rows=await db(console_of(request).store.errors, limit=200))


async def alerts(request: Request) -> Response:
    who = await signed_in(request, SIDE)
    store = console_of(request).store
    if request.method == "POST":
        security.need(who, Role.DELETE, "deleting alerts")
        data = await security.form(request)
        await db(store.delete_alerts, [i for i in map(whole, data.get("id", [])) if i is not None])
        return RedirectResponse("/district/alerts", status_code=303)
    return page(request, "alerts.html", who, SIDE, rows=await db(store.alerts), delete_side="district")


async def queue(request: Request) -> Response:
    who = await signed_in(request, SIDE)
    c = console_of(request)

    def read() -> tuple[list[Any], str | None]:
        from messages.errors import FatalError
        from resync.cli.district import district_queues

        if not c.settings.broker_url:
            return [], "the embedded default has no broker to look at: set RESYNC_BROKER_URL"
        try:
            return list(district_queues(c.settings)), None
        except FatalError as e:
            return [], str(e)

    stats, problem = await db(read)
    return page(request, "queue.html", who, SIDE, stats=stats, problem=problem,
                in_flight=await db(c.store.in_flight))


async def live(request: Request) -> Response:
    who = await signed_in(request, SIDE)
    from resync.cli.live import district_live

    c = console_of(request)
    return page(request, "live.html", who, SIDE, live=await db(district_live, c.store.engine, c.catalog))


async def verify(request: Request) -> Response:
    who = await signed_in(request, SIDE)
    from agent.verification_store import VerifyStore

    c = console_of(request)
    runs = VerifyStore(c.store.engine)
    if request.method == "POST":
        security.need(who, Role.RUN, "running a verification")
        data = await security.form(request)
        year = _year(request, (data.get("year") or [""])[0])
        objects = await db(year_objects, c.catalog, c.settings, year)
        run_id = await db(runs.queue, objects, year)
        return RedirectResponse(f"/district/verify?run={run_id}", status_code=303)
    run = await db(runs.run, request.query_params["run"]) if request.query_params.get("run") else None
    differing = [r["object"] for r in (run or {}).get("result") or [] if r["resync_recommended"]]
    return page(request, "verify.html", who, SIDE, run=run, differing=differing, years=_years(request))


routes = [
    Route("/district", status), Route("/district/resync", resync, methods=["POST"]),
    Route("/district/batches/{batch_id:str}", batch_page), Route("/district/api/batches/{batch_id:str}", batch_json),
    Route("/district/batches/{batch_id:str}/cancel", cancel, methods=["POST"]),
    Route("/district/history", history), Route("/district/log", agent_log), Route("/district/errors", errors),
    Route("/district/alerts", alerts, methods=["GET", "POST"]), Route("/district/queue", queue),
    Route("/district/live", live), Route("/district/verify", verify, methods=["GET", "POST"]),
]
