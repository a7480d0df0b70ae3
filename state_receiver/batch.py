"""One delivery batch of one district: identify the sender, decode, apply in one transaction, answer each.

Nothing a message holds can stop the receiver. Whatever the codec refuses is answered with its error
(by the body's msg_id, else by the AMQP ``message_id``) or, with neither, dead-lettered with the reason.
A transaction the database refuses for a reason retrying will not cure is split in halves until the
one record it refuses is found: that record is answered ``11.1`` and the others are applied, at the
cost of about two transactions per halving (a poison record in 1,000 costs about 20, not 1,000).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import Engine

from core.brokers import Delivery
from core.brokers.base import sender_of
from core.retry import narrow, permanent
from core.settings import Settings
from messages.catalog import Catalog
from messages.codec import (
    MAX_MESSAGE,
    content_digest,
    decode_event,
    decode_manifest_request,
    decode_marker,
    decode_verify_report,
)
from messages.envelope import REFID, Ack, ErrorInfo, Event, Kind, ManifestRequest, Marker, MarkerKind, VerifyReport
from messages.errors import Category, Code, DecodeError, RecordError
from messages.text import clean
from state_receiver.apply import Incoming, apply, log_errors
from state_receiver.schema import StateSchema

log = structlog.get_logger()
Notice = Marker | VerifyReport
Rejected = tuple[str | None, str | None, str | None, str | None, ErrorInfo]  # msg_id, object, ref_id, batch
MarkerStore = Callable[[Any, str, list[Notice], str], None]


class SenderRefused(RecordError):
    """The broker user may not send for this district (or is unknown). Such a message is set aside, never
    answered: an answer would go to the district's ack queue under a msg_id the sender chose, where it could
    take the place of the district's real answer."""


@dataclass
class Outcome:
    """What one delivery batch gets back: acks in delivery order, what must be dead-lettered, and the
    manifests to send once the batch is applied."""

    acks: list[Ack] = field(default_factory=list)
    dead: list[tuple[Delivery, str]] = field(default_factory=list)
    manifests: list[ManifestRequest] = field(default_factory=list)


def describe(d: Delivery) -> dict[str, Any]:
    """Enough of a delivery to find it again in the dead-letter queue or the broker's logs."""
    return {"message_id": clean(d.message_id or "", 80), "queue": d.queue, "sender": d.user_id,
            "type": clean(d.type or "", 40), "bytes": d.dropped or len(d.body)}


class DistrictBatch:
    def __init__(self, settings: Settings, engine: Engine, schema: StateSchema, catalog: Catalog,
                 store_notices: MarkerStore) -> None:
        self.settings, self.engine, self.schema, self.catalog = settings, engine, schema, catalog
        self.store_notices = store_notices
        self.years = frozenset(settings.synced_years)  # asked of every record: worked out once
        self.transactions = 0
        """Transactions begun, for the record: bisection's cost is counted in tests."""

    def process(self, district: str, items: list[Delivery], now: str) -> Outcome:
        out = Outcome()
        answers: list[Ack | Incoming] = []
        rejected: list[Rejected] = []
        notices: list[tuple[Delivery, Notice]] = []
        for d in items:
            try:
                decoded = self._decode(district, d)
            except RecordError as e:
                self._reject(district, d, e, answers, rejected, out)
                continue
            except Exception as e:  # a fault of ours, not the sender's: still one answer, never a crash
                log.exception("message could not be read", district=district, **describe(d))
                failure = RecordError(Category.SYSTEM, Code.APPLY_FAILED, "the state could not read this message",
                                      clean(f"{type(e).__name__}: {e}", 1000))
                self._reject(district, d, failure, answers, rejected, out)
                continue
            if isinstance(decoded, Marker | VerifyReport):
                notices.append((d, decoded))
            elif isinstance(decoded, ManifestRequest):
                out.manifests.append(decoded)
            else:
                answers.append(decoded)
        events = [a for a in answers if isinstance(a, Incoming)]
        applied = iter(self._commit(district, events, rejected, notices, now, out))
        out.acks = [next(applied) if isinstance(a, Incoming) else a for a in answers]
        return out

    def _reject(self, district: str, d: Delivery, e: RecordError, answers: list[Ack | Incoming],
                rejected: list[Rejected], out: Outcome) -> None:
        # answer by the body's msg_id, else by the AMQP message_id the sender stamped; with the record it names,
        # so the district counts the answer against its batch
        named = e if isinstance(e, DecodeError) else None
        msg_id = named.msg_id if named else None
        if msg_id is None and REFID.match(d.message_id or ""):
            msg_id = d.message_id
        info = ErrorInfo(int(e.category), e.code, clean(e.desc, 1000), clean(e.extended, 1000))
        rejected.append((msg_id, None, None, named.batch if named else None, info))
        if msg_id is None or isinstance(e, SenderRefused):
            reason = f"[{int(e.category)}/{e.code}] {info.desc}" + ("" if msg_id else "; no msg_id to answer")
            out.dead.append((d, reason))
            log.warning("message dead-lettered", district=district, code=e.code, reason=reason, **describe(d))
        else:
            # a record is counted against its batch by what it names; nothing else is a record to count
            if named is not None and d.type == Kind.EVENT:
                answers.append(Ack(msg_id, "error", info, named.object, named.ref_id, named.batch))
            else:
                answers.append(Ack(msg_id, "error", info))

    def _decode(self, district: str, d: Delivery) -> Incoming | Notice | ManifestRequest:
        if d.unreadable:  # nor who sent it: set aside, not answered
            raise RecordError(Category.GENERIC_MESSAGE, Code.BAD_ENCODING, "the message cannot be read",
                              d.unreadable)
        if d.user_id is None:
            raise SenderRefused(Category.ACCESS, Code.NO_USER, "message has no user_id; the sender is unknown")
        sender = sender_of(d, self.settings.state_user)
        if sender != self.settings.user_for(district):
            raise SenderRefused(Category.ACCESS, Code.WRONG_SOURCE,
                                f"broker user {clean(repr(sender), 80)} may not send for district {district!r}")
        limit = self.settings.max_body if d.type == Kind.EVENT else MAX_MESSAGE
        if d.dropped:  # let go unread: only the AMQP message_id can name it
            raise RecordError(Category.GENERIC_MESSAGE, Code.TOO_LARGE,
                              f"message body of {d.dropped} bytes is over the limit of {limit} bytes")
        message_id = d.message_id if REFID.match(d.message_id or "") else None
        if d.type == Kind.MARKER:
            return self._within_years(decode_marker(d.body, message_id=message_id))
        if d.type == Kind.MANIFEST_REQUEST:
            return decode_manifest_request(d.body, message_id=message_id)
        if d.type == Kind.VERIFY_REPORT:
            return decode_verify_report(d.body, message_id=message_id)
        if d.type != Kind.EVENT:
            raise RecordError(Category.GENERIC_MESSAGE, Code.UNKNOWN_TYPE,
                              f"message type {clean(repr(d.type), 60)} is not accepted on an event queue")
        event = decode_event(d.body, self.catalog, max_size=limit, message_id=message_id)
        if event.year is not None and event.year not in self.years:
            self._refuse(event, Category.VALIDATION, Code.BAD_YEAR,
                         f"school year {event.year} is not synced (synced: "
                         f"{', '.join(map(str, sorted(self.years)))})")
        if event.source != district:
            self._refuse(event, Category.ACCESS, Code.WRONG_SOURCE,
                         f"source {event.source!r} does not match the sending district {district!r}")
        return Incoming(event, content_digest(event))

    def _within_years(self, m: Marker) -> Marker:
        """A marker may close (and so sweep) only a year the district syncs, and a year-scoped object's end
        names its year: a sweep reaches no further than the district's records could."""
        scoped = (m.kind is MarkerKind.OBJECT_END and m.object is not None and m.object in self.catalog
                  and self.catalog.get(m.object).year_scoped)
        if (m.year is not None and m.year not in self.years) or (scoped and m.year is None):
            err = DecodeError(Category.VALIDATION, Code.BAD_YEAR, f"marker for school year {m.year}, which is not "
                              f"synced (synced: {', '.join(map(str, sorted(self.years)))})")
            err.msg_id = m.msg_id
            raise err
        return m

    @staticmethod
    def _refuse(event: Event, category: Category, code: str, desc: str) -> None:
        err = DecodeError(category, code, desc)
        err.msg_id, err.object, err.ref_id, err.batch = event.msg_id, event.object, event.ref_id, event.batch
        raise err

    # storing ------------------------------------------------------------------------------------

    def _commit(self, district: str, events: list[Incoming], rejected: list[Rejected],
                notices: list[tuple[Delivery, Notice]], now: str, out: Outcome) -> list[Ack]:
        """One transaction for the batch; if the database refuses it, the records are bisected and the rest
        is stored on its own, so no record can block the district's queue."""
        try:
            return self._transaction(district, events, rejected, [n for _, n in notices], now)
        except Exception as e:
            failure = permanent(e)
        log.warning("transaction refused; splitting it to find the record", district=district, records=len(events),
                    error=clean(str(failure), 300))
        # with bookkeeping in the transaction, the failure may be the bookkeeping's: the records are tried alone
        acks = self._records(district, events, now, None if rejected or notices else failure)
        if rejected:
            try:
                self._transaction(district, [], rejected, [], now)
            except Exception as e:
                log.error("error log could not be written", district=district, error=clean(str(permanent(e)), 300))
        for d, notice in notices:
            try:
                self._transaction(district, [], [], [notice], now)
            except Exception as e:
                reason = f"[11/{Code.APPLY_FAILED}] the state could not store this {d.type}: " \
                         f"{clean(str(permanent(e)), 500)}"
                out.dead.append((d, reason))
                log.error("message dead-lettered", district=district, reason=reason, **describe(d))
        return acks

    def _records(self, district: str, events: list[Incoming], now: str, failure: Exception | None) -> list[Ack]:
        """The records applied; one the database refuses (``failure``: the whole is known to fail) is narrowed
        down by halves and answered ``11.1``."""
        if not events:
            return []
        parts = narrow(events, lambda part: self._transaction(district, part, [], [], now),
                       lambda item, e: [self._refused(district, item, e, now)], failure)
        return [ack for acks in parts for ack in acks]

    def _refused(self, district: str, item: Incoming, failure: Exception, now: str) -> Ack:
        e = item.event
        info = ErrorInfo(int(Category.SYSTEM), Code.APPLY_FAILED, f"{e.object} {e.ref_id} could not be stored at the "
                         "state", clean(str(failure), 1000))
        log.error("record could not be applied", district=district, object=e.object, ref_id=e.ref_id,
                  msg_id=e.msg_id, error=clean(str(failure), 300))
        try:
            self._transaction(district, [], [(e.msg_id, e.object, e.ref_id, e.batch, info)], [], now)
        except Exception as again:
            log.error("error log could not be written", district=district, error=clean(str(permanent(again)), 300))
        return Ack(e.msg_id, "error", info, e.object, e.ref_id, e.batch)

    def _transaction(self, district: str, events: list[Incoming], rejected: list[Rejected], notices: list[Notice],
                     now: str) -> list[Ack]:
        self.transactions += 1
        with self.engine.begin() as db:
            acks = apply(db, self.schema, district, events, now) if events else []
            if rejected:
                log_errors(db, self.schema, district, rejected, now)
            if notices:
                self.store_notices(db, district, notices, now)
            return acks
