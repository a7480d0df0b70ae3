"""Everything the codec accepts can be stored: decoders fed arbitrary JSON either refuse it with a
categorized error or return values every database column takes. No I/O: the running daemons get the same
treatment in ``test_hostile_properties.py``."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from messages import catalog as catalog_mod
from messages.codec import (
    decode_acks,
    decode_event,
    decode_manifest_part,
    decode_manifest_request,
    decode_marker,
    decode_request,
    decode_verify_report,
)
from messages.envelope import new_id
from messages.errors import Code, DecodeError
from messages.text import clean, storable

CATALOG = catalog_mod.load()
NOW = dt.datetime(2026, 11, 29, 12, tzinfo=dt.UTC)
TS = "2026-11-29T08:00:00.000Z"

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False,
                                                                                          allow_infinity=False)
    | st.text(max_size=30) | st.sampled_from(["District", "School", "district-1", TS, "9.1", "state", "change",
                                               "object_end", new_id(), "0" * 48]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10) | st.sampled_from(
        ["msg_id", "ts", "source", "batch", "object", "ref_id", "year", "count", "data", "name", "desc"]), inner,
        max_size=6),
    max_leaves=30)


def _storable(value: Any) -> None:
    """Every string and key is storable, every int fits a BIGINT, wherever it sits."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, str):
        assert storable(value) and len(value) <= 5000, value[:80]
    elif isinstance(value, bool) or value is None or isinstance(value, float):
        return
    elif isinstance(value, int):
        assert abs(value) < 2**63
    elif isinstance(value, dict):
        for k, v in value.items():
            _storable(k)
            _storable(v)
    elif isinstance(value, list | tuple):
        for v in value:
            _storable(v)
    else:  # an enum member
        _storable(str(value))


DECODERS: dict[str, Callable[[bytes], Any]] = {
    "event": lambda b: decode_event(b, CATALOG, now=NOW),
    "marker": decode_marker, "acks": decode_acks, "request": decode_request,
    "manifest_request": decode_manifest_request, "manifest_part": decode_manifest_part,
    "verify_report": decode_verify_report,
}


@pytest.mark.parametrize("kind", list(DECODERS))
@settings(max_examples=300, deadline=None)
@given(doc=st.dictionaries(st.sampled_from(["v", "msg_id", "ts", "source", "batch", "seq", "ver", "object", "action",
                                            "ref_id", "year", "parents", "data", "kind", "count", "request",
                                            "district", "acks", "request_id", "objects", "requested_by", "part",
                                            "last", "entries", "error"]), JSON, max_size=14),
       version=st.booleans())
def test_what_a_decoder_accepts_can_be_stored(kind: str, doc: dict[str, Any], version: bool) -> None:
    if version:
        doc["v"] = 1
    try:
        body = orjson.dumps(doc)
    except (orjson.JSONEncodeError, TypeError):
        body = json.dumps(doc).encode()
    try:
        decoded = DECODERS[kind](body)
    except DecodeError as e:
        assert e.code and e.desc and storable(e.desc)
        return
    _storable(decoded)


def _event(**over: Any) -> bytes:
    doc = {"v": 1, "msg_id": "A" * 32, "ts": TS, "source": "district-1", "batch": "B" * 32, "seq": 1,
           "object": "District", "action": "change", "ref_id": "C" * 32, "year": None, "parents": {}, "data": {}}
    return orjson.dumps({**doc, **over})


@settings(max_examples=300, deadline=None)
@given(ver=JSON)
def test_a_version_is_a_whole_number_a_bigint_column_holds_or_the_event_is_refused(ver: Any) -> None:
    body = json.dumps({**orjson.loads(_event()), "ver": ver}).encode()  # json: orjson refuses ints past 64 bits
    try:
        event = decode_event(body, CATALOG, now=NOW)
    except DecodeError as e:
        assert (e.code, e.msg_id) == (Code.BAD_FIELD, "A" * 32)
        return
    assert type(event.version) is int and 0 <= event.version < 2**63 and event.version == ver


def test_an_event_without_a_version_is_version_0() -> None:
    assert decode_event(_event(), CATALOG, now=NOW).version == 0
    assert decode_event(_event(ver=2**63 - 1), CATALOG, now=NOW).version == 2**63 - 1
    with pytest.raises(DecodeError):
        decode_event(_event(ver=2**63), CATALOG, now=NOW)


def test_ts_is_kept_in_one_canonical_utc_form() -> None:
    event = decode_event(_event(ts="2026-11-29T09:30:00.5+01:00"), CATALOG, now=NOW)
    assert event.ts == "2026-11-29T08:30:00.500Z"


@pytest.mark.parametrize("ts", ["9999-12-31T23:59:59Z", "zzz", "2026-11-29", "1999-12-31T23:59:59Z",
                                "2026-11-29T13:00:01Z", "2026-11-29T08:00:00"])
def test_ts_outside_the_window_or_without_an_offset_is_refused(ts: str) -> None:
    with pytest.raises(DecodeError) as e:
        decode_event(_event(ts=ts), CATALOG, now=NOW)
    assert e.value.code == Code.BAD_FIELD and e.value.msg_id == "A" * 32


def test_a_refusal_names_the_record_so_the_district_can_count_it() -> None:
    with pytest.raises(DecodeError) as e:
        decode_event(_event(ts="zzz"), CATALOG, now=NOW)
    assert (e.value.object, e.value.ref_id, e.value.batch) == ("District", "C" * 32, "B" * 32)


def test_a_body_over_the_limit_is_still_named_when_it_can_be_read() -> None:
    body = _event(data={"name": "x" * 900, "address": "y" * 900})
    with pytest.raises(DecodeError) as e:
        decode_event(body, CATALOG, max_size=1024, now=NOW)
    assert (e.value.code, e.value.msg_id, e.value.object) == (Code.TOO_LARGE, "A" * 32, "District")


@pytest.mark.parametrize("credits", [999_999_999_999.996, 999_999_999_999.995, -999_999_999_999.995, 10**12])
def test_a_decimal_that_rounds_past_its_column_is_refused(credits: float) -> None:
    body = _event(object="CourseCode", data={"credits": credits})
    with pytest.raises(DecodeError) as e:
        decode_event(body, CATALOG, now=NOW)
    assert e.value.code == Code.BAD_DATA
    assert decode_event(_event(object="CourseCode", data={"credits": 999_999_999_999.99}), CATALOG, now=NOW)


def test_the_states_words_are_kept_but_made_storable() -> None:
    pack = {"v": 1, "district": "district-1", "acks": [{"msg_id": "A" * 32, "status": "error", "error": {
        "category": 9, "code": "9.1", "desc": "a\x00b" + "é" * 3000, "extended": "\x00"}}]}
    [ack] = decode_acks(orjson.dumps(pack)).acks
    assert ack.error is not None and storable(ack.error.desc) and ack.error.desc.startswith("a\\x00b")
    assert len(ack.error.desc) <= 1000 and ack.error.extended == "\\x00"


def test_clean_spells_out_what_no_database_takes() -> None:
    assert clean("a\x00b\ud800", 100) == "a\\x00b\\ud800"
    assert clean("x" * 10, 5) == "xxxx…"
