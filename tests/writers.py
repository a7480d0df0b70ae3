"""A district's own writers, for live sync tests: several connections committing interleaved transactions on the
district database while the agent runs (parent and child inserted together, updates, deletes, a child moved
under a new parent before its old parent is deleted, and one long transaction that starts first and commits
last)."""

from __future__ import annotations

import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import DBAPIError

from tests.site import DISTRICT

SCHOOL, CALENDAR = DISTRICT.tables["School"], DISTRICT.tables["Calendar"]


def new_ref() -> str:
    return uuid.uuid4().hex.upper()


@dataclass
class Pool:
    """One writer's own schools, each with its calendars: no other writer touches them."""

    schools: dict[str, list[str]] = field(default_factory=dict)


class Writers:
    def __init__(self, eng: Engine, *, connections: int = 4, seed: int = 1) -> None:
        self.eng, self.connections, self.seed = eng, connections, seed
        with eng.connect() as conn:
            self.school = dict(conn.execute(select(SCHOOL).limit(1)).one()._mapping)
            self.calendar = dict(conn.execute(select(CALENDAR).limit(1)).one()._mapping)
            self.shared = [r[0] for r in conn.execute(select(SCHOOL.c.ref_id).order_by(SCHOOL.c.ref_id).limit(4))]
        self.committed: dict[str, int] = {}
        self._lock = threading.Lock()
        self.errors: list[BaseException] = []

    def _count(self, kind: str) -> None:
        with self._lock:
            self.committed[kind] = self.committed.get(kind, 0) + 1

    def _new_school(self, conn: Any, name: str) -> str:
        ref = new_ref()
        conn.execute(SCHOOL.insert().values({**self.school, "ref_id": ref, "name": name}))
        return ref

    def _new_calendar(self, conn: Any, school: str) -> str:
        ref = new_ref()
        conn.execute(CALENDAR.insert().values({**self.calendar, "ref_id": ref, "school_ref_id": school,
                                               "state_exclude": False, "name": f"calendar {ref[:6]}"}))
        return ref

    def step(self, rng: random.Random, pool: Pool, n: int) -> None:
        """One transaction (a move is two)."""
        kind = rng.choice(["add", "add", "update", "update", "shared", "delete", "move"])
        if kind in ("delete", "move") and not pool.schools:
            kind = "add"
        with self.eng.begin() as conn:
            if kind == "add":
                school = self._new_school(conn, f"school {n}")
                pool.schools[school] = [self._new_calendar(conn, school) for _ in range(rng.randint(1, 2))]
            elif kind == "update" and pool.schools:
                school = rng.choice(sorted(pool.schools))
                conn.execute(update(SCHOOL).where(SCHOOL.c.ref_id == school).values(name=f"renamed {n}"))
                for cal in pool.schools[school][:1]:
                    conn.execute(update(CALENDAR).where(CALENDAR.c.ref_id == cal).values(name=f"renamed {n}"))
            elif kind == "shared":  # a record every writer changes
                conn.execute(update(SCHOOL).where(SCHOOL.c.ref_id == rng.choice(self.shared))
                             .values(address=f"{n} Main Street"))
            elif kind == "delete":
                school = rng.choice(sorted(pool.schools))
                conn.execute(CALENDAR.delete().where(CALENDAR.c.ref_id.in_(pool.schools.pop(school))))
                conn.execute(SCHOOL.delete().where(SCHOOL.c.ref_id == school))
            elif kind == "move":  # the child goes under a new parent, then (in its own transaction) the old one goes
                old = rng.choice(sorted(pool.schools))
                new = self._new_school(conn, f"school {n}")
                conn.execute(update(CALENDAR).where(CALENDAR.c.ref_id.in_(pool.schools[old]))
                             .values(school_ref_id=new))
                pool.schools[new] = pool.schools.pop(old)
        if kind == "move":
            with self.eng.begin() as conn:
                conn.execute(SCHOOL.delete().where(SCHOOL.c.ref_id == old))
        self._count(kind)

    def run(self, seconds: float, *, long_transaction: bool = True, pause: float = 0.0) -> None:
        """Write for ``seconds`` from ``connections`` threads; with ``long_transaction``, one more transaction
        begins before them and commits after them."""
        stop = threading.Event()

        def writer(i: int) -> None:
            rng, pool, n = random.Random(self.seed * 100 + i), Pool(), 0
            try:
                while not stop.is_set():
                    n += 1
                    try:
                        self.step(rng, pool, i * 1_000_000 + n)
                    except DBAPIError as e:
                        if "deadlock" not in str(e) and "locked" not in str(e):
                            raise
                    if pause:
                        time.sleep(pause)
            except BaseException as e:
                self.errors.append(e)

        held = threading.Event()
        release = threading.Event()

        def long() -> None:
            try:
                with self.eng.begin() as conn:
                    school = self._new_school(conn, "the long transaction's school")
                    self._new_calendar(conn, school)
                    held.set()
                    release.wait()
                self._count("long")
            except BaseException as e:
                self.errors.append(e)
                held.set()

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(self.connections)]
        first = threading.Thread(target=long) if long_transaction else None
        if first is not None:
            first.start()
            held.wait()
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join()
        release.set()
        if first is not None:
            first.join()
        if self.errors:
            raise self.errors[0]
