"""Object tables, built from the catalog for both sides: the district's SIS copy and the state's copy.

District: primary key ``ref_id`` and a foreign key per reference. State: primary key
``(district_id, ref_id)`` and an index on ``(district_id, <parent>_ref_id)`` per reference, without
foreign-key constraints: the receiver's apply step checks every parent (and, for a delete, every child)
once per batch, under a per-district lock, where a constraint would check each row on its own and cost
the database more than the rest of the insert.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
)
from sqlalchemy.types import TypeEngine

from messages.catalog import Catalog, ObjectDef, ref_column
from messages.fields import FieldType, fields

REFID = String(32)
STATE_FILLFACTOR = 50
_TYPES: dict[FieldType, TypeEngine[Any]] = {
    "str": Text(),
    "int": BigInteger(),
    "bool": Boolean(),
    "date": Date(),
    "decimal": Numeric(14, 2, asdecimal=False),
}


def object_table(metadata: MetaData, catalog: Catalog, obj: ObjectDef, *, state: bool) -> Table:
    cols: list[Any] = []
    if state:
        cols.append(Column("district_id", String(64), primary_key=True))
    cols.append(Column("ref_id", REFID, primary_key=True))
    if state:
        # parent lookups name many ref_ids of one district: an index led by ref_id serves them
        # whatever the planner's statistics say
        cols.append(Index(f"ix_{obj.table}_ref_id"[:63], "ref_id"))
    for parent in obj.references:
        cols.append(Column(ref_column(parent), REFID, nullable=False))
        parent_table = catalog.get(parent).table
        if state:
            cols.append(Index(f"ix_{obj.table}_{ref_column(parent)}"[:63], "district_id", ref_column(parent)))
        else:
            cols.append(ForeignKeyConstraint([ref_column(parent)], [f"{parent_table}.ref_id"],
                                             name=f"fk_{obj.table}_{ref_column(parent)}"[:63]))
            cols.append(Index(f"ix_{obj.table}_{ref_column(parent)}"[:63], ref_column(parent)))
    if obj.year_scoped:
        cols.append(Column("school_year", Integer, nullable=False, index=True))
    cols.extend(Column(name, _TYPES[kind], nullable=True) for name, kind in fields(obj.name))
    if state:
        cols.append(Column("last_msg_id", REFID, nullable=False))
        cols.append(Column("source_ts", String(32), nullable=False))
        cols.append(Column("applied_at", String(32), nullable=False))
        cols.append(Column("digest", String(16)))  # of the content applied: what verify compares
        # the highest version applied (null: applied before versions, as 0): an older one is ignored
        cols.append(Column("version", BigInteger))
    # the state rewrites every row at each resync: with room left on each page, PostgreSQL writes the new
    # version beside the old one and touches no index (a heap-only update)
    storage: dict[str, Any] = {"postgresql_with": {"fillfactor": STATE_FILLFACTOR}} if state else {}
    return Table(obj.table, metadata, *cols, **storage)


def object_tables(metadata: MetaData, catalog: Catalog, *, state: bool) -> dict[str, Table]:
    return {name: object_table(metadata, catalog, catalog.get(name), state=state) for name in catalog.names()}


def to_wire(kind: FieldType, value: Any) -> Any:
    """A database value as it travels in an event's ``data``."""
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return value


def from_wire(kind: FieldType, value: Any) -> Any:
    """An event's ``data`` value as the database column takes it (the codec already checked it)."""
    if value is None:
        return None
    if kind == "date":
        return dt.date.fromisoformat(value)
    return value
