"""The checks every decoder shares: limits, loading a body, and typed, bounded access to its fields.

Whatever passes can be stored: each field that reaches a column or a log line is checked for type,
range and length, and every string for characters the databases refuse (``messages/text.py``). A
failure is a ``DecodeError`` with the SIF category and code it is answered with, naming the message's
msg_id and, for a record, what it was (object, ref_id, batch) whenever the body says so validly, so the
sender can count the answer.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import time
from collections.abc import Callable, Mapping
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, NoReturn

import orjson

from messages.envelope import REFID, VERSION, canonical_ts
from messages.errors import Category, Code, DecodeError
from messages.text import NAME, SOURCE, clean, storable

MAX_BODY = 256 * 1024
"""An event's body, by default (``RESYNC_MAX_BODY``)."""
MAX_MESSAGE = 4 * 1024 * 1024
"""The largest message of all (a manifest part), and the broker's limit (``docker/rabbitmq.conf``)."""
MAX_NOTICE = 64 * 1024
"""A marker or a manifest request: a few hundred bytes, but parsed JSON takes many times its size."""
MAX_REPORT = 1024 * 1024
"""A verify report: per object, its counts and up to 100 ref_ids per kind of difference."""
MAX_PARSED = 1024 * 1024
"""Over its limit but not over this, a body is still read, so that its refusal can name the message."""
MAX_OBJECTS = 500
MAX_ACKS = 1_000
"""Acks in one message (the receiver sends at most that many, in at most ``MAX_ACK_MESSAGE`` bytes)."""
MAX_ACK_MESSAGE = 2 * 1024 * 1024
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
_CANONICAL = re.compile(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z", re.ASCII)
EARLIEST = canonical_ts(EARLIEST_TS)


def _latest() -> str:
    """The latest canonical ``ts`` accepted now (every record asks: worked out once a second)."""
    return _latest_in(time.monotonic() // 1)


@functools.lru_cache(maxsize=1)
def _latest_in(second: float) -> str:
    return canonical_ts(dt.datetime.now(dt.UTC) + CLOCK_SKEW)


def fail(category: Category, code: str, desc: str, extended: str = "", doc: Mapping[str, Any] | None = None,
         msg_id: str | None = None) -> NoReturn:
    """Raise the error, with what ``doc`` validly says of the message it is about."""
    err = DecodeError(category, code, desc, extended)
    err.msg_id = msg_id
    if doc is not None:
        err.msg_id = _valid(doc, "msg_id", REFID) or msg_id
        err.object, err.ref_id, err.batch = _valid(doc, "object", NAME), _valid(doc, "ref_id", REFID), _valid(
            doc, "batch", REFID)
    raise err


def _valid(doc: Mapping[str, Any], key: str, pattern: re.Pattern[str]) -> str | None:
    value = doc.get(key)
    return value if isinstance(value, str) and pattern.match(value) else None


def load(body: bytes, max_size: int) -> dict[str, Any]:
    """The body as a JSON object of this contract's version. A body over ``max_size`` but within
    ``MAX_PARSED`` is still read, so that its refusal names the message it refuses."""
    too_large = len(body) > max_size
    doc, problem = _parse(body) if not too_large or len(body) <= MAX_PARSED else (None, None)
    if too_large:
        fail(Category.GENERIC_MESSAGE, Code.TOO_LARGE,
             f"message body of {len(body)} bytes is over the limit of {max_size} bytes", doc=doc)
    if doc is None:
        assert problem is not None  # _parse gives one or the other
        fail(Category.GENERIC_MESSAGE, *problem)
    if "v" not in doc:
        fail(Category.GENERIC_MESSAGE, Code.MISSING_FIELD, "message has no version field 'v'", doc=doc)
    if doc["v"] != VERSION or isinstance(doc["v"], bool):
        fail(Category.GENERIC_MESSAGE, Code.BAD_VERSION,
             f"message version {clean(repr(doc['v']), 40)} is not supported (this receiver speaks v{VERSION})",
             doc=doc)
    return doc


def _parse(body: bytes) -> tuple[dict[str, Any] | None, tuple[str, str, str] | None]:
    """The body as a JSON object, or what is wrong with it: (code, description, details)."""
    try:
        body.decode("utf-8")
        doc = orjson.loads(body)
    except UnicodeDecodeError as e:
        return None, (Code.BAD_ENCODING, "message body is not valid UTF-8", str(e)[:200])
    except orjson.JSONDecodeError as e:
        return None, (Code.NOT_JSON, "message body is not JSON", clean(str(e), 200))
    if not isinstance(doc, dict):
        return None, (Code.NOT_OBJECT, f"message body is a JSON {type(doc).__name__}, not an object", "")
    return doc, None


def _type_name(kind: type | tuple[type, ...]) -> str:
    return kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)


class Fields:
    """Typed, bounded access to a decoded body, failing with the contract's codes."""

    def __init__(self, doc: Mapping[str, Any], msg_id: str | None = None) -> None:
        self.doc = doc
        self.msg_id = _valid(doc, "msg_id", REFID) or msg_id

    def fail(self, category: Category, code: str, desc: str, extended: str = "") -> NoReturn:
        fail(category, code, desc, extended, self.doc, self.msg_id)

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

    def free_text(self, name: str, limit: int = MAX_TEXT, *, nullable: bool = False) -> Any:
        """Words from the other side (an error's description): kept, but made storable rather than refused."""
        value = self.get(name, str, nullable=nullable)
        return None if value is None else clean(value, limit)

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
        if now is None and _CANONICAL.match(raw) and EARLIEST <= raw <= _latest():
            try:  # already canonical and in the window (as strings): only its calendar is left to check
                dt.datetime.fromisoformat(raw)
                return str(raw)
            except ValueError:
                pass
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
        return canonical_ts(when)

    def names(self, name: str, *, nullable: bool = False) -> Any:
        value = self.get(name, list, nullable=nullable)
        if value is not None and (len(value) > MAX_OBJECTS or
                                  not all(isinstance(o, str) and NAME.match(o) for o in value)):
            self.bad(f"{name!r} must be a list of at most {MAX_OBJECTS} object names")
        return value


_NUMERIC_LIMIT = Decimal(10**12)


def _fits_numeric(v: float) -> bool:
    """Whether ``numeric(14, 2)`` takes ``v`` as the database gets it: as its shortest decimal text, rounded half
    away from zero to cents (binary rounding would let 999999999999.995 through, which the database rounds up
    past its limit)."""
    cents = Decimal(repr(v)).copy_abs().quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    return cents < _NUMERIC_LIMIT


VALID: dict[str, Callable[[Any], bool]] = {
    # a string orjson decoded holds no lone surrogate (it refuses them): NUL is what is left to refuse
    "str": lambda v: isinstance(v, str) and len(v) <= MAX_TEXT and "\x00" not in v,
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool) and abs(v) < 2**63,
    "bool": lambda v: isinstance(v, bool),
    "decimal": lambda v: isinstance(v, int | float) and not isinstance(v, bool) and _fits_numeric(v),
    "date": lambda v: isinstance(v, str) and is_date(v),
}


def check_value(obj: str, name: str, kind: str, value: Any) -> str | None:
    if value is None or VALID[kind](value):
        return None
    return clean(f"{obj}.{name} must be {kind}, got {value!r}", 200)


def is_date(v: str) -> bool:
    if not _DATE.match(v):
        return False
    try:
        dt.date.fromisoformat(v)
    except ValueError:
        return False
    return True
