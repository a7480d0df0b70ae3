"""What the agent keeps of live sync: per object and day what was sent, answered, refused and healed
(``live_day``), the changes being healed (``live_heal``), and a status row with the changes in flight
(``live_status``, written about once a second by the live thread, which keeps them in memory).

Answers are counted from the agent log's fresh outcomes, in the transaction that logs them, so each is counted
once. A change answered 9.1 is noted in ``live_heal``; the messages that heal it are noted there before they
are published, so their answers, which may come at once, always find them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Engine, func, select, text, update

from agent.tables import agent_log, live_day, live_heal, live_status
from core.db import insert, insert_many, one_of
from messages.catalog import Catalog
from messages.envelope import Ack, Event, now_ts
from messages.errors import Code
from publisher.changes import Outbox

HEALED = "healed"

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


def sent(conn: Connection, events: Sequence[Event]) -> None:
    """Changes the broker now holds."""
    day = now_ts()[:10]
    per_object: dict[str, list[Event]] = {}
    for e in events:
        per_object.setdefault(e.object, []).append(e)
    for name, es in per_object.items():
        _count(conn, day, name, sent=len(es), last_change=max(e.ts for e in es))


def refused(conn: Connection, event: Event) -> None:
    """A change not sent (too large): counted as sent, so that its answer (an error of the agent's own) is
    counted against it."""
    _count(conn, now_ts()[:10], event.object, sent=1)


def answered(conn: Connection, acks: Sequence[Ack]) -> None:
    """The state's first answers to live messages, in the transaction that logs them."""
    if not acks:
        return
    now = now_ts()
    day = now[:10]
    h = live_heal
    healing = {r.msg_id: r for r in conn.execute(select(h).where(one_of(h.c.msg_id, [a.msg_id for a in acks],
                                                                          conn.engine)))}
    counts: dict[str, list[int]] = {}  # object -> answered, errors
    wanted: list[dict[str, Any]] = []
    done: list[str] = []
    for a in acks:
        row = healing.get(a.msg_id)
        if row is not None:  # a message sent to heal a change
            done.append(a.msg_id)
            if row.kind == "retry":
                _heal_outcome(conn, row.original, a.ok, day, row.object)
                done.append(row.original)
            continue
        if a.object is None:
            continue
        c = counts.setdefault(a.object, [0, 0])
        c[0] += 1
        if a.error is not None and a.error.code == Code.PARENT_MISSING and a.ref_id:
            wanted.append({"msg_id": a.msg_id, "original": a.msg_id, "object": a.object, "ref_id": a.ref_id,
                           "kind": "wanted", "at": now})  # not an error yet: the live thread heals it
        elif not a.ok:
            c[1] += 1
    for name, (n, errors) in counts.items():
        _count(conn, day, name, answered=n, errors=errors, last_answer=now)
    if wanted:
        insert_many(conn, h, wanted, conflict=lambda stmt: stmt.on_conflict_do_nothing())
    if done:
        conn.execute(h.delete().where(one_of(h.c.msg_id, done, conn.engine)))


def _heal_outcome(conn: Connection, original: str, ok: bool, day: str, name: str) -> None:
    """The record sent again after its parents: healed, or its error stands."""
    if ok:
        conn.execute(update(agent_log).where(agent_log.c.msg_id == original).values(
            status=HEALED, description=func.coalesce(agent_log.c.description, "")
            + "; healed: its parents were sent again, then the record"))
    _count(conn, day, name, healed=1 if ok else 0, errors=0 if ok else 1)


def wanted(engine: Engine, limit: int = 50) -> list[Any]:
    """Changes answered 9.1 that the live thread is to heal."""
    with engine.connect() as conn:
        return list(conn.execute(select(live_heal).where(live_heal.c.kind == "wanted")
                                 .order_by(live_heal.c.at).limit(limit)))


def healing(conn: Connection, original: str, messages: Sequence[tuple[Event, str]]) -> None:
    """Before the messages that heal ``original`` are published: each (event, "parent" or "retry")."""
    now = now_ts()
    insert_many(conn, live_heal, [{"msg_id": e.msg_id, "original": original, "object": e.object,
                                   "ref_id": e.ref_id, "kind": kind, "at": now} for e, kind in messages],
                conflict=lambda stmt: stmt.on_conflict_do_nothing())
    conn.execute(update(live_heal).where(live_heal.c.msg_id == original).values(kind="healing"))


def not_healed(conn: Connection, original: str, name: str, why: str) -> None:
    """A change answered 9.1 that cannot be healed: its error stands, and the agent log says why."""
    conn.execute(update(agent_log).where(agent_log.c.msg_id == original).values(
        description=func.coalesce(agent_log.c.description, "") + f"; not healed: {why}"))
    _count(conn, now_ts()[:10], name, errors=1)
    conn.execute(live_heal.delete().where(live_heal.c.msg_id == original))


def status(conn: Connection, in_flight: int, oldest: str | None) -> None:
    stmt = insert(conn.engine)(live_status).values(id=1, updated_at=now_ts(), in_flight=in_flight, oldest=oldest)
    conn.execute(stmt.on_conflict_do_update(index_elements=["id"], set_={
        "updated_at": stmt.excluded.updated_at, "in_flight": stmt.excluded.in_flight,
        "oldest": stmt.excluded.oldest}))


def summary(engine: Engine, day: str) -> dict[str, Any]:
    """Today's counts per object, the agent's last status (changes in flight, the oldest of them, when it said
    so), and the changes being healed."""
    with engine.connect() as conn:
        counts = {r.object: dict(r._mapping) for r in conn.execute(select(live_day).where(live_day.c.day == day))}
        row = conn.execute(select(live_status)).first()
        heals = int(conn.execute(select(func.count()).select_from(live_heal)).scalar_one())
    return {"counts": counts, "in_flight": row.in_flight if row else 0, "oldest": row.oldest if row else None,
            "updated_at": row.updated_at if row else None, "healing": heals}


def caught_up(engine: Engine, catalog: Catalog) -> bool:
    """Every captured change sent and answered, and every heal done."""
    if Outbox(engine, catalog).depth()[0]:
        return False
    with engine.connect() as conn:
        sent_, answered_ = conn.execute(select(func.coalesce(func.sum(live_day.c.sent), 0),
                                               func.coalesce(func.sum(live_day.c.answered), 0))).one()
        heals = conn.execute(select(func.count()).select_from(live_heal)).scalar_one()
    return bool(sent_ == answered_ and heals == 0)
