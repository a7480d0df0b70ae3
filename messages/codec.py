"""Encoding and strict decoding of every message. Decoding never trusts the body: each way a
message can be wrong raises a ``DecodeError`` with the SIF category and code it is answered with.

Whatever a decoder returns can be stored: every field that reaches a column or a log line is checked
for type, range and length here, and every string for characters the databases refuse
(``messages/text.py``), so no value from outside can make a database statement fail later.
"""

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
from messages.manifest import DIFFERENCES, ENTRY
from messages.text import CODE, NAME, SOURCE, clean, storable

MAX_BODY = 256 * 1024
"""An event's body, by default (``RESYNC_MAX_BODY``)."""
MAX_MESSAGE = 4 * 1024 * 1024
"""Any other message: an ack pack, a manifest part, a request, a verify report."""
MAX_OBJECTS = 500
MAX_ACKS = 10_000
MAX_TEXT = 1000
"""A string value of a record, and an error's description."""
MAX_EXTENDED = 4000
MAX_INT = 2**31 - 1
"""Counts, parts and positions: what an ``Integer`` column holds."""
YEARS = (1900, 2999)
EARLIEST_TS = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
CLOCK_SKEW = dt.timedelta(hours=1)
"""How far ahead of the receiver's clock a message's ``ts`` may be: a record stamped later would
outrank every change the district makes until then."""
_DATE = re.compile(r"\A\d{4}-\d{2}-\d{2}\Z")
_PACKED = re.compile(r"\A[0-9A-Fa-f-]*\Z")


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
        _fail(Category.GENERIC_MESSAGE, Code.BAD_ENCODING, "message body is not valid UTF-8", str(e)[:200])
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        _fail(Category.GENERIC_MESSAGE, Code.NOT_JSON, "message body is not JSON", clean(str(e), 200))
    if not isinstance(doc, dict):
        _fail(Category.GENERIC_MESSAGE, Code.NOT_OBJECT,
              f"message body is a JSON {type(doc).__name__}, not an object")
    msg_id = doc.get("msg_id")
    msg_id = msg_id if isinstance(msg_id, str) and REFID.match(msg_id) else None
    if "v" not in doc:
        _fail(Category.GENERIC_MESSAGE, Code.MISSING_FIELD, "message has no version field 'v'", msg_id=msg_id)
    if doc["v"] != VERSION or isinstance(doc["v"], bool):
        _fail(Category.GENERIC_MESSAGE, Code.BAD_VERSION,
              f"message version {clean(repr(doc['v']), 40)} is not supported (this receiver speaks v{VERSION})",
              msg_id=msg_id)
    return doc


def _type_name(kind: type | tuple[type, ...]) -> str:
    return kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)


class _Fields:
    """Typed, bounded access to a decoded body, failing with the contract's codes."""

    def __init__(self, doc: Mapping[str, Any], msg_id: str | None = None) -> None:
        self.doc = doc
        raw = doc.get("msg_id")
        self.msg_id = raw if isinstance(raw, str) and REFID.match(raw) else msg_id

    def fail(self, category: Category, code: str, desc: str, extended: str = "") -> NoReturn:
        _fail(category, code, desc, extended, self.msg_id)

    def bad(self, desc: str) -> NoReturn:
        self.fail(Category.VALIDATION, Code.BAD_FIELD, desc)

    def get(self, name: str, kind: type | tuple[type, ...], *, nullable: bool = False) -> Any:
        if name not in self.doc:
            self.fail(Category.GENERIC_MESSAGE, Code.MISSING_FIELD, f"message has no field {name!r}")
        value = self.doc[name]
        if value is None and nullable:
            return None
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
            self.bad(f"field {name!r} must be {_type_name(kind)}, not {type(value).__name__}")
        return value

    def text(self, name: str, limit: int = MAX_TEXT, *, nullable: bool = False) -> Any:
        value = self.get(name, str, nullable=nullable)
        if value is not None and (len(value) > limit or not storable(value)):
            self.bad(f"field {name!r} must be at most {limit} characters without NUL ({len(value)} given)")
        return value

    def matching(self, name: str, pattern: re.Pattern[str], what: str, *, nullable: bool = False,
                 code: str = Code.BAD_FIELD) -> Any:
        value = self.get(name, str, nullable=nullable)
        if value is not None and not pattern.match(value):
            self.fail(Category.VALIDATION, code, f"field {name!r} is not {what}", clean(repr(value), 80))
        return value

    def refid(self, name: str, *, nullable: bool = False) -> Any:
        return self.matching(name, REFID, "a RefId (32 uppercase hex digits)", nullable=nullable,
                             code=Code.BAD_REFID)

    def object_name(self, name: str, *, nullable: bool = False) -> Any:
        return self.matching(name, NAME, "an object name (a letter, then up to 63 letters, digits or _)",
                             nullable=nullable)

    def source(self, name: str = "source") -> Any:
        return self.matching(name, SOURCE, "a district id (1-63 lowercase letters, digits, '-' or '_')")

    def integer(self, name: str, low: int, high: int, *, nullable: bool = False) -> Any:
        value = self.get(name, int, nullable=nullable)
        if value is not None and not low <= value <= high:
            self.bad(f"field {name!r} must be between {low} and {high}")
        return value

    def year(self, name: str = "year", *, nullable: bool = False) -> Any:
        value = self.get(name, int, nullable=nullable)
        if value is not None and not YEARS[0] <= value <= YEARS[1]:
            self.fail(Category.VALIDATION, Code.BAD_YEAR, f"school year {clean(repr(value), 40)} is not a year")
        return value

    def timestamp(self, name: str = "ts", now: dt.datetime | None = None) -> str:
        """An ISO 8601 instant with its offset, in a sane window, as the one canonical UTC form (so that
        comparing two as strings compares them in time)."""
        raw = self.get(name, str)
        try:
            when = dt.datetime.fromisoformat(raw) if len(raw) <= 40 else None
        except ValueError:
            when = None
        if when is None or when.tzinfo is None:
            self.bad(f"field {name!r} is not an ISO 8601 timestamp with a UTC offset: {clean(repr(raw), 60)}")
        latest = (now or dt.datetime.now(dt.UTC)) + CLOCK_SKEW
        if not EARLIEST_TS <= when <= latest:
            self.bad(f"field {name!r} is {raw[:40]!r}, outside {EARLIEST_TS:%Y-%m-%d} .. now + "
                     f"{CLOCK_SKEW.total_seconds() / 3600:g} h; is the sender's clock right?")
        return when.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def names(self, name: str, *, nullable: bool = False) -> Any:
        value = self.get(name, list, nullable=nullable)
        if value is not None and (len(value) > MAX_OBJECTS or
                                  not all(isinstance(o, str) and NAME.match(o) for o in value)):
            self.bad(f"{name!r} must be a list of at most {MAX_OBJECTS} object names")
        return value


_VALID: dict[str, Callable[[Any], bool]] = {
    "str": lambda v: isinstance(v, str) and len(v) <= MAX_TEXT and storable(v),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool) and abs(v) < 2**63,
    "bool": lambda v: isinstance(v, bool),
    "decimal": lambda v: isinstance(v, int | float) and not isinstance(v, bool) and abs(v) < 1e12,
    "date": lambda v: isinstance(v, str) and _is_date(v),
}


def _check_value(obj: str, name: str, kind: str, value: Any) -> str | None:
    if value is None or _VALID[kind](value):
        return None
    return clean(f"{obj}.{name} must be {kind}, got {value!r}", 200)


def _is_date(v: str) -> bool:
    if not _DATE.match(v):
        return False
    try:
        dt.date.fromisoformat(v)
    except ValueError:
        return False
    return True


def decode_event(body: bytes, catalog: Catalog, *, max_size: int = MAX_BODY, now: dt.datetime | None = None,
                 message_id: str | None = None) -> Event:
    """``message_id``: the AMQP property, the answer's msg_id when the body names none."""
    f = _Fields(_load(body, max_size), message_id)
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


def _ack(f: _Fields, raw: Any) -> Ack:
    if not isinstance(raw, dict):
        f.bad("an ack is not an object")
    a = _Fields(raw)
    status = a.get("status", str)
    if status not in ("ok", "error"):
        a.bad(f"ack status {clean(repr(status[:20]), 40)} is not ok or error")
    err = None
    if status == "error":
        e = _Fields(a.get("error", dict))
        extended = e.get("extended", str, nullable=True) if "extended" in e.doc else None
        # the state's own words: kept, but made storable rather than refused
        err = ErrorInfo(e.integer("category", 1, 99), e.matching("code", CODE, "an error code like 9.1"),
                        clean(e.get("desc", str), MAX_TEXT), clean(extended or "", MAX_EXTENDED))
    def echoed(name: str, check: Callable[..., Any]) -> Any:
        return check(name, nullable=True) if name in raw else None

    return Ack(a.refid("msg_id"), status, err, echoed("object", a.object_name), echoed("ref_id", a.refid),
               echoed("batch", a.refid))


def decode_acks(body: bytes, *, max_size: int = MAX_MESSAGE) -> AckPack:
    f = _Fields(_load(body, max_size))
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
    f = _Fields(_load(body, MAX_MESSAGE), message_id)
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
    f = _Fields(_load(body, MAX_MESSAGE))
    return ResyncRequest(f.refid("msg_id"), f.timestamp(), f.source(), f.refid("request_id"),
                         f.names("objects", nullable=True), f.text("year", 16), f.text("requested_by", 128))


def encode_manifest_request(r: ManifestRequest) -> bytes:
    return orjson.dumps({"v": VERSION, "msg_id": r.msg_id, "ts": r.ts, "source": r.source, "request": r.request,
                         "objects": r.objects, "year": r.year})


def decode_manifest_request(body: bytes, *, message_id: str | None = None) -> ManifestRequest:
    f = _Fields(_load(body, MAX_MESSAGE), message_id)
    return ManifestRequest(f.refid("msg_id"), f.timestamp(), f.source(), f.refid("request"), f.names("objects"),
                           f.year())


def encode_manifest_part(p: ManifestPart) -> bytes:
    return orjson.dumps({"v": VERSION, "request": p.request, "object": p.object, "part": p.part, "last": p.last,
                         "entries": p.entries, "error": p.error})


def decode_manifest_part(body: bytes) -> ManifestPart:
    f = _Fields(_load(body, MAX_MESSAGE))
    entries = f.get("entries", str)
    if len(entries) % ENTRY or not _PACKED.match(entries):
        f.bad(f"manifest entries are not a whole number of {ENTRY}-character hex entries")
    return ManifestPart(f.refid("request"), f.object_name("object"), f.integer("part", 0, MAX_INT),
                        f.get("last", bool), entries, f.text("error", MAX_TEXT, nullable=True))


def encode_verify_report(r: VerifyReport) -> bytes:
    return orjson.dumps({"v": VERSION, "msg_id": r.msg_id, "ts": r.ts, "source": r.source,
                         "request_id": r.request_id, "year": r.year, "objects": r.objects, "error": r.error})


_COUNTS = ("district", "state", "district_only", "state_only", "mismatched", "excluded", "differences")
REPORT_REFS = 100
"""Ref_ids a verify report names per object and kind of difference."""


def _report_object(f: _Fields, raw: Any) -> dict[str, Any]:
    """One object's result, rebuilt from known keys only: what the state files is what it checked."""
    if not isinstance(raw, dict):
        f.bad("'objects' must be a list of per-object results")
    o = _Fields(raw, f.msg_id)
    out: dict[str, Any] = {"object": o.object_name("object")}
    for key in _COUNTS:
        out[key] = o.integer(key, 0, MAX_INT) if key in raw else 0
    out["error"] = o.text("error", MAX_TEXT, nullable=True) if "error" in raw else None
    out["resync_recommended"] = o.get("resync_recommended", bool) if "resync_recommended" in raw else False
    details = o.get("details", dict) if "details" in raw else {}
    if not set(details) <= set(DIFFERENCES) or not all(
            isinstance(v, list) and len(v) <= REPORT_REFS and all(isinstance(r, str) and REFID.match(r) for r in v)
            for v in details.values()):
        f.bad(f"'details' must map {', '.join(DIFFERENCES)} to at most {REPORT_REFS} RefIds each")
    out["details"] = details
    return out


def decode_verify_report(body: bytes, *, message_id: str | None = None) -> VerifyReport:
    f = _Fields(_load(body, MAX_MESSAGE), message_id)
    raw = f.get("objects", list)
    if len(raw) > MAX_OBJECTS:
        f.bad(f"'objects' must be a list of at most {MAX_OBJECTS} per-object results")
    objects = [_report_object(f, o) for o in raw]
    error = f.text("error", MAX_TEXT, nullable=True) if "error" in f.doc else None
    return VerifyReport(f.refid("msg_id"), f.timestamp(), f.source(), f.refid("request_id"), f.year(), objects,
                        error)


def content_digest(e: Event) -> str:
    """What a message says, without when it was sent: a resent record has a new ``ts`` and ``seq``
    but the same content, and must not count as a conflicting duplicate."""
    canonical = orjson.dumps([e.source, e.batch, e.object, e.action.value, e.ref_id, e.year, e.parents, e.data],
                             option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(canonical, digest_size=16).hexdigest()
