"""Retention on the district side: the per-record rows of old batches, old live outcomes, errors and alerts go;
a batch's history (its per-object counts) stays longer.

The daemon prunes in small steps (``core.db.delete_in_steps``: each its own short transaction), so no step holds
a lock the agent's own writes would wait long for. Rows of a batch still queued, running or awaiting acks are
never touched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy import Engine, delete, select

from agent.store import ACTIVE
from agent.tables import agent_log, batch, batch_object, batch_selection, error_log, process_alert
from core.db import delete_in_steps, reclaim
from core.settings import Settings
from messages.envelope import ts_ago

log = structlog.get_logger()
RECLAIM_AFTER = 10_000
"""Rows removed from a table in one pass after which its space is reclaimed at once (``core.db.reclaim``)."""


DAY = 86_400.0


def _kept_batches(conn: Any, keep: int) -> set[str]:
    """The newest ``keep`` batches, and every batch not finished."""
    newest = {b for (b,) in conn.execute(select(batch.c.batch_id).order_by(batch.c.created_at.desc()).limit(keep))}
    return newest | {b for (b,) in conn.execute(select(batch.c.batch_id).where(batch.c.status.in_(ACTIVE)))}


def _records_of(engine: Engine, b: str, stop: Callable[[], bool], removed: dict[str, int]) -> None:
    for table in (agent_log, error_log):
        removed[table.name] += delete_in_steps(engine, table, table.c.id, table.c.batch_id == b, stop)


def prune(engine: Engine, settings: Settings, stop: Callable[[], bool] = lambda: False) -> dict[str, int]:
    """One pass over everything past retention, step by step; returns the rows removed per table."""
    removed = {"agent_log": 0, "agent_error_log": 0, "process_alert": 0, "resync_batch": 0}
    if settings.keep_batches:
        with engine.connect() as conn:
            kept = _kept_batches(conn, settings.keep_batches)
            old = [b for (b,) in conn.execute(select(batch.c.batch_id)) if b not in kept]
        for b in old:
            _records_of(engine, b, stop, removed)
    if settings.keep_days:
        cutoff = ts_ago(settings.keep_days * DAY)
        for table, where in ((agent_log, agent_log.c.batch_id.is_(None) & (agent_log.c.logged_at < cutoff)),
                             (error_log, error_log.c.batch_id.is_(None) & (error_log.c.logged_at < cutoff)),
                             (process_alert, process_alert.c.posted < cutoff)):
            removed[table.name] += delete_in_steps(engine, table, table.c.id, where, stop)
    if settings.keep_history_days:
        with engine.connect() as conn:
            kept = _kept_batches(conn, max(1, settings.keep_batches or 1))
            old = [b for (b,) in conn.execute(select(batch.c.batch_id).where(
                batch.c.created_at < ts_ago(settings.keep_history_days * DAY))) if b not in kept]
        for b in old:  # the batch itself, once its history is past keeping: its rows first
            _records_of(engine, b, stop, removed)
            if stop():
                break
            with engine.begin() as conn:
                for table in (batch_object, batch_selection):
                    conn.execute(delete(table).where(table.c.batch_id == b))
                removed["resync_batch"] += conn.execute(delete(batch).where(batch.c.batch_id == b)).rowcount
    if not stop():
        reclaim(engine, [name for name, n in removed.items() if n >= RECLAIM_AFTER])
    if any(removed.values()):
        log.info("pruned past retention", **removed)
    return removed
