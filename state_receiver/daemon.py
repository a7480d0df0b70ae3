"""``resync receiver run``: consume each district's event queue, apply, acknowledge.

Per delivery batch: check identity and decode each message; apply the valid events of each district
in one transaction (``state_receiver/batch.py``); publish the acks (packed) to the district's ack queue
and wait for the broker's confirms; only then acknowledge the AMQP deliveries. A crash anywhere before
that last step means redelivery, and the inbox turns redelivery into the same acks.

Two batches are in hand at a time: while a worker thread decodes and applies one, the connection's
thread answers the one before and fetches the next, so the database and the broker work side by side.
Batches are still applied, answered and acknowledged in the order they arrived.

Answers go out on a connection of their own: the consuming one is read only when the receiver asks
for more, so what it holds is bounded in bytes as well as in count, whatever senders put on the queue.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import structlog
from sqlalchemy import Connection as DbConnection
from sqlalchemy import Engine, select

from core.brokers import Broker, Connection, Delivery, Topology
from core.brokers.base import sender_of
from core.db import insert
from core.metrics import CONFIRM_SECONDS, Health, serve
from core.retry import every, narrow, permanent, run_forever
from core.settings import Settings
from messages.catalog import Catalog
from messages.codec import MAX_ACK_MESSAGE, MAX_ACKS, encode_acks, encode_manifest_part
from messages.envelope import (
    Ack,
    AckPack,
    Kind,
    ManifestPart,
    ManifestRequest,
    Marker,
    MarkerKind,
    VerifyReport,
    now_ts,
    stable_id,
    ts_ago,
)
from messages.manifest import ENTRY
from messages.text import clean
from state_receiver import metrics
from state_receiver.batch import DistrictBatch, describe
from state_receiver.manifest import manifest_parts, store_report
from state_receiver.membership import Membership, default_name
from state_receiver.requests import on_markers
from state_receiver.schema import StateSchema
from state_receiver.sharing import Share
from state_receiver.sweep import sweep_batch

log = structlog.get_logger()
ACKS_PER_MESSAGE = MAX_ACKS
HELD_BYTES = 16 * 1024 * 1024
"""Bodies one delivery batch may hold; two batches are in hand at a time."""
MANIFEST_REPEAT = 600.0
"""Seconds during which a manifest request already answered is not answered again (a district that asks
many times gets one manifest; after a receiver restart, the request is answered anew)."""
RETAIN_EVERY = 60.0
"""Seconds between housekeeping passes (tombstones, retention)."""
"""Seconds between prunings of the tombstones."""
TOMBSTONE_KEEP = 86_400
"""Seconds a versioned delete is remembered. Pages read before a delete are published within seconds of it and
sit right behind it in the queue, so a day is far more than they need."""
STOP_GRACE = 30.0
"""Seconds a stopping receiver spends answering what its queues sent it, before it lets the rest go back."""
PACK_BYTES = MAX_ACK_MESSAGE
"""An ack message stays well under the broker's message-size limit, however long the errors' texts."""


def _packs(district: str, acks: list[Ack]) -> Iterator[tuple[bytes, str]]:
    """The acks as ack messages (body, message id), halved until each fits ``PACK_BYTES``."""
    body = encode_acks(AckPack(district, acks))
    if len(body) <= PACK_BYTES or len(acks) == 1:
        yield body, acks[0].msg_id
        return
    half = len(acks) // 2
    yield from _packs(district, acks[:half])
    yield from _packs(district, acks[half:])


@dataclass
class Answers:
    """What one delivery batch gets back: the acks for each district, and what must be dead-lettered."""

    acks: dict[str, list[Ack]] = field(default_factory=dict)
    dead: list[tuple[Delivery, str]] = field(default_factory=list)
    manifests: list[tuple[str, ManifestRequest]] = field(default_factory=list)
    """Manifests to send, after the acks: the state as it stands once the batch is applied."""


class Receiver:
    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        engine: Engine,
        catalog: Catalog,
        *,
        prefetch: int = 3000,
        batch_size: int = 1000,
    ) -> None:
        self.settings, self.broker, self.engine, self.catalog = settings, broker, engine, catalog
        self.schema = StateSchema(catalog)
        self.prefetch, self.batch_size = prefetch, batch_size
        self.districts = settings.receiver_districts
        self.name = settings.receiver_name or default_name()
        self.share: Share | None = None
        """Its share of the districts, while it holds a broker connection."""
        self.applied = 0
        self.health = Health("receiver")
        self.batch = DistrictBatch(settings, engine, self.schema, catalog, self._markers)
        self._manifested: dict[tuple[str, str], float] = {}  # (district, request) -> when answered

    def setup(self) -> None:
        self.schema.create(self.engine)
        for d in self.districts:
            self.broker.declare_district(d)

    def run(self, stop: threading.Event) -> None:
        server = serve(self.settings.metrics_host, self.settings.metrics_port, self.health)
        if server is not None:
            metrics.register(self.engine, self.schema,
                             lambda: (set(self.share.view if self.share else ()), set(self.districts)))
        try:
            run_forever(self.setup, stop, "start-up", failed=self.health.failed)
            log.info("receiver started", receiver=self.name, districts=list(self.districts),
                     broker=self.broker.describe(), metrics_port=self.settings.metrics_port or None)
            pruning = threading.Thread(target=self._retention, args=(stop,), name="retention", daemon=True)
            pruning.start()
            try:
                run_forever(lambda: self._serve(stop), stop, "receiver", failed=self.health.failed)
            finally:
                stop.set()
                pruning.join()
        finally:
            self.health.running = False
            if server is not None:
                server.shutdown()
        log.info("receiver stopped", applied=self.applied)

    def _retention(self, stop: threading.Event) -> None:
        """Housekeeping beside the work, once a minute: deletes' tombstones past a day, and what is past retention
        (``state_receiver.retention``), in small steps."""
        from state_receiver.retention import prune

        def step() -> None:
            self.prune_tombstones()
            prune(self.engine, self.schema, self.settings, stop.is_set)

        every(RETAIN_EVERY, step, stop, "pruning")

    def _serve(self, stop: threading.Event) -> None:
        share = Share(Membership(self.engine, self.schema, self.name, self.districts), self.health, self.prefetch,
                      self.settings.max_body)
        self.share = share
        try:
            with (self.broker.connect() as conn, self.broker.connect() as out,
                  ThreadPoolExecutor(1, thread_name_prefix="apply") as worker):
                self.health.up("broker")
                out.watch = self.health.watch_blocked()  # answers are what the receiver publishes
                out.timing = CONFIRM_SECONDS.labels("receiver").observe
                share.start()
                self._loop(stop, share, conn, out, worker)
        finally:
            share.gone(stop.is_set())

    def _loop(self, stop: threading.Event, share: Share, conn: Connection, out: Connection,
              worker: ThreadPoolExecutor) -> None:
        def answer(deliveries: list[Delivery], answers: Answers) -> None:
            self.answer(conn, deliveries, answers, out)

        in_hand: tuple[list[Delivery], Future[Answers]] | None = None
        stopping_at = 0.0
        while True:
            share.check()
            if stop.is_set():  # answer what the queues sent, so nothing goes back to them out of order
                for d in sorted(share.consuming):
                    share.let_go(conn, d)
                if not share.consuming or time.monotonic() > stopping_at + STOP_GRACE:
                    break
            else:
                stopping_at = time.monotonic()
                share.follow(conn)
            share.released(conn, {Topology.district_of(d.queue) for d in in_hand[0]} if in_hand else set())
            # with a batch in hand, only what has already come: its answer waits for nothing else
            deliveries = conn.fetch(self.batch_size, timeout=0.5 if in_hand is None else 0.002, max_bytes=HELD_BYTES)
            if any(d.type == Kind.MANIFEST_REQUEST for d in deliveries):
                # a manifest reads the state as the batch leaves it: nothing may be applied meanwhile
                if in_hand is not None:
                    answer(in_hand[0], in_hand[1].result())
                    in_hand = None
                answer(deliveries, self.work(deliveries))
                continue
            following = (deliveries, worker.submit(self.work, deliveries)) if deliveries else None
            if in_hand is not None:
                answer(in_hand[0], in_hand[1].result())
            in_hand = following
        if in_hand is not None:
            answer(in_hand[0], in_hand[1].result())

    def prune_tombstones(self) -> int:
        """Forget deletes applied over a day ago: a page read before a delete arrives right behind it."""
        t = self.schema.tombstones
        cutoff = ts_ago(TOMBSTONE_KEEP)
        with self.engine.begin() as db:
            return int(db.execute(t.delete().where(t.c.deleted_at < cutoff)).rowcount)

    def handle(self, conn: Connection, deliveries: list[Delivery]) -> None:
        self.answer(conn, deliveries, self.work(deliveries))

    def work(self, deliveries: list[Delivery]) -> Answers:
        """Decode and apply a delivery batch; touches the database, never the broker. A failure that retrying
        cannot cure is narrowed down by halves to the one delivery that causes it, which is dead-lettered."""
        def set_aside(d: Delivery, e: Exception) -> Answers:
            reason = f"[11/11.1] the state failed on this message: {clean(f'{type(e).__name__}: {e}', 500)}"
            log.error("message dead-lettered", reason=reason, exc_info=e, **describe(d))
            return Answers(dead=[(d, reason)])

        # each district on its own: one district's poison message costs another district nothing
        started = time.monotonic()
        by_district: dict[str, list[Delivery]] = defaultdict(list)
        for d in deliveries:
            by_district[Topology.district_of(d.queue)].append(d)
        first = Answers()
        for district, items in by_district.items():
            for more in narrow(items, partial(self._work, district), set_aside):
                for district, acks in more.acks.items():
                    first.acks.setdefault(district, []).extend(acks)
                first.dead += more.dead
                first.manifests += more.manifests
        metrics.APPLY_SECONDS.observe(time.monotonic() - started)
        return first

    def _work(self, district: str, deliveries: list[Delivery]) -> Answers:
        outcome = self.batch.process(district, deliveries, now_ts())
        return Answers({district: outcome.acks}, outcome.dead, [(district, m) for m in outcome.manifests])

    def answer(self, conn: Connection, deliveries: list[Delivery], answers: Answers,
               out: Connection | None = None) -> None:
        """Publish the acks and dead letters (on ``out``), wait for the broker to hold them, then take the
        deliveries."""
        out = out or conn
        for district, acks in answers.acks.items():
            for i in range(0, len(acks), ACKS_PER_MESSAGE):
                for body, first in _packs(district, acks[i : i + ACKS_PER_MESSAGE]):
                    out.publish(Topology.acks(district), body, kind=Kind.ACKS, message_id=first)
        for d, reason in answers.dead:
            out.dead_letter(d, reason, sender_of(d, self.settings.state_user))
        now = time.monotonic()
        self._manifested = {k: t for k, t in self._manifested.items() if now - t < MANIFEST_REPEAT}
        answered = set()
        for district, request in answers.manifests:
            key = (district, request.request)
            if key in self._manifested or key in answered:
                log.warning("manifest request repeated; not answered again", district=district,
                            request=request.request)
                continue
            answered.add(key)
            self._manifest(out, district, request)
        out.flush()
        self._manifested.update(dict.fromkeys(answered, now))  # once the broker holds the manifest
        conn.ack(deliveries[-1].delivery_tag, multiple=True)
        self.applied += len(deliveries)
        metrics.count_answers(answers.acks, (Topology.district_of(d.queue) for d, _ in answers.dead))

    def _manifest(self, out: Connection, district: str, request: ManifestRequest) -> None:
        sent, done = 0, set()
        try:
            for part in manifest_parts(self.engine, self.schema, district, request):
                out.publish(Topology.acks(district), encode_manifest_part(part), kind=Kind.MANIFEST,
                            message_id=stable_id(request.request, part.object, str(part.part)))
                sent += len(part.entries) // ENTRY
                if part.last:
                    done.add(part.object)
        except Exception as e:
            permanent(e)
            log.exception("manifest failed", district=district, request=request.request)
            for name in dict.fromkeys(o for o in request.objects if o not in done):
                part = ManifestPart(request.request, name, 0, True, "", clean(f"the state could not list {name}: {e}",
                                                                              1000))
                out.publish(Topology.acks(district), encode_manifest_part(part), kind=Kind.MANIFEST,
                            message_id=stable_id(request.request, name, "failed"))
        log.info("manifest sent", district=district, request=request.request, objects=len(request.objects),
                 records=sent)

    def _markers(self, db: DbConnection, district: str, notices: list[Marker | VerifyReport], now: str) -> None:
        """Record batch markers once each (a redelivered marker changes nothing); follow the state's
        requests; sweep after a batch that ended; file verification reports."""
        for report in (n for n in notices if isinstance(n, VerifyReport)):
            store_report(db, self.schema, district, report, now)
        markers = [m for m in notices if isinstance(m, Marker)]
        if not markers:
            return
        mk = self.schema.markers
        seen = {row[0] for row in db.execute(select(mk.c.msg_id).where(
            mk.c.district_id == district, mk.c.msg_id.in_([m.msg_id for m in markers])))}
        fresh = list({m.msg_id: m for m in markers if m.msg_id not in seen}.values())
        if not fresh:
            return
        db.execute(
            insert(self.engine)(mk).on_conflict_do_nothing(),
            [
                {
                    "district_id": district,
                    "msg_id": m.msg_id,
                    "batch_id": m.batch,
                    "kind": m.kind.value,
                    "object": m.object,
                    "school_year": m.year,
                    "count": m.count,
                    "received_at": now,
                }
                for m in fresh
            ],
        )
        for m in fresh:
            if m.kind is MarkerKind.BATCH_END and not m.delta:
                sweep_batch(db, self.schema, district, m.batch, now)
        on_markers(db, self.schema, district, fresh, now)
