"""Development and trial: seed a district, run the whole job in one process."""

from __future__ import annotations

import time

import click

from core.db import engine
from messages.errors import FatalError
from publisher.schema import DistrictSchema
from resync.cli import district
from resync.cli.app import JSON, Ctx, cli, pass_ctx
from resync.render import console, emit_json


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
@click.option("--students", type=click.IntRange(1, 100_000), default=300, show_default=True)
@click.option("--reset", is_flag=True, help="Start again from an empty district and state.")
@pass_ctx
def demo(c: Ctx, students: int, reset: bool) -> None:
    """Seed a small district, run receiver and agent, do a full resync and print the status table."""
    from resync.demo import run_demo

    run_demo(c.settings, c.catalog, students=students, reset=reset)
    district.status.callback(year=None, hide_completed=False, as_json=False)  # type: ignore[misc]
