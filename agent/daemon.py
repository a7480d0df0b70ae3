"""``resync agent run``: publish queued batches, count the state's acks, close finished batches.

Three threads, each with its own broker connection: live sync (``agent/live.py``) publishes every change the
district commits; the publisher works through queued batches one at a time, object by object in plan order,
recording after each confirmed chunk how far it got (so a restarted agent carries on from there); the main
thread consumes the district's ack queue.

Between batches the publisher thread also moves verifications on (``agent/verification_steps.py``), and a delta
batch starts with one; manifest parts come in on the ack thread.

The publisher paces itself: it keeps at most ``max_in_flight`` records sent and not yet answered by
the state (the ack thread tells it when answers come in), and a batch queued with a rate cap never
sends faster than its ``max_rate`` records per second.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog
from sqlalchemy import Engine

from agent import live_store, metrics, selection
from agent.live import LiveSync
from agent.status import plan_batch
from agent.store import STATE, AgentStore
from agent.verification_steps import Verifier
from core.brokers import Broker, Connection, Delivery, Topology
from core.brokers.base import sender_of
from core.metrics import CONFIRM_SECONDS, Health, serve
from core.retry import TRANSIENT, every, narrow, run_forever
from core.settings import Settings
from messages.catalog import Catalog
from messages.codec import (
    MAX_ACK_MESSAGE,
    decode_acks,
    decode_manifest_part,
    decode_request,
)
from messages.envelope import (
    Ack,
    Action,
    ErrorInfo,
    Event,
    Kind,
    MarkerKind,
    now_ts,
)
from messages.errors import BrokerRefused, Category, Code, DecodeError, FatalError
from messages.manifest import DISTRICT_ONLY, MISMATCHED, STATE_ONLY
from messages.status import SEVERITY, colour
from messages.text import clean
from publisher.changes import Outbox
from publisher.publish import ObjectPublisher, RefOnly, rows_by_ref

log = structlog.get_logger()


PRUNE_EVERY = 60.0
"""Seconds between retention passes."""


class Agent:
    def __init__(self, settings: Settings, broker: Broker, engine: Engine, catalog: Catalog) -> None:
        self.settings, self.broker, self.engine, self.catalog = settings, broker, engine, catalog
        self.district = settings.district
        self.store = AgentStore(engine)
        self.verifier = Verifier(settings, broker, engine, catalog, self.store)
        self._answers = threading.Condition()
        self._answered = 0  # answers received (replays included), counted by the ack thread
        self._sent = 0  # records published since the batch (re)started, counted by the publisher thread
        self._batch_answered = False  # the ack thread took answers to a batch since it last closed batches
        self.health = Health("agent")
        self.live = LiveSync(settings, broker, engine, catalog, self._refused,
                             self.health.watch_blocked(self.store.set_blocked),
                             lambda text: self.store.log_error(text, category=11))

    def setup(self) -> None:
        self.store.create()
        self.broker.declare_district(self.district)

    def run(self, stop: threading.Event) -> None:
        server = serve(self.settings.metrics_host, self.settings.metrics_port, self.health)
        if server is not None:
            metrics.register(self.engine, self.live.outbox)
        try:
            self._run(stop)
        finally:
            self.health.running = False
            if server is not None:
                server.shutdown()

    def _run(self, stop: threading.Event) -> None:
        run_forever(self.setup, stop, "start-up", failed=self.health.failed)
        log.info("agent started", district=self.district, broker=self.broker.describe(),
                 metrics_port=self.settings.metrics_port or None)
        failed: list[BaseException] = []

        def publishing() -> None:
            try:
                run_forever(lambda: self._publish_batches(stop), stop, "publisher", failed=self.health.failed_aside)
            except BaseException as e:  # fatal (a wrong setting): the whole daemon stops and says why
                failed.append(e)
                stop.set()

        def live() -> None:
            try:
                self.live.run(stop, self.health.failed_aside)
            except BaseException as e:
                failed.append(e)
                stop.set()

        threads = [threading.Thread(target=publishing, name="publisher", daemon=True),
                   threading.Thread(target=live, name="live", daemon=True),
                   threading.Thread(target=self._retention, args=(stop,), name="retention", daemon=True)]
        for t in threads:
            t.start()
        try:
            run_forever(lambda: self._consume_acks(stop), stop, "ack consumer", failed=self.health.failed)
        finally:
            stop.set()
            for t in threads:
                t.join()
        if failed:
            raise failed[0]
        log.info("agent stopped")

    def _retention(self, stop: threading.Event) -> None:
        """Prune what is past retention once a minute, in small steps (see ``agent.retention``)."""
        from agent.retention import prune

        every(PRUNE_EVERY, lambda: prune(self.engine, self.settings, stop.is_set), stop, "pruning")

    # publishing -----------------------------------------------------------------------------

    def _publish_batches(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if self.verifier.step(stop):
                continue
            batch = self.store.next_batch()
            if batch is None:
                stop.wait(0.3)
                continue
            try:
                self.run_batch(batch["batch_id"], stop)
            except (*TRANSIENT, BrokerRefused):
                raise
            except Exception as e:  # a bug or bad data: fail this batch, keep serving the next ones
                log.exception("batch failed", batch=batch["batch_id"])
                self.store.set_batch(batch["batch_id"], status="failed", completed_at=now_ts(), message=str(e)[:1000])
                self.store.log_error(f"batch {batch['batch_id']} failed: {e}"[:1000], batch_id=batch["batch_id"],
                                     category=11, extended=repr(e)[:2000])

    def run_batch(self, batch_id: str, stop: threading.Event) -> None:
        batch = self.store.batch(batch_id)
        assert batch is not None
        resumed = batch["status"] == "running"
        if not resumed:
            self.store.set_batch(batch_id, status="running", started_at=now_ts())
        year, request, delta = batch["school_year"], batch["request_id"], bool(batch["delta"])
        selective = batch["kind"] == "selective"
        incomplete = delta or selective  # its markers say so: the state removes nothing after it
        log.info("batch resumed" if resumed else "batch started", batch=batch_id, kind=batch["kind"], year=year,
                 delta=delta)
        with self._answers:
            # a fresh start: what an earlier connection sent and lost would otherwise hold the window forever
            self._sent = self._answered

        def should_stop() -> bool:
            return stop.is_set() or self.store.is_cancelled(batch_id)

        with self.broker.connect() as conn:
            conn.watch = self.health.watch_blocked(self.store.set_blocked)
            conn.timing = CONFIRM_SECONDS.labels("agent").observe
            pace = self._pacer(batch_id, batch["max_rate"], stop, conn)
            pub = ObjectPublisher(conn, self.engine, self.catalog, self.district, max_body=self.settings.max_body,
                                  refused=self._refused)

            def interrupted() -> None:
                if self.store.is_cancelled(batch_id):
                    pub.marker(batch_id, MarkerKind.BATCH_CANCELLED, year=year, request=request, delta=incomplete)
                    log.info("batch cancelled", batch=batch_id)

            if not resumed:
                pub.marker(batch_id, MarkerKind.BATCH_START, year=year, request=request, delta=incomplete)
            run_id = self.verifier.plan_delta(batch_id, year, should_stop) if delta else None
            if delta and run_id is None:
                return interrupted()
            if run_id is not None and not (self._send_changes(pub, batch_id, run_id, year, should_stop, pace)
                                           and self._send_deletes(pub, batch_id, run_id, year, should_stop, pace)):
                return interrupted()
            if selective and not self._send_selection(pub, batch_id, year, should_stop, pace):
                return interrupted()
            for obj in self.store.batch_objects(batch_id) if run_id is None and not selective else ():
                if obj["sent_at"] is not None:
                    continue
                name = obj["object"]
                if obj["started_at"] is None:
                    self.store.set_object(batch_id, name, started_at=now_ts())
                sent = pub.publish_object(batch_id, name, year, after=obj["last_ref_id"], already=obj["sent"],
                                          progress=self._progress(batch_id, name), should_stop=should_stop,
                                          pace=pace)
                if sent is None:
                    return interrupted()
                self.store.set_object(batch_id, name, sent_at=now_ts())
                log.info("object sent", batch=batch_id, object=name if not request else None)
            pub.marker(batch_id, MarkerKind.BATCH_END, year=year, request=request, delta=incomplete)
        self.store.set_batch(batch_id, status="sent", sent_at=now_ts())

    def _send_selection(self, pub: ObjectPublisher, batch_id: str, year: int, should_stop: Callable[[], bool],
                        pace: Callable[[int], None]) -> bool:
        """A selective batch's chosen records, parents first. False: stopped."""
        for obj in self.store.batch_objects(batch_id):
            if obj["sent_at"] is not None:
                continue
            name = obj["object"]
            self.store.set_object(batch_id, name, started_at=obj["started_at"] or now_ts())
            refs = selection.chunks(self.engine, batch_id, name, obj["last_ref_id"])
            sent = pub.publish_pages(batch_id, name, year, rows_by_ref(self.engine, pub.schema, name, refs),
                                     progress=self._progress(batch_id, name), should_stop=should_stop, pace=pace)
            if sent is None:
                return False
            pub.end_object(batch_id, name, year, obj["sent"] + sent, delta=True)
            self.store.set_object(batch_id, name, sent_at=now_ts())
        return True

    def _send_changes(self, pub: ObjectPublisher, batch_id: str, run_id: str, year: int,
                      should_stop: Callable[[], bool], pace: Callable[[int], None]) -> bool:
        """A delta batch's records missing at the state or different there, parents first. False: stopped."""
        for obj in self.store.batch_objects(batch_id):
            if obj["changes_sent_at"] is not None:
                continue
            name = obj["object"]
            self.store.set_object(batch_id, name, started_at=obj["started_at"] or now_ts())
            changed = self.verifier.runs.diff_refs(run_id, name, (DISTRICT_ONLY, MISMATCHED), after=obj["last_ref_id"])
            if pub.publish_pages(batch_id, name, year, rows_by_ref(self.engine, pub.schema, name, changed),
                                 progress=self._progress(batch_id, name), should_stop=should_stop, pace=pace) is None:
                return False
            self.store.set_object(batch_id, name, changes_sent_at=now_ts(), last_ref_id="")  # deletes start afresh
        return True

    def _send_deletes(self, pub: ObjectPublisher, batch_id: str, run_id: str, year: int,
                      should_stop: Callable[[], bool], pace: Callable[[int], None]) -> bool:
        """Then its deletes, children before parents: a child moved to another parent has its new version at
        the state by now, and no delete finds a child still in place. False: stopped."""
        # newer than any change the district has made: the state holds nothing a later change has not replaced
        version = Outbox(self.engine, self.catalog).high_water()
        for obj in reversed(self.store.batch_objects(batch_id)):
            if obj["sent_at"] is not None:
                continue
            name = obj["object"]
            refs = self.verifier.runs.diff_refs(run_id, name, (STATE_ONLY,), after=obj["last_ref_id"])
            sent = pub.publish_pages(batch_id, name, year, ([RefOnly(r, version) for r in chunk] for chunk in refs),
                                     action=Action.DELETE, progress=self._progress(batch_id, name),
                                     should_stop=should_stop, pace=pace)
            if sent is None:
                return False
            pub.end_object(batch_id, name, year, obj["sent"] + sent, delta=True)
            self.store.set_object(batch_id, name, sent_at=now_ts())
        return True

    def _refused(self, event: Event, size: int) -> None:
        """A record too large to send: an error of its own, counted as answered so the batch completes."""
        desc = (f"{event.object} {event.ref_id} was not sent: its message of {size:,} bytes is over the limit of "
                f"{self.settings.max_body:,} bytes (RESYNC_MAX_BODY)")
        self.store.record_acks([Ack(event.msg_id, "error", ErrorInfo(int(Category.GENERIC_MESSAGE),
                                                                     Code.NOT_SENT_TOO_LARGE, desc),
                                    event.object, event.ref_id, event.batch)])
        if event.batch is None:
            with self.engine.begin() as db:
                live_store.refused(db, event)
        log.warning("record not sent: too large", object=event.object, ref_id=event.ref_id, bytes=size)
        with self._answers:
            self._answered += 1
            self._answers.notify_all()

    def _progress(self, batch_id: str, name: str) -> Callable[[int, str], None]:
        def progress(count: int, last_ref: str) -> None:
            self.store.add_sent(batch_id, name, count, last_ref)
            metrics.SENT.labels(name, "batch").inc(count)

        return progress

    def _pacer(self, batch_id: str, max_rate: int | None, stop: threading.Event,
               conn: Connection) -> Callable[[int], None]:
        """``pace(n)`` before sending ``n`` records: waits for the rate cap and the in-flight window, a second at
        a time, keeping ``conn`` alive meanwhile (a state that is down can hold the window for hours)."""
        started, paced = time.monotonic(), 0

        def pace(n: int) -> None:
            nonlocal paced
            if max_rate:
                while (ahead := paced / max_rate - (time.monotonic() - started)) > 0 and not stop.is_set():
                    stop.wait(min(ahead, 1.0))
                    conn.keep_alive()
                paced += n
            window = self.settings.max_in_flight
            if window:
                with self._answers:
                    # a step larger than the whole window goes out once nothing else is in flight
                    while self._sent - self._answered > 0 and self._sent - self._answered + n > window \
                            and not stop.is_set():
                        answered = self._answers.wait(1.0)
                        conn.keep_alive()
                        if not answered and self.store.is_cancelled(batch_id):
                            break
            self._sent += n

        return pace

    # acks and control messages --------------------------------------------------------------

    def _consume_acks(self, stop: threading.Event) -> None:
        with self.broker.connect() as conn:
            # ack messages are the largest the agent reads: anything larger is let go unread
            conn.consume(Topology.acks(self.district), prefetch=20, max_body=MAX_ACK_MESSAGE)
            conn.consume(Topology.control(self.district), prefetch=20, max_body=MAX_ACK_MESSAGE)
            self.health.up("broker")
            next_close = 0.0
            while not stop.is_set():
                deliveries = conn.fetch(20, timeout=0.3)
                for d, reason in self._take(deliveries):
                    conn.dead_letter(d, reason, sender_of(d, self.settings.state_user))
                    log.warning("message dead-lettered", reason=reason, queue=d.queue, message_id=d.message_id,
                                sender=d.user_id, type=d.type)
                if deliveries:
                    conn.flush()
                    conn.ack(deliveries[-1].delivery_tag, multiple=True)
                # after answers to a batch, or once a second (live changes alone close nothing)
                if self._batch_answered or time.monotonic() >= next_close:
                    self._batch_answered, next_close = False, time.monotonic() + 1.0
                    for batch_id in self.store.complete_finished():
                        self._notify(batch_id)
                    self.health.up("database")

    def _take(self, deliveries: list[Delivery]) -> list[tuple[Delivery, str]]:
        """Handle the state's answers and requests; returns what must be dead-lettered, with the reason. A
        failure that retrying cannot cure is narrowed down by halves to the delivery that causes it."""
        def set_aside(d: Delivery, e: Exception) -> list[tuple[Delivery, str]]:
            reason = clean(f"the agent failed on this message: {type(e).__name__}: {e}", 1000)
            log.error("message set aside", queue=d.queue, message_id=d.message_id, exc_info=e)
            self.store.log_error(reason, category=11, code=Code.APPLY_FAILED)
            return [(d, reason)]

        return [dead for part in narrow(deliveries, self._handle, set_aside) for dead in part]

    def _handle(self, deliveries: list[Delivery]) -> list[tuple[Delivery, str]]:
        dead: list[tuple[Delivery, str]] = []
        errors: list[tuple[str, int, str]] = []  # written once the rest is stored: a retried half writes them once
        acks, parts = [], []
        for d in deliveries:
            refused = self._refuse_sender(d)
            if refused is not None:
                errors.append((refused, 4, Code.WRONG_SOURCE))
            elif d.queue == Topology.control(self.district):
                refused = self._control(d)
            else:
                try:
                    if d.dropped:
                        raise DecodeError(Category.GENERIC_MESSAGE, Code.TOO_LARGE,
                                          f"message of {d.dropped} bytes is over the limit of {MAX_ACK_MESSAGE} bytes")
                    if d.type == Kind.MANIFEST:
                        parts.append(decode_manifest_part(d.body))
                    else:
                        acks.extend(decode_acks(d.body).acks)
                except DecodeError as e:
                    refused = f"unreadable ack message: {e.desc}"
                    errors.append((f"unreadable ack message dead-lettered: {e.desc}", int(e.category), e.code))
            if refused:
                dead.append((d, refused))
        if parts:
            self.verifier.on_parts(parts)
        if acks:
            metrics.count_answers(self.store.record_outcomes(acks))  # a replayed answer counts once
            self._batch_answered = self._batch_answered or any(a.batch is not None for a in acks)
            with self._answers:
                # every answer, replays too: a record resent after a reconnect is answered by a replay
                self._answered += len(acks)
                self._answers.notify_all()
        for description, category, code in errors:
            self.store.log_error(description, category=category, code=code)
        return dead

    def _refuse_sender(self, d: Delivery) -> str | None:
        """Acks, manifests and requests count only from the state's broker identity; for anything else, the
        reason to log and to give the dead-letter queue."""
        sender = sender_of(d, self.settings.state_user)
        if sender == self.settings.state_user and not d.unreadable:
            return None
        what = "control message" if d.queue == Topology.control(self.district) else "ack message"
        reason = (f"{what} from broker user {clean(repr(sender), 80)} rejected: only the state "
                  f"({self.settings.state_user!r}) may send it" + (f"; {d.unreadable}" if d.unreadable else ""))
        log.warning(f"{what} rejected", user=sender, queue=d.queue, message_id=d.message_id)
        return reason

    def _control(self, d: Delivery) -> str | None:
        """A resync request from the state: post the alert and queue the batch."""
        try:
            if d.dropped:
                raise DecodeError(Category.GENERIC_MESSAGE, Code.TOO_LARGE,
                                  f"message of {d.dropped} bytes is too large")
            request = decode_request(d.body)
            if d.type == Kind.VERIFY_REQUEST:
                return self.verifier.on_request(request)
            if self.store.has_request(request.request_id):
                return None  # redelivered: the batch is already queued
            year = self.settings.resolve_year(request.year)
            plan = plan_batch(self.catalog, self.engine, self.settings, request.objects or [],
                              send_all=request.objects is None, check_dependencies=True, year=year, strict=False)
        except (DecodeError, FatalError) as e:
            self.store.log_error(f"state resync request could not be carried out: {e}", category=8)
            log.warning("state request refused", error=str(e))
            return f"state resync request could not be carried out: {e}"
        if not plan:
            reason = (f"state resync request {request.request_id} names no object that syncs for school year "
                      f"{year}; nothing was sent")
            self.store.log_error(reason, category=8)
            return reason
        self.store.post_alert("Vertical Interoperability", "State Resync Requested")
        kind = "full" if request.objects is None else "partial"
        batch_id = self.store.queue_batch(plan, kind=kind, year=year, check_dependencies=True, initiator=STATE,
                                          requested_by="state", request_id=request.request_id)
        log.info("state resync requested", batch=batch_id)
        return None

    def _notify(self, batch_id: str) -> None:
        batch = self.store.batch(batch_id)
        if batch is None or batch["initiator"] == STATE:
            log.info("batch completed", batch=batch_id)
            return
        objects = self.store.batch_objects(batch_id)
        processed = sum(o["processed"] for o in objects)
        errors = sum(o["errors"] for o in objects)
        worst = max((colour(o["processed"], o["errors"], True) for o in objects), key=SEVERITY.index,
                    default="green")
        self.store.post_alert("Vertical Interoperability", "Resync complete", detail=(
            f"batch {batch_id} ({batch['kind']}, school year {batch['school_year']}): {len(objects)} objects "
            f"({', '.join(o['object'] for o in objects)}); processed {processed}, errors {errors}; "
            f"worst status {worst}"))
        log.info("batch completed", batch=batch_id, processed=processed, errors=errors, worst=worst)
