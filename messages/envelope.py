"""The messages that cross the broker, as plain values. No I/O here."""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

VERSION = 1
REFID = re.compile(r"\A[0-9A-F]{32}\Z")
STATE_SOURCE = "state"


class Action(StrEnum):
    ADD = "add"
    CHANGE = "change"
    DELETE = "delete"


class Kind(StrEnum):
    """The AMQP ``type`` property of each message."""

    EVENT = "event"
    MARKER = "marker"
    ACKS = "acks"
    RESYNC_REQUEST = "resync_request"
    MANIFEST_REQUEST = "manifest_request"
    """District to state, on the event queue (so it is answered after every record sent before it)."""
    MANIFEST = "manifest"
    """State to district, on the ack queue: one part of the state's manifest."""
    VERIFY_REQUEST = "verify_request"
    """State to district, on the control queue: compare and report back."""
    VERIFY_REPORT = "verify_report"
    """District to state, on the event queue: the outcome of a verification the state asked for."""


class MarkerKind(StrEnum):
    BATCH_START = "batch_start"
    OBJECT_END = "object_end"
    BATCH_END = "batch_end"
    BATCH_CANCELLED = "batch_cancelled"


def new_id() -> str:
    """A SIF RefId / message id: 32 uppercase hex digits."""
    return uuid.uuid4().hex.upper()


def stable_id(*parts: str) -> str:
    """The same id for the same parts: a record resent after a crash carries the msg_id it had, so the
    state answers it from its inbox and the district counts it once. The hex of ``uuid.uuid5(NAMESPACE_OID,
    "/".join(parts))``, computed without building a UUID: it is asked for every record sent and received."""
    digest = bytearray(hashlib.sha1(_OID + "/".join(parts).encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    return digest.hex().upper()


_OID = uuid.NAMESPACE_OID.bytes


def record_msg_id(batch: str | None, obj: str, ref_id: str, version: int) -> str:
    """The msg_id a record's message carries: in a batch, one per record of the batch; outside any batch (live
    sync), one per version of the record. Derived from the record it names, so it can name no other: the state
    keeps it in the record's own row, and needs no row per message to know a redelivery."""
    return stable_id(batch, obj, ref_id) if batch is not None else stable_id("live", obj, ref_id, str(version))


def now_ts() -> str:
    return canonical_ts(datetime.now(UTC))


def ts_ago(seconds: float) -> str:
    """The timestamp ``seconds`` ago, as ``now_ts`` writes them: what rows older than that compare below."""
    return canonical_ts(datetime.now(UTC) - timedelta(seconds=seconds))


def canonical_ts(when: datetime) -> str:
    """The one form of ``ts`` on the wire and at the state: UTC, milliseconds, ``Z``; two compare as strings
    as they do in time."""
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class Event:
    """One record, district to state."""

    msg_id: str
    ts: str
    source: str
    batch: str | None
    seq: int
    object: str
    action: Action
    ref_id: str
    year: int | None
    parents: dict[str, str]
    data: dict[str, Any]
    version: int = 0
    """Grows with the district's commits to this record (its change capture's sequence): the state keeps the
    highest version it applied and ignores an older one, whichever arrives first. 0: never captured."""


@dataclass(slots=True, frozen=True)
class ErrorInfo:
    category: int
    code: str
    desc: str
    extended: str = ""


@dataclass(slots=True)
class Ack:
    """The state's answer to one event. ``object``, ``ref_id`` and ``batch`` echo the event so the
    district can count and log the outcome without remembering what it sent."""

    msg_id: str
    status: str  # "ok" | "error"
    error: ErrorInfo | None = None
    object: str | None = None
    ref_id: str | None = None
    batch: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(slots=True)
class AckPack:
    """Many acks in one AMQP message."""

    district: str
    acks: list[Ack]


@dataclass(slots=True)
class Marker:
    """Tells the receiver where a batch and each of its objects begin and end."""

    msg_id: str
    ts: str
    source: str
    batch: str
    kind: MarkerKind
    object: str | None = None
    year: int | None = None
    count: int | None = None
    request: str | None = None
    """The state's request id, on the markers of a state-initiated batch."""
    delta: bool = False
    """The batch sends only what differs: its objects are not complete, so nothing is swept after it."""


@dataclass(slots=True)
class ResyncRequest:
    """State to district: resync these objects (``None``: all) for that year."""

    msg_id: str
    ts: str
    source: str
    request_id: str
    objects: list[str] | None
    year: str
    requested_by: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class ManifestRequest:
    """District to state: list what you hold of these objects for this district (and year)."""

    msg_id: str
    ts: str
    source: str
    request: str
    objects: list[str]
    year: int


@dataclass(slots=True)
class ManifestPart:
    """State to district: one part of one object's manifest. ``entries`` packs, in ``ref_id`` order, each
    record's ref_id (32 hex digits) and content digest (16); ``last`` closes the object."""

    request: str
    object: str
    part: int
    last: bool
    entries: str
    error: str | None = None


@dataclass(slots=True)
class VerifyReport:
    """District to state: the per-object outcome of a verification the state requested."""

    msg_id: str
    ts: str
    source: str
    request_id: str
    year: int
    objects: list[dict[str, Any]]
    error: str | None = None
    """Why the district could not verify, instead of the outcome."""
