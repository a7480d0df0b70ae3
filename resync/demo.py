"""``resync demo``: a whole resync in one process, on the embedded default or on real servers."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from agent.status import plan_batch
from agent.store import AgentStore
from core.brokers import broker_for
from core.db import engine
from core.settings import Settings
from messages.catalog import Catalog
from publisher.schema import DistrictSchema
from publisher.seed import seed
from resync.local import local_site

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

    with local_site(settings, catalog, broker) as alive:
        plan = plan_batch(catalog, district_engine, settings, [], send_all=True, check_dependencies=False,
                          year=settings.school_year)
        store = AgentStore(district_engine)
        batch_id = store.queue_batch(plan, kind="full", year=settings.school_year, check_dependencies=False,
                                     requested_by="resync demo")
        watch(store, batch_id, alive=alive)
    return batch_id
