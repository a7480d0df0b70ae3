"""What the agent's store reports while a batch runs (on SQLite and PostgreSQL)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine

from agent.store import AgentStore, PlannedObject


def test_awaiting_ack_is_never_negative(db: Engine) -> None:
    """``sent`` is written at checkpoints and answers as they come, so mid-batch the answers can be ahead."""
    store = AgentStore(db)
    store.create()
    batch_id = store.queue_batch([PlannedObject("School", 10), PlannedObject("Calendar", 10)], kind="partial",
                                 year=2027, check_dependencies=True)
    store.set_batch(batch_id, status="running")
    store.set_object(batch_id, "School", sent=4, processed=7)
    store.set_object(batch_id, "Calendar", sent=2, processed=0)
    [row] = store.in_flight()
    assert (row["sent"], row["processed"], row["awaiting_ack"]) == (6, 7, 0)
    store.set_object(batch_id, "School", sent=10, processed=7)
    assert store.in_flight()[0]["awaiting_ack"] == 5


def test_the_log_pages_by_id(db: Engine) -> None:
    from agent.tables import agent_log

    store = AgentStore(db)
    store.create()
    with db.begin() as conn:
        conn.execute(agent_log.insert(), [
            {"msg_id": f"{i:032X}", "batch_id": None, "object": "School" if i % 2 else "Calendar",
             "ref_id": f"{i:032X}", "status": "error" if i % 3 == 0 else "ok", "logged_at": "2026-12-06T00:00:00Z"}
            for i in range(1, 101)])
    seen: list[int] = []
    before = None
    while True:
        page = store.log(obj="School", errors_only=True, limit=5, before=before)
        if not page:
            break
        seen += [r["id"] for r in page]
        before = page[-1]["id"]
    every = [r["id"] for r in store.log(limit=1000)]
    wanted = [i for i in every if i % 2 and i % 3 == 0]  # ids follow insertion order from 1
    assert seen == wanted and len(seen) == len(set(seen)) == 17


def test_a_selective_batch_is_never_seen_without_its_records(db: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon takes a queued batch at once: it must never find a selective batch whose chosen records are not
    written yet (it would send none of them and call the batch complete)."""
    from agent import selection

    store = AgentStore(db)
    store.create()
    seen_meanwhile = []
    write = selection.insert_many

    def watched(conn: Any, table: Any, rows: Any, **kw: Any) -> Any:
        seen_meanwhile.append(AgentStore(db).next_batch())  # another connection: what the daemon sees now
        return write(conn, table, rows, **kw)

    monkeypatch.setattr(selection, "insert_many", watched)
    batch_id = selection.queue(store, {"School": ["A" * 32, "B" * 32], "Calendar": ["C" * 32]}, year=2027)
    assert seen_meanwhile == [None, None]
    assert (store.next_batch() or {}).get("batch_id") == batch_id
    assert [r for c in selection.chunks(db, batch_id, "School", "") for r in c] == ["A" * 32, "B" * 32]
