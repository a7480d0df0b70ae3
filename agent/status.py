"""What the administrator sees: the Resync State Data table, and the plan of a batch before it is sent."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Engine

from agent.store import ACTIVE, AgentStore, PlannedObject
from messages.catalog import Catalog
from messages.errors import ConfigError
from publisher.schema import DistrictSchema

ERROR_THRESHOLD = 0.01  # the vendor's 1.0 %

LEGEND = {
    "green": "completed with no errors",
    "yellow": "completed with errors <= 1.0%",
    "red": "completed with errors > 1.0%",
    "gray": "still processing",
}


@dataclass
class StatusRow:
    object: str
    parent: str | None
    depth: int
    last_resync: str | None
    batch_id: str | None
    sent: int
    processed: int
    errors: int
    status: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def colour(processed: int, errors: int, finished: bool) -> str:
    if not finished:
        return "gray"
    if errors == 0:
        return "green"
    return "yellow" if errors <= ERROR_THRESHOLD * processed else "red"


def status_rows(catalog: Catalog, store: AgentStore, year: int, *, hide_completed: bool = False) -> list[StatusRow]:
    latest = store.latest_per_object(year)
    rows = []
    for name, depth in catalog.tree():
        obj = catalog.get(name)
        r = latest.get(name)
        if r is None:
            row = StatusRow(name, obj.immediate[0] if obj.immediate else None, depth, None, None, 0, 0, 0, None)
        else:
            finished = r["completed_at"] is not None or r["batch_status"] not in ACTIVE
            row = StatusRow(name, obj.immediate[0] if obj.immediate else None, depth,
                            r["started_at"] or r["created_at"], r["batch_id"], r["sent"], r["processed"],
                            r["errors"], colour(r["processed"], r["errors"], finished))
        if hide_completed and row.status == "green":
            continue
        rows.append(row)
    return rows


def plan_batch(catalog: Catalog, engine: Engine, objects: list[str], *, send_all: bool,
               check_dependencies: bool, year: int) -> list[PlannedObject]:
    if send_all and objects:
        raise ConfigError("give either --all or object names, not both")
    if not send_all and not objects:
        raise ConfigError("name the objects to resync, or use --all for a full resync")
    names = catalog.names() if send_all else catalog.plan(objects, check_dependencies=check_dependencies)
    schema = DistrictSchema(catalog)
    return [PlannedObject(n, schema.count(engine, n, year)) for n in names]
