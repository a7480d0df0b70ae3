"""``resync db``: the schema versions of the district's and the state's tables."""

from __future__ import annotations

from typing import Any

import click
from sqlalchemy import MetaData

from core.db import engine
from core.migrations import Side, prepare, status
from resync.cli.app import JSON, Ctx, cli, pass_ctx
from resync.render import console, emit_json, table

SIDE = click.option("--side", type=click.Choice(["district", "state", "both"]), default="both", show_default=True)


def _sides(c: Ctx, side: str) -> list[tuple[Side, str, list[MetaData]]]:
    from agent.migrations import DISTRICT
    from agent.tables import metadata as agent_metadata
    from publisher.changes import metadata as versions_metadata
    from state_receiver.migrations import STATE
    from state_receiver.schema import StateSchema

    out: list[tuple[Side, str, list[MetaData]]] = []
    if side in ("district", "both"):
        out.append((DISTRICT, c.settings.district_db_url, [agent_metadata, versions_metadata]))
    if side in ("state", "both"):
        out.append((STATE, c.settings.state_db_url, [StateSchema(c.catalog).metadata]))
    return out


@cli.group()
def db() -> None:
    """The schema versions of resync's own tables in the district's and the state's databases."""


@db.command("status")
@SIDE
@JSON
@pass_ctx
def db_status(c: Ctx, side: str, as_json: bool) -> None:
    """Each side's schema version, this version's, and what an upgrade would run."""
    rows: list[dict[str, Any]] = []
    for s, url, _ in _sides(c, side):
        st = status(engine(url), s)
        rows.append({"side": s.name, "current": st.current, "head": st.head, "pending": st.pending})
    if as_json:
        return emit_json(rows)
    table("Schema versions", ["Side", "Database", "This version", "To run"],
          [(r["side"], r["current"] or "(no tables yet)", r["head"], ", ".join(r["pending"]) or "-") for r in rows])


@db.command("upgrade")
@SIDE
@pass_ctx
def db_upgrade(c: Ctx, side: str) -> None:
    """Bring the tables to this version, including revisions that need the daemons stopped; run it with the
    daemons stopped. (Daemons and commands run the revisions that are safe while others work, by themselves.)"""
    for s, url, metadatas in _sides(c, side):
        ran = prepare(engine(url), s, metadatas, offline=True)
        console.print(f"{s.name}: " + (f"ran {', '.join(ran)}" if ran else "up to date")
                      + f" (version {status(engine(url), s).head})")
