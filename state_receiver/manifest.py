"""The state's side of verification: the manifest it answers a district with, and the reports a district
sends back when the state asked it to verify (the request itself goes out with ``requests.send_request``)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, select, update

from core.db import keyset_pages
from messages.envelope import ManifestPart, ManifestRequest, VerifyReport
from messages.manifest import pack
from state_receiver.schema import StateSchema

PART = 5_000
"""Records per manifest message: 240 KB of entries."""


def manifest_parts(
    engine: Engine, schema: StateSchema, district: str, request: ManifestRequest
) -> Iterator[ManifestPart]:
    """Every record the state holds of each requested object for ``district`` (year-scoped objects: of the
    request's year), in ref_id order, a few thousand per part; read in keyset pages, never all at once."""
    for name in dict.fromkeys(request.objects):
        if name not in schema.catalog:
            known = schema.catalog.knows(name)
            why = "is not enabled at the state" if known else "is not an object the state knows"
            yield ManifestPart(request.request, name, 0, True, "", f"{name[:64]} {why}")
            continue
        t = schema.tables[name]
        query = select(t.c.ref_id, t.c.digest).where(t.c.district_id == district)
        if schema.catalog.get(name).year_scoped:
            query = query.where(t.c.school_year == request.year)
        pages = keyset_pages(engine, query, t.c.ref_id, PART)
        page: Sequence[Any] = next(pages, [])
        for part in itertools.count():
            following = next(pages, None)  # one page ahead, to mark the last
            yield ManifestPart(request.request, name, part, following is None,
                               pack((r.ref_id, r.digest) for r in page))
            if following is None:
                break
            page = following


def store_report(conn: Connection, schema: StateSchema, district: str, report: VerifyReport, now: str) -> None:
    v = schema.verifications
    conn.execute(update(v).where(v.c.request_id == report.request_id, v.c.district_id == district).values(
        status="failed" if report.error else "completed", completed_at=now, school_year=report.year,
        result=json.dumps(report.objects), message=report.error))


def verification(engine: Engine, schema: StateSchema, request_id: str) -> dict[str, Any] | None:
    v = schema.verifications
    with engine.connect() as conn:
        row = conn.execute(select(v).where(v.c.request_id == request_id)).first()
    if row is None:
        return None
    out = dict(row._mapping)
    out["objects"] = json.loads(out["objects"]) if out["objects"] else None
    out["result"] = json.loads(out["result"]) if out["result"] else None
    return out
