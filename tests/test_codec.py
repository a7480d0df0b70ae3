"""Encoding and strict decoding: round trips, and every malformed body's SIF category and code."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from messages import catalog as catalog_mod
from messages.codec import (
    decode_acks,
    decode_event,
    decode_marker,
    decode_request,
    encode_acks,
    encode_event,
    encode_marker,
    encode_request,
)
from messages.envelope import (
    Ack,
    AckPack,
    Action,
    ErrorInfo,
    Event,
    Marker,
    MarkerKind,
    ResyncRequest,
    new_id,
    stable_id,
)
from messages.errors import Category, Code, DecodeError

CATALOG = catalog_mod.load()
MSG_ID = "0123456789ABCDEF0123456789ABCDEF"


def _event(**changes: Any) -> Event:
    values: dict[str, Any] = dict(
        msg_id=MSG_ID, ts="2024-09-01T08:00:00.000Z", source="district-1", batch=new_id(), seq=7,
        object="Enrollment", action=Action.ADD, ref_id=new_id(), year=2025,
        parents={"PersonIdentity": new_id(), "Calendar": new_id()},
        data={"grade": "05", "start_date": "2024-08-20", "end_date": None, "service_type": "P",
              "start_status": "01", "state_exclude": False},
    )
    values.update(changes)
    return Event(**values)


def _doc(**changes: Any) -> dict[str, Any]:
    """A valid event body as a dict, with top-level keys replaced (or removed when the value is ...)."""
    doc = orjson.loads(encode_event(_event()))
    for key, value in changes.items():
        if value is ...:
            del doc[key]
        else:
            doc[key] = value
    return doc


def _with_data(**data: Any) -> dict[str, Any]:
    return _doc(data={**_doc()["data"], **data})


def _decode_error(body: bytes, **kw: Any) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode_event(body, CATALOG, **kw)
    return info.value


# events -------------------------------------------------------------------------------------


@pytest.mark.parametrize("event", [
    _event(),
    _event(batch=None),
    _event(action=Action.DELETE, data={}),
    _event(object="Roster", parents={"Enrollment": new_id(), "Calendar": new_id(),
                                     "StructureGradeLevel": new_id()},
           data={"course_number": "MATH1", "section_number": 3, "start_date": "2024-08-20"}),
    _event(object="District", year=None, parents={}, data={"name": "Springfield"}),
], ids=["enrollment", "no-batch", "delete", "roster", "district"])
def test_event_round_trip(event: Event) -> None:
    assert decode_event(encode_event(event), CATALOG) == event


def test_year_is_dropped_for_an_object_not_tied_to_a_school_year() -> None:
    event = _event(object="District", year=2025, parents={}, data={})
    assert decode_event(encode_event(event), CATALOG).year is None


def _json(doc: Any) -> bytes:
    return orjson.dumps(doc)


NESTED = b'{"v":1,"msg_id":"' + MSG_ID.encode() + b'","data":{"x":' + b"[" * 5000 + b"]" * 5000 + b"}}"

MALFORMED: list[tuple[str, bytes, Category, str]] = [
    ("not-json", b'{"v": 1, ', Category.GENERIC_MESSAGE, Code.NOT_JSON),
    ("json-list", b"[1, 2]", Category.GENERIC_MESSAGE, Code.NOT_OBJECT),
    ("bad-version", _json(_doc(v=2)), Category.GENERIC_MESSAGE, Code.BAD_VERSION),
    ("version-true", _json(_doc(v=True)), Category.GENERIC_MESSAGE, Code.BAD_VERSION),
    ("no-version", _json(_doc(v=...)), Category.GENERIC_MESSAGE, Code.MISSING_FIELD),
    ("no-msg-id", _json(_doc(msg_id=...)), Category.GENERIC_MESSAGE, Code.MISSING_FIELD),
    ("lowercase-msg-id", _json(_doc(msg_id=MSG_ID.lower())), Category.VALIDATION, Code.BAD_REFID),
    ("short-lower-ref-id", _json(_doc(ref_id="a" * 31)), Category.VALIDATION, Code.BAD_REFID),
    ("unknown-object", _json(_doc(object="Enrolment")), Category.VALIDATION, Code.UNKNOWN_OBJECT),
    ("disabled-object", _json(_doc(object="ReportingEntity")), Category.VALIDATION, Code.OBJECT_DISABLED),
    ("unknown-action", _json(_doc(action="upsert")), Category.VALIDATION, Code.UNKNOWN_ACTION),
    ("data-list", _json(_doc(data=[])), Category.VALIDATION, Code.BAD_FIELD),
    ("seq-string", _json(_doc(seq="7")), Category.VALIDATION, Code.BAD_FIELD),
    ("seq-bool", _json(_doc(seq=True)), Category.VALIDATION, Code.BAD_FIELD),
    ("data-unknown-key", _json(_with_data(shoe_size="9")), Category.VALIDATION, Code.BAD_DATA),
    ("data-int-for-str", _json(_with_data(grade=5)), Category.VALIDATION, Code.BAD_DATA),
    ("data-bad-date", _json(_with_data(start_date="yesterday")), Category.VALIDATION, Code.BAD_DATA),
    ("data-int-for-bool", _json(_with_data(state_exclude=1)), Category.VALIDATION, Code.BAD_DATA),
    ("missing-parent", _json(_doc(parents={"PersonIdentity": new_id()})), Category.VALIDATION, Code.BAD_REFID),
    ("bad-parent", _json(_doc(parents={"PersonIdentity": new_id(), "Calendar": "x"})),
     Category.VALIDATION, Code.BAD_REFID),
    ("extra-parent", _json(_doc(parents={"PersonIdentity": new_id(), "Calendar": new_id(), "School": new_id()})),
     Category.VALIDATION, Code.BAD_FIELD),
    ("no-year", _json(_doc(year=None)), Category.VALIDATION, Code.BAD_YEAR),
    ("bad-utf8", b'{"v": 1, "x": "\xff\xfe"}', Category.GENERIC_MESSAGE, Code.BAD_ENCODING),
    ("deeply-nested", NESTED, Category.GENERIC_MESSAGE, Code.NOT_JSON),
]


@pytest.mark.parametrize("body, category, code", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_event(body: bytes, category: Category, code: str) -> None:
    err = _decode_error(body)
    assert (err.category, err.code) == (category, code)
    assert err.desc


def test_deeply_nested_json_is_a_decode_error_not_a_recursion_error() -> None:
    with pytest.raises(DecodeError):
        decode_event(NESTED, CATALOG)


def test_body_over_max_size() -> None:
    event = _event()
    body = encode_event(event)
    err = _decode_error(body, max_size=len(body) - 1)
    assert (err.category, err.code) == (Category.GENERIC_MESSAGE, Code.TOO_LARGE)
    assert decode_event(body, CATALOG, max_size=len(body)) == event


def test_delete_needs_no_parents_and_ignores_data() -> None:
    body = _json(_doc(action="delete", parents={}, data={"anything": [1]}))
    event = decode_event(body, CATALOG)
    assert event.action is Action.DELETE and event.data == {}


@pytest.mark.parametrize("mutate", [
    lambda d: d.update(action="upsert"),
    lambda d: d.update(v=2),
    lambda d: d.pop("seq"),
    lambda d: d["data"].update(grade=5),
], ids=["unknown-action", "bad-version", "missing-field", "bad-data"])
def test_decode_error_carries_a_valid_msg_id(mutate: Callable[[dict[str, Any]], Any]) -> None:
    doc = _doc()
    mutate(doc)
    assert _decode_error(_json(doc)).msg_id == MSG_ID


@pytest.mark.parametrize("body", [
    b"not json",
    b"[]",
    _json(_doc(msg_id=MSG_ID.lower(), action="upsert")),
    _json(_doc(msg_id=..., action="upsert")),
    _json(_doc(msg_id=12, action="upsert")),
], ids=["not-json", "not-object", "lowercase-msg-id", "no-msg-id", "int-msg-id"])
def test_decode_error_msg_id_is_none_without_a_valid_one(body: bytes) -> None:
    assert _decode_error(body).msg_id is None


def test_week_date_is_not_a_contract_date() -> None:
    err = _decode_error(_json(_with_data(start_date="2024-W01-1")))
    assert err.code == Code.BAD_DATA


# acks, markers, requests --------------------------------------------------------------------


def test_acks_round_trip() -> None:
    pack = AckPack("district-1", [
        Ack(new_id(), "ok", object="Enrollment", ref_id=new_id(), batch=new_id()),
        Ack(new_id(), "error", ErrorInfo(Category.EVENT_PROCESSING, Code.PARENT_MISSING, "no such parent",
                                         "Calendar 0000"), object="Enrollment", ref_id=new_id(), batch=None),
        Ack(new_id(), "error", ErrorInfo(Category.GENERIC_MESSAGE, Code.NOT_JSON, "not JSON")),
    ])
    decoded = decode_acks(encode_acks(pack))
    assert decoded == pack
    assert [a.ok for a in decoded.acks] == [True, False, False]


@pytest.mark.parametrize("doc, code", [
    ({"v": 1, "district": "d", "acks": [{"msg_id": MSG_ID, "status": "maybe"}]}, Code.BAD_FIELD),
    ({"v": 1, "district": "d", "acks": ["x"]}, Code.BAD_FIELD),
    ({"v": 1, "district": "d", "acks": [{"msg_id": MSG_ID, "status": "error"}]}, Code.MISSING_FIELD),
    ({"v": 1, "acks": []}, Code.MISSING_FIELD),
], ids=["bad-status", "ack-not-object", "error-without-info", "no-district"])
def test_malformed_acks(doc: dict[str, Any], code: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_acks(_json(doc))
    assert info.value.code == code


@pytest.mark.parametrize("marker", [
    Marker(new_id(), "2024-09-01T08:00:00.000Z", "district-1", new_id(), MarkerKind.BATCH_START),
    Marker(new_id(), "2024-09-01T08:00:00.000Z", "district-1", new_id(), MarkerKind.OBJECT_END,
           "Enrollment", 2025, 1200),
    Marker(new_id(), "2024-09-01T08:00:00.000Z", "district-1", new_id(), MarkerKind.BATCH_END, count=5000),
], ids=lambda m: m.kind.value)
def test_marker_round_trip(marker: Marker) -> None:
    assert decode_marker(encode_marker(marker)) == marker


def test_marker_with_unknown_kind() -> None:
    doc = orjson.loads(encode_marker(Marker(MSG_ID, "t", "s", new_id(), MarkerKind.BATCH_END)))
    doc["kind"] = "batch_middle"
    with pytest.raises(DecodeError) as info:
        decode_marker(_json(doc))
    assert (info.value.code, info.value.msg_id) == (Code.BAD_FIELD, MSG_ID)


@pytest.mark.parametrize("objects", [None, ["Enrollment", "Roster"]], ids=["all", "some"])
def test_request_round_trip(objects: list[str] | None) -> None:
    request = ResyncRequest(new_id(), "2024-09-01T08:00:00.000Z", "state", new_id(), objects, "2025", "alice")
    assert decode_request(encode_request(request)) == request


def test_request_objects_must_be_names() -> None:
    request = ResyncRequest(MSG_ID, "t", "state", new_id(), ["Enrollment"], "2025", "alice")
    doc = orjson.loads(encode_request(request))
    doc["objects"] = ["Enrollment", 3]
    with pytest.raises(DecodeError) as info:
        decode_request(_json(doc))
    assert (info.value.category, info.value.code) == (Category.VALIDATION, Code.BAD_FIELD)


@given(st.lists(st.text(st.characters(exclude_categories=("Cs",)), max_size=40), min_size=1, max_size=4))
def test_stable_id_is_the_uuid5_of_its_parts(parts: list[str]) -> None:
    assert stable_id(*parts) == uuid.uuid5(uuid.NAMESPACE_OID, "/".join(parts)).hex.upper()
