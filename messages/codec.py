"""Encoding and strict decoding of every message. Decoding never trusts the body: each way a
message can be wrong raises a ``DecodeError`` with the SIF category and code it is answered with."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

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
    ManifestPart,
    ManifestRequest,
    Marker,
    MarkerKind,
    ResyncRequest,
    VerifyReport,
)
from messages.errors import Category, Code, DecodeError
from messages.fields import fields
from messages.manifest import ENTRY

MAX_BODY = 256 * 1024
MAX_OBJECTS = 500
_DATE = re.compile(r"\A\d{4}-\d{2}-\d{2}\Z")


def _fail(category: Category, code: str, desc: str, extended: str = "", msg_id: str | None = None) -> NoReturn:
    err = DecodeError(category, code, desc, extended)
    err.msg_id = msg_id
    raise err


def _load(body: bytes, max_size: int) -> dict[str, Any]:
    if len(body) > max_size:
        _fail(Category.GENERIC_MESSAGE, Code.TOO_LARGE,
              f"message body of {len(body)} bytes is over the limit of {max_size} bytes")
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as e:
        _fail(Category.GENERIC_MESSAGE, Code.BAD_ENCODING, "message body is not valid UTF-8", str(e))
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        _fail(Category.GENERIC_MESSAGE, Code.NOT_JSON, "message body is not JSON", str(e))
    if not isinstance(doc, dict):
        _fail(Category.GENERIC_MESSAGE, Code.NOT_OBJECT,
              f"message body is a JSON {type(doc).__name__}, not an object")
    msg_id = doc.get("msg_id")
    msg_id = msg_id if isinstance(msg_id, str) and REFID.match(msg_id) else None
    if "v" not in doc:
        _fail(Category.GENERIC_MESSAGE, Code.MISSING_FIELD, "message has no version field 'v'", msg_id=msg_id)
    if doc["v"] != VERSION or isinstance(doc["v"], bool):
        _fail(Category.GENERIC_MESSAGE, Code.BAD_VERSION,
              f"message version {doc['v']!r} is not supported (this receiver speaks v{VERSION})", msg_id=msg_id)
    return doc


class _Fields:
    """Typed access to a decoded body, failing with the contract's codes."""

    def __init__(self, doc: Mapping[str, Any]) -> None:
        self.doc = doc
        raw = doc.get("msg_id")
        self.msg_id = raw if isinstance(raw, str) and REFID.match(raw) else None

    def fail(self, category: Category, code: str, desc: str, extended: str = "") -> NoReturn:
        _fail(category, code, desc, extended, self.msg_id)

    def get(self, name: str, kind: type | tuple[type, ...], *, nullable: bool = False) -> Any:
        if name not in self.doc:
            self.fail(Category.GENERIC_MESSAGE, Code.MISSING_FIELD, f"message has no field {name!r}")
        value = self.doc[name]
        if value is None and nullable:
            return None
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            self.fail(Category.VALIDATION, Code.BAD_FIELD,
                      f"field {name!r} must be {names}, not {type(value).__name__}")
        return value

    def refid(self, name: str, *, nullable: bool = False) -> Any:
        value = self.get(name, str, nullable=nullable)
        if value is not None and not REFID.match(value):
            code = Code.BAD_REFID
            self.fail(Category.VALIDATION, code, f"field {name!r} is not a RefId (32 uppercase hex digits)",
                      repr(value)[:80])
        return value


_VALID: dict[str, Callable[[Any], bool]] = {
    "str": lambda v: isinstance(v, str) and len(v) <= 1000 and "\x00" not in v,
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool) and abs(v) < 2**63,
    "bool": lambda v: isinstance(v, bool),
    "decimal": lambda v: isinstance(v, int | float) and not isinstance(v, bool) and abs(v) < 1e12,
    "date": lambda v: isinstance(v, str) and _is_date(v),
}


def _check_value(obj: str, name: str, kind: str, value: Any) -> str | None:
    if value is None or _VALID[kind](value):
        return None
    return f"{obj}.{name} must be {kind}, got {value!r}"[:200]


def _is_date(v: str) -> bool:
    if not _DATE.match(v):
        return False
    try:
        dt.date.fromisoformat(v)
    except ValueError:
        return False
    return True


def decode_event(body: bytes, catalog: Catalog, *, max_size: int = MAX_BODY) -> Event:
    f = _Fields(_load(body, max_size))
    msg_id = f.refid("msg_id")
    ts = f.get("ts", str)
    source = f.get("source", str)
    batch = f.get("batch", str, nullable=True)
    seq = f.get("seq", int)
    obj_name = f.get("object", str)
    if obj_name not in catalog:
        if catalog.knows(obj_name):
            f.fail(Category.VALIDATION, Code.OBJECT_DISABLED, f"object {obj_name!r} is not enabled at the state")
        f.fail(Category.VALIDATION, Code.UNKNOWN_OBJECT, f"unknown object {obj_name[:60]!r}")
    obj = catalog.get(obj_name)
    action_raw = f.get("action", str)
    try:
        action = Action(action_raw)
    except ValueError:
        f.fail(Category.VALIDATION, Code.UNKNOWN_ACTION,
               f"unknown action {action_raw[:30]!r}; expected add, change or delete")
    ref_id = f.refid("ref_id")
    year = f.get("year", int, nullable=True)
    if obj.year_scoped and year is None:
        f.fail(Category.VALIDATION, Code.BAD_YEAR, f"{obj.name} is tied to a school year; 'year' is missing")
    if not obj.year_scoped and year is not None:
        year = None
    parents = f.get("parents", dict)
    data = f.get("data", dict)
    if action is not Action.DELETE:
        for p in obj.references:
            ref = parents.get(p)
            if not isinstance(ref, str) or not REFID.match(ref):
                f.fail(Category.VALIDATION, Code.BAD_REFID,
                       f"{obj.name} {ref_id}: parent reference {p!r} is missing or not a RefId")
        extra = set(parents) - set(obj.references)
        if extra:
            f.fail(Category.VALIDATION, Code.BAD_FIELD,
                   f"{obj.name} has no parent reference(s) {', '.join(sorted(extra))[:100]}")
        known = dict(fields(obj.name))
        for key, value in data.items():
            if key not in known:
                f.fail(Category.VALIDATION, Code.BAD_DATA, f"{obj.name} has no field {key[:60]!r}")
            problem = _check_value(obj.name, key, known[key], value)
            if problem:
                f.fail(Category.VALIDATION, Code.BAD_DATA, problem)
    return Event(msg_id, ts, source, batch, seq, obj.name, action, ref_id, year, parents, data)


def encode_event(e: Event) -> bytes:
    return orjson.dumps({
        "v": VERSION, "msg_id": e.msg_id, "ts": e.ts, "source": e.source, "batch": e.batch,
        "seq": e.seq, "object": e.object, "action": e.action.value, "ref_id": e.ref_id,
        "year": e.year, "parents": e.parents, "data": e.data,
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


def decode_acks(body: bytes, *, max_size: int = 64 * 1024 * 1024) -> AckPack:
    f = _Fields(_load(body, max_size))
    district = f.get("district", str)
    out: list[Ack] = []
    for raw in f.get("acks", list):
        if not isinstance(raw, dict):
            f.fail(Category.VALIDATION, Code.BAD_FIELD, "an ack is not an object")
        a = _Fields(raw)
        status = a.get("status", str)
        if status not in ("ok", "error"):
            a.fail(Category.VALIDATION, Code.BAD_FIELD, f"ack status {status[:20]!r} is not ok or error")
        err = None
        if status == "error":
            e = _Fields(a.get("error", dict))
            err = ErrorInfo(e.get("category", int), e.get("code", str), e.get("desc", str),
                            e.doc.get("extended") or "")
        out.append(Ack(a.refid("msg_id"), status, err, raw.get("object"), raw.get("ref_id"), raw.get("batch")))
    return AckPack(district, out)


def encode_marker(m: Marker) -> bytes:
    return orjson.dumps({"v": VERSION, "msg_id": m.msg_id, "ts": m.ts, "source": m.source, "batch": m.batch,
                         "kind": m.kind.value, "object": m.object, "year": m.year, "count": m.count,
                         "request": m.request, **({"delta": True} if m.delta else {})})


def decode_marker(body: bytes) -> Marker:
    f = _Fields(_load(body, MAX_BODY))
    kind_raw = f.get("kind", str)
    try:
        kind = MarkerKind(kind_raw)
    except ValueError:
        f.fail(Category.VALIDATION, Code.BAD_FIELD, f"unknown marker kind {kind_raw[:30]!r}")
    return Marker(f.refid("msg_id"), f.get("ts", str), f.get("source", str), f.refid("batch"), kind,
                  f.get("object", str, nullable=True), f.get("year", int, nullable=True),
                  f.get("count", int, nullable=True),
                  f.refid("request", nullable=True) if f.doc.get("request") is not None else None,
                  f.get("delta", bool) if "delta" in f.doc else False)


def encode_request(r: ResyncRequest) -> bytes:
    return orjson.dumps({"v": VERSION, "msg_id": r.msg_id, "ts": r.ts, "source": r.source,
                         "request_id": r.request_id, "objects": r.objects, "year": r.year,
                         "requested_by": r.requested_by, **r.extra})


def decode_request(body: bytes) -> ResyncRequest:
    f = _Fields(_load(body, MAX_BODY))
    objects = f.get("objects", list, nullable=True)
    if objects is not None and not all(isinstance(o, str) for o in objects):
        f.fail(Category.VALIDATION, Code.BAD_FIELD, "'objects' must be a list of object names")
    return ResyncRequest(f.refid("msg_id"), f.get("ts", str), f.get("source", str), f.refid("request_id"),
                         objects, f.get("year", str), f.get("requested_by", str))


def encode_manifest_request(r: ManifestRequest) -> bytes:
    return orjson.dumps({"v": VERSION, "msg_id": r.msg_id, "ts": r.ts, "source": r.source, "request": r.request,
                         "objects": r.objects, "year": r.year})


def decode_manifest_request(body: bytes) -> ManifestRequest:
    f = _Fields(_load(body, MAX_BODY))
    objects = f.get("objects", list)
    if not all(isinstance(o, str) for o in objects) or len(objects) > MAX_OBJECTS:
        f.fail(Category.VALIDATION, Code.BAD_FIELD, f"'objects' must be a list of at most {MAX_OBJECTS} object names")
    return ManifestRequest(f.refid("msg_id"), f.get("ts", str), f.get("source", str), f.refid("request"), objects,
                           f.get("year", int))


def encode_manifest_part(p: ManifestPart) -> bytes:
    return orjson.dumps({"v": VERSION, "request": p.request, "object": p.object, "part": p.part, "last": p.last,
                         "entries": p.entries, "error": p.error})


def decode_manifest_part(body: bytes) -> ManifestPart:
    f = _Fields(_load(body, 64 * 1024 * 1024))
    entries = f.get("entries", str)
    if len(entries) % ENTRY:
        f.fail(Category.VALIDATION, Code.BAD_FIELD, f"manifest entries are not a whole number of {ENTRY}-character "
               "entries")
    return ManifestPart(f.refid("request"), f.get("object", str), f.get("part", int), f.get("last", bool), entries,
                        f.get("error", str, nullable=True))


def encode_verify_report(r: VerifyReport) -> bytes:
    return orjson.dumps({"v": VERSION, "msg_id": r.msg_id, "ts": r.ts, "source": r.source,
                         "request_id": r.request_id, "year": r.year, "objects": r.objects, "error": r.error})


def decode_verify_report(body: bytes) -> VerifyReport:
    f = _Fields(_load(body, 16 * 1024 * 1024))
    objects = f.get("objects", list)
    if not all(isinstance(o, dict) and isinstance(o.get("object"), str) for o in objects):
        f.fail(Category.VALIDATION, Code.BAD_FIELD, "'objects' must be a list of per-object results")
    error = f.get("error", str, nullable=True) if "error" in f.doc else None
    return VerifyReport(f.refid("msg_id"), f.get("ts", str), f.get("source", str), f.refid("request_id"),
                        f.get("year", int), objects, error)


def content_digest(e: Event) -> str:
    """What a message says, without when it was sent: a resent record has a new ``ts`` and ``seq``
    but the same content, and must not count as a conflicting duplicate."""
    canonical = orjson.dumps([e.source, e.batch, e.object, e.action.value, e.ref_id, e.year, e.parents, e.data],
                             option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(canonical, digest_size=16).hexdigest()
