"""The ``resync`` command line."""

from __future__ import annotations

import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from sqlalchemy.exc import DBAPIError

from agent.status import LEGEND, plan_batch, reminders, status_rows
from agent.store import ACTIVE, STATE, AgentStore
from messages import catalog as catalog_mod
from messages.catalog import Catalog
from messages.errors import FatalError, ResyncError
from publisher.schema import DistrictSchema
from resync import liveness, logs
from resync.brokers import Broker, Topology, broker_for
from resync.brokers.base import DEAD_LETTER_QUEUE
from resync.cli_verify import verify
from resync.db import engine
from resync.render import DOTS, console, emit_json, table, when
from resync.retry import misconfigured
from resync.settings import Settings

JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
YEAR = click.option("--year", help="current, previous, next, or a year like 2027 (default: current).")


class Ctx:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._catalog: Catalog | None = None

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = catalog_mod.load(self.settings.objects)
        return self._catalog

    def store(self) -> AgentStore:
        store = AgentStore(engine(self.settings.district_db_url))
        store.create()
        return store

    def year(self, year: str | None) -> int:
        return self.settings.resolve_year(year)

    def state_engine(self) -> Any:
        from state_receiver.schema import StateSchema

        eng = engine(self.settings.state_db_url)
        StateSchema(self.catalog).create(eng)
        return eng


pass_ctx = click.make_pass_decorator(Ctx)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--broker-url", envvar="RESYNC_BROKER_URL", help="amqp://user:pass@host/vhost (default: in-process).")
@click.option("--district-db", envvar="RESYNC_DISTRICT_DB", help="SQLAlchemy URL of the district database.")
@click.option("--state-db", envvar="RESYNC_STATE_DB", help="SQLAlchemy URL of the state database.")
@click.option("--district", envvar="RESYNC_DISTRICT", help="This district's id (default district-1).")
@click.option("--home", envvar="RESYNC_HOME", type=click.Path(path_type=Path), help="Folder for embedded SQLite files.")
@click.option("--log-level", default="INFO", show_default=True)
@click.pass_context
def cli(ctx: click.Context, broker_url: str | None, district_db: str | None, state_db: str | None,
        district: str | None, home: Path | None, log_level: str) -> None:
    """Resync a district's data objects to the state over RabbitMQ."""
    logs.configure(log_level)
    ctx.obj = Ctx(Settings.from_env(broker_url=broker_url, district_db=district_db, state_db=state_db,
                                    district=district, home=home))


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
@click.option("--students", type=click.IntRange(1, 2_000_000), default=500, show_default=True)
@click.option("--seed", "seed_value", type=int, default=1, show_default=True, help="Same seed, same district.")
@click.option("--year", "years", type=int, multiple=True,
              help="School year to seed; repeat for several (default: the current one).")
@click.option("--reset", is_flag=True, help="Drop the district's object tables first.")
@JSON
@pass_ctx
def seed(c: Ctx, students: int, seed_value: int, years: tuple[int, ...], reset: bool, as_json: bool) -> None:
    """Fill the district database with a realistic, deterministic district."""
    from publisher.schema import DistrictSchema
    from publisher.seed import seed as run_seed

    eng = engine(c.settings.district_db_url)
    if reset:
        DistrictSchema(c.catalog).drop(eng)
    elif DistrictSchema(c.catalog).count_all(eng):
        raise FatalError("the district database already holds records; add --reset to replace them")
    started = time.monotonic()
    with console.status(f"seeding {students} students ..."):
        seeded = sorted(set(years)) or [c.settings.school_year]
        counts = run_seed(eng, c.catalog, students=students, seed=seed_value, years=seeded,
                          current=c.settings.school_year)
    if as_json:
        return emit_json({"records": sum(counts.values()), "objects": counts, "years": seeded})
    console.print(f"seeded {sum(counts.values()):,} records in {len(counts)} objects "
                  f"for school year(s) {', '.join(map(str, seeded))} in {time.monotonic() - started:.1f}s")


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
@JSON
@pass_ctx
def send(c: Ctx, names: tuple[str, ...], send_all: bool, check_dependencies: bool, year: str | None,
         dry_run: bool, wait: bool, max_rate: int | None, only_changed: bool, as_json: bool) -> None:
    """Queue a resync batch for the agent; prints its id at once."""
    store = c.store()
    y = c.year(year)
    missing = DistrictSchema(c.catalog).missing(store.engine)
    if missing:
        raise FatalError(f"the district database has no table for {missing[0]}"
                         + (f" (nor for {len(missing) - 1} more objects)" if len(missing) > 1 else "")
                         + ": run `resync seed`, or point RESYNC_DISTRICT_DB (--district-db) at your SIS copy")
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
    batch_id = store.queue_batch(plan, kind="full" if send_all else "partial", year=y,
                                 check_dependencies=check_dependencies, max_rate=max_rate, delta=only_changed)
    if as_json and not wait:
        return emit_json({"batch_id": batch_id, "objects": [p.name for p in plan], "delta": only_changed})
    rate = f", at most {max_rate:,} records/s" if max_rate else ""
    what = (f"only what differs among {sum(p.expected for p in plan):,} records" if only_changed
            else f"{sum(p.expected for p in plan):,} records")
    console.print(f"queued {'delta ' if only_changed else ''}batch {batch_id}: {len(plan)} objects, {what}{rate}")
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


def watch(store: AgentStore, batch_id: str, alive: Callable[[], bool] = lambda: True,
          daemons: Callable[[], list[str]] = list) -> None:
    """Progress per object until the batch ends; says so at once when a daemon it needs is not running."""
    with Progress(TextColumn("{task.description:<30}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[errors]} errors"), console=console) as progress:
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


def show_status_table(title: str, rows: list[Any]) -> None:
    legend = "   ".join(f"{DOTS[k]} {v}" for k, v in LEGEND.items())
    rows = [r if isinstance(r, dict) else r.as_dict() for r in rows]
    table(title,
          ["DIS Objects", "Last Resync", "Sent", "Results", "Status"],
          [("  " * r["depth"] + r["object"], when(r["last_resync"]), r["sent"] if r["last_resync"] else "",
            f"Processed: {r['processed']} Errors: {r['errors']}" if r["last_resync"] else "",
            DOTS.get(r["status"] or "", "")) for r in rows])
    console.print(legend, soft_wrap=True)


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
    queues = [*Topology.queues(c.settings.district), DEAD_LETTER_QUEUE]
    try:
        stats = broker.queue_stats(queues)
    except ResyncError as e:
        raise FatalError(f"cannot read the queues from {broker.describe()}: {e}") from None
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


def _needs_broker(c: Ctx, what: str) -> Broker:
    if not c.settings.broker_url:
        raise FatalError(f"{what} needs RESYNC_BROKER_URL (or --broker-url): the in-process broker lives inside "
                         "one process; `resync demo` runs agent and receiver together on it")
    return broker_for(c.settings)


def _run_daemon(target: Any) -> None:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    target(stop)


@cli.group()
def agent() -> None:
    """The district agent daemon."""


@agent.command("run")
@pass_ctx
def agent_run(c: Ctx) -> None:
    """Publish queued batches and count the state's acks until SIGTERM/SIGINT."""
    from agent.daemon import Agent

    broker = _needs_broker(c, "agent run")
    _run_daemon(Agent(c.settings, broker, engine(c.settings.district_db_url), c.catalog).run)


@cli.group()
def receiver() -> None:
    """The state receiver daemon."""


@receiver.command("run")
@click.option("--district", "districts", multiple=True, help="District to consume (repeatable; "
              "default RESYNC_DISTRICTS or RESYNC_DISTRICT).")
@pass_ctx
def receiver_run(c: Ctx, districts: tuple[str, ...]) -> None:
    """Consume districts' event queues, apply and acknowledge until SIGTERM/SIGINT."""
    from state_receiver.daemon import Receiver

    broker = _needs_broker(c, "receiver run")
    settings = c.settings.with_(districts=districts or None)
    _run_daemon(Receiver(settings, broker, engine(settings.state_db_url), c.catalog).run)


@cli.command()
@click.option("--students", type=click.IntRange(1, 100_000), default=300, show_default=True)
@click.option("--reset", is_flag=True, help="Start again from an empty district and state.")
@pass_ctx
def demo(c: Ctx, students: int, reset: bool) -> None:
    """Seed a small district, run receiver and agent, do a full resync and print the status table."""
    from resync.demo import run_demo

    run_demo(c.settings, c.catalog, students=students, reset=reset)
    status.callback(year=None, hide_completed=False, as_json=False)  # type: ignore[misc]


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
    from resync.brokers.base import check_district
    from state_receiver.requests import send_request
    from state_receiver.schema import StateSchema

    if send_all == bool(names):
        raise FatalError("give either --all or object names")
    broker = _needs_broker(c, "request")
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

    broker = _needs_broker(c, "dead-letters")
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


@cli.group()
def broker() -> None:
    """Broker set-up: users, permissions and topology."""


@broker.command("definitions")
@click.option("--district", "districts", multiple=True, required=True, help="A district id (repeatable).")
@click.option("--vhost", default="/", show_default=True)
@click.option("--state-user", default=None, help="The state's broker user (default RESYNC_STATE_USER or state).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the definitions JSON.")
@JSON
@pass_ctx
def broker_definitions(c: Ctx, districts: tuple[str, ...], vhost: str, state_user: str | None, out: Path,
                       as_json: bool) -> None:
    """Write RabbitMQ definitions: one user per district allowed only its own routing key and queues, the
    state's user, and the queues. Load with `rabbitmqctl import_definitions FILE` (or load_definitions)."""
    import json as json_mod

    from resync.brokers.definitions import for_districts

    defs, passwords = for_districts(vhost, list(districts), state_user or c.settings.state_user)
    out.write_text(json_mod.dumps(defs, indent=2))
    out.chmod(0o600)
    if as_json:
        return emit_json({"file": str(out), "passwords": passwords})
    table(f"Broker users written to {out} (passwords are shown once)", ["User", "Password"], sorted(passwords.items()))


cli.add_command(verify)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.UsageError as e:
        cmd = e.ctx.command_path if e.ctx else "resync"
        click.echo(f"error: {e.format_message()} (see `{cmd} --help`)", err=True)
        sys.exit(2)
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except FatalError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except DBAPIError as e:  # a database that cannot be reached or used: a setting to check, said in one line
        fatal = misconfigured(e)
        reason = str(e.orig).strip().splitlines()[0] if e.orig is not None else str(e).splitlines()[0]
        click.echo(f"error: {fatal}" if fatal else f"error: cannot use the database: {reason[:300]}: check "
                   "RESYNC_DISTRICT_DB / RESYNC_STATE_DB (--district-db / --state-db) and that its server runs",
                   err=True)
        sys.exit(2)
    except ResyncError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
