"""The district database: one table per enabled object (design §6)."""

from __future__ import annotations

from sqlalchemy import Engine, MetaData, Table, func, inspect, select

from core.db import create_all
from core.tables import object_tables
from messages.catalog import Catalog


class DistrictSchema:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.metadata = MetaData()
        self.tables: dict[str, Table] = object_tables(self.metadata, catalog, state=False)

    def create(self, engine: Engine) -> None:
        create_all(self.metadata, engine)

    def drop(self, engine: Engine) -> None:
        self.metadata.drop_all(engine)

    def count(self, engine: Engine, name: str, year: int | None) -> int:
        table = self.tables[name]
        query = select(func.count()).select_from(table)
        if year is not None and self.catalog.get(name).year_scoped:
            query = query.where(table.c.school_year == year)
        with engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def missing(self, engine: Engine) -> list[str]:
        """Enabled objects whose table the database does not have, in send order."""
        have = set(inspect(engine).get_table_names())
        return [name for name, table in self.tables.items() if table.name not in have]

    def count_all(self, engine: Engine) -> int:
        """Records in the District table (0 when the tables do not exist yet)."""
        if not inspect(engine).has_table(self.tables["District"].name):
            return 0
        return self.count(engine, "District", None)
