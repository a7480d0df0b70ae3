"""Database engines: PostgreSQL through psycopg 3, or SQLite files for the embedded default."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import psycopg
from sqlalchemy import (
    Connection,
    CursorResult,
    Engine,
    MetaData,
    Table,
    Text,
    any_,
    bindparam,
    cast,
    create_engine,
    delete,
    event,
    func,
    literal_column,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url

from messages.errors import ConfigError, StoreUnavailable


def engine(url: str) -> Engine:
    try:
        u = make_url(url)
    except Exception:
        raise ConfigError(f"{url!r} is not a database URL; use postgresql://... or sqlite:///path.db") from None
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:" and not Path(u.database).parent.is_dir():
            raise ConfigError(f"{url!r}: the folder {str(Path(u.database).parent)!r} does not exist; create it or fix "
                              "the path (RESYNC_DISTRICT_DB / RESYNC_STATE_DB, --district-db / --state-db)")
        eng = create_engine(u, connect_args={"timeout": 30})
        event.listen(eng, "connect", _sqlite_pragmas)
        return eng
    if u.get_backend_name() != "postgresql":
        raise ConfigError(f"database {u.get_backend_name()!r} is not supported; use PostgreSQL or SQLite")
    # No server-side prepared statements: a generic plan for "key = ANY($1)" can fall back to scanning a
    # table that grew since it was analyzed; planned with the actual keys, the index is always used.
    return create_engine(u, pool_pre_ping=True, connect_args={"prepare_threshold": None})


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def insert(eng: Engine) -> Any:
    """The dialect's INSERT, which has ``on_conflict_do_update`` / ``on_conflict_do_nothing``."""
    return postgresql.insert if eng.dialect.name == "postgresql" else sqlite.insert


def insert_many(
    conn: Connection,
    table: Table,
    rows: Sequence[dict[str, Any]],
    *,
    conflict: Callable[[Any], Any] | None = None,
    returning: Sequence[Any] = (),
) -> CursorResult[Any]:
    """INSERT many rows with one statement. On PostgreSQL the rows travel as one JSON parameter and the
    server unpacks them (``json_populate_recordset``): one round trip and one plan whatever the number of
    rows, where executemany costs the server a statement per row and the client a conversion per value.
    ``conflict`` adds an ON CONFLICT clause to the dialect's insert; with DO UPDATE, ``rows`` must not
    name one key twice."""
    stmt = insert(conn.engine)(table)
    params: Any = list(rows)
    if conn.engine.dialect.name == "postgresql":
        cols = list(rows[0])
        rowtype: Any = literal_column(f"NULL::{conn.dialect.identifier_preparer.format_table(table)}")
        source = func.json_populate_recordset(rowtype, cast(bindparam("_rows"), postgresql.JSON)).table_valued(*cols)
        stmt = stmt.from_select(cols, select(*(source.c[c] for c in cols)))
        params = {"_rows": orjson.dumps(params, default=str).decode()}
    if conflict is not None:
        stmt = conflict(stmt)
    if returning:
        stmt = stmt.returning(*returning)
    return conn.execute(stmt, params)


def keyset_pages(engine: Engine, query: Any, key: Any, size: int, *, after: Any = "") -> Iterator[Sequence[Any]]:
    """``query`` in pages of up to ``size`` rows in ``key`` order, each read in a transaction of its own
    (``WHERE key > last``): a table is never read whole, and a reader can resume after any page."""
    query = query.order_by(key).limit(size)
    last = after
    while True:
        with engine.connect() as conn:
            page = conn.execute(query.where(key > last)).all()
        if page:
            yield page
        if len(page) < size:
            return
        last = page[-1]._mapping[key]


def one_of(column: Any, values: Iterable[Any], eng: Engine) -> Any:
    """``column IN values``. On PostgreSQL as ``= ANY(array)``: one parameter, so a prepared statement's
    generic plan still uses the index, where a long IN list can fall back to scanning the table."""
    values = list(values)
    if eng.dialect.name != "postgresql":
        return column.in_(values)
    if all(type(v) is str and v and "," not in v for v in values):
        # ids travel as one text the server splits: the driver quotes an array's elements one by one, and for
        # thousands of ids per statement that costs more than the statement
        return column == any_(func.string_to_array(bindparam(None, ",".join(values), type_=Text()), ","))
    return column == any_(bindparam(None, values, type_=postgresql.ARRAY(column.type)))


def create_all(metadata: MetaData, eng: Engine) -> None:
    """Create the tables that do not exist yet. Changes to tables that exist are schema versions
    (``core.migrations``). Daemons and commands may start together, so on PostgreSQL this runs under an advisory
    lock: two concurrent CREATE TABLEs of one name would make one of them fail."""
    with eng.begin() as conn:
        if eng.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(7227316)"))
        metadata.create_all(conn)


class Listener:
    """Wakes when ``channel`` is notified (PostgreSQL ``LISTEN``); on SQLite it only waits, and the caller polls.
    Its connection is its own, outside the pool: it sits idle in LISTEN for as long as the daemon runs."""

    def __init__(self, eng: Engine, channel: str) -> None:
        self._conn: psycopg.Connection[Any] | None = None
        if eng.dialect.name != "postgresql":
            return
        url = eng.url.set(drivername="postgresql").render_as_string(hide_password=False)
        try:
            self._conn = psycopg.connect(url, autocommit=True)
            self._conn.execute(f"LISTEN {channel}")
        except psycopg.Error as e:
            raise StoreUnavailable(f"cannot listen for changes: {str(e).strip()[:300]}") from e

    def wait(self, timeout: float, stop: threading.Event) -> bool:
        """Up to ``timeout`` seconds for a notification; True if one came."""
        if self._conn is None:
            stop.wait(timeout)
            return False
        try:
            if not any(True for _ in self._conn.notifies(timeout=timeout, stop_after=1)):
                return False
            for _ in self._conn.notifies(timeout=0):  # the others that came meanwhile: one look covers them all
                pass
            return True
        except psycopg.Error as e:
            raise StoreUnavailable(f"lost the connection that listens for changes: {str(e).strip()[:300]}") from e

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


PRUNE_STEP = 2_000
"""Rows a pruning statement removes at most: each step is its own short transaction."""


def delete_in_steps(eng: Engine, table: Any, key: Any, where: Any, stop: Callable[[], bool] = lambda: False,
                    scope: Any = True) -> int:
    """Delete the rows of ``table`` matching ``where``, ``PRUNE_STEP`` at a time, lowest ``key`` first, each step
    in its own transaction so no lock is held long; ``scope`` narrows the delete where ``key`` is unique only
    within it. Returns how many went; stops between steps once ``stop()``."""
    removed = 0
    while not stop():
        with eng.begin() as conn:
            keys = [k for (k,) in conn.execute(select(key).where(where).order_by(key).limit(PRUNE_STEP))]
            if not keys:
                break
            conn.execute(delete(table).where(key.in_(keys), scope))
        removed += len(keys)
    return removed


def reclaim(eng: Engine, tables: list[str]) -> None:
    """After a prune removed many rows: PostgreSQL's ``VACUUM (ANALYZE)`` of those tables, so new rows reuse the
    space at once (autovacuum looks once a minute and may be busy elsewhere) and the planner sees the table as it
    is now. It takes no lock that reads or writes wait for. SQLite reuses a freed page by itself."""
    if eng.dialect.name != "postgresql" or not tables:
        return
    with eng.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for name in tables:
            conn.execute(text(f'VACUUM (ANALYZE) "{name}"'))
