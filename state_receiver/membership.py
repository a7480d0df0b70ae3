"""Which receiver consumes which district: receivers sharing a state database spread the districts between them.

Every receiver writes its row in ``receiver_member`` every ``BEAT`` seconds while it holds its broker
connection; the live ones are those the database saw within ``LEASE`` seconds (the database's clock, so the
receivers' own clocks may differ). Each receiver works out the same assignment from the same rows
(``assign``) and consumes the event queues of its own districts only.

The assignment only says who subscribes. Per-district order is the broker's: every event queue has a single
active consumer, so a receiver taking a district over waits as a standby until the one that had it releases
the queue, which returns what it held to the queue's head (``Connection.release``). A receiver that dies
without a word (SIGKILL, a lost host) is gone from the live rows after ``LEASE``, and the others take its
districts; one that stops cleanly removes its row, and they take them at their next beat.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Engine, Float, cast, func, select

from core.db import insert
from messages.envelope import now_ts
from state_receiver.schema import StateSchema

BEAT = 1.0
"""Seconds between a receiver's heartbeats (and its look at the others)."""
LEASE = 6.0
"""Seconds after its last heartbeat that a receiver still counts as running: a dead receiver's districts move
to the others this long after it stopped."""
FORGET = 86_400.0
"""Seconds after which the row of a receiver that stopped without removing it is deleted."""


def default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _score(member: str, district: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{member}\0{district}".encode(), digest_size=8).digest(), "big")


def assign(serving: Mapping[str, Collection[str]]) -> dict[str, str]:
    """district -> receiver, for the receivers ``serving`` (each with the districts it may consume).

    Each district goes to the receiver that ranks highest for it (rendezvous hashing, so a receiver joining
    or leaving moves about its own share), unless that one already has its share: with ``n`` receivers
    and ``m`` districts, ``m % n`` of them take ``m // n + 1`` and the rest ``m // n``. So the spread is
    within one of even whenever every receiver serves every district."""
    members = sorted(serving)
    districts = sorted({d for ds in serving.values() for d in ds})
    if not members:
        return {}
    share, extra = divmod(len(districts), len(members))
    load = dict.fromkeys(members, 0)
    out: dict[str, str] = {}
    for d in districts:
        ranked = sorted((m for m in members if d in serving[m]), key=lambda m: _score(m, d), reverse=True)
        room = [m for m in ranked if load[m] < share or (load[m] == share and extra > 0)]
        choice = (room or ranked)[0]
        if load[choice] == share:
            extra -= 1
        load[choice] += 1
        out[d] = choice
    return out


def db_clock(engine: Engine) -> ColumnElement[float]:
    """The database's clock in seconds since the epoch."""
    if engine.dialect.name == "sqlite":
        return cast((func.julianday("now") - 2440587.5) * 86400.0, Float)
    return cast(func.extract("epoch", func.clock_timestamp()), Float)


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    host: str
    pid: int
    started_at: str
    age: float
    """Seconds since the database last saw it."""
    districts: list[str]
    consuming: list[str]

    @property
    def live(self) -> bool:
        return self.age <= LEASE


def members(engine: Engine, schema: StateSchema) -> list[Member]:
    t = schema.members
    with engine.connect() as db:
        rows = db.execute(select(t, (db_clock(engine) - t.c.seen).label("age")).order_by(t.c.name)).all()
    return [Member(r.name, r.host, r.pid, r.started_at, max(0.0, float(r.age)), json.loads(r.districts),
                   json.loads(r.consuming)) for r in rows]


class Membership:
    """One receiver's row, and the districts the live receivers' assignment gives it."""

    def __init__(self, engine: Engine, schema: StateSchema, name: str, districts: Collection[str]) -> None:
        self.engine, self.schema, self.name = engine, schema, name
        self.districts = sorted(districts)
        self.started_at = now_ts()

    def beat(self, consuming: Collection[str]) -> tuple[set[str], set[str]]:
        """Say this receiver is running and what it consumes. Returns the districts it should consume now, and
        those another running receiver still consumes."""
        t = self.schema.members
        row = {"name": self.name, "host": socket.gethostname()[:255], "pid": os.getpid(),
               "started_at": self.started_at, "seen": db_clock(self.engine),
               "districts": json.dumps(self.districts), "consuming": json.dumps(sorted(consuming))}
        with self.engine.begin() as db:
            stmt = insert(self.engine)(t).values(row)
            db.execute(stmt.on_conflict_do_update(index_elements=[t.c.name], set_={
                k: stmt.excluded[k] for k in ("host", "pid", "started_at", "seen", "districts", "consuming")}))
            db.execute(t.delete().where(t.c.seen < db_clock(self.engine) - FORGET))
        others = [m for m in members(self.engine, self.schema) if m.live and m.name != self.name]
        serving = {m.name: m.districts for m in others}
        serving[self.name] = self.districts
        mine = {d for d, m in assign(serving).items() if m == self.name}
        return mine, {d for m in others for d in m.consuming}

    def leave(self) -> None:
        """Remove this receiver's row: the others take its districts at their next beat."""
        with self.engine.begin() as db:
            db.execute(self.schema.members.delete().where(self.schema.members.c.name == self.name))
