"""The agent's tables in the district database: batch history (the vendor's DISBatchHistory, kept for
every batch), per-object counts, the agent log (one final outcome per record) and the error log."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    func,
    select,
    text,
    update,
)

from agent import live_store
from agent.tables import LOOSE, agent_log, batch, batch_object, error_log, metadata, process_alert
from core.db import insert_many
from core.migrations import prepare
from messages.envelope import Ack, new_id, now_ts
from messages.text import clean

ACTIVE = ("queued", "running", "sent")
BLOCKED = "Broker blocked publishing"
STATE = "state"
# What a district may see of a batch the state requested: that it ran, never which objects.
_VISIBLE = batch.c.initiator != STATE


@dataclass(frozen=True)
class PlannedObject:
    name: str
    expected: int


class AgentStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(self) -> None:
        """The agent's tables at this version's schema (see ``core.migrations``)."""
        from agent.migrations import DISTRICT
        from publisher.changes import metadata as versions_metadata

        prepare(self.engine, DISTRICT, [metadata, versions_metadata])

    # batches --------------------------------------------------------------------------------

    def queue_batch(self, objects: list[PlannedObject], *, kind: str, year: int, check_dependencies: bool,
                    initiator: str = "district", requested_by: str = "district administrator",
                    request_id: str | None = None, max_rate: int | None = None, delta: bool = False,
                    with_batch: Callable[[Connection, str], None] | None = None) -> str:
        """Queue a batch of ``objects``; ``with_batch`` writes what else the batch needs (a selection's records)
        in the same transaction, so the daemon never sees the batch without it."""
        batch_id = new_id()
        now = now_ts()
        with self.engine.begin() as conn:
            conn.execute(batch.insert().values(
                batch_id=batch_id, kind=kind, initiator=initiator, requested_by=requested_by, school_year=year,
                check_dependencies=check_dependencies, status="queued", created_at=now, request_id=request_id,
                max_rate=max_rate, delta=delta))
            if objects:
                conn.execute(batch_object.insert(), [
                    {"batch_id": batch_id, "object": o.name, "position": i, "school_year": year,
                     "expected": o.expected, "sent": 0, "processed": 0, "errors": 0, "last_ref_id": ""}
                    for i, o in enumerate(objects)])
            if with_batch is not None:
                with_batch(conn, batch_id)
        return batch_id

    def next_batch(self) -> dict[str, Any] | None:
        """The oldest batch that still has records to publish."""
        with self.engine.connect() as conn:
            row = conn.execute(select(batch).where(batch.c.status.in_(("queued", "running")))
                               .order_by(batch.c.created_at).limit(1)).first()
        return dict(row._mapping) if row else None

    def batch_objects(self, batch_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(batch_object).where(batch_object.c.batch_id == batch_id)
                                .order_by(batch_object.c.position)).all()
        return [dict(r._mapping) for r in rows]

    def set_batch(self, batch_id: str, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(batch).where(batch.c.batch_id == batch_id).values(**values))

    def set_object(self, batch_id: str, name: str, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(batch_object).where(batch_object.c.batch_id == batch_id,
                                                    batch_object.c.object == name).values(**values))

    def set_expected(self, batch_id: str, expected: dict[str, int]) -> None:
        with self.engine.begin() as conn:
            for name, n in expected.items():
                conn.execute(update(batch_object).where(batch_object.c.batch_id == batch_id,
                                                        batch_object.c.object == name).values(expected=n))

    def add_sent(self, batch_id: str, name: str, count: int, last_ref_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(batch_object).where(batch_object.c.batch_id == batch_id,
                                                    batch_object.c.object == name)
                         .values(sent=batch_object.c.sent + count, last_ref_id=last_ref_id))

    # acks -----------------------------------------------------------------------------------

    def record_acks(self, acks: list[Ack]) -> int:
        """Log each outcome once (a redelivered ack changes nothing) and add it to its object's counts.
        Returns how many outcomes were new."""
        return len(self.record_outcomes(acks))

    def record_outcomes(self, acks: list[Ack]) -> list[Ack]:
        """``record_acks``, returning the answers that were new."""
        # a replayed ack can arrive in the same delivery batch as the first one: one outcome per msg_id
        acks = list({a.msg_id: a for a in reversed(acks)}.values())[::-1]
        if not acks:
            return []
        now = now_ts()
        rows = [{"msg_id": a.msg_id, "batch_id": a.batch, "object": a.object, "ref_id": a.ref_id,
                 "status": a.status, "category": a.error.category if a.error else None,
                 "code": a.error.code if a.error else None, "description": a.error.desc if a.error else None,
                 "logged_at": now} for a in acks]
        keyed: list[dict[str, Any]] = []  # a record of a batch: known by it
        loose: list[dict[str, Any]] = []  # anything else (agent_log's LOOSE): known by msg_id
        for r in rows:
            (keyed if r["batch_id"] and r["object"] and r["ref_id"] else loose).append(r)
        with self.engine.begin() as conn:
            new = set()
            if keyed:  # a batch's record is answered once: one row per record
                new |= {r.msg_id for r in insert_many(conn, agent_log, keyed, returning=[agent_log.c.msg_id],
                                                      conflict=lambda stmt: stmt.on_conflict_do_nothing(
                                                          index_elements=["batch_id", "object", "ref_id"]))}
            if loose:
                new |= {r.msg_id for r in insert_many(conn, agent_log, loose, returning=[agent_log.c.msg_id],
                                                      conflict=lambda stmt: stmt.on_conflict_do_nothing(
                                                          index_elements=["msg_id"], index_where=text(LOOSE)))}
            fresh = [a for a in acks if a.msg_id in new]
            counts: dict[tuple[str, str], list[int]] = {}
            for a in fresh:
                if a.batch and a.object:
                    c = counts.setdefault((a.batch, a.object), [0, 0])
                    c[0] += 1
                    c[1] += 0 if a.ok else 1
            for (batch_id, name), (processed, errors) in counts.items():
                conn.execute(update(batch_object)
                             .where(batch_object.c.batch_id == batch_id, batch_object.c.object == name)
                             .values(processed=batch_object.c.processed + processed,
                                     errors=batch_object.c.errors + errors))
            live_store.settle(conn, [a.msg_id for a in fresh if a.batch is None])
            failed = [a for a in fresh if a.error is not None]
            if failed:
                conn.execute(error_log.insert(), [
                    {"logged_at": now, "batch_id": a.batch, "object": a.object, "ref_id": a.ref_id,
                     "msg_id": a.msg_id, "category": a.error.category, "code": a.error.code,
                     "description": a.error.desc, "extended": a.error.extended}
                    for a in failed if a.error is not None])
        return fresh

    def log_error(self, description: str, *, batch_id: str | None = None, obj: str | None = None,
                  category: int | None = None, code: str | None = None, extended: str = "") -> None:
        with self.engine.begin() as conn:
            conn.execute(error_log.insert().values(logged_at=now_ts(), batch_id=batch_id, object=obj,
                                                   category=category, code=code, description=clean(description, 2000),
                                                   extended=clean(extended, 4000)))

    def complete_finished(self) -> list[str]:
        """Close every object whose records are all published and acknowledged, then every batch whose
        objects are all closed. Returns the batches completed now."""
        now = now_ts()
        done: list[str] = []
        with self.engine.begin() as conn:
            conn.execute(update(batch_object).where(
                batch_object.c.completed_at.is_(None), batch_object.c.sent_at.is_not(None),
                batch_object.c.processed >= batch_object.c.sent).values(completed_at=now))
            for (batch_id,) in conn.execute(select(batch.c.batch_id).where(batch.c.status == "sent")).all():
                open_objects = conn.execute(select(func.count()).select_from(batch_object).where(
                    batch_object.c.batch_id == batch_id, batch_object.c.completed_at.is_(None))).scalar_one()
                if open_objects == 0:
                    conn.execute(update(batch).where(batch.c.batch_id == batch_id)
                                 .values(status="completed", completed_at=now))
                    done.append(batch_id)
        return done

    # reading --------------------------------------------------------------------------------

    def batch(self, batch_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(batch).where(batch.c.batch_id == batch_id)).first()
        return dict(row._mapping) if row else None

    def find_batch(self, prefix: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(batch).where(batch.c.batch_id.like(prefix.upper() + "%"))).all()
        return [dict(r._mapping) for r in rows]

    def latest_per_object(self, year: int) -> dict[str, dict[str, Any]]:
        """For each object, its row in the most recent batch of ``year`` that included it."""
        query = (select(batch_object, batch.c.status.label("batch_status"), batch.c.initiator,
                        batch.c.created_at)
                 .join(batch, batch.c.batch_id == batch_object.c.batch_id)
                 .where(batch_object.c.school_year == year, _VISIBLE, batch.c.kind != "selective")
                 .order_by(batch.c.created_at))
        out: dict[str, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(query):
                out[row.object] = dict(row._mapping)
        return out

    def history(self, *, obj: str | None = None, year: int | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """Every batch, newest first. A state-initiated batch shows its totals, never its objects."""
        with self.engine.connect() as conn:
            query = select(batch).order_by(batch.c.created_at.desc()).limit(limit)
            if obj:
                query = query.where(_VISIBLE, batch.c.batch_id.in_(
                    select(batch_object.c.batch_id).where(batch_object.c.object == obj)))
            if year:
                query = query.where(batch.c.school_year == year)
            batches = [dict(r._mapping) for r in conn.execute(query)]
            for b in batches:
                objs = conn.execute(select(batch_object).where(batch_object.c.batch_id == b["batch_id"])
                                    .order_by(batch_object.c.position)).all()
                b.pop("request_id")
                b["delta"] = bool(b["delta"])
                b["objects"] = None if b["initiator"] == STATE else [dict(o._mapping) for o in objs]
                b["sent"] = sum(o.sent for o in objs)
                b["processed"] = sum(o.processed for o in objs)
                b["errors"] = sum(o.errors for o in objs)
        return batches

    def log(self, *, batch_id: str | None = None, obj: str | None = None, errors_only: bool = False,
            year: int | None = None, limit: int = 50, before: int | None = None) -> list[dict[str, Any]]:
        """Newest first; ``before``: only rows older than this id (keyset paging: each page costs the same,
        however deep)."""
        query = (select(agent_log).order_by(agent_log.c.id.desc()).limit(limit)
                 .where(agent_log.c.batch_id.not_in(self._state_batches())))
        if year:
            query = query.where(agent_log.c.batch_id.in_(select(batch.c.batch_id).where(batch.c.school_year == year)))
        if batch_id:
            query = query.where(agent_log.c.batch_id == batch_id)
        if obj:
            query = query.where(agent_log.c.object == obj)
        if errors_only:
            query = query.where(agent_log.c.status == "error")
        if before is not None:
            query = query.where(agent_log.c.id < before)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def errors(self, *, limit: int = 100) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(error_log).order_by(error_log.c.id.desc()).limit(limit).where(
                (error_log.c.batch_id.is_(None)) | error_log.c.batch_id.not_in(self._state_batches())))
            return [dict(r._mapping) for r in rows]

    def full_resync_since(self, year: int, since: Any) -> bool:
        """Whether a full resync of ``year`` completed on or after the date ``since``."""
        with self.engine.connect() as conn:
            return conn.execute(select(batch.c.batch_id).where(
                batch.c.kind == "full", batch.c.status == "completed", batch.c.school_year == year,
                batch.c.completed_at >= since.isoformat())).first() is not None

    @staticmethod
    def _state_batches() -> Any:
        return select(batch.c.batch_id).where(batch.c.initiator == STATE)

    def cancel(self, batch_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(batch).where(batch.c.batch_id == batch_id, batch.c.status.in_(ACTIVE))
                         .values(status="cancelled", completed_at=now_ts(),
                                 message="cancelled by the district administrator"))

    def is_cancelled(self, batch_id: str) -> bool:
        b = self.batch(batch_id)
        return b is not None and b["status"] == "cancelled"

    def has_request(self, request_id: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(select(batch.c.batch_id).where(batch.c.request_id == request_id)).first() is not None

    # process alerts -------------------------------------------------------------------------

    def post_alert(self, process: str, name: str, detail: str = "", due: str | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(process_alert.insert().values(process=process, name=name, posted=now_ts(), due=due,
                                                       read=False, detail=detail))

    def set_blocked(self, alarm: str | None) -> None:
        """The broker blocks publishing (``alarm``) or lets go (None): an alert while it lasts, marked read and
        dated when it clears, so `resync queue`, `send --wait` and `resync alerts` say why nothing moves."""
        active = (process_alert.c.name == BLOCKED) & process_alert.c.read.is_(False)
        with self.engine.begin() as conn:
            if alarm is not None:
                if conn.execute(select(process_alert.c.id).where(active)).first() is None:
                    conn.execute(process_alert.insert().values(
                        process="agent", name=BLOCKED, posted=now_ts(), read=False,
                        detail=f"{alarm[:200]}: publishing waits for the alarm to clear; nothing unconfirmed is lost"))
            else:
                conn.execute(process_alert.update().where(active).values(
                    read=True, detail=process_alert.c.detail + f" (cleared {now_ts()})"))

    def blocked(self) -> str | None:
        """Why the broker blocks this agent's publishing, while it does."""
        with self.engine.connect() as conn:
            row = conn.execute(select(process_alert.c.posted, process_alert.c.detail).where(
                (process_alert.c.name == BLOCKED) & process_alert.c.read.is_(False))).first()
        return None if row is None else f"the broker has blocked publishing since {row.posted}: {row.detail}"

    def alerts(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(process_alert).order_by(process_alert.c.id.desc()))]

    def delete_alerts(self, ids: list[int]) -> int:
        with self.engine.begin() as conn:
            return conn.execute(process_alert.delete().where(process_alert.c.id.in_(ids))).rowcount

    def in_flight(self) -> list[dict[str, Any]]:
        """Per active batch: records sent that have not been acknowledged yet."""
        query = (select(batch.c.batch_id, batch.c.status, batch.c.started_at,
                        func.sum(batch_object.c.sent).label("sent"),
                        func.sum(batch_object.c.processed).label("processed"))
                 .join(batch_object, batch_object.c.batch_id == batch.c.batch_id)
                 .where(batch.c.status.in_(ACTIVE)).group_by(batch.c.batch_id, batch.c.status, batch.c.started_at))
        with self.engine.connect() as conn:
            return [{"batch_id": r.batch_id, "status": r.status, "started_at": r.started_at, "sent": int(r.sent or 0),
                     "processed": int(r.processed or 0),
                     # ``sent`` is written at checkpoints, answers as they come: never below nothing
                     "awaiting_ack": max(0, int((r.sent or 0) - (r.processed or 0)))}
                    for r in conn.execute(query)]

    def unanswered(self, older_than: float = 30.0) -> int:
        """Records sent by active batches started over ``older_than`` seconds ago of which not one is answered."""
        now = dt.datetime.now(dt.UTC)
        return sum(r["sent"] for r in self.in_flight() if r["processed"] == 0 and r["started_at"]
                   and (now - dt.datetime.fromisoformat(r["started_at"].replace("Z", "+00:00"))).total_seconds()
                   > older_than)
