"""Selective sync, the batch tool's sibling: chosen records of one object (with ``--cascade``, every record
under them too) sent as a batch of kind "selective". Its markers say it is not complete, so the state removes
nothing after it."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import Connection, Engine, select

from agent.store import AgentStore, PlannedObject
from agent.tables import batch_selection
from core.db import insert_many, one_of
from messages.catalog import Catalog, ref_column
from messages.errors import FatalError
from publisher.schema import DistrictSchema

CHUNK = 2_000


def pick(engine: Engine, catalog: Catalog, name: str, refs: list[str], *, cascade: bool,
         year: int) -> dict[str, list[str]]:
    """The records to send, per object in send order: ``refs`` of ``name`` (each must exist at the district),
    and with ``cascade`` every record under them (year-scoped ones of ``year``)."""
    schema = DistrictSchema(catalog)
    table = schema.tables[name]
    with engine.connect() as conn:
        found = {r[0] for r in conn.execute(select(table.c.ref_id).where(one_of(table.c.ref_id, refs, engine)))}
        missing = [r for r in refs if r not in found]
        if missing:
            raise FatalError(f"{name} {missing[0]} does not exist at the district"
                             + (f" (nor {len(missing) - 1} more of the ref_ids given)" if len(missing) > 1 else "")
                             + ": check the ref_id (32 hex digits) and the object (`resync objects`)")
        chosen: dict[str, set[str]] = {name: found}
        if cascade:
            for child in catalog.names():
                for parent in catalog.get(child).references:
                    if not chosen.get(parent) or child == name:
                        continue
                    t = schema.tables[child]
                    query = select(t.c.ref_id).where(one_of(t.c[ref_column(parent)], chosen[parent], engine))
                    if catalog.get(child).year_scoped:
                        query = query.where(t.c.school_year == year)
                    chosen.setdefault(child, set()).update(r[0] for r in conn.execute(query))
    return {n: sorted(chosen[n]) for n in catalog.names() if chosen.get(n)}


def queue(store: AgentStore, selection: dict[str, list[str]], *, year: int) -> str:
    """Queue the selection as a batch; its records are written with it, in one transaction: the daemon takes a
    queued batch at once, and must find every chosen record there."""
    def chosen(conn: Connection, batch_id: str) -> None:
        for name, refs in selection.items():
            for i in range(0, len(refs), CHUNK):
                insert_many(conn, batch_selection, [{"batch_id": batch_id, "object": name, "ref_id": r}
                                                    for r in refs[i : i + CHUNK]])

    return store.queue_batch([PlannedObject(n, len(refs)) for n, refs in selection.items()], kind="selective",
                             year=year, check_dependencies=False, requested_by="district administrator",
                             with_batch=chosen)


def chunks(engine: Engine, batch_id: str, name: str, after: str) -> Iterator[list[str]]:
    """The batch's chosen ref_ids of ``name`` after ``after``, in ref_id order, a chunk at a time."""
    s = batch_selection
    while True:
        with engine.connect() as conn:
            refs = [r[0] for r in conn.execute(select(s.c.ref_id).where(
                s.c.batch_id == batch_id, s.c.object == name, s.c.ref_id > after).order_by(s.c.ref_id).limit(CHUNK))]
        if refs:
            yield refs
        if len(refs) < CHUNK:
            return
        after = refs[-1]
