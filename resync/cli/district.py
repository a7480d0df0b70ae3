"""District commands, for district IT and data administrators: resync, status, history, logs, queue, alerts."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.text import Text

from agent import selection
from agent.status import pick_objects, plan_batch, reminders, status_rows
from agent.store import ACTIVE, STATE, AgentStore
from core import liveness
from core.brokers import Topology, broker_for
from core.brokers.base import DEAD_LETTER_QUEUE, QueueStats
from core.settings import Settings
from messages.envelope import REFID
from messages.errors import FatalError, ResyncError
from publisher.schema import DistrictSchema
from resync.cli.app import JSON, YEAR, Ctx, cli, pass_ctx
from resync.render import console, emit_json, show_status_table, table, when


@cli.command()
@JSON
@pass_ctx
def objects(c: Ctx, as_json: bool) -> None:
    """List the data objects, parents first."""
    defs = [c.catalog.get(n) for n in c.catalog.names()]
    if as_json:
        return emit_json([{"object": o.name, "immediate_parents": list(o.immediate), "parents": list(o.chain),
                           "year_scoped": o.year_scoped, "inferred": o.inferred} for o in defs])
    table("Data objects (send order)", ["Object", "Immediate parents", "Year-scoped", "Inferred"],
          [(o.name, ", ".join(o.immediate) or "-", "yes" if o.year_scoped else "no", "yes" if o.inferred else "")
           for o in defs])


@cli.command()
@click.argument("names", nargs=-1, metavar="[OBJECT]...")
@click.option("--all", "send_all", is_flag=True, help="Full resync: every object.")
@click.option("--check-dependencies", "-d", is_flag=True, help="Add every parent the picked objects need.")
@YEAR
@click.option("--dry-run", is_flag=True, help="Print the plan and send nothing.")
@click.option("--wait", is_flag=True, help="Show progress until every ack is in.")
@click.option("--max-rate", type=click.IntRange(1, 10_000_000), metavar="N",
              help="Send at most N records per second (spare the SIS during school hours).")
@click.option("--only-changed", is_flag=True, help="Delta: send only records missing at the state or different "
              "there, and deletes for records only the state holds (compared as `resync verify` does).")
@click.option("--ref-id", "ref_ids", multiple=True, metavar="ID",
              help="Selective sync: send only these records of OBJECT (repeat for more).")
@click.option("--cascade", is_flag=True, help="With --ref-id: and every record under them.")
@JSON
@pass_ctx
def send(c: Ctx, names: tuple[str, ...], send_all: bool, check_dependencies: bool, year: str | None,
         dry_run: bool, wait: bool, max_rate: int | None, only_changed: bool, ref_ids: tuple[str, ...],
         cascade: bool, as_json: bool) -> None:
    """Queue a resync batch for the agent; prints its id at once."""
    store = c.store()
    y = c.year(year)
    if ref_ids or cascade:
        return _send_selected(c, store, names, ref_ids, cascade, y, conflicting=send_all or only_changed
                              or check_dependencies, dry_run=dry_run, wait=wait, as_json=as_json)
    pick_objects(c.catalog, c.settings, list(names), send_all=send_all, check_dependencies=check_dependencies,
                 year=y)  # the arguments first: a mistyped object is said as such, whatever the database holds
    _needs_tables(c, store)
    plan = plan_batch(c.catalog, store.engine, c.settings, list(names), send_all=send_all,
                      check_dependencies=check_dependencies, year=y)
    if dry_run:
        if as_json:
            return emit_json([{"object": p.name, "records": p.expected} for p in plan])
        delta = " (delta: records at the district; the batch sends only what differs)" if only_changed else ""
        table(f"Plan: {'full' if send_all else 'partial'} resync, school year {y} (dry run, nothing sent)",
              ["#", "Object", "Records"], [(i + 1, p.name, f"{p.expected:,}") for i, p in enumerate(plan)],
              caption=f"{sum(p.expected for p in plan):,} records{delta}")
        return
    if not send_all and not check_dependencies and not as_json:
        console.print("[yellow]Warning:[/] a partial resync without --check-dependencies sends no parent: records "
                      "whose parents the state lacks are refused (9.1); --check-dependencies is strongly "
                      "recommended")
    batch_id = store.queue_batch(plan, kind="full" if send_all else "partial", year=y,
                                 check_dependencies=check_dependencies, max_rate=max_rate, delta=only_changed)
    if as_json and not wait:
        return emit_json({"batch_id": batch_id, "objects": [p.name for p in plan], "delta": only_changed})
    rate = f", at most {max_rate:,} records/s" if max_rate else ""
    what = (f"only what differs among {sum(p.expected for p in plan):,} records" if only_changed
            else f"{sum(p.expected for p in plan):,} records")
    console.print(f"queued {'delta ' if only_changed else ''}batch {batch_id}: {len(plan)} objects, {what}{rate}")
    _follow(c, store, batch_id, wait)


def _needs_tables(c: Ctx, store: AgentStore) -> None:
    missing = DistrictSchema(c.catalog).missing(store.engine)
    if missing:
        raise FatalError(f"the district database has no table for {missing[0]}"
                         + (f" (nor for {len(missing) - 1} more objects)" if len(missing) > 1 else "")
                         + ": run `resync seed`, or point RESYNC_DISTRICT_DB (--district-db) at your SIS copy")


def _send_selected(c: Ctx, store: AgentStore, names: tuple[str, ...], ref_ids: tuple[str, ...], cascade: bool,
                   year: int, *, conflicting: bool, dry_run: bool, wait: bool, as_json: bool) -> None:
    if not ref_ids:
        raise FatalError("--cascade goes with --ref-id: name the records to send, e.g. "
                         "`resync send School --ref-id ID --cascade`")
    if len(names) != 1 or conflicting:
        raise FatalError("--ref-id sends chosen records of one object: name exactly one OBJECT, without --all, "
                         "--only-changed or --check-dependencies")
    name = pick_objects(c.catalog, c.settings, list(names), send_all=False, check_dependencies=False, year=year)[0]
    refs = [r.upper() for r in ref_ids]
    bad = next((r for r in refs if not REFID.match(r)), None)
    if bad is not None:
        raise FatalError(f"--ref-id {bad!r} is not a RefId: give 32 hexadecimal digits")
    _needs_tables(c, store)
    picked = selection.pick(store.engine, c.catalog, name, list(dict.fromkeys(refs)), cascade=cascade, year=year)
    total = sum(len(r) for r in picked.values())
    if dry_run:
        if as_json:
            return emit_json([{"object": n, "records": len(r)} for n, r in picked.items()])
        table(f"Plan: selective sync of {name}{' with everything under it' if cascade else ''} (dry run)",
              ["#", "Object", "Records"], [(i + 1, n, f"{len(r):,}") for i, (n, r) in enumerate(picked.items())],
              caption=f"{total:,} records")
        return
    batch_id = selection.queue(store, picked, year=year)
    if as_json and not wait:
        return emit_json({"batch_id": batch_id, "objects": list(picked), "records": total})
    console.print(f"queued selective batch {batch_id}: {total:,} records of {len(picked)} objects")
    _follow(c, store, batch_id, wait)


def _follow(c: Ctx, store: AgentStore, batch_id: str, wait: bool) -> None:
    if wait and not c.settings.broker_url:
        from resync.local import local_site

        with local_site(c.settings, c.catalog) as alive:  # the embedded default: both sides run here
            watch(store, batch_id, alive)
    elif wait:
        district_warnings(c, store, strict=True)  # a broker that cannot be reached is said now, not waited on
        watch(store, batch_id, daemons=lambda: district_warnings(c, store))


def district_warnings(c: Ctx, store: AgentStore, strict: bool = False) -> list[str]:
    """What keeps this district's data from moving: a daemon not running, a broker blocking publishing, a state
    that answers none of the records it takes."""
    blocked = store.blocked()
    return ([blocked] if blocked else []) + liveness.check(c.settings, store.unanswered(), strict)


class RateColumn(ProgressColumn):
    """Records answered per second, over rich's recent samples."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:,.0f} rec/s" if task.speed else "", style="progress.data.speed")


def watch(store: AgentStore, batch_id: str, alive: Callable[[], bool] = lambda: True,
          daemons: Callable[[], list[str]] = list) -> None:
    """Progress per object until the batch ends; says so at once when a daemon it needs is not running."""
    with Progress(TextColumn("{task.description:<30}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[errors]} errors"), RateColumn(), TimeRemainingColumn(),
                  console=console) as progress:
        tasks: dict[str, Any] = {}
        last_change, last_seen, warned = time.monotonic(), (-1, -1), False
        said: set[str] = set()
        next_check = time.monotonic()
        while True:
            if time.monotonic() >= next_check:
                for line in daemons():
                    if (key := re.sub(r"[\d,]+", "#", line)) not in said:  # once each, whatever counts it shows
                        progress.console.print(f"[bold red]Warning:[/] {line}")
                        said.add(key)
                next_check = time.monotonic() + 5
            objs = store.batch_objects(batch_id)
            for o in objs:
                total = max(o["expected"], o["sent"]) or 1
                if o["object"] not in tasks:
                    tasks[o["object"]] = progress.add_task(o["object"], total=total, errors=0)
                progress.update(tasks[o["object"]], total=total, completed=o["processed"] or
                                (total if o["completed_at"] else 0), errors=o["errors"])
            b = store.batch(batch_id)
            if b is None or b["status"] not in ACTIVE:
                break
            if not alive():
                raise FatalError("the agent or the receiver stopped before the batch finished; see the log above")
            seen = (sum(o["sent"] for o in objs), sum(o["processed"] for o in objs))
            if seen != last_seen:
                last_change, last_seen = time.monotonic(), seen
            elif not warned and time.monotonic() - last_change > 30:
                progress.console.print("[yellow]no progress for 30s: are `resync agent run` and "
                                       "`resync receiver run` running? (Ctrl-C stops waiting, not the batch)[/]")
                warned = True
            time.sleep(0.5)
    b = store.batch(batch_id)
    assert b is not None
    console.print(f"batch {batch_id} {b['status']}")


@cli.command()
@YEAR
@click.option("--hide-completed", is_flag=True, help="Hide objects completed without errors.")
@JSON
@pass_ctx
def status(c: Ctx, year: str | None, hide_completed: bool, as_json: bool) -> None:
    """The Resync State Data table: per object, Last Resync, counts and status."""
    y = c.year(year)
    store = c.store()
    rows = status_rows(c.catalog, store, c.settings, y, hide_completed=hide_completed)
    due = reminders(c.settings, store)
    down = district_warnings(c, store)
    if as_json:
        for line in due:
            click.echo(f"reminder: {line}", err=True)
        for line in down:
            click.echo(f"warning: {line}", err=True)
        return emit_json([r.as_dict() for r in rows])
    show_status_table(f"Resync State Data: {c.settings.year_label(y)} school year {y - 1}-{y % 100:02d} "
                      f"({c.settings.district})", rows)
    for line in due:
        console.print(f"[bold yellow]Reminder:[/] {line}")
    for line in down:
        console.print(f"[bold red]Warning:[/] {line}")


@cli.command()
@click.option("--object", "obj", help="Only batches that included this object.")
@YEAR
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@JSON
@pass_ctx
def history(c: Ctx, obj: str | None, year: str | None, limit: int, as_json: bool) -> None:
    """Every batch, newest first, with its counts."""
    if obj:
        obj = c.catalog.get(obj).name
    rows = c.store().history(obj=obj, year=c.year(year) if year else None, limit=limit)
    if as_json:
        return emit_json(rows)
    table("Batch history", ["Batch", "Kind", "Requested by", "Year", "Status", "Started", "Completed", "Objects",
                            "Sent", "Processed", "Errors"],
          [(r["batch_id"][:12], r["kind"] + (", delta" if r["delta"] else ""), r["requested_by"], r["school_year"],
            r["status"], when(r["started_at"]),
            when(r["completed_at"]), "-" if r["objects"] is None else len(r["objects"]), r["sent"], r["processed"],
            r["errors"]) for r in rows])


@cli.command("log")
@click.option("--batch", "batch_id", help="Batch id (or its first characters).")
@click.option("--object", "obj")
@click.option("--errors", "errors_only", is_flag=True, help="Only failed records.")
@YEAR
@click.option("--limit", type=click.IntRange(1, 1_000_000), default=50, show_default=True)
@JSON
@pass_ctx
def log_cmd(c: Ctx, batch_id: str | None, obj: str | None, errors_only: bool, year: str | None, limit: int,
            as_json: bool) -> None:
    """The agent log: one row per record outcome, newest first."""
    store = c.store()
    if batch_id:
        found = store.find_batch(batch_id)
        if len(found) != 1:
            raise FatalError(f"batch {batch_id!r} matches {len(found)} batches; give more of its id (resync history)")
        batch_id = found[0]["batch_id"]
    if obj:
        obj = c.catalog.get(obj).name
    rows = store.log(batch_id=batch_id, obj=obj, errors_only=errors_only, year=c.year(year) if year else None,
                     limit=limit)
    if as_json:
        return emit_json(rows)
    table("Agent log", ["Logged", "Object", "RefId", "Status", "Category", "Code", "Message"],
          [(when(r["logged_at"]), r["object"], r["ref_id"], r["status"], r["category"], r["code"], r["description"])
           for r in rows])


@cli.command()
@click.option("--limit", type=click.IntRange(1, 1_000_000), default=100, show_default=True)
@JSON
@pass_ctx
def errors(c: Ctx, limit: int, as_json: bool) -> None:
    """The error log: failed records and agent failures, newest first."""
    rows = c.store().errors(limit=limit)
    if as_json:
        return emit_json(rows)
    table("Error log", ["Logged", "Object", "RefId", "Category", "Code", "Message", "Extended"],
          [(when(r["logged_at"]), r["object"], r["ref_id"], r["category"], r["code"], r["description"],
            r["extended"]) for r in rows])


@cli.command()
@JSON
@pass_ctx
def queue(c: Ctx, as_json: bool) -> None:
    """The district's queues (ready, unacknowledged, consumers) and what awaits an ack."""
    broker = broker_for(c.settings)
    stats = district_queues(c.settings)
    store = c.store()
    in_flight = store.in_flight()
    blocked = store.blocked()
    down = ([blocked] if blocked else []) + liveness.warnings(stats, c.settings.district) + liveness.unanswered(
        stats, c.settings.district, broker.user, store.unanswered())
    if as_json:
        return emit_json({"queues": [{"queue": s.queue, "ready": s.ready, "unacknowledged": s.unacknowledged,
                                      "consumers": s.consumers} for s in stats], "in_flight": in_flight,
                          "warnings": down})
    table(f"Queues on {broker.describe()}", ["Queue", "Ready", "Unacknowledged", "Consumers"],
          [(s.queue, s.ready, "?" if s.unacknowledged is None else s.unacknowledged, s.consumers) for s in stats])
    table("Sent, not yet acknowledged", ["Batch", "Status", "Sent", "Processed", "Awaiting ack"],
          [(r["batch_id"][:12], r["status"], r["sent"], r["processed"], r["awaiting_ack"]) for r in in_flight])
    for line in down:
        console.print(f"[bold red]Warning:[/] {line}")


def district_queues(settings: Settings) -> list[QueueStats]:
    """The district's queues and the dead-letter queue, as the broker counts them (also the console's Queue)."""
    try:
        return broker_for(settings).queue_stats([*Topology.queues(settings.district), DEAD_LETTER_QUEUE])
    except ResyncError as e:
        raise FatalError(f"cannot read the queues: {e}") from None


@cli.command()
@click.argument("batch_id", metavar="BATCH")
@pass_ctx
def cancel(c: Ctx, batch_id: str) -> None:
    """Stop a running district-initiated batch: nothing more is published; what was sent is still counted."""
    store = c.store()
    found = store.find_batch(batch_id)
    if len(found) != 1:
        raise FatalError(f"batch {batch_id!r} matches {len(found)} batches; give more of its id (resync history)")
    b = found[0]
    if b["initiator"] == STATE:
        raise FatalError(f"batch {b['batch_id']} was requested by the state; a district cannot cancel, pause or "
                         "refuse a state-initiated resync")
    if b["status"] not in ACTIVE:
        raise FatalError(f"batch {b['batch_id']} is already {b['status']}; only a queued or running batch can be "
                         "cancelled")
    store.cancel(b["batch_id"])
    console.print(f"batch {b['batch_id']} cancelled: nothing more will be published; records already sent are "
                  "still acknowledged and counted")


@cli.command()
@click.option("--delete", "delete_ids", type=int, multiple=True, metavar="ID", help="Remove these alerts.")
@click.option("--state", "state_side", is_flag=True, help="The state's alerts (state database) instead.")
@JSON
@pass_ctx
def alerts(c: Ctx, delete_ids: tuple[int, ...], state_side: bool, as_json: bool) -> None:
    """Process alerts: state resync requests, resync completion notices."""
    if state_side:
        from state_receiver.requests import state_alerts
        from state_receiver.schema import StateSchema

        rows = state_alerts(c.state_engine(), StateSchema(c.catalog))
    else:
        store = c.store()
        if delete_ids:
            n = store.delete_alerts(list(delete_ids))
            console.print(f"deleted {n} alert(s)")
            return
        rows = store.alerts()
    if as_json:
        return emit_json(rows)
    table("Process alerts", ["ID", "Process", "Name", "Posted", "Due", "Read", "Detail"],
          [(r["id"], r["process"], r["name"], when(r["posted"]), when(r.get("due")), "yes" if r["read"] else "",
            r["detail"]) for r in rows])
