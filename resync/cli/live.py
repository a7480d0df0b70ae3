"""Live sync commands: change capture in the district database, and what live sync is doing (both sides)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import click
from sqlalchemy import select

from agent import live_store
from core.db import engine
from publisher.capture import Capture
from publisher.changes import Outbox
from resync.cli.app import JSON, Ctx, cli, pass_ctx
from resync.render import console, emit_json, table, when
from state_receiver.schema import StateSchema


@cli.group()
def capture() -> None:
    """Change capture in the district database (triggers that feed live sync)."""


@capture.command("install")
@pass_ctx
def capture_install(c: Ctx) -> None:
    """Put capture triggers on every enabled object's table (running it again changes nothing)."""
    store = c.store()
    names = Capture(store.engine, c.catalog).install()
    console.print(f"change capture installed on {len(names)} tables; `resync agent run` sends every change as it "
                  "commits")


@capture.command("remove")
@click.option("--discard", is_flag=True, help="Drop changes the agent has not sent yet, too.")
@pass_ctx
def capture_remove(c: Ctx, discard: bool) -> None:
    """Take the capture triggers away; the outbox goes once the agent has sent what it holds."""
    cap = Capture(engine(c.settings.district_db_url), c.catalog)
    pending = Outbox(cap.engine, c.catalog).depth()[0]
    dropped = cap.remove(keep_pending=not discard)
    if pending and not discard:
        console.print(f"change capture removed; {pending:,} changes not yet sent stay in the outbox for the agent "
                      "(run this again once they are sent, or add --discard)")
    else:
        console.print("change capture removed" + (f"; {dropped:,} changes not sent were dropped" if dropped else ""))


@capture.command("status")
@JSON
@pass_ctx
def capture_status(c: Ctx, as_json: bool) -> None:
    """Which object tables are captured, and the changes waiting for the agent."""
    rows = Capture(engine(c.settings.district_db_url), c.catalog).status()
    if as_json:
        return emit_json([{"object": r.object, "table": r.table, "captured": r.installed, "pending": r.pending,
                           "oldest": _ts(r.oldest)} for r in rows])
    on = sum(r.installed for r in rows)
    table("Change capture", ["Object", "Table", "Captured", "Waiting", "Oldest waiting"],
          [(r.object, r.table, "yes" if r.installed else "no", f"{r.pending:,}" if r.pending else "",
            when(_ts(r.oldest))) for r in rows],
          caption=f"{on} of {len(rows)} tables captured" + ("" if on else "; run `resync capture install`"))


@cli.command()
@click.option("--state", "state_side", is_flag=True, help="The state's view: every district's live changes.")
@JSON
@pass_ctx
def live(c: Ctx, state_side: bool, as_json: bool) -> None:
    """Live sync today, per object: changes sent, errors, the last change, the outbox and the lag."""
    if state_side:
        return _state_live(c, as_json)
    store = c.store()
    report = district_live(store.engine, c.catalog)
    today, rows, outbox_installed = report["day"], report["objects"], report["captured"]
    if as_json:
        return emit_json(report)
    lag = max((r["lag_seconds"] for r in rows if r["lag_seconds"] is not None), default=None)
    caption = ("change capture is not installed: run `resync capture install`" if not outbox_installed else
               "up to date: nothing waits for the state" if lag is None else f"lag {lag:.1f} s (the oldest change "
               "not yet answered by the state)")
    table(f"Live sync, {today} (UTC)", ["Object", "Sent", "Errors", "Healed", "Last change", "Outbox", "Lag"],
          [(r["object"], f"{r['sent']:,}", r["errors"], r["healed"] or "", when(r["last_change"]), r["outbox"] or "",
            "" if r["lag_seconds"] is None else f"{r['lag_seconds']:.1f} s") for r in rows], caption=caption)


def district_live(engine: Any, catalog: Any) -> dict[str, Any]:
    """Live sync today, per object (what `resync live --json` prints and the console shows)."""
    today = datetime.now(UTC).date().isoformat()
    outbox = Outbox(engine, catalog)
    summary = live_store.summary(engine, today)
    waiting = _waiting(outbox)
    now = time.time()
    rows = []
    for name in catalog.names():
        counts, (flying, oldest_sent) = summary["counts"].get(name, {}), summary["in_flight"].get(name, (0, None))
        depth, oldest_waiting = waiting.get(name, (0, None))
        oldest = min([t for t in (_epoch(oldest_sent), oldest_waiting) if t is not None], default=None)
        if not counts and not flying and not depth:
            continue
        rows.append({"object": name, "sent": counts.get("sent", 0), "answered": counts.get("answered", 0),
                     "errors": counts.get("errors", 0), "healed": counts.get("healed", 0),
                     "last_change": counts.get("last_change"), "outbox": depth, "in_flight": flying,
                     "lag_seconds": None if oldest is None else round(max(0.0, now - oldest), 3)})
    return {"captured": outbox.installed(), "day": today, "objects": rows}


def state_live(engine: Any, catalog: Any) -> list[dict[str, Any]]:
    """Per district: live changes applied today, errors, the last change and its lag, as the state sees them."""
    t = StateSchema(catalog).live
    with engine.connect() as conn:
        rows: list[dict[str, Any]] = [dict(r._mapping) for r in conn.execute(select(t).order_by(t.c.district_id))]
    today = datetime.now(UTC).date().isoformat()
    for r in rows:
        if r["day"] != today:
            r["changes"] = r["errors"] = 0
    return rows


def _waiting(outbox: Outbox) -> dict[str, tuple[int, float | None]]:
    if not outbox.installed():
        return {}
    return {r.object: (r.pending, r.oldest) for r in Capture(outbox.engine, outbox.catalog).status() if r.pending}


def _state_live(c: Ctx, as_json: bool) -> None:
    rows = state_live(c.state_engine(), c.catalog)
    if as_json:
        return emit_json(rows)
    table("Live sync at the state", ["District", "Changes today", "Errors today", "Last change applied", "Lag"],
          [(r["district_id"], f"{r['changes']:,}", r["errors"], when(r["last_applied"]),
            "" if r["lag_ms"] is None else f"{r['lag_ms'] / 1000:.1f} s") for r in rows],
          caption="lag: from the district's commit to the state applying it, for the last change")


def _ts(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")[:23] + "Z"


def _epoch(ts: str | None) -> float | None:
    return None if ts is None else datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
