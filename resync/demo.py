"""``resync demo``: a whole resync in one process, on the embedded default or on real servers."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from sqlalchemy import Engine, select, update

from agent import live_store
from agent.status import plan_batch
from agent.store import AgentStore
from core.brokers import broker_for
from core.db import engine
from core.settings import Settings
from messages.catalog import Catalog
from messages.envelope import new_id
from publisher.capture import Capture
from publisher.schema import DistrictSchema
from publisher.seed import seed
from resync.local import local_site
from resync.render import table
from state_receiver.schema import StateSchema

console = Console(stderr=True)


def run_demo(settings: Settings, catalog: Catalog, *, students: int, reset: bool) -> str:
    broker = broker_for(settings)
    embedded = not settings.broker_url
    where = "the embedded default (SQLite files and an in-process broker)" if embedded else (
        f"{broker.describe()}, district DB {settings.district_db_url.split('@')[-1]}, "
        f"state DB {settings.state_db_url.split('@')[-1]}")
    console.print(f"resync demo on {where}")
    if reset:
        for url in (settings.district_db_url, settings.state_db_url):
            if url.startswith("sqlite:///"):
                for suffix in ("", "-wal", "-shm"):
                    Path(url.removeprefix("sqlite:///") + suffix).unlink(missing_ok=True)
    settings = settings.with_(district_users={"*": broker.user}) if not settings.district_users else settings
    district_engine = engine(settings.district_db_url)
    if DistrictSchema(catalog).count_all(district_engine) == 0:
        with console.status(f"seeding a district of {students} students ..."):
            counts = seed(district_engine, catalog, students=students, years=[settings.school_year])
        console.print(f"seeded {sum(counts.values()):,} records")
    else:
        console.print("the district database already holds a district; resyncing it (use --reset to start again)")

    from resync.cli.district import watch

    Capture(district_engine, catalog).install()
    with local_site(settings, catalog, broker) as alive:
        plan = plan_batch(catalog, district_engine, settings, [], send_all=True, check_dependencies=False,
                          year=settings.school_year)
        store = AgentStore(district_engine)
        batch_id = store.queue_batch(plan, kind="full", year=settings.school_year, check_dependencies=False,
                                     requested_by="resync demo")
        watch(store, batch_id, alive=alive)
        live_changes(settings, catalog, district_engine, alive)
    return batch_id


def live_changes(settings: Settings, catalog: Catalog, district: Engine, alive: Callable[[], bool]) -> None:
    """Change, add and delete a few records in the district, then show them arrive at the state."""
    schema, state = DistrictSchema(catalog), StateSchema(catalog)
    school = schema.tables["School"]
    leaf = next(n for n in reversed(catalog.names()) if not catalog.referrers(n) and schema.count(district, n, None))
    with district.begin() as conn:
        first, second = conn.execute(select(school).order_by(school.c.ref_id).limit(2)).all()
        gone = conn.execute(select(schema.tables[leaf].c.ref_id).limit(1)).scalar_one()
        added = new_id()
        conn.execute(update(school).where(school.c.ref_id == first.ref_id).values(name=first.name + " (renamed)"))
        conn.execute(school.insert().values({**second._mapping, "ref_id": added, "name": "Live Sync Elementary"}))
        conn.execute(schema.tables[leaf].delete().where(schema.tables[leaf].c.ref_id == gone))
    console.print(f"live sync: renamed a school, added one and deleted {leaf} {gone} in the district's database")
    state_db = engine(settings.state_db_url)
    deadline = time.monotonic() + 60
    with console.status("waiting for the state's answers ..."):
        while alive() and time.monotonic() < deadline and not live_store.caught_up(district, catalog):
            time.sleep(0.1)
    held = state_refs(state_db, state, {"School": [first.ref_id, added], leaf: [gone]})
    rows = [("change", "School", first.ref_id, held.get(("School", first.ref_id), "missing")),
            ("add", "School", added, held.get(("School", added), "missing")),
            ("delete", leaf, gone, "deleted" if (leaf, gone) not in held else "still there")]
    table("Live changes at the state", ["Action", "Object", "RefId", "The state holds"], rows)


def state_refs(eng: Engine, state: StateSchema, wanted: dict[str, list[str]]) -> dict[tuple[str, str], str]:
    out = {}
    with eng.connect() as conn:
        for name, refs in wanted.items():
            t = state.tables[name]
            for r in conn.execute(select(t).where(t.c.ref_id.in_(refs))):
                out[(name, r.ref_id)] = str(r._mapping.get("name") or "present")
    return out
