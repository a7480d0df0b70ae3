"""``resync receiver run``: consume each district's event queue, apply, acknowledge.

Per delivery batch: check identity and decode each message; apply the valid events of each district
in one transaction; publish the acks (packed) to the district's ack queue and wait for the broker's
confirms; only then acknowledge the AMQP deliveries. A crash anywhere before that last step means
redelivery, and the inbox turns redelivery into the same acks.

Two batches are in hand at a time: while a worker thread decodes and applies one, the connection's
thread answers the one before and fetches the next, so the database and the broker work side by side.
Batches are still applied, answered and acknowledged in the order they arrived.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import structlog
from sqlalchemy import Connection as DbConnection
from sqlalchemy import Engine, select

from messages.catalog import Catalog
from messages.codec import (
    content_digest,
    decode_event,
    decode_manifest_request,
    decode_marker,
    decode_verify_report,
    encode_acks,
    encode_manifest_part,
)
from messages.envelope import (
    REFID,
    Ack,
    AckPack,
    ErrorInfo,
    Kind,
    ManifestRequest,
    Marker,
    MarkerKind,
    VerifyReport,
    now_ts,
    stable_id,
)
from messages.errors import Category, Code, DecodeError, RecordError
from messages.manifest import ENTRY
from resync.brokers import Broker, Connection, Delivery, Topology
from resync.brokers.base import SENDER
from resync.db import insert
from resync.retry import as_retriable, run_forever
from resync.settings import Settings
from state_receiver.apply import Incoming, apply, log_errors
from state_receiver.manifest import manifest_parts, store_report
from state_receiver.requests import on_markers
from state_receiver.schema import StateSchema
from state_receiver.sweep import sweep_batch

log = structlog.get_logger()
ACKS_PER_MESSAGE = 1000


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
        self.applied = 0

    def setup(self) -> None:
        self.schema.create(self.engine)
        for d in self.districts:
            self.broker.declare_district(d)

    def run(self, stop: threading.Event) -> None:
        run_forever(self.setup, stop, "start-up")
        log.info("receiver started", districts=list(self.districts), broker=self.broker.describe())
        run_forever(lambda: self._serve(stop), stop, "receiver")
        log.info("receiver stopped", applied=self.applied)

    def _serve(self, stop: threading.Event) -> None:
        with self.broker.connect() as conn, ThreadPoolExecutor(1, thread_name_prefix="apply") as worker:
            for d in self.districts:
                conn.consume(Topology.events(d), prefetch=self.prefetch)
            in_hand: tuple[list[Delivery], Future[Answers]] | None = None
            while not stop.is_set():
                deliveries = conn.fetch(self.batch_size, timeout=0.5 if in_hand is None else 0.02)
                if any(d.type == Kind.MANIFEST_REQUEST for d in deliveries):
                    # a manifest reads the state as the batch leaves it: nothing may be applied meanwhile
                    if in_hand is not None:
                        self.answer(conn, in_hand[0], in_hand[1].result())
                        in_hand = None
                    self.handle(conn, deliveries)
                    continue
                following = (deliveries, worker.submit(self.work, deliveries)) if deliveries else None
                if in_hand is not None:
                    self.answer(conn, in_hand[0], in_hand[1].result())
                in_hand = following
            if in_hand is not None:
                self.answer(conn, in_hand[0], in_hand[1].result())

    def handle(self, conn: Connection, deliveries: list[Delivery]) -> None:
        self.answer(conn, deliveries, self.work(deliveries))

    def work(self, deliveries: list[Delivery]) -> Answers:
        """Decode and apply a delivery batch; touches the database, never the broker."""
        by_district: dict[str, list[Delivery]] = defaultdict(list)
        for d in deliveries:
            by_district[Topology.district_of(d.queue)].append(d)
        now = now_ts()
        out = Answers()
        for district, items in by_district.items():
            out.acks[district] = self._process(district, items, now, out)
        return out

    def answer(self, conn: Connection, deliveries: list[Delivery], answers: Answers) -> None:
        """Publish the acks and dead letters, wait for the broker to hold them, then take the deliveries."""
        for district, acks in answers.acks.items():
            for i in range(0, len(acks), ACKS_PER_MESSAGE):
                conn.publish(
                    Topology.acks(district),
                    encode_acks(AckPack(district, acks[i : i + ACKS_PER_MESSAGE])),
                    kind=Kind.ACKS,
                    message_id=acks[i].msg_id,
                )
        for d, reason in answers.dead:
            conn.dead_letter(d, reason)
        for district, request in answers.manifests:
            sent = 0
            for part in manifest_parts(self.engine, self.schema, district, request):
                conn.publish(Topology.acks(district), encode_manifest_part(part), kind=Kind.MANIFEST,
                             message_id=stable_id(request.request, part.object, str(part.part)))
                sent += len(part.entries) // ENTRY
            log.info("manifest sent", district=district, request=request.request, objects=len(request.objects),
                     records=sent)
        conn.flush()
        conn.ack(deliveries[-1].delivery_tag, multiple=True)
        self.applied += len(deliveries)

    def _process(self, district: str, items: list[Delivery], now: str, out: Answers) -> list[Ack]:
        """Decode and authorize each delivery, then apply in one transaction. Returns the acks in order."""
        answers: list[Ack | Incoming] = []
        rejected: list[tuple[str | None, str | None, str | None, ErrorInfo]] = []
        markers: list[Marker | VerifyReport] = []
        dead = out.dead
        for d in items:
            try:
                decoded = self._decode(district, d)
            except RecordError as e:
                # answer by the body's msg_id, else by the AMQP message_id the sender stamped
                msg_id = e.msg_id if isinstance(e, DecodeError) else None
                if msg_id is None and REFID.match(d.message_id or ""):
                    msg_id = d.message_id
                info = ErrorInfo(int(e.category), e.code, e.desc, e.extended)
                rejected.append((msg_id, None, None, info))
                if msg_id is None:
                    dead.append((d, f"[{int(e.category)}/{e.code}] {e.desc}; no msg_id to answer"))
                    log.warning("message dead-lettered", district=district, code=e.code, error=e.desc)
                else:
                    answers.append(Ack(msg_id, "error", info))
                continue
            if isinstance(decoded, Marker | VerifyReport):
                markers.append(decoded)
            elif isinstance(decoded, ManifestRequest):
                out.manifests.append((district, decoded))
            else:
                answers.append(decoded)
        events = [a for a in answers if isinstance(a, Incoming)]
        applied = iter(self._commit(district, events, rejected, markers, now))
        return [next(applied) if isinstance(a, Incoming) else a for a in answers]

    def _decode(self, district: str, d: Delivery) -> Incoming | Marker | ManifestRequest | VerifyReport:
        if d.user_id is None:
            raise RecordError(Category.ACCESS, Code.NO_USER, "message has no user_id; the sender is unknown")
        sender = d.user_id
        if sender == self.settings.state_user and d.headers.get(SENDER):
            sender = str(d.headers[SENDER])  # put back from the dead-letter queue by the state
        if sender != self.settings.user_for(district):
            raise RecordError(
                Category.ACCESS, Code.WRONG_SOURCE, f"broker user {sender!r} may not send for district {district!r}"
            )
        if d.type == Kind.MARKER:
            return decode_marker(d.body)
        if d.type == Kind.MANIFEST_REQUEST:
            return decode_manifest_request(d.body)
        if d.type == Kind.VERIFY_REPORT:
            return decode_verify_report(d.body)
        if d.type != Kind.EVENT:
            raise RecordError(
                Category.GENERIC_MESSAGE,
                Code.UNKNOWN_TYPE,
                f"message type {d.type!r} is not accepted on an event queue",
            )
        event = decode_event(d.body, self.catalog, max_size=self.settings.max_body)
        if event.year is not None and event.year not in self.settings.synced_years:
            err = DecodeError(
                Category.VALIDATION,
                Code.BAD_YEAR,
                f"school year {event.year} is not synced (synced: "
                f"{', '.join(map(str, sorted(self.settings.synced_years)))})",
            )
            err.msg_id = event.msg_id
            raise err
        if event.source != district:
            err = DecodeError(
                Category.ACCESS,
                Code.WRONG_SOURCE,
                f"source {event.source[:64]!r} does not match the sending district {district!r}",
            )
            err.msg_id = event.msg_id
            raise err
        return Incoming(event, content_digest(event))

    def _commit(
        self,
        district: str,
        events: list[Incoming],
        rejected: list[tuple[str | None, str | None, str | None, ErrorInfo]],
        markers: list[Marker | VerifyReport],
        now: str,
    ) -> list[Ack]:
        """One transaction for the batch. If it fails for a reason that retrying will not cure, the events
        are applied one by one, and the one that still fails is answered with a system error, so no
        record can block the district's queue."""
        try:
            with self.engine.begin() as db:
                acks = apply(db, self.schema, district, events, now) if events else []
                if rejected:
                    log_errors(db, self.schema, district, rejected, now)
                if markers:
                    self._markers(db, district, markers, now)
                return acks
        except Exception as e:
            transient = as_retriable(e)
            if transient is not e:
                raise transient from e
            if len(events) + len(markers) > 1 or rejected:
                log.warning("batch failed; applying its records one at a time", district=district, error=str(e))
                out = [a for item in events for a in self._commit(district, [item], [], [], now)]
                self._commit(district, [], rejected, markers, now)
                return out
            if not events:
                raise
            e_ = events[0].event
            info = ErrorInfo(
                int(Category.SYSTEM),
                Code.APPLY_FAILED,
                f"{e_.object} {e_.ref_id} could not be stored at the state",
                str(e)[:1000],
            )
            log.error(
                "record could not be applied", district=district, object=e_.object, ref_id=e_.ref_id, error=str(e)[:300]
            )
            with self.engine.begin() as db:
                log_errors(db, self.schema, district, [(e_.msg_id, e_.object, e_.ref_id, info)], now)
            return [Ack(e_.msg_id, "error", info, e_.object, e_.ref_id, e_.batch)]

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
