"""``resync verify``: the Verification Summary, district against state, from either side."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import click

from agent.status import pick_objects
from messages.errors import ConfigError, FatalError
from messages.manifest import DIFFERENCES
from resync.render import console, emit_json, table, when

WARN_AFTER = 30.0


@click.command()
@click.argument("names", nargs=-1, metavar="[OBJECT]...")
@click.option("--year", help="current, previous, next, or a year like 2027 (default: current).")
@click.option("--details", is_flag=True, help="List the ref_ids that differ.")
@click.option("--district", "target", help="State side: ask this district's agent to verify and report back.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def verify(c: Any, names: tuple[str, ...], year: str | None, details: bool, target: str | None,
           as_json: bool) -> None:
    """Compare the district's records with the state's, per object, without resending anything: counts on
    both sides, records only at the district, only at the state, and different; whether to resync."""
    if target:
        return _state_side(c, target, names, year, details, as_json)
    from agent.verification_store import VerifyStore

    y = c.year(year)
    objects = pick_objects(c.catalog, c.settings, list(names), send_all=not names, check_dependencies=False, year=y)
    store = c.store()
    runs = VerifyStore(store.engine)
    run_id = runs.queue(objects, y)
    with _site(c) as alive:
        run = _wait(lambda: runs.run(run_id), alive, lambda r: _progress(store, runs, r))
    if run["status"] == "failed":
        raise FatalError(f"verification {run_id} failed: {run['message']}")
    results = run["result"]
    found = runs.details(run_id) if details else {}
    if details:
        for r in results:
            r["details"] = found.get(r["object"], {k: [] for k in DIFFERENCES})
    title = (f"Verification summary: {c.settings.district} against the state, school year {y - 1}-{y % 100:02d} "
             f"({when(run['completed_at'])})")
    _show(title, {"run_id": run_id, "district": c.settings.district, "school_year": y, "objects": results},
          details, as_json)


@contextlib.contextmanager
def _site(c: Any) -> Iterator[Callable[[], bool]]:
    """On the embedded default nothing else runs: bring up both sides here for the length of the command."""
    if c.settings.broker_url:
        yield lambda: True
        return
    from resync.local import local_site

    with local_site(c.settings, c.catalog) as alive:
        yield alive


def _progress(store: Any, runs: Any, run: dict[str, Any]) -> str:
    if run["status"] == "queued":
        busy = store.next_batch()
        if busy is not None and busy["status"] == "running":
            return f"waiting for the agent to finish sending batch {busy['batch_id'][:12]}"
        return "waiting for the agent to ask the state (is `resync agent run` running?)"
    complete, done = runs.received(run["run_id"])
    if done:
        return "comparing with the district's records ..."
    return f"receiving the state's manifest: {complete} of {len(run['objects'])} objects"


def _wait(fetch: Callable[[], dict[str, Any] | None], alive: Callable[[], bool],
          describe: Callable[[dict[str, Any]], str]) -> dict[str, Any]:
    started, warned = time.monotonic(), False
    with console.status("verifying ...") as status:
        while True:
            run = fetch()
            assert run is not None
            if run["status"] in ("completed", "failed"):
                return run
            if not alive():
                raise FatalError("the agent or the receiver stopped before the verification finished")
            status.update(describe(run))
            if not warned and time.monotonic() - started > WARN_AFTER:
                # on stderr: with --json, stdout holds the JSON and nothing else
                click.echo("no answer for 30s: are `resync agent run` and `resync receiver run` running? (Ctrl-C "
                           "stops waiting; the verification still completes)", err=True)
                warned = True
            time.sleep(0.3)


def _state_side(c: Any, target: str, names: tuple[str, ...], year: str | None, details: bool,
                as_json: bool) -> None:
    from core.brokers.base import check_district
    from messages.envelope import Kind
    from resync.cli.app import needs_broker
    from state_receiver.manifest import verification
    from state_receiver.requests import send_request
    from state_receiver.schema import StateSchema

    label = year or "current"
    if label not in ("current", "previous", "next"):
        raise ConfigError(f"--year {label!r} is not valid with --district: use current, previous or next")
    broker = needs_broker(c, "verify --district")
    eng, schema = c.state_engine(), StateSchema(c.catalog)
    request_id = send_request(broker, eng, schema, check_district(target), list(names) or None, label,
                              "state administrator", kind=Kind.VERIFY_REQUEST)

    def describe(_: dict[str, Any]) -> str:
        return f"waiting for {target}'s agent to compare and report (request {request_id[:12]})"

    found = _wait(lambda: verification(eng, schema, request_id), lambda: True, describe)
    if found["status"] == "failed":
        raise FatalError(f"{target} could not verify (request {request_id}): {found['message']}")
    results = found["result"]
    if not details:
        for r in results:
            r.pop("details", None)
    y = found["school_year"]
    _show(f"Verification summary: {target} against the state, school year {y - 1}-{y % 100:02d} "
          f"(reported {when(found['completed_at'])})",
          {"request_id": request_id, "district": target, "school_year": y, "objects": results}, details, as_json)


def _show(title: str, out: dict[str, Any], details: bool, as_json: bool) -> None:
    results = out["objects"]
    if as_json:
        return emit_json(out)
    differing = [r["object"] for r in results if r["resync_recommended"]]
    caption = ("no differences: no resync needed" if not differing else
               f"{len(differing)} object(s) differ; `resync send --only-changed --check-dependencies "
               f"{' '.join(differing[:5])}{' ...' if len(differing) > 5 else ''}` sends only what differs")
    table(title, ["Object", "District", "State", "District only", "State only", "Mismatched", "Excluded",
                  "Resync"],
          [(r["object"], r["district"], r["state"], r["district_only"], r["state_only"], r["mismatched"],
            r["excluded"], ("recommended" + (f": {r['error']}" if r.get("error") else "")) if r["resync_recommended"]
            else "") for r in results], caption=caption)
    if details:
        rows = [(r["object"], kind.replace("_", " "), ref) for r in results
                for kind in DIFFERENCES for ref in r.get("details", {}).get(kind, [])]
        table("Differences", ["Object", "Difference", "RefId"], rows)
