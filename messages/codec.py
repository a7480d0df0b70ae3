"""Encoding and strict decoding of every message. Decoding never trusts the body: each way a
message can be wrong raises a ``DecodeError`` with the SIF category and code it is answered with, and
whatever a decoder returns can be stored (the shared checks are in ``messages/validate.py``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from typing import Any

import orjson

from messages.catalog import Catalog
from messages.envelope import (
    REFID,
    VERSION,
    Ack,
    AckPack,
    Action,
    ErrorInfo,
    Event,
    Marker,
    MarkerKind,
    ResyncRequest,
)
from messages.errors import Category, Code
from messages.fields import fields
from messages.text import CODE, clean
from messages.validate import (
    MAX_ACK_MESSAGE,
    MAX_ACKS,
    MAX_BODY,
    MAX_EXTENDED,
    MAX_INT,
    MAX_MESSAGE,
    MAX_NOTICE,
    MAX_OBJECTS,
    MAX_TEXT,
    Fields,
    check_value,
    load,
)
from messages.verify_codec import (
    REPORT_REFS,
    decode_manifest_part,
    decode_manifest_request,
    decode_verify_report,
    encode_manifest_part,
    encode_manifest_request,
    encode_verify_report,
)

__all__ = [
    "MAX_ACKS",
    "MAX_ACK_MESSAGE",
    "MAX_BODY",
    "MAX_MESSAGE",
    "MAX_OBJECTS",
    "MAX_TEXT",
    "REPORT_REFS",
    "content_digest",
    "decode_acks",
    "decode_event",
    "decode_manifest_part",
    "decode_manifest_request",
    "decode_marker",
    "decode_request",
    "decode_verify_report",
    "encode_acks",
    "encode_event",
    "encode_manifest_part",
    "encode_manifest_request",
    "encode_marker",
    "encode_request",
    "encode_verify_report",
]


MAX_VERSION = 2**63 - 1


def decode_event(body: bytes, catalog: Catalog, *, max_size: int = MAX_BODY, now: dt.datetime | None = None,
                 message_id: str | None = None) -> Event:
    """``message_id``: the AMQP property, the answer's msg_id when the body names none."""
    f = Fields(load(body, max_size), message_id)
    msg_id = f.refid("msg_id")
    ts = f.timestamp("ts", now)
    source = f.source()
    batch = f.refid("batch", nullable=True)
    seq = f.integer("seq", 0, 2**63 - 1)
    obj_name = f.get("object", str)
    if obj_name not in catalog:
        if catalog.knows(obj_name):
            f.fail(Category.VALIDATION, Code.OBJECT_DISABLED, f"object {obj_name!r} is not enabled at the state")
        f.fail(Category.VALIDATION, Code.UNKNOWN_OBJECT, f"unknown object {clean(repr(obj_name[:60]), 80)}")
    obj = catalog.get(obj_name)
    action_raw = f.get("action", str)
    try:
        action = Action(action_raw)
    except ValueError:
        f.fail(Category.VALIDATION, Code.UNKNOWN_ACTION,
               f"unknown action {clean(repr(action_raw[:30]), 50)}; expected add, change or delete")
    ref_id = f.refid("ref_id")
    year = f.year(nullable=True)
    if obj.year_scoped and year is None:
        f.fail(Category.VALIDATION, Code.BAD_YEAR, f"{obj.name} is tied to a school year; 'year' is missing")
    if not obj.year_scoped and year is not None:
        year = None
    parents = f.get("parents", dict)
    data = f.get("data", dict)
    # a delete needs no parents, but what it names is checked all the same
    for p in obj.references if action is not Action.DELETE else ():
        if p not in parents:
            f.fail(Category.VALIDATION, Code.BAD_REFID, f"{obj.name} {ref_id}: parent reference {p!r} is missing")
    extra = sorted(set(parents) - set(obj.references))
    if extra:
        f.bad(clean(f"{obj.name} has no parent reference(s) {', '.join(map(repr, extra))}", 200))
    for p, ref in parents.items():
        if not isinstance(ref, str) or not REFID.match(ref):
            f.fail(Category.VALIDATION, Code.BAD_REFID, f"{obj.name} {ref_id}: parent reference {p!r} is not a RefId")
    if action is Action.DELETE:
        data = {}  # a delete stores nothing of the record's fields: what it sent is ignored, not kept
    known = dict(fields(obj.name))
    for key, value in data.items():
        if key not in known:
            f.fail(Category.VALIDATION, Code.BAD_DATA, f"{obj.name} has no field {clean(repr(key[:60]), 80)}")
        problem = check_value(obj.name, key, known[key], value)
        if problem:
            f.fail(Category.VALIDATION, Code.BAD_DATA, problem)
    version = f.integer("ver", 0, MAX_VERSION) if "ver" in f.doc else 0
    return Event(msg_id, ts, source, batch, seq, obj.name, action, ref_id, year, parents, data, version)


def encode_event(e: Event) -> bytes:
    return orjson.dumps({
        "v": VERSION, "msg_id": e.msg_id, "ts": e.ts, "source": e.source, "batch": e.batch,
        "seq": e.seq, "object": e.object, "action": e.action.value, "ref_id": e.ref_id,
        "year": e.year, "parents": e.parents, "data": e.data, "ver": e.version,
    })


def _ack_dict(a: Ack) -> dict[str, Any]:
    d: dict[str, Any] = {"msg_id": a.msg_id, "status": a.status}
    if a.error is not None:
        d["error"] = {"category": a.error.category, "code": a.error.code, "desc": a.error.desc,
                      "extended": a.error.extended}
    if a.object is not None:
        d["object"], d["ref_id"], d["batch"] = a.object, a.ref_id, a.batch
    return d


def encode_acks(pack: AckPack) -> bytes:
    return orjson.dumps({"v": VERSION, "district": pack.district, "acks": [_ack_dict(a) for a in pack.acks]})


def _ack(f: Fields, raw: Any) -> Ack:
    if not isinstance(raw, dict):
        f.bad("an ack is not an object")
    a = Fields(raw)
    status = a.get("status", str)
    if status not in ("ok", "error"):
        a.bad(f"ack status {clean(repr(status[:20]), 40)} is not ok or error")
    err = None
    if status == "error":
        e = Fields(a.get("error", dict))
        extended = e.free_text("extended", MAX_EXTENDED, nullable=True) if "extended" in e.doc else None
        # the state's own words: kept, but made storable rather than refused
        err = ErrorInfo(e.integer("category", 1, 99), e.matching("code", CODE, "an error code like 9.1"),
                        e.free_text("desc"), extended or "")
    def echoed(name: str, check: Callable[..., Any]) -> Any:
        return check(name, nullable=True) if name in raw else None

    return Ack(a.refid("msg_id"), status, err, echoed("object", a.object_name), echoed("ref_id", a.refid),
               echoed("batch", a.refid))


def decode_acks(body: bytes, *, max_size: int = MAX_ACK_MESSAGE) -> AckPack:
    f = Fields(load(body, max_size))
    district = f.source("district")
    raw = f.get("acks", list)
    if len(raw) > MAX_ACKS:
        f.bad(f"an ack message holds at most {MAX_ACKS} acks")
    return AckPack(district, [_ack(f, a) for a in raw])


def encode_marker(m: Marker) -> bytes:
    return orjson.dumps({"v": VERSION, "msg_id": m.msg_id, "ts": m.ts, "source": m.source, "batch": m.batch,
                         "kind": m.kind.value, "object": m.object, "year": m.year, "count": m.count,
                         "request": m.request, **({"delta": True} if m.delta else {})})


def decode_marker(body: bytes, *, message_id: str | None = None) -> Marker:
    f = Fields(load(body, MAX_NOTICE), message_id)
    kind_raw = f.get("kind", str)
    try:
        kind = MarkerKind(kind_raw)
    except ValueError:
        f.bad(f"unknown marker kind {clean(repr(kind_raw[:30]), 50)}")
    return Marker(f.refid("msg_id"), f.timestamp(), f.source(), f.refid("batch"), kind,
                  f.object_name("object", nullable=True), f.year(nullable=True),
                  f.integer("count", 0, MAX_INT, nullable=True),
                  f.refid("request", nullable=True) if f.doc.get("request") is not None else None,
                  f.get("delta", bool) if "delta" in f.doc else False)


def encode_request(r: ResyncRequest) -> bytes:
    return orjson.dumps({"v": VERSION, "msg_id": r.msg_id, "ts": r.ts, "source": r.source,
                         "request_id": r.request_id, "objects": r.objects, "year": r.year,
                         "requested_by": r.requested_by, **r.extra})


def decode_request(body: bytes) -> ResyncRequest:
    f = Fields(load(body, MAX_NOTICE))
    return ResyncRequest(f.refid("msg_id"), f.timestamp(), f.source(), f.refid("request_id"),
                         f.names("objects", nullable=True), f.text("year", 16), f.free_text("requested_by", 128))


def content_digest(e: Event) -> str:
    """What a message says, without when it was sent: a resent record has a new ``ts`` and ``seq``
    but the same content, and must not count as a conflicting duplicate."""
    canonical = orjson.dumps([e.source, e.batch, e.object, e.action.value, e.ref_id, e.year, e.parents, e.data],
                             option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(canonical, digest_size=16).hexdigest()
