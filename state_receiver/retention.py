"""Retention on the state side: the inbox rows of old batches go (their per-object counts stay in
``receiver_batch_count``); live answers, errors and alerts go after a number of days.

Like the agent, the receiver prunes in small steps, each its own short transaction, in a thread of its own; a
batch without its end marker (still arriving) is never touched, nor are the newest ``keep_batches`` batches of a
district.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy import Engine, and_, select

from core.db import delete_in_steps, reclaim
from core.settings import Settings
from messages.envelope import MarkerKind, ts_ago
from state_receiver.schema import StateSchema

log = structlog.get_logger()
RECLAIM_AFTER = 10_000
"""Rows removed from a table in one pass after which its space is reclaimed at once (``core.db.reclaim``)."""
ENDED = (MarkerKind.BATCH_END.value, MarkerKind.BATCH_CANCELLED.value)


def old_batches(conn: Any, schema: StateSchema, keep: int) -> list[tuple[str, str]]:
    """(district, batch) past the newest ``keep`` of each district, ended, whose inbox rows or errors are still
    there."""
    mk, inbox = schema.markers, schema.inbox
    started = conn.execute(select(mk.c.district_id, mk.c.batch_id, mk.c.received_at).where(
        mk.c.kind == MarkerKind.BATCH_START.value).order_by(mk.c.received_at.desc())).all()
    ended = {(d, b) for d, b in conn.execute(select(mk.c.district_id, mk.c.batch_id).where(mk.c.kind.in_(ENDED)))}
    seen: dict[str, int] = {}
    out = []
    for d, b, _ in started:
        seen[d] = seen.get(d, 0) + 1
        if seen[d] > keep and (d, b) in ended:
            out.append((d, b))
    errors = schema.error_log
    have = {(d, b) for d, b in conn.execute(select(inbox.c.district_id, inbox.c.batch_id).distinct().union(
        select(errors.c.district_id, errors.c.batch_id).distinct()))}
    return [x for x in out if x in have]


def _drop(engine: Engine, schema: StateSchema, district: str, batch: str,
          stop: Callable[[], bool]) -> tuple[int, int]:
    """The batch's inbox rows and errors; how many of each went."""
    inbox, errors = schema.inbox, schema.error_log
    answers = delete_in_steps(engine, inbox, inbox.c.msg_id,
                              and_(inbox.c.district_id == district, inbox.c.batch_id == batch), stop,
                              inbox.c.district_id == district)
    return answers, delete_in_steps(engine, errors, errors.c.id,
                                    and_(errors.c.district_id == district, errors.c.batch_id == batch), stop)


def prune(engine: Engine, schema: StateSchema, settings: Settings,
          stop: Callable[[], bool] = lambda: False) -> dict[str, int]:
    removed = {"receiver_inbox": 0, "receiver_error_log": 0, "state_alert": 0}
    if settings.keep_batches:
        with engine.connect() as conn:
            old = old_batches(conn, schema, settings.keep_batches)
        for district, batch in old:
            if stop():
                break
            answers, errors_gone = _drop(engine, schema, district, batch, stop)
            removed["receiver_inbox"] += answers
            removed["receiver_error_log"] += errors_gone
    if settings.keep_days:
        cutoff = ts_ago(settings.keep_days * 86_400.0)
        inbox, errors, alerts = schema.inbox, schema.error_log, schema.alerts
        # live answers: by msg_id within a district, as the inbox is keyed
        with engine.connect() as conn:
            districts = [d for (d,) in conn.execute(select(inbox.c.district_id).distinct())]
        for d in districts:
            removed["receiver_inbox"] += delete_in_steps(
                engine, inbox, inbox.c.msg_id, and_(inbox.c.district_id == d, inbox.c.batch_id.is_(None),
                                                    inbox.c.received_at < cutoff), stop, inbox.c.district_id == d)
        removed["receiver_error_log"] += delete_in_steps(engine, errors, errors.c.id, errors.c.logged_at < cutoff,
                                                         stop)  # errors outside batches, and of batches kept long
        removed["state_alert"] += delete_in_steps(engine, alerts, alerts.c.id, alerts.c.posted < cutoff, stop)
    if not stop():
        reclaim(engine, [name for name, n in removed.items() if n >= RECLAIM_AFTER])
    if any(removed.values()):
        log.info("pruned past retention", **removed)
    return removed
