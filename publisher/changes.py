"""Reading captured changes: the outbox's rows visible now, and each changed record's current content, in one
snapshot.

A change message carries the record as it is when read, not as the change left it, so several changes of one
record read together become one message, and the version is the largest of their outbox ids. The agent keeps,
per record, the version it last had confirmed (``resync_record_version``): a resync page carries that version,
which is below the id of any change the page could not see, so the state never lets a page read before a change
overwrite it (see ``publisher/capture.py`` for why ids grow per record).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    func,
    inspect,
    select,
    text,
)

from core.db import insert_many, one_of
from messages.catalog import Catalog
from messages.envelope import Action, canonical_ts
from publisher.capture import OUTBOX
from publisher.schema import DistrictSchema

_outbox = Table(OUTBOX, MetaData(), Column("id", BigInteger, primary_key=True), Column("object", String(64)),
                Column("ref_id", String(32)), Column("action", String(8)), Column("school_year", Integer),
                Column("captured", Float))
metadata = MetaData()
versions = Table(
    "resync_record_version", metadata,
    Column("object", String(64), primary_key=True),
    Column("ref_id", String(32), primary_key=True),
    Column("version", BigInteger, nullable=False),
)


def versioned(query: Any, table: Table, name: str) -> Any:
    """``query`` over ``table`` with each row's last confirmed version as ``resync_version`` (0: never captured)."""
    return (query.add_columns(func.coalesce(versions.c.version, 0).label("resync_version"))
            .outerjoin(versions, and_(versions.c.object == name, versions.c.ref_id == table.c.ref_id)))


@dataclass(frozen=True, slots=True)
class Change:
    """One changed record as it is now: ``row`` is None when the record is gone (a delete)."""

    object: str
    ref_id: str
    action: Action
    version: int
    captured: str
    """When the oldest of its changes read together was captured: where the lag is counted from."""
    year: int | None
    row: Any
    ids: tuple[int, ...]


class Outbox:
    def __init__(self, engine: Engine, catalog: Catalog) -> None:
        self.engine, self.catalog = engine, catalog
        self.schema = DistrictSchema(catalog)
        self.postgres = engine.dialect.name == "postgresql"

    def installed(self) -> bool:
        return inspect(self.engine).has_table(OUTBOX)

    def take(self, limit: int, *, besides: Collection[int] = ()) -> list[Change]:
        """Up to ``limit`` captured rows, lowest ids first, as the changed records are now (one snapshot for
        both): parents before children, then deletes, children before parents. ``besides``: ids already taken
        whose removal is under way."""
        with self.engine.connect() as conn:
            if self.postgres:
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                if not self.postgres:  # pysqlite begins no transaction for reads: without one, each read would
                    conn.exec_driver_sql("BEGIN")  # see a later state of the district than the one before it
                query = select(_outbox).order_by(_outbox.c.id).limit(limit)
                if besides:
                    query = query.where(~one_of(_outbox.c.id, besides, conn.engine))
                raw = conn.execute(query).all()
                return self._changes(conn, raw)

    def _changes(self, conn: Connection, raw: Sequence[Any]) -> list[Change]:
        records: dict[tuple[str, str], list[Any]] = {}
        for r in raw:
            records.setdefault((r.object, r.ref_id), []).append(r)
        by_object: dict[str, dict[str, Any]] = {}
        for name in {o for o, _ in records if o in self.catalog}:
            table = self.schema.tables[name]
            refs = [ref for o, ref in records if o == name]
            by_object[name] = {row.ref_id: row for row in conn.execute(
                select(table).where(one_of(table.c.ref_id, refs, conn.engine)))}
        changes, deletes, unknown = [], [], []
        for (name, ref), rows in records.items():
            ids = tuple(r.id for r in rows)
            captured = canonical_ts(datetime.fromtimestamp(min(r.captured for r in rows), UTC))
            if name not in self.catalog:  # an object no longer enabled: nothing to send, only to take away
                unknown.append(Change(name, ref, Action.DELETE, max(ids), captured, None, None, ids))
                continue
            row = by_object[name].get(ref)
            if row is None:
                deletes.append(Change(name, ref, Action.DELETE, max(ids), captured, rows[-1].school_year, None, ids))
            else:
                action = Action.ADD if rows[0].action == "add" else Action.CHANGE
                year = row.school_year if self.catalog.get(name).year_scoped else None
                changes.append(Change(name, ref, action, max(ids), captured, year, row, ids))
        position = {n: i for i, n in enumerate(self.catalog.names())}
        changes.sort(key=lambda c: position[c.object])
        deletes.sort(key=lambda c: -position[c.object])
        return changes + deletes + unknown

    def empty(self) -> bool:
        """No change waits to be taken: one index probe, where ``depth`` counts every row."""
        if not self.installed():
            return True
        with self.engine.connect() as conn:
            return conn.execute(text(f"SELECT 1 FROM {OUTBOX} LIMIT 1")).first() is None

    def depth(self) -> tuple[int, float | None]:
        """Changes captured and not yet taken, and when the oldest was captured (epoch seconds)."""
        if not self.installed():
            return 0, None
        with self.engine.connect() as conn:
            n, oldest = conn.execute(text(f"SELECT count(*), min(captured) FROM {OUTBOX}")).one()
        return int(n), None if oldest is None else float(oldest)

    def high_water(self) -> int:
        """A version no change already made can exceed: what a delete of a record the district no longer has
        (found by comparing with the state) carries."""
        with self.engine.connect() as conn:
            top = conn.execute(select(func.coalesce(func.max(versions.c.version), 0))).scalar_one()
            if self.installed():
                seq = ("SELECT last_value FROM resync_outbox_id_seq" if self.postgres
                       else f"SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = '{OUTBOX}'")
                top = max(int(top), int(conn.execute(text(seq)).scalar_one()))
        return int(top)




def confirmed(conn: Connection, changes: Sequence[Change]) -> None:
    """Once the broker holds their messages: the outbox rows go, and each record's version is kept for the resync
    pages that read it later (a deleted record's goes with it)."""
    ids = [i for c in changes for i in c.ids]
    if ids:
        conn.execute(_outbox.delete().where(one_of(_outbox.c.id, ids, conn.engine)))
    kept = {(c.object, c.ref_id): c.version for c in changes if c.row is not None}
    if kept:
        insert_many(conn, versions, [{"object": o, "ref_id": r, "version": v} for (o, r), v in kept.items()],
                    conflict=lambda stmt: stmt.on_conflict_do_update(
                        index_elements=["object", "ref_id"], set_={"version": stmt.excluded.version},
                        where=versions.c.version < stmt.excluded.version))
    for name in {c.object for c in changes if c.row is None}:
        refs = [c.ref_id for c in changes if c.row is None and c.object == name]
        conn.execute(versions.delete().where(versions.c.object == name, one_of(versions.c.ref_id, refs, conn.engine)))
