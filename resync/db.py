"""Database engines: PostgreSQL through psycopg 3, or SQLite files for the embedded default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url

from messages.errors import ConfigError


def engine(url: str) -> Engine:
    try:
        u = make_url(url)
    except Exception:
        raise ConfigError(f"{url!r} is not a database URL; use postgresql://... or sqlite:///path.db") from None
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        eng = create_engine(u, connect_args={"timeout": 30})
        event.listen(eng, "connect", _sqlite_pragmas)
        return eng
    if u.get_backend_name() != "postgresql":
        raise ConfigError(f"database {u.get_backend_name()!r} is not supported; use PostgreSQL or SQLite")
    return create_engine(u, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def insert(eng: Engine) -> Any:
    """The dialect's INSERT, which has ``on_conflict_do_update`` / ``on_conflict_do_nothing``."""
    return postgresql.insert if eng.dialect.name == "postgresql" else sqlite.insert
