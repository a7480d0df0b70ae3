"""Schema versions: a database release 0.1 made, with data in it, upgraded to this version (SQLite and
PostgreSQL); a new database stamped at the head; a revision that needs the daemons stopped is left to
`resync db upgrade`."""

from __future__ import annotations

import gzip
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, inspect, text

from core.migrations import Side, prepare, status
from messages.errors import FatalError

RELEASE_01 = Path(__file__).parent / "fixtures" / "release-0.1"


def restore(side: str, dialect: str, url: str) -> None:
    sql = gzip.decompress((RELEASE_01 / f"{side}.{dialect}.sql.gz").read_bytes()).decode()
    if dialect == "sqlite":
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            conn.executescript(sql)
    else:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]


def resync(env: dict[str, str], *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "resync", *args], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def scalar(url: str, sql: str) -> Any:
    eng = create_engine(url)
    try:
        with eng.connect() as conn:
            return conn.execute(text(sql)).scalar_one()
    finally:
        eng.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def old_site(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """A district and a state database as release 0.1 left them after `resync demo --students 1`."""
    if request.param == "sqlite":
        urls = {s: f"sqlite:///{tmp_path / f'{s}.db'}" for s in ("district", "state")}
    else:
        make = request.getfixturevalue("postgres_db")
        urls = {s: make() for s in ("district", "state")}
    for side, url in urls.items():
        restore(side, request.param, url)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RESYNC_")}
    return {**clean, "RESYNC_HOME": str(tmp_path / "home"), "RESYNC_DISTRICT_DB": urls["district"],
            "RESYNC_STATE_DB": urls["state"], "RESYNC_SCHOOL_YEAR": "2027"}


def test_a_release_01_database_with_data_is_upgraded(old_site: dict[str, str]) -> None:
    district, state = old_site["RESYNC_DISTRICT_DB"], old_site["RESYNC_STATE_DB"]
    logged = scalar(district, "SELECT count(*) FROM agent_log")
    processed = scalar(district, "SELECT sum(processed) FROM resync_batch_object")
    batches = scalar(district, "SELECT count(*) FROM resync_batch")
    answered = scalar(state, "SELECT count(*) FROM receiver_inbox")
    live = scalar(district, "SELECT count(*) FROM agent_log WHERE batch_id IS NULL")  # the demo's live changes
    assert logged > 500 and processed + live == logged == answered and batches == 1 and live > 0

    before = {r["side"]: r for r in json.loads(resync(old_site, "db", "status", "--json"))}
    assert (before["district"]["current"], before["district"]["pending"]) == ("0001", ["0002", "0003"])
    assert (before["state"]["current"], before["state"]["pending"]) == ("0001", ["0002", "0003", "0004", "0005"])
    upgraded = resync(old_site, "db", "upgrade")
    assert "district: ran 0002, 0003" in upgraded and "state: ran 0002, 0003, 0004, 0005" in upgraded
    after = {r["side"]: r for r in json.loads(resync(old_site, "db", "status", "--json"))}
    assert all(r["current"] == r["head"] and r["pending"] == [] for r in after.values()), after
    assert "district: up to date" in resync(old_site, "db", "upgrade")

    eng = create_engine(district)
    indexes = {i["name"] for i in inspect(eng).get_indexes("agent_log")}
    eng.dispose()
    assert {"ix_agent_log_batch_id", "ix_agent_log_object_id", "ix_agent_log_errors", "ux_agent_log_record",
            "ux_agent_log_msg_id"} <= indexes
    if state.startswith("postgresql"):  # room on each page for the next resync's versions of the rows
        assert scalar(state, "SELECT reloptions FROM pg_class WHERE relname = 'school'") == ["fillfactor=50"]
    # the data is all there, and the commands read it as before
    assert scalar(district, "SELECT count(*) FROM agent_log") == logged
    assert sum(r["processed"] for r in json.loads(resync(old_site, "status", "--json"))) == processed
    assert len(json.loads(resync(old_site, "history", "--json"))) == batches
    assert len(json.loads(resync(old_site, "log", "--json", "--limit", "100000"))) == logged
    seen = json.loads(resync(old_site, "district-status", "--district", "district-1", "--json"))
    # batches only, as before: counted from the inbox by the upgrade
    assert sum(r["processed"] for r in seen["objects"]) == processed
    # and what this version added works on it: a console user, a new batch
    out = subprocess.run([sys.executable, "-m", "resync", "users", "add", "ada", "--role", "admin",
                          "--password-stdin"], env=old_site, input="long enough\n", capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_a_new_database_is_stamped_at_the_head(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESYNC_")} | {"RESYNC_HOME": str(tmp_path)}
    resync(env, "status", "--json")  # any command makes its side's tables
    resync(env, "district-status", "--district", "district-1", "--json")
    rows = json.loads(resync(env, "db", "status", "--json"))
    assert [(r["side"], r["current"] == r["head"], r["pending"]) for r in rows] == [("district", True, []),
                                                                                    ("state", True, [])]


def test_a_revision_that_needs_the_daemons_stopped_waits_for_db_upgrade(tmp_path: Path) -> None:
    versions = tmp_path / "scripts" / "versions"
    versions.mkdir(parents=True)
    (versions / "0001_base.py").write_text('revision = "0001"\ndown_revision = None\n\n\ndef upgrade():\n    pass\n')
    (versions / "0002_rewrite.py").write_text(
        'from alembic import op\nimport sqlalchemy as sa\nrevision = "0002"\ndown_revision = "0001"\n'
        'safe_online = False\n\n\ndef upgrade():\n    op.add_column("thing", sa.Column("extra", sa.Integer))\n')
    side = Side("test", tmp_path / "scripts", "test_schema", "thing")
    eng = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with eng.begin() as conn:
        conn.execute(text("CREATE TABLE thing (id INTEGER PRIMARY KEY)"))  # as release 0.1 left it
        conn.execute(text("INSERT INTO thing VALUES (1)"))
    with pytest.raises(FatalError, match=r"revision 0002 must run with the daemons stopped: run `resync db upgrade`"):
        prepare(eng, side, [])
    assert status(eng, side).pending == ["0002"]
    assert prepare(eng, side, [], offline=True) == ["0002"]
    assert status(eng, side).current == "0002"
    with eng.connect() as conn:
        assert conn.execute(text("SELECT id, extra FROM thing")).all() == [(1, None)]
    eng.dispose()
