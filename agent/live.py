"""Live sync: the agent's third thread publishes every change the district commits, as it happens.

It wakes on the outbox's notification (PostgreSQL ``LISTEN``; on SQLite, or if a notification is missed, it
polls), reads every captured row it can see with the records in one snapshot, publishes each changed record as
it is now with the per-record message contract (parents first, deletes last and children first), waits for
the broker's confirms, and only then removes the rows from the outbox. While the broker or the state is down the
changes wait in the outbox, and flow when it is back; a crash anywhere before the removal sends them again under
the same ids.

A change the state answers 9.1 (a parent it does not hold) is healed once: the agent sends the record's parent
chain as the district has it, then the record again, and the agent log says it was healed, or why not.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import Engine, select

from agent import live_store
from agent.metrics import SENT
from core.brokers import Broker
from core.db import Listener
from core.metrics import CONFIRM_SECONDS
from core.retry import permanent, run_forever
from core.settings import Settings
from messages.catalog import Catalog, ref_column
from messages.envelope import Action, Event, now_ts, record_msg_id, stable_id
from messages.text import clean
from publisher.capture import CHANNEL
from publisher.changes import Change, Outbox, confirmed, versioned
from publisher.publish import ObjectPublisher, record_event
from publisher.schema import DistrictSchema

log = structlog.get_logger()
CHUNK = 5_000
"""Changes read and published together: one snapshot, one round of confirms."""
POLL = 1.0
"""Seconds between looks at the outbox when no notification comes (SQLite has none)."""
SQLITE_POLL = 0.2
HEAL_EVERY = 1.0
"""Seconds between looks for changes to heal."""


@dataclass(frozen=True, slots=True)
class _Published:
    """A chunk published and not yet known to be confirmed: confirmed once the broker confirms ``mark``."""

    mark: int
    changes: list[Change]
    events: list[tuple[Event, str | None]]
    ids: set[int]


class LiveSync:
    def __init__(self, settings: Settings, broker: Broker, engine: Engine, catalog: Catalog,
                 refused: Callable[[Event, int], None], watch: Callable[[str | None], None],
                 failed: Callable[[str], None]) -> None:
        self.settings, self.broker, self.engine, self.catalog = settings, broker, engine, catalog
        self.refused, self.watch, self.failed = refused, watch, failed
        self.outbox = Outbox(engine, catalog)
        self.schema = DistrictSchema(catalog)
        self.poll = POLL if engine.dialect.name == "postgresql" else SQLITE_POLL
        self._next_heal = 0.0

    def run(self, stop: threading.Event, failed: Callable[[BaseException], None] | None = None) -> None:
        run_forever(lambda: self._serve(stop), stop, "live sync", failed=failed)

    def _serve(self, stop: threading.Event) -> None:
        while not stop.is_set() and not self.outbox.installed():
            stop.wait(5.0)  # `resync capture install` may come later
        if stop.is_set():
            return
        log.info("live sync started")
        with (self.broker.connect() as conn, Listener(self.engine, CHANNEL) as listener,
              ThreadPoolExecutor(1, thread_name_prefix="live-read") as reader,
              ThreadPoolExecutor(1, thread_name_prefix="live-books") as books):
            conn.watch = self.watch
            conn.timing = CONFIRM_SECONDS.labels("agent").observe
            pub = ObjectPublisher(conn, self.engine, self.catalog, self.settings.district,
                                  max_body=self.settings.max_body, refused=self.refused)
            # Four steps overlap: while one chunk is published, the confirms of the one before come in (then its
            # books are written), and the next is read, leaving out the rows of every chunk not yet removed.
            behind: deque[tuple[Future[None], set[int]]] = deque()
            ahead: Future[list[Change]] | None = None
            unconfirmed: _Published | None = None
            while not stop.is_set():
                try:
                    while behind and (behind[0][0].done() or len(behind) > 2):
                        behind.popleft()[0].result()
                    busy = self._heal(pub)
                    taken = set().union(*(ids for _, ids in behind), unconfirmed.ids if unconfirmed else ())
                    changes = ahead.result() if ahead is not None else self.outbox.take(CHUNK, besides=taken)
                    ahead = None
                    if changes:
                        ids = {i for c in changes for i in c.ids}
                        if len(ids) >= CHUNK:  # a backlog: read on; otherwise wait to be told of more
                            ahead = reader.submit(self.outbox.take, CHUNK, besides=taken | ids)
                        events = self._send(pub, changes)
                        if unconfirmed is not None:
                            behind.append(self._book_when_confirmed(pub, unconfirmed, books))
                        unconfirmed = _Published(pub.conn.published, changes, events, ids)
                    if ahead is None and unconfirmed is not None:  # nothing more to publish meanwhile
                        behind.append(self._book_when_confirmed(pub, unconfirmed, books))
                        unconfirmed = None
                except Exception as e:
                    # a bug or data it cannot send: the changes stay in the outbox, and it tries again
                    permanent(e)
                    log.exception("live sync failed; trying again in 5 seconds")
                    self.failed(clean(f"live sync failed: {type(e).__name__}: {e}", 1000))
                    behind.clear()
                    ahead = unconfirmed = None
                    stop.wait(5.0)
                    continue
                if ahead is None and not busy:
                    if behind:
                        wait([behind[0][0]], timeout=self.poll)
                    else:
                        listener.wait(self.poll, stop)
                        conn.keep_alive()
            for future, _ in behind:
                future.result()

    def _book_when_confirmed(self, pub: ObjectPublisher, chunk: _Published,
                             books: ThreadPoolExecutor) -> tuple[Future[None], set[int]]:
        """Wait for the broker's confirms of ``chunk`` (by now mostly in), then write its books."""
        pub.conn.confirm(chunk.mark)
        log.debug("changes sent", records=len(chunk.events))
        for name, n in Counter(e.object for e, _ in chunk.events).items():
            SENT.labels(name, "live").inc(n)
        return books.submit(self._books, chunk.changes, chunk.events), chunk.ids

    def _books(self, changes: list[Change], events: list[tuple[Event, str | None]]) -> None:
        """Once the broker holds the messages: the outbox rows go, and the messages are in flight."""
        with self.engine.begin() as db:
            confirmed(db, changes)
            live_store.sent(db, events)

    def _send(self, pub: ObjectPublisher, changes: list[Change]) -> list[tuple[Event, str | None]]:
        """Publish the changes; their confirms are awaited by ``_book_when_confirmed``."""
        events: list[tuple[Event, str | None]] = []
        for c in changes:
            if c.object not in self.catalog:
                continue
            pub.seq += 1
            msg_id = record_msg_id(None, c.object, c.ref_id, c.version)
            e = record_event(self.catalog, self.settings.district, msg_id, c.captured, None, pub.seq, c.object,
                             c.action, c.ref_id, c.row, c.year, c.version)
            if pub.send(e):
                events.append((e, None))
        return events

    # healing ----------------------------------------------------------------------------------

    def _heal(self, pub: ObjectPublisher) -> bool:
        """Heal the changes answered 9.1 (looked for once a second: they are rare, and a look costs a query on
        the path of every change); True if there were any."""
        if time.monotonic() < self._next_heal:
            return False
        self._next_heal = time.monotonic() + HEAL_EVERY
        wanted = live_store.wanted(self.engine)
        if wanted:
            self._next_heal = 0.0  # more may be waiting
        for original in wanted:
            record = self._row(original.object, original.ref_id)
            chain, missing = self._parents(original.object, record) if record is not None else ([], None)
            if record is None or missing is not None:
                why = (f"{missing[0]} {missing[1]} does not exist at the district either" if missing
                       else f"{original.object} {original.ref_id} no longer exists at the district")
                with self.engine.begin() as db:
                    live_store.not_healed(db, original.msg_id, original.object, why)
                log.warning("change not healed", object=original.object, ref_id=original.ref_id, reason=why)
                continue
            sending: list[tuple[Event, str | None]] = []
            for name, row in [*chain, (original.object, record)]:
                version = max(row.resync_version, original.version) if row is record else row.resync_version
                pub.seq += 1
                e = record_event(self.catalog, self.settings.district, stable_id("heal", original.msg_id, name,
                                                                                 row.ref_id),
                                 now_ts(), None, pub.seq, name, Action.CHANGE, row.ref_id, row, None, version)
                if pub.send(e):
                    sending.append((e, original.msg_id))
            pub.conn.flush()  # every message published so far, confirmed
            with self.engine.begin() as db:
                live_store.healing(db, original.msg_id)
                live_store.sent(db, sending)
            log.info("healing a change: its parents sent again", object=original.object, ref_id=original.ref_id,
                     parents=len(chain))
        return bool(wanted)

    def _row(self, name: str, ref_id: str) -> Any:
        table = self.schema.tables[name]
        with self.engine.connect() as conn:
            return conn.execute(versioned(select(table), table, name).where(table.c.ref_id == ref_id)).first()

    def _parents(self, name: str, row: Any) -> tuple[list[tuple[str, Any]], tuple[str, str] | None]:
        """Every record above ``row`` as the district has it, parents first; or the first one it lacks."""
        found: dict[tuple[str, str], Any] = {}

        def climb(obj: str, r: Any) -> tuple[str, str] | None:
            for parent in self.catalog.get(obj).references:
                ref = r._mapping[ref_column(parent)]
                if (parent, ref) in found:
                    continue
                above = self._row(parent, ref)
                if above is None:
                    return parent, ref
                found[(parent, ref)] = above
                missing = climb(parent, above)
                if missing:
                    return missing
            return None

        missing = climb(name, row)
        position = {n: i for i, n in enumerate(self.catalog.names())}
        chain = sorted(((obj, r) for (obj, _), r in found.items()), key=lambda x: position[x[0]])
        return chain, missing
