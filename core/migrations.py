"""Schema versions of each side's own tables, kept by Alembic.

Each side (the district's agent, the state's receiver) has its migration scripts beside its code and its own
version table. What happens at start (``prepare``):

* a database with none of the side's tables is new: every table is created as the code defines it, and the
  version table says "head";
* a database that release 0.1 made (it has the side's tables and no version table) is stamped 0001, the 0.1
  layout, and upgraded from there;
* pending revisions run, one transaction with the version stamp each; a revision that is not safe while other
  processes use the tables (``safe_online = False`` in its module) is left to ``resync db upgrade``;
* tables the configuration adds (a newly enabled object) are created: that is configuration, not a version.

Revisions are Alembic scripts (``op.add_column`` and the like), run through Alembic's public API without an
``env.py``: the caller's engine, the side's version table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, MetaData, inspect, text

from messages.errors import FatalError

LOCK = 7227316
"""The advisory lock every schema change takes on PostgreSQL: daemons and commands may start together."""


@dataclass(frozen=True, slots=True)
class Side:
    name: str
    scripts: Path
    version_table: str
    release_01_table: str
    """A table every database of this side that release 0.1 made has."""


@dataclass(frozen=True, slots=True)
class Status:
    current: str | None
    head: str
    pending: list[str]


def _script(side: Side) -> ScriptDirectory:
    return ScriptDirectory(str(side.scripts))


def _context(conn: Connection, side: Side) -> MigrationContext:
    return MigrationContext.configure(connection=conn, opts={"version_table": side.version_table})


def _pending(script: ScriptDirectory, current: str | None) -> list[str]:
    return [r.revision for r in reversed(list(script.iterate_revisions("head", current)))]


def status(engine: Engine, side: Side) -> Status:
    script = _script(side)
    with engine.connect() as conn:
        current = _context(conn, side).get_current_revision()
        if current is None and inspect(conn).has_table(side.release_01_table):
            current = "0001"  # not stamped yet: release 0.1's layout
    head = script.get_current_head()
    assert head is not None
    # no version and no tables: a new database, which gets every table at the head rather than revisions
    return Status(current, head, [] if current is None else _pending(script, current))


def prepare(engine: Engine, side: Side, metadatas: list[MetaData], *, offline: bool = False) -> list[str]:
    """Bring the side's tables to the code's version (see the module's docstring); returns the revisions run.
    ``offline``: also revisions that are not safe while other processes use the tables (`resync db upgrade`)."""
    script = _script(side)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"SELECT pg_advisory_xact_lock({LOCK})"))
        ctx = _context(conn, side)
        current = ctx.get_current_revision()
        if current is None:
            if not inspect(conn).has_table(side.release_01_table):  # a new database
                for m in metadatas:
                    m.create_all(conn)
                ctx.stamp(script, "head")
                return []
            ctx.stamp(script, "0001")
            current = "0001"
        pending = _pending(script, current)
        blocking = [r for r in pending if not offline and not getattr(script.get_revision(r).module, "safe_online",
                                                                         True)]
        if blocking:
            raise FatalError(f"the {side.name} database's tables are at version {current} and this version of "
                             f"resync needs {pending[-1]}; revision {blocking[0]} must run with the daemons "
                             f"stopped: run `resync db upgrade`")
        with Operations.context(ctx):
            for revision in pending:
                script.get_revision(revision).module.upgrade()
                ctx.stamp(script, revision)
        for m in metadatas:  # tables the configuration adds: a newly enabled object
            m.create_all(conn)
        return pending
