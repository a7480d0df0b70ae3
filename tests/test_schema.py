"""A database an older version created gets the columns this version added, on both backends."""

from __future__ import annotations

from sqlalchemy import Engine, inspect, text

from agent.store import AgentStore


def test_an_older_agent_database_gets_the_new_nullable_columns_and_keeps_its_rows(db: Engine) -> None:
    store = AgentStore(db)
    store.create()
    with db.begin() as conn:
        conn.execute(text("ALTER TABLE resync_batch DROP COLUMN max_rate"))
    assert "max_rate" not in {c["name"] for c in inspect(db).get_columns("resync_batch")}
    with db.begin() as conn:
        conn.execute(text("INSERT INTO resync_batch (batch_id, kind, initiator, requested_by, school_year, "
                          "check_dependencies, status, created_at) VALUES ('B1', 'full', 'district', 'x', 2027, "
                          "false, 'completed', '2026-11-29T08:00:00.000Z')"))

    store.create()

    assert "max_rate" in {c["name"] for c in inspect(db).get_columns("resync_batch")}
    kept = store.batch("B1")
    assert kept is not None and kept["status"] == "completed" and kept["max_rate"] is None
    capped = store.queue_batch([], kind="full", year=2027, check_dependencies=False, max_rate=500)
    assert (store.batch(capped) or {})["max_rate"] == 500
