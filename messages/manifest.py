"""What a record says, as a short digest both sides compute alike, and the comparison of two manifests.

A manifest lists, for one object, every record's ``ref_id`` and digest in ``ref_id`` order. The state
keeps each record's digest as it applies it; the district computes it from its own rows. Comparing
the two sorted lists in one merge holds one part of the state's manifest at a time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from messages.catalog import ObjectDef
from messages.errors import FatalError
from messages.fields import fields

REF, DIGEST = 32, 16
ENTRY = REF + DIGEST
UNKNOWN_DIGEST = "-" * DIGEST
"""The digest the state reports for a record stored before it kept digests: it never matches."""

DISTRICT_ONLY, STATE_ONLY, MISMATCHED = "district_only", "state_only", "mismatched"
DIFFERENCES = (DISTRICT_ONLY, STATE_ONLY, MISMATCHED)


def record_digest(obj: ObjectDef, year: int | None, parents: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    """The digest of a record's content as it travels (wire values): its year, parents and fields, in the
    catalog's order, so neither key order nor absent keys change it."""
    return values_digest(year if obj.year_scoped else None, [parents.get(p) for p in obj.references],
                         [data.get(name) for name, _ in fields(obj.name)])


def values_digest(year: int | None, parents: list[Any], values: list[Any]) -> str:
    """``record_digest`` of values already in the catalog's order (``year`` None unless year-scoped)."""
    return hashlib.blake2b(orjson.dumps([year, parents, values]), digest_size=DIGEST // 2).hexdigest()


def pack(entries: Iterable[tuple[str, str | None]]) -> str:
    return "".join(ref + (digest or UNKNOWN_DIGEST) for ref, digest in entries)


def unpack(packed: str) -> Iterator[tuple[str, str]]:
    for i in range(0, len(packed), ENTRY):
        yield packed[i : i + REF], packed[i + REF : i + ENTRY]


@dataclass
class Comparison:
    """One object, district against state."""

    object: str
    district: int = 0
    state: int = 0
    district_only: int = 0
    state_only: int = 0
    mismatched: int = 0
    excluded: int = 0
    """District records the state refuses (state-excluded, or under such a record) and does not hold."""
    error: str | None = None

    @property
    def differences(self) -> int:
        return self.district_only + self.state_only + self.mismatched

    @property
    def recommended(self) -> bool:
        return self.differences > 0 or self.error is not None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "differences": self.differences, "resync_recommended": self.recommended}


class OrderError(FatalError):
    """A manifest is not in ``ref_id`` order, so it cannot be merged."""


Sink = Callable[[str, str], None]
"""Told each difference: its kind and the record's ref_id."""


def compare(district: Iterable[tuple[str, str, bool]], state: Iterable[str], result: Comparison, sink: Sink) -> None:
    """Merge the district's records (ref_id, digest, refused by the state) with the state's manifest (packed
    parts, in order), both in ref_id order; count into ``result`` and tell ``sink`` each difference. Holds one
    part of the state's manifest at a time."""
    theirs = iter(_entries(state, result.object))
    current, digest = next(theirs, (None, ""))
    last_district = ""
    for ref, mine, refused in district:
        if ref <= last_district:
            raise OrderError(f"{result.object}: the district's records are not in ref_id order at {ref}")
        last_district = ref
        result.district += 1
        while current is not None and current < ref:
            result.state += 1
            result.state_only += 1
            sink(STATE_ONLY, current)
            current, digest = next(theirs, (None, ""))
        if current == ref:
            result.state += 1
            if digest != mine:
                result.mismatched += 1
                sink(MISMATCHED, ref)
            current, digest = next(theirs, (None, ""))
        elif refused:
            result.excluded += 1
        else:
            result.district_only += 1
            sink(DISTRICT_ONLY, ref)
    while current is not None:
        result.state += 1
        result.state_only += 1
        sink(STATE_ONLY, current)
        current, digest = next(theirs, (None, ""))


def _entries(parts: Iterable[str], name: str) -> Iterator[tuple[str | None, str]]:
    last = ""
    for packed in parts:
        for ref, digest in unpack(packed):
            if ref <= last:
                raise OrderError(f"{name}: the state's manifest is not in ref_id order at {ref}")
            last = ref
            yield ref, digest
