"""Mandatory-resync reminders follow the configured year dates and go away once a full resync completes."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from agent.status import reminders
from agent.store import AgentStore
from core.db import engine
from core.settings import Settings


@pytest.fixture
def store(tmp_path: Path) -> AgentStore:
    s = AgentStore(engine(f"sqlite:///{tmp_path / 'district.db'}"))
    s.create()
    return s


def at(day: str) -> Settings:
    return Settings.from_env({"RESYNC_TODAY": day, "RESYNC_YEAR_END": "06-15", "RESYNC_YEAR_START": "08-20",
                              "RESYNC_REMINDER_DAYS": "30"})


@pytest.mark.parametrize(("day", "expected"), [
    ("2027-03-01", []),
    ("2027-05-20", ["end-of-year"]),
    ("2027-06-30", ["end-of-year"]),
    ("2027-07-01", ["start-of-year"]),  # rolled over: 2027-28 is now the current year
    ("2027-09-15", ["start-of-year"]),
    ("2027-09-25", []),
])
def test_reminders_follow_the_year_dates(store: AgentStore, day: str, expected: list[str]) -> None:
    found = reminders(at(day), store)
    assert [kind for kind in ("end-of-year", "start-of-year") if any(kind in line for line in found)] == expected


def test_a_completed_full_resync_satisfies_the_reminder(store: AgentStore) -> None:
    settings = at("2027-06-01")
    assert settings.school_year == 2027
    batch = store.queue_batch([], kind="full", year=2027, check_dependencies=False)
    assert reminders(settings, store)  # queued is not done
    store.set_batch(batch, status="completed", completed_at=dt.datetime(2027, 5, 30).isoformat())
    assert reminders(settings, store) == []
    partial = store.queue_batch([], kind="partial", year=2028, check_dependencies=False)
    store.set_batch(partial, status="completed", completed_at=dt.datetime(2027, 7, 2).isoformat())
    assert reminders(at("2027-07-05"), store)  # a partial resync does not count


def test_the_status_table_shows_the_reminder(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("RESYNC_")}
    env.update(RESYNC_HOME=str(tmp_path), RESYNC_TODAY="2027-06-10")
    out = subprocess.run([sys.executable, "-m", "resync", "status"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "mandatory end-of-year full resync of 2026-27 is due" in " ".join(out.stdout.split())
