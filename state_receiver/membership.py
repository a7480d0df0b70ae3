"""Which receiver consumes which district: receivers sharing a state database spread the districts between them.

Every receiver writes its row in ``receiver_member`` every ``BEAT`` seconds from a thread of its own, for as
long as it holds its broker connection; the running ones are those the database saw within ``LEASE`` seconds
(the database's clock, so the receivers' own clocks may differ). Each works out the same assignment from the
same rows (``assign``) and consumes the event queues of its own districts only.

The assignment says what a receiver should consume; a claim (``receiver_claim``) says what it may. A receiver
subscribes to a district's queue only once it holds the claim, and a claim is taken only from a receiver that
is no longer running: so two receivers never consume one district, whatever each believes the assignment is.
A receiver giving a district up stops taking its messages, answers those it was sent, closes the queue's
channel and only then gives the claim up (``state_receiver/sharing.py``). A receiver that dies without a word
(SIGKILL, a lost host) stops beating, and ``LEASE`` seconds later the others take its claims; one that stops
cleanly removes its row and claims, and they take them at their next beat.
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

    def beat(self, consuming: Collection[str]) -> set[str]:
        """Say this receiver is running and what it consumes. Returns the districts it should consume now."""
        t = self.schema.members
        row = {"name": self.name, "host": socket.gethostname()[:255], "pid": os.getpid(),
               "started_at": self.started_at, "seen": db_clock(self.engine),
               "districts": json.dumps(self.districts), "consuming": json.dumps(sorted(consuming))}
        with self.engine.begin() as db:
            stmt = insert(self.engine)(t).values(row)
            db.execute(stmt.on_conflict_do_update(index_elements=[t.c.name], set_={
                k: stmt.excluded[k] for k in ("host", "pid", "started_at", "seen", "districts", "consuming")}))
            db.execute(t.delete().where(t.c.seen < db_clock(self.engine) - FORGET))
        serving = {m.name: m.districts for m in members(self.engine, self.schema) if m.live}
        serving[self.name] = self.districts
        return {d for d, m in assign(serving).items() if m == self.name}

    def claim(self, districts: Collection[str]) -> set[str]:
        """Claim ``districts`` where no running receiver holds them; returns those this receiver holds now."""
        if not districts:
            return set()
        c, m = self.schema.claims, self.schema.members
        running = select(m.c.name).where(m.c.seen >= db_clock(self.engine) - LEASE)
        with self.engine.begin() as db:
            stmt = insert(self.engine)(c).values([{"district_id": d, "receiver": self.name, "claimed_at": now_ts()}
                                                  for d in sorted(districts)])
            db.execute(stmt.on_conflict_do_update(
                index_elements=[c.c.district_id],
                set_={"receiver": stmt.excluded.receiver, "claimed_at": stmt.excluded.claimed_at},
                where=(c.c.receiver == self.name) | c.c.receiver.not_in(running)))
            held = db.execute(select(c.c.district_id).where(c.c.receiver == self.name,
                                                            c.c.district_id.in_(sorted(districts))))
            return {r[0] for r in held}

    def unclaim(self, districts: Collection[str] | None = None) -> None:
        """Give up the claims on ``districts`` (default: all this receiver holds)."""
        c = self.schema.claims
        mine = c.c.receiver == self.name
        with self.engine.begin() as db:
            db.execute(c.delete().where(mine if districts is None else mine & c.c.district_id.in_(sorted(districts))))

    def leave(self) -> None:
        """Remove this receiver's row and claims: the others take its districts at their next beat."""
        self.unclaim()
        with self.engine.begin() as db:
            db.execute(self.schema.members.delete().where(self.schema.members.c.name == self.name))
