"""The verification messages: the district's manifest request, the state's manifest parts, and the
district's report of a verification the state asked for."""

from __future__ import annotations

import re
from typing import Any

import orjson

from messages.envelope import REFID, VERSION, ManifestPart, ManifestRequest, VerifyReport
from messages.manifest import DIFFERENCES, ENTRY
from messages.validate import MAX_INT, MAX_MESSAGE, MAX_NOTICE, MAX_OBJECTS, MAX_REPORT, MAX_TEXT, Fields, load

_PACKED = re.compile(r"\A[0-9A-Fa-f-]*\Z")


def encode_manifest_request(r: ManifestRequest) -> bytes:
    return orjson.dumps({"v": VERSION, "msg_id": r.msg_id, "ts": r.ts, "source": r.source, "request": r.request,
                         "objects": r.objects, "year": r.year})


def decode_manifest_request(body: bytes, *, message_id: str | None = None) -> ManifestRequest:
    f = Fields(load(body, MAX_NOTICE), message_id)
    return ManifestRequest(f.refid("msg_id"), f.timestamp(), f.source(), f.refid("request"), f.names("objects"),
                           f.year())


def encode_manifest_part(p: ManifestPart) -> bytes:
    return orjson.dumps({"v": VERSION, "request": p.request, "object": p.object, "part": p.part, "last": p.last,
                         "entries": p.entries, "error": p.error})


def decode_manifest_part(body: bytes) -> ManifestPart:
    f = Fields(load(body, MAX_MESSAGE))
    entries = f.get("entries", str)
    if len(entries) % ENTRY or not _PACKED.match(entries):
        f.bad(f"manifest entries are not a whole number of {ENTRY}-character hex entries")
    return ManifestPart(f.refid("request"), f.object_name("object"), f.integer("part", 0, MAX_INT),
                        f.get("last", bool), entries, f.free_text("error", MAX_TEXT, nullable=True))


def encode_verify_report(r: VerifyReport) -> bytes:
    return orjson.dumps({"v": VERSION, "msg_id": r.msg_id, "ts": r.ts, "source": r.source,
                         "request_id": r.request_id, "year": r.year, "objects": r.objects, "error": r.error})


_COUNTS = ("district", "state", "district_only", "state_only", "mismatched", "excluded", "differences")
REPORT_REFS = 100
"""Ref_ids a verify report names per object and kind of difference."""


def _report_object(f: Fields, raw: Any) -> dict[str, Any]:
    """One object's result, rebuilt from known keys only: what the state files is what it checked."""
    if not isinstance(raw, dict):
        f.bad("'objects' must be a list of per-object results")
    o = Fields(raw, f.msg_id)
    out: dict[str, Any] = {"object": o.object_name("object")}
    for key in _COUNTS:
        out[key] = o.integer(key, 0, MAX_INT) if key in raw else 0
    out["error"] = o.free_text("error", MAX_TEXT, nullable=True) if "error" in raw else None
    out["resync_recommended"] = o.get("resync_recommended", bool) if "resync_recommended" in raw else False
    details = o.get("details", dict) if "details" in raw else {}
    if not set(details) <= set(DIFFERENCES) or not all(
            isinstance(v, list) and len(v) <= REPORT_REFS and all(isinstance(r, str) and REFID.match(r) for r in v)
            for v in details.values()):
        f.bad(f"'details' must map {', '.join(DIFFERENCES)} to at most {REPORT_REFS} RefIds each")
    out["details"] = details
    return out


def decode_verify_report(body: bytes, *, message_id: str | None = None) -> VerifyReport:
    f = Fields(load(body, MAX_REPORT), message_id)
    raw = f.get("objects", list)
    if len(raw) > MAX_OBJECTS:
        f.bad(f"'objects' must be a list of at most {MAX_OBJECTS} per-object results")
    objects = [_report_object(f, o) for o in raw]
    error = f.free_text("error", MAX_TEXT, nullable=True) if "error" in f.doc else None
    return VerifyReport(f.refid("msg_id"), f.timestamp(), f.source(), f.refid("request_id"), f.year(), objects,
                        error)
