"""Stream an object's records in keyset order and publish one persistent message per record.

Never loads a table: rows come in chunks ordered by ``ref_id`` (``WHERE ref_id > last``), so memory
stays flat and a batch can resume from the last confirmed key. Confirms are pipelined: a chunk is
reported as sent once the broker has confirmed it, and one chunk rides unconfirmed while the next is
read and published, so neither the database nor the broker waits for the other.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select

from core.brokers import Connection, Topology
from core.db import keyset_pages, one_of
from core.tables import to_wire
from messages.catalog import Catalog, ref_column
from messages.codec import MAX_BODY, encode_event, encode_marker
from messages.envelope import Action, Event, Kind, Marker, MarkerKind, now_ts, record_msg_id, stable_id
from messages.fields import FieldType, fields
from publisher.changes import versioned
from publisher.schema import DistrictSchema

CHUNK = 2_000
PACE_EVERY = 50
Progress = Callable[[int, str], None]
"""Called after each confirmed chunk with the number of records it held and the last ref_id."""
Pace = Callable[[int], None]
"""Called before every few records are published with how many; may wait (flow control, rate cap)."""
Refused = Callable[[Event, int], None]
"""Told each record that is not published because its message would be over the size limit, and its size."""


def rows(
    engine: Engine, schema: DistrictSchema, name: str, year: int | None, *, after: str = "", chunk: int = CHUNK
) -> Iterator[Sequence[Any]]:
    """Each row carries the record's last confirmed version as ``resync_version``."""
    table = schema.tables[name]
    query = versioned(select(table), table, name)
    if year is not None and schema.catalog.get(name).year_scoped:
        query = query.where(table.c.school_year == year)
    return keyset_pages(engine, query, table.c.ref_id, chunk, after=after)


def rows_by_ref(
    engine: Engine, schema: DistrictSchema, name: str, refs: Iterable[list[str]]
) -> Iterator[Sequence[Any]]:
    """The district's rows of ``name`` for each chunk of ref_ids, in ref_id order (a ref_id whose record was
    deleted meanwhile yields nothing)."""
    table = schema.tables[name]
    for chunk in refs:
        with engine.connect() as conn:
            page = conn.execute(versioned(select(table), table, name).where(one_of(table.c.ref_id, chunk, engine))
                                .order_by(table.c.ref_id)).all()
        if page:
            yield page


@dataclass(frozen=True, slots=True)
class RefOnly:
    """A record known by its ref_id alone: what a delete event needs, with the version it carries."""

    ref_id: str
    resync_version: int = 0


def record_event(catalog: Catalog, district: str, msg_id: str, ts: str, batch: str | None, seq: int, name: str,
                 action: Action, ref_id: str, row: Any, year: int | None, version: int,
                 at: Positions | None = None) -> Event:
    """The message for one record: ``row`` as read (None for a delete); a year-scoped record carries its own
    year, or ``year`` when there is no row. ``at``: where the row holds what the message carries (``positions``),
    when the caller has many rows of one query."""
    obj = catalog.get(name)
    if row is None or action is Action.DELETE:
        return Event(msg_id, ts, district, batch, seq, name, action, ref_id, year if obj.year_scoped else None, {},
                     {}, version)
    at = at or positions(catalog, name, row)
    data = {c: row[i] for c, i in at.plain}
    for c, kind, i in at.converted:
        data[c] = to_wire(kind, row[i])
    return Event(msg_id, ts, district, batch, seq, name, action, ref_id,
                 row[at.year] if at.year is not None else None, {p: row[i] for p, i in at.parents}, data, version)


@dataclass(frozen=True, slots=True)
class Positions:
    """Where a read row holds what an object's message carries: worked out once per object and query shape, so
    each record is read by position (a row's mapping costs more per field than the rest of the message)."""

    parents: tuple[tuple[str, int], ...]
    year: int | None
    plain: tuple[tuple[str, int], ...]  # as read
    converted: tuple[tuple[str, FieldType, int], ...]  # dates and decimals, which travel as text and numbers


CONVERTED = ("date", "decimal")
_POSITIONS: dict[tuple[int, str, tuple[str, ...]], Positions] = {}


def positions(catalog: Catalog, name: str, row: Any) -> Positions:
    """Where rows like ``row`` (of one query) hold what ``name``'s message carries."""
    columns = row._fields
    key = (id(catalog), name, columns)
    found = _POSITIONS.get(key)
    if found is None:
        obj, index = catalog.get(name), {c: i for i, c in enumerate(columns)}
        pairs = fields(name)
        found = _POSITIONS[key] = Positions(
            tuple((p, index[ref_column(p)]) for p in obj.references),
            index["school_year"] if obj.year_scoped else None,
            tuple((c, index[c]) for c, k in pairs if k not in CONVERTED),
            tuple((c, k, index[c]) for c, k in pairs if k in CONVERTED))
    return found


class ObjectPublisher:
    def __init__(self, conn: Connection, engine: Engine, catalog: Catalog, district: str, *,
                 max_body: int = MAX_BODY, refused: Refused | None = None) -> None:
        self.conn, self.engine, self.catalog, self.district = conn, engine, catalog, district
        self.max_body, self.refused = max_body, refused
        self.schema = DistrictSchema(catalog)
        self.queue = Topology.events(district)
        self.seq = 0

    def publish_object(
        self,
        batch: str,
        name: str,
        year: int,
        *,
        after: str = "",
        already: int = 0,
        progress: Progress | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        pace: Pace | None = None,
    ) -> int | None:
        """Publish every record of ``name`` for ``year`` (year-scoped objects only), then an end marker that
        counts every record the batch handled of it (``already`` before a restart), sent or refused as too
        large: the state then answers fewer than the marker counts and keeps the object's older records
        instead of sweeping them. Returns how many were handled now, or None if ``should_stop`` stopped it (no
        end marker then)."""
        pages = rows(self.engine, self.schema, name, year, after=after)
        sent = self.publish_pages(batch, name, year, pages, progress=progress, should_stop=should_stop, pace=pace)
        if sent is not None:
            self.end_object(batch, name, year, already + sent)
        return sent

    def end_object(self, batch: str, name: str, year: int, count: int, *, delta: bool = False) -> None:
        obj_year = year if self.catalog.get(name).year_scoped else None
        self.marker(batch, MarkerKind.OBJECT_END, name, obj_year, count, delta=delta)

    def publish_pages(
        self,
        batch: str,
        name: str,
        year: int,
        pages: Iterable[Sequence[Any]],
        *,
        action: Action = Action.CHANGE,
        progress: Progress | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        pace: Pace | None = None,
    ) -> int | None:
        """Publish one event per row (for a delete, rows need only a ``ref_id``); returns how many were handled,
        or None if ``should_stop`` stopped it first. A record whose message would be over ``max_body`` is not
        sent but told to ``refused``, and counted as handled."""
        sent = 0
        unconfirmed: deque[tuple[int, int, str]] = deque()  # per chunk: published count, records, last ref_id

        def settle(keep: int) -> None:
            nonlocal sent
            while len(unconfirmed) > keep:
                upto, count, last = unconfirmed.popleft()
                self.conn.confirm(upto)
                sent += count
                if progress:
                    progress(count, last)

        for page in pages:
            if should_stop():
                settle(0)
                return None
            ts = now_ts()
            at = positions(self.catalog, name, page[0]) if action is not Action.DELETE else None
            for i, row in enumerate(page):
                if pace is not None and i % PACE_EVERY == 0:
                    pace(min(PACE_EVERY, len(page) - i))
                self.seq += 1
                msg_id = record_msg_id(batch, name, row.ref_id, 0)
                self.send(record_event(self.catalog, self.district, msg_id, ts, batch, self.seq, name, action,
                                       row.ref_id, row, year, row.resync_version, at))
            unconfirmed.append((self.conn.published, len(page), page[-1].ref_id))
            settle(1)
        settle(0)
        return sent

    def send(self, event: Event) -> bool:
        """Publish one record's message, unless it is over ``max_body`` (then told to ``refused``)."""
        body = encode_event(event)
        if len(body) > self.max_body:
            if self.refused is not None:
                self.refused(event, len(body))
            return False
        self.conn.publish(self.queue, body, kind=Kind.EVENT, message_id=event.msg_id)
        return True

    def marker(
        self,
        batch: str,
        kind: MarkerKind,
        name: str | None = None,
        year: int | None = None,
        count: int | None = None,
        request: str | None = None,
        delta: bool = False,
    ) -> None:
        m = Marker(stable_id(batch, kind.value, name or ""), now_ts(), self.district, batch, kind, name, year, count,
                   request, delta)
        self.conn.publish(self.queue, encode_marker(m), kind=Kind.MARKER, message_id=m.msg_id)
        self.conn.flush()
