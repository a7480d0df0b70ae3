"""State commands, for state IT: resync requests, a district's status as the state received it, dead letters."""

from __future__ import annotations

import sys
from typing import Any

import click

from messages.errors import FatalError
from resync.cli.app import JSON, YEAR, Ctx, cli, needs_broker, pass_ctx
from resync.render import console, emit_json, show_status_table, table, when


@cli.command()
@click.option("--district", "target", required=True, help="The district to resync.")
@click.argument("names", nargs=-1, metavar="[OBJECT]...")
@click.option("--all", "send_all", is_flag=True, help="Every object.")
@click.option("--year", type=click.Choice(["current", "previous", "next"]), default="current", show_default=True)
@click.option("--requested-by", default="state administrator", show_default=True)
@JSON
@pass_ctx
def request(c: Ctx, target: str, names: tuple[str, ...], send_all: bool, year: str, requested_by: str,
            as_json: bool) -> None:
    """State side: ask a district to resync (Check Dependencies always applies). The request waits in the
    district's control queue until its agent runs."""
    from core.brokers.base import check_district
    from state_receiver.requests import send_request
    from state_receiver.schema import StateSchema

    if send_all == bool(names):
        raise FatalError("give either --all or object names")
    broker = needs_broker(c, "request")
    request_id = send_request(broker, c.state_engine(), StateSchema(c.catalog), check_district(target),
                              None if send_all else list(names), year, requested_by)
    if as_json:
        return emit_json({"request_id": request_id, "district": target})
    console.print(f"resync request {request_id} sent to {target}")


@cli.command("district-status")
@click.option("--district", "target", required=True)
@YEAR
@JSON
@pass_ctx
def district_status_cmd(c: Ctx, target: str, year: str | None, as_json: bool) -> None:
    """State side: a district's Resync State Data table, built from the acks the state sent, and the
    state's requests to it."""
    from agent.status import year_objects
    from state_receiver.requests import district_status, list_requests
    from state_receiver.schema import StateSchema

    y = c.year(year)
    eng, schema = c.state_engine(), StateSchema(c.catalog)
    rows = district_status(eng, schema, c.catalog, target, y, year_objects(c.catalog, c.settings, y))
    requests = list_requests(eng, schema, target)
    if as_json:
        return emit_json({"district": target, "school_year": y, "objects": rows, "requests": requests})
    show_status_table(f"Resync State Data of {target} as the state received it: school year {y - 1}-{y % 100:02d}",
                      rows)
    table(f"State resync requests to {target}", ["Request", "Requested", "By", "Year", "Objects", "Status",
                                                 "Processed", "Errors"],
          [(r["request_id"][:12], when(r["requested_at"]), r["requested_by"], r["year"],
            "all" if r["objects"] is None else ", ".join(r["objects"]), r["status"], r["processed"], r["errors"])
           for r in requests])


@cli.command("dead-letters")
@click.option("--requeue", "requeue_ids", multiple=True, metavar="ID", help="Put these messages back (repeatable).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@JSON
@pass_ctx
def dead_letters(c: Ctx, requeue_ids: tuple[str, ...], limit: int, as_json: bool) -> None:
    """State side: what could not be processed, with the reason; --requeue puts messages back."""
    from state_receiver.deadletters import list_dead_letters, requeue

    broker = needs_broker(c, "dead-letters")
    if requeue_ids:
        done = requeue(broker, set(requeue_ids), c.settings.state_user)
        missing = sorted(set(requeue_ids) - set(done.requeued) - set(done.refused))
        if as_json:
            emit_json({"requeued": done.requeued, "not_found": missing, "refused": done.refused})
        else:
            console.print(f"requeued {len(done.requeued)} message(s)"
                          + (f"; not found: {', '.join(missing)}" if missing else ""))
            for message_id, why in done.refused.items():
                console.print(f"[red]not requeued[/] {message_id}: {why}")
        if missing or done.refused:
            sys.exit(1)
        return
    rows = list_dead_letters(broker, c.settings.state_user, limit)
    if as_json:
        return emit_json(rows)
    table("Dead-letter queue (oldest first)", ["Message id", "From queue", "Sender", "Type", "Reason", "Bytes"],
          [(r["message_id"], r["queue"], r["sender"], r["type"], r["reason"], r["bytes"]) for r in rows])


@cli.command("receivers")
@JSON
@pass_ctx
def receivers_cmd(c: Ctx, as_json: bool) -> None:
    """State side: the receivers sharing the state database, and which one consumes each district."""
    from state_receiver.membership import LEASE, members
    from state_receiver.schema import StateSchema

    found = members(c.state_engine(), StateSchema(c.catalog))
    running = [m for m in found if m.live]
    served = sorted({d for m in running for d in m.districts} | set(c.settings.districts))
    by_district = {d: [m.name for m in running if d in m.consuming] for d in served}
    notes = {d: "" if len(names) == 1 else "no receiver consumes it" if not names else
             "moving between receivers: the broker lets one consume at a time" for d, names in by_district.items()}
    rows: list[dict[str, object]] = [
        {"district": d, "receiver": names[0] if len(names) == 1 else None, "consumers": names, "note": notes[d]}
        for d, names in by_district.items()]
    receivers: list[dict[str, Any]] = [{"name": m.name, "host": m.host, "pid": m.pid, "started_at": m.started_at,
                  "seen_s_ago": round(m.age, 1), "running": m.live, "serves": len(m.districts),
                  "consuming": m.consuming} for m in found]
    if as_json:
        return emit_json({"receivers": receivers, "districts": rows})
    table("Receivers", ["Receiver", "Host", "PID", "Started", "Seen", "Status", "Serves", "Consuming"],
          [(r["name"], r["host"], r["pid"], when(r["started_at"]), f"{r['seen_s_ago']} s ago",
            "running" if r["running"] else f"gone (silent over {LEASE:.0f} s)", r["serves"], len(r["consuming"]))
           for r in receivers])
    table("Districts", ["District", "Receiver", "Note"],
          [(d, ", ".join(names) or "-", notes[d]) for d, names in by_district.items()])
    idle = [d for d, names in by_district.items() if not names]
    if idle:
        console.print(f"[yellow]{len(idle)} district(s) consumed by no receiver[/]: start `resync receiver run` "
                      "with them in RESYNC_DISTRICTS")
