"""What the administrator sees: the Resync State Data table, and the plan of a batch before it is sent."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Engine

from agent.store import ACTIVE, AgentStore, PlannedObject
from core.settings import Settings
from messages.catalog import Catalog
from messages.errors import ConfigError
from messages.status import colour
from publisher.schema import DistrictSchema


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


def status_rows(catalog: Catalog, store: AgentStore, settings: Settings, year: int, *,
                hide_completed: bool = False) -> list[StatusRow]:
    latest = store.latest_per_object(year)
    shown = set(year_objects(catalog, settings, year))
    rows = []
    for name, depth in catalog.tree():
        if name not in shown:
            continue
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


def year_objects(catalog: Catalog, settings: Settings, year: int) -> list[str]:
    """Objects that can be resynced for ``year``: every object for the current year; for the previous or
    next year only objects tied to a school year and configured to sync for it."""
    if year == settings.school_year:
        return catalog.names()
    configured = settings.year_objects.get(settings.year_label(year))
    wanted = None if configured is None else {catalog.get(n).name for n in configured}
    return [n for n in catalog.names() if catalog.get(n).year_scoped and (wanted is None or n in wanted)]


def plan_batch(catalog: Catalog, engine: Engine, settings: Settings, objects: list[str], *, send_all: bool,
               check_dependencies: bool, year: int, strict: bool = True) -> list[PlannedObject]:
    """The objects of a batch in send order with their record counts."""
    names = pick_objects(catalog, settings, objects, send_all=send_all, check_dependencies=check_dependencies,
                         year=year, strict=strict)
    schema = DistrictSchema(catalog)
    return [PlannedObject(n, schema.count(engine, n, year)) for n in names]


def pick_objects(catalog: Catalog, settings: Settings, objects: list[str], *, send_all: bool,
                 check_dependencies: bool, year: int, strict: bool = True) -> list[str]:
    """The objects a batch or a verification takes, in send order. ``strict``: an object that cannot be
    resynced for ``year`` is an error (a district's request) rather than left out (a state's request)."""
    if send_all and objects:
        raise ConfigError("give either --all or object names, not both")
    if not send_all and not objects:
        raise ConfigError("name the objects to resync, or use --all for a full resync")
    allowed = year_objects(catalog, settings, year)
    if send_all:
        names = allowed
    else:
        picked = [catalog.get(n).name for n in objects]
        refused = [n for n in picked if n not in allowed]
        if refused and strict:
            n = refused[0]
            label = settings.year_label(year)
            if not catalog.get(n).year_scoped:
                raise ConfigError(f"{n} is not tied to a school year: it is resynced only with the current "
                                  f"year ({settings.school_year}), not the {label} year {year}")
            raise ConfigError(f"{n} is not configured to sync for the {label} school year {year} "
                              f"(RESYNC_{label.upper()}_YEAR_OBJECTS)")
        # parents outside this year's set are synced with the current year
        names = [n for n in catalog.plan(picked, check_dependencies=check_dependencies) if n in allowed]
    return names


def reminders(settings: Settings, store: AgentStore) -> list[str]:
    """Mandatory full resyncs that are due: at the end of the school year (before it rolls over on July 1)
    and at its start (after the rollover), each within ``reminder_days`` of the configured dates."""
    today, year = settings.today_date, settings.school_year
    window = dt.timedelta(days=settings.reminder_days)
    rollover = dt.date(year - 1, 7, 1)
    year_end = dt.date(year, *settings.year_end)
    year_start = dt.date(year - 1, *settings.year_start)
    label = f"{year - 1}-{year % 100:02d}"
    out = []
    if year_end - window <= today < dt.date(year, 7, 1) and not store.full_resync_since(year, year_end - window):
        out.append(f"A mandatory end-of-year full resync of {label} is due: the school year ends "
                   f"{year_end:%m/%d/%Y} and rolls over on 07/01/{year}; run `resync send --all` before then.")
    if rollover <= today <= year_start + window and not store.full_resync_since(year, rollover):
        out.append(f"A mandatory start-of-year full resync of {label} is due: after enrollments roll forward, "
                   f"run `resync send --all` (the year starts {year_start:%m/%d/%Y}).")
    return out
