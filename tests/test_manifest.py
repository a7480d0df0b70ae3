"""The manifest merge against plain set arithmetic, the digest's stability, and the new messages' codec."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.db import engine
from messages import catalog as catalog_mod
from messages.codec import (
    decode_manifest_part,
    decode_manifest_request,
    decode_marker,
    decode_verify_report,
    encode_manifest_part,
    encode_manifest_request,
    encode_marker,
    encode_verify_report,
)
from messages.envelope import ManifestPart, ManifestRequest, Marker, MarkerKind, VerifyReport, new_id, now_ts
from messages.errors import Code, DecodeError
from messages.manifest import (
    DISTRICT_ONLY,
    MISMATCHED,
    STATE_ONLY,
    UNKNOWN_DIGEST,
    Comparison,
    OrderError,
    compare,
    pack,
    record_digest,
    unpack,
)
from state_receiver.manifest import PART, manifest_parts
from state_receiver.schema import StateSchema

CATALOG = catalog_mod.load()
refs = st.sets(st.integers(0, 400), max_size=120).map(lambda s: sorted(f"{i:032X}" for i in s))


def run(district: list[tuple[str, str, bool]],
        state: list[tuple[str, str | None]]) -> tuple[Comparison, dict[str, set[str]]]:
    found: dict[str, set[str]] = {DISTRICT_ONLY: set(), STATE_ONLY: set(), MISMATCHED: set()}
    result = Comparison("X")
    compare(district, [pack(state[:3]), pack(state[3:])], result, lambda kind, ref: found[kind].add(ref))
    return result, found


@given(refs, refs, st.data())
def test_the_merge_finds_exactly_what_set_arithmetic_finds(ours: list[str], theirs: list[str],
                                                           data: st.DataObject) -> None:
    both = set(ours) & set(theirs)
    changed = set(data.draw(st.sets(st.sampled_from(sorted(both))) if both else st.just(set())))
    refused = set(data.draw(st.sets(st.sampled_from(ours)) if ours else st.just(set()))) - set(theirs)
    district = [(r, "1" * 16, r in refused) for r in ours]
    state = [(r, "2" * 16 if r in changed else "1" * 16) for r in theirs]
    result, found = run(district, state)
    assert found[DISTRICT_ONLY] == set(ours) - set(theirs) - refused
    assert found[STATE_ONLY] == set(theirs) - set(ours)
    assert found[MISMATCHED] == changed
    assert (result.district, result.state, result.excluded) == (len(ours), len(theirs), len(refused))
    assert result.differences == sum(map(len, found.values()))
    assert result.recommended == (result.differences > 0)


def test_a_record_stored_before_digests_were_kept_never_matches() -> None:
    ref = "A" * 32
    _, found = run([(ref, "0" * 16, False)], [(ref, None)])
    assert found[MISMATCHED] == {ref}
    assert list(unpack(pack([(ref, None)]))) == [(ref, UNKNOWN_DIGEST)]


def test_manifests_out_of_ref_id_order_are_refused() -> None:
    with pytest.raises(OrderError, match="state's manifest"):
        run([], [("B" * 32, "1" * 16), ("A" * 32, "1" * 16)])
    with pytest.raises(OrderError, match="district's records"):
        run([("B" * 32, "1" * 16, False), ("A" * 32, "1" * 16, False)], [])


def test_the_digest_ignores_key_order_and_absent_keys_but_not_content() -> None:
    obj = CATALOG.get("Enrollment")
    parents = {"PersonIdentity": "A" * 32, "Calendar": "B" * 32}
    data = {"grade": "05", "start_date": "2026-08-15", "state_exclude": False}
    base = record_digest(obj, 2027, parents, data)
    assert record_digest(obj, 2027, dict(reversed(parents.items())), dict(reversed(data.items()))) == base
    assert record_digest(obj, 2027, parents, {**data, "end_date": None}) == base
    assert record_digest(obj, 2027, parents, {**data, "grade": "06"}) != base
    assert record_digest(obj, 2026, parents, data) != base
    assert record_digest(obj, 2027, {**parents, "Calendar": "C" * 32}, data) != base
    person = CATALOG.get("PersonIdentity")  # not tied to a year: the year does not count
    assert record_digest(person, 2026, {}, {}) == record_digest(person, None, {}, {})


def test_new_messages_round_trip() -> None:
    request = ManifestRequest(new_id(), now_ts(), "district-1", new_id(), ["District", "School"], 2027)
    assert decode_manifest_request(encode_manifest_request(request)) == request
    part = ManifestPart(new_id(), "School", 3, True, pack([("A" * 32, "0123456789abcdef")]), None)
    assert decode_manifest_part(encode_manifest_part(part)) == part
    result = {**Comparison("School", state=1, state_only=1).as_dict(), "details": {"state_only": ["A" * 32]}}
    report = VerifyReport(new_id(), now_ts(), "district-1", new_id(), 2027, [result])
    assert decode_verify_report(encode_verify_report(report)) == report
    marker = Marker(new_id(), now_ts(), "district-1", new_id(), MarkerKind.BATCH_END, delta=True)
    assert decode_marker(encode_marker(marker)).delta is True
    plain = Marker(new_id(), now_ts(), "district-1", new_id(), MarkerKind.BATCH_END)
    assert b"delta" not in encode_marker(plain) and decode_marker(encode_marker(plain)).delta is False


def test_a_torn_manifest_part_is_refused_with_a_code() -> None:
    part = ManifestPart(new_id(), "School", 0, True, "A" * 40)
    with pytest.raises(DecodeError) as e:
        decode_manifest_part(encode_manifest_part(part))
    assert e.value.code == Code.BAD_FIELD


@pytest.mark.parametrize("records", [0, 4_999, 10_000, 12_345])
def test_the_state_sends_its_manifest_in_parts_in_ref_id_order(tmp_path: Path, records: int) -> None:
    schema = StateSchema(CATALOG)
    eng = engine(f"sqlite:///{tmp_path / 'state.db'}")
    schema.create(eng)
    row = {"district_id": "district-1", "last_msg_id": "0" * 32, "source_ts": "t", "applied_at": "t"}
    with eng.begin() as conn:
        for district in ("district-1", "district-2") if records else ():
            conn.execute(schema.tables["District"].insert(), [
                {**row, "district_id": district, "ref_id": f"{i:032X}", "digest": f"{i:016x}"}
                for i in range(records, 0, -1)])
    request = ManifestRequest(new_id(), now_ts(), "district-1", new_id(), ["District"], 2027)
    parts = list(manifest_parts(eng, schema, "district-1", request))
    assert [p.part for p in parts] == list(range(max(1, -(-records // PART))))
    assert [p.last for p in parts] == [False] * (len(parts) - 1) + [True]
    entries = [e for p in parts for e in unpack(p.entries)]
    assert entries == [(f"{i:032X}", f"{i:016x}") for i in range(1, records + 1)]
