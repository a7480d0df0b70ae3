"""Change capture in the district database: triggers on every enabled object's table write one row per changed
record into ``resync_outbox``, in the SIS's own transaction, so a change is captured if and only if it commits.

The outbox's ``id`` is each change's version: per record, changes are serialized by the record's row lock (and
a re-inserted ref_id by its unique key), so a later change of one record always takes a larger id.

Ids are handed out before commit, so ids are not in commit order, and a reader that kept a cursor (``id >
last``) could pass over a row whose transaction commits late. The agent keeps no cursor: it reads every row
visible in one snapshot (lowest ids first), publishes the records as that same snapshot shows them, and deletes
exactly the rows it read once the broker holds the messages. A row that commits late is simply visible to a
later read, so nothing is skipped; and since rows and content come from one snapshot, every record a message
points at is either in the same read (sent first: parents before children) or was read before. Nothing waits for
a long transaction either: its rows appear when it commits. SQLite serializes writers; ``AUTOINCREMENT`` never
reuses an id.

PostgreSQL triggers are per statement with transition tables: a bulk write costs one insert into the outbox,
not one per row, and each statement notifies ``resync_outbox`` so the agent wakes at commit. A TRUNCATE is
captured too (as a delete of every row).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, inspect, text

from messages.catalog import Catalog
from messages.errors import FatalError

OUTBOX = "resync_outbox"
CHANNEL = "resync_outbox"
_PG_FUNCTIONS = ("resync_capture_insert", "resync_capture_update", "resync_capture_delete", "resync_capture_truncate")
_SQLITE_OPS = ("ins", "upd", "del")

_PG_OUTBOX = f"""
CREATE TABLE IF NOT EXISTS {OUTBOX} (
    id bigserial PRIMARY KEY,
    object varchar(64) NOT NULL,
    ref_id varchar(32) NOT NULL,
    action varchar(8) NOT NULL,
    school_year integer,
    captured double precision NOT NULL DEFAULT extract(epoch FROM clock_timestamp())
)"""

_SQLITE_OUTBOX = f"""
CREATE TABLE IF NOT EXISTS {OUTBOX} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    object VARCHAR(64) NOT NULL,
    ref_id VARCHAR(32) NOT NULL,
    action VARCHAR(8) NOT NULL,
    school_year INTEGER,
    captured REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
)"""


def _pg_function(name: str, body: str) -> str:
    # TG_ARGV: the object's name, and 'y' when its table has a school_year
    return f"""
CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
{body}
    PERFORM pg_notify('{CHANNEL}', '');
    RETURN NULL;
END
$fn$"""


def _pg_rows(source: str, action: str, where: str = "") -> str:
    return f"""
    IF TG_ARGV[1] = 'y' THEN
        INSERT INTO {OUTBOX} (object, ref_id, action, school_year)
        SELECT TG_ARGV[0], r.ref_id, '{action}', r.school_year FROM {source} r {where};
    ELSE
        INSERT INTO {OUTBOX} (object, ref_id, action) SELECT TG_ARGV[0], r.ref_id, '{action}' FROM {source} r {where};
    END IF;"""


_PG_DDL = [
    _PG_OUTBOX,
    _pg_function("resync_capture_insert", _pg_rows("new_rows", "add")),
    # a row whose ref_id changed is a delete of the old one; EXCEPT is hashed, where NOT EXISTS on a transition
    # table (it has no index) would compare every pair of rows
    _pg_function("resync_capture_update", _pg_rows("new_rows", "change") + """
    IF EXISTS (SELECT ref_id FROM old_rows EXCEPT SELECT ref_id FROM new_rows) THEN""" + _pg_rows(
        "old_rows", "delete", "WHERE r.ref_id IN (SELECT ref_id FROM old_rows EXCEPT SELECT ref_id FROM new_rows)")
        + """
    END IF;"""),
    _pg_function("resync_capture_delete", _pg_rows("old_rows", "delete")),
    _pg_function("resync_capture_truncate", f"""
    EXECUTE format('INSERT INTO {OUTBOX} (object, ref_id, action, school_year) SELECT %L, ref_id, ''delete'', %s '
                   'FROM %I.%I', TG_ARGV[0], CASE WHEN TG_ARGV[1] = 'y' THEN 'school_year' ELSE 'NULL' END,
                   TG_TABLE_SCHEMA, TG_TABLE_NAME);"""),
]


def _pg_triggers(table: str, name: str, scoped: bool) -> list[str]:
    args = f"'{name}', '{'y' if scoped else 'n'}'"
    each = "FOR EACH STATEMENT EXECUTE FUNCTION"
    return [
        f"CREATE TRIGGER resync_capture_ins AFTER INSERT ON {table} REFERENCING NEW TABLE AS new_rows "
        f"{each} resync_capture_insert({args})",
        f"CREATE TRIGGER resync_capture_upd AFTER UPDATE ON {table} REFERENCING OLD TABLE AS old_rows "
        f"NEW TABLE AS new_rows {each} resync_capture_update({args})",
        f"CREATE TRIGGER resync_capture_del AFTER DELETE ON {table} REFERENCING OLD TABLE AS old_rows "
        f"{each} resync_capture_delete({args})",
        f"CREATE TRIGGER resync_capture_trunc BEFORE TRUNCATE ON {table} {each} resync_capture_truncate({args})",
    ]


def _sqlite_triggers(table: str, name: str, scoped: bool) -> list[str]:
    def row(ref: str, action: str, where: str = "") -> str:
        year = f"{ref}.school_year" if scoped else "NULL"
        return (f"INSERT INTO {OUTBOX} (object, ref_id, action, school_year) "
                f"SELECT '{name}', {ref}.ref_id, '{action}', {year} {where};")

    return [
        f"CREATE TRIGGER IF NOT EXISTS resync_capture_{table}_ins AFTER INSERT ON {table} BEGIN "
        f"{row('NEW', 'add')} END",
        f"CREATE TRIGGER IF NOT EXISTS resync_capture_{table}_upd AFTER UPDATE ON {table} BEGIN "
        f"{row('NEW', 'change')} {row('OLD', 'delete', 'WHERE OLD.ref_id IS NOT NEW.ref_id')} END",
        f"CREATE TRIGGER IF NOT EXISTS resync_capture_{table}_del AFTER DELETE ON {table} BEGIN "
        f"{row('OLD', 'delete')} END",
    ]


@dataclass(frozen=True, slots=True)
class Captured:
    object: str
    table: str
    installed: bool
    pending: int
    oldest: float | None
    """When the oldest change not yet taken by the agent was captured (epoch seconds)."""


class Capture:
    def __init__(self, engine: Engine, catalog: Catalog) -> None:
        self.engine, self.catalog = engine, catalog
        self.postgres = engine.dialect.name == "postgresql"

    def installed(self) -> bool:
        return inspect(self.engine).has_table(OUTBOX)

    def install(self) -> list[str]:
        """Create the outbox and a trigger on every enabled object's table (again: the same). Returns the objects."""
        have = set(inspect(self.engine).get_table_names())
        missing = [n for n in self.catalog.names() if self.catalog.get(n).table not in have]
        if missing:
            raise FatalError(f"the district database has no table for {missing[0]}: run `resync seed`, or point "
                             "RESYNC_DISTRICT_DB (--district-db) at your SIS copy")
        with self.engine.begin() as conn:
            if self.postgres:
                conn.execute(text("SELECT pg_advisory_xact_lock(7227317)"))
                for ddl in _PG_DDL:
                    conn.execute(text(ddl))
            else:
                conn.execute(text(_SQLITE_OUTBOX))
            self._drop_triggers(conn)  # the enabled objects may have changed since the last install
            for name in self.catalog.names():
                obj = self.catalog.get(name)
                build = _pg_triggers if self.postgres else _sqlite_triggers
                for ddl in build(obj.table, name, obj.year_scoped):
                    conn.execute(text(ddl))
        return self.catalog.names()

    def remove(self, *, keep_pending: bool = False) -> int:
        """Drop every trigger and function capture installed, and the outbox unless it holds changes the agent has
        not sent and ``keep_pending``. Returns the changes dropped with it."""
        with self.engine.begin() as conn:
            self._drop_triggers(conn)
            if not inspect(conn).has_table(OUTBOX):
                return 0
            pending = int(conn.execute(text(f"SELECT count(*) FROM {OUTBOX}")).scalar_one())
            if self.postgres:
                for fn in _PG_FUNCTIONS:
                    conn.execute(text(f"DROP FUNCTION IF EXISTS {fn}() CASCADE"))
            if pending and keep_pending:
                return 0
            conn.execute(text(f"DROP TABLE {OUTBOX}"))
            return pending

    def _drop_triggers(self, conn: Connection) -> None:
        for table in self._tables_with_triggers(conn):
            if self.postgres:
                for op in ("ins", "upd", "del", "trunc"):
                    conn.execute(text(f"DROP TRIGGER IF EXISTS resync_capture_{op} ON {table}"))
            else:
                for op in _SQLITE_OPS:
                    conn.execute(text(f"DROP TRIGGER IF EXISTS resync_capture_{table}_{op}"))

    def _tables_with_triggers(self, conn: Connection) -> set[str]:
        if self.postgres:
            rows = conn.execute(text("SELECT DISTINCT c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                                     "WHERE t.tgname LIKE 'resync_capture_%' AND pg_table_is_visible(c.oid)"))
        else:
            rows = conn.execute(text("SELECT DISTINCT tbl_name FROM sqlite_master WHERE type = 'trigger' "
                                     "AND name LIKE 'resync_capture_%'"))
        return {r[0] for r in rows}

    def status(self) -> list[Captured]:
        with self.engine.connect() as conn:
            tables = self._tables_with_triggers(conn)
            counts: dict[str, Any] = {}
            if inspect(conn).has_table(OUTBOX):
                counts = {r[0]: (int(r[1]), float(r[2])) for r in conn.execute(text(
                    f"SELECT object, count(*), min(captured) FROM {OUTBOX} GROUP BY object"))}
        out = []
        for name in self.catalog.names():
            table = self.catalog.get(name).table
            pending, oldest = counts.get(name, (0, None))
            out.append(Captured(name, table, table in tables, pending, oldest))
        return out
