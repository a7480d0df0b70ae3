"""What the agent keeps of live sync: the change messages the broker holds and the state has not answered
(``live_in_flight``), and per object and day what was sent, answered, refused and healed (``live_day``).

The live thread writes a message's row once the broker has confirmed it, and the ack thread settles it when the
state's answer comes. The answer can come first: both sides therefore settle under one lock, and each settles
every row whose answer is already in the agent log, so each answer is counted once, whichever side is first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Engine, func, select, text, update

from agent.tables import agent_log, live_day, live_in_flight
from core.db import insert_many, one_of
from messages.catalog import Catalog
from messages.envelope import Event, now_ts
from messages.errors import Code
from publisher.changes import Outbox

HEALED = "healed"


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":  # SQLite has one writer at a time already
        conn.execute(text("SELECT pg_advisory_xact_lock(7227318)"))


# One statement for every count (both databases know this upsert): built once, where building it per call
# with the expression language cost more than running it.
_COUNT = text(
    "INSERT INTO live_day (day, object, sent, answered, errors, healed, last_change, last_answer) "
    "VALUES (:day, :object, :sent, :answered, :errors, :healed, :last_change, :last_answer) "
    "ON CONFLICT (day, object) DO UPDATE SET sent = live_day.sent + excluded.sent, "
    "answered = live_day.answered + excluded.answered, errors = live_day.errors + excluded.errors, "
    "healed = live_day.healed + excluded.healed, "
    "last_change = coalesce(excluded.last_change, live_day.last_change), "
    "last_answer = coalesce(excluded.last_answer, live_day.last_answer)")


def _count(conn: Connection, day: str, name: str, *, sent: int = 0, answered: int = 0, errors: int = 0,
           healed: int = 0, last_change: str | None = None, last_answer: str | None = None) -> None:
    """Add to ``name``'s counts for ``day`` (``last_change`` / ``last_answer`` are set, not added)."""
    conn.execute(_COUNT, {"day": day, "object": name, "sent": sent, "answered": answered, "errors": errors,
                          "healed": healed, "last_change": last_change, "last_answer": last_answer})


def sent(conn: Connection, events: Sequence[tuple[Event, str | None]]) -> None:
    """Messages the broker now holds (each with the change it heals, if any): in flight until answered."""
    if not events:
        return
    now = now_ts()
    _lock(conn)
    insert_many(conn, live_in_flight, [
        {"msg_id": e.msg_id, "object": e.object, "ref_id": e.ref_id, "action": e.action.value, "version": e.version,
         "captured": e.ts, "sent_at": now, "heal_of": heal_of, "heal": None} for e, heal_of in events],
        conflict=lambda stmt: stmt.on_conflict_do_nothing())
    per_object: dict[str, list[Event]] = {}
    for e, heal_of in events:
        if heal_of is None:
            per_object.setdefault(e.object, []).append(e)
    for name, es in per_object.items():
        _count(conn, now[:10], name, sent=len(es), last_change=max(e.ts for e in es))
    settle(conn, [e.msg_id for e, _ in events], locked=True)


def settle(conn: Connection, msg_ids: Sequence[str], *, locked: bool = False) -> None:
    """Apply the state's answers (already in the agent log) to the in-flight messages among ``msg_ids``."""
    if not msg_ids:
        return
    if not locked:
        _lock(conn)
    f = live_in_flight
    query = select(f, agent_log.c.status, agent_log.c.code).join(
        agent_log, (agent_log.c.msg_id == f.c.msg_id) & agent_log.c.batch_id.is_(None))
    rows = conn.execute(query.where(one_of(f.c.msg_id, msg_ids, conn.engine), f.c.heal.is_(None))).all()
    if not rows:
        return
    now = now_ts()
    day = now[:10]
    done: list[str] = []
    healing_wanted: list[str] = []
    counts: dict[str, list[int]] = {}  # object -> answered, errors
    for r in rows:
        if r.heal_of is not None:
            done.append(r.msg_id)
            if (r.object, r.ref_id) == _record_of(conn, r.heal_of):  # the record itself, sent again
                _heal_outcome(conn, r.heal_of, r.status == "ok", day, r.object)
            continue
        c = counts.setdefault(r.object, [0, 0])
        c[0] += 1
        if r.status == "error" and r.code == Code.PARENT_MISSING:
            healing_wanted.append(r.msg_id)  # not an error yet: the live thread heals it
            continue
        done.append(r.msg_id)
        c[1] += r.status != "ok"
    for name, (answered, errors) in counts.items():
        _count(conn, day, name, answered=answered, errors=errors, last_answer=now)
    if healing_wanted:
        conn.execute(update(f).where(one_of(f.c.msg_id, healing_wanted, conn.engine)).values(heal="wanted"))
    if done:
        conn.execute(f.delete().where(one_of(f.c.msg_id, done, conn.engine)))


def _record_of(conn: Connection, msg_id: str) -> tuple[str, str] | None:
    row = conn.execute(select(live_in_flight.c.object, live_in_flight.c.ref_id)
                       .where(live_in_flight.c.msg_id == msg_id)).first()
    return None if row is None else (row.object, row.ref_id)


def _heal_outcome(conn: Connection, original: str, ok: bool, day: str, name: str) -> None:
    """The record sent again after its parents: healed, or its error stands."""
    if ok:
        conn.execute(update(agent_log).where(agent_log.c.msg_id == original, agent_log.c.batch_id.is_(None)).values(
            status=HEALED, description=func.coalesce(agent_log.c.description, "")
            + "; healed: its parents were sent again, then the record"))
    _count(conn, day, name, healed=1 if ok else 0, errors=0 if ok else 1)
    conn.execute(live_in_flight.delete().where(live_in_flight.c.msg_id == original))


def not_healed(conn: Connection, original: str, name: str, why: str) -> None:
    """A change answered 9.1 that cannot be healed: its error stands, and the agent log says why."""
    _lock(conn)
    conn.execute(update(agent_log).where(agent_log.c.msg_id == original, agent_log.c.batch_id.is_(None)).values(
        description=func.coalesce(agent_log.c.description, "") + f"; not healed: {why}"))
    _count(conn, now_ts()[:10], name, errors=1)
    conn.execute(live_in_flight.delete().where(live_in_flight.c.msg_id == original))


def healing(conn: Connection, original: str) -> None:
    conn.execute(update(live_in_flight).where(live_in_flight.c.msg_id == original).values(heal="sent"))


def wanted(engine: Engine, limit: int = 50) -> list[Any]:
    """Changes answered 9.1 that the live thread is to heal."""
    with engine.connect() as conn:
        return list(conn.execute(select(live_in_flight).where(live_in_flight.c.heal == "wanted")
                                 .order_by(live_in_flight.c.sent_at).limit(limit)))


def refused(conn: Connection, event: Event) -> None:
    """A change not sent (too large): an error of the day, with no answer to wait for."""
    _count(conn, now_ts()[:10], event.object, errors=1)


def summary(engine: Engine, day: str) -> dict[str, Any]:
    """Per object: today's counts, the messages in flight and the oldest change not yet answered."""
    f = live_in_flight
    with engine.connect() as conn:
        counts = {r.object: dict(r._mapping) for r in conn.execute(select(live_day).where(live_day.c.day == day))}
        flight = {r.object: (int(r.n), r.oldest) for r in conn.execute(
            select(f.c.object, func.count().label("n"), func.min(f.c.captured).label("oldest"))
            .where(f.c.heal_of.is_(None)).group_by(f.c.object))}
    return {"counts": counts, "in_flight": flight}


def caught_up(engine: Engine, catalog: Catalog) -> bool:
    """Every captured change sent and answered, and every heal done."""
    if not Outbox(engine, catalog).empty():
        return False
    with engine.connect() as conn:
        return conn.execute(select(live_in_flight.c.msg_id).limit(1)).first() is None
