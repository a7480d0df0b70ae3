"""The ``resync`` command line as users run it: a subprocess on the embedded default (SQLite files in a
temporary RESYNC_HOME and the in-process broker), asserting only on stdout, stderr, exit codes and JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

YEAR = "2027"
HANG_GUARD = 300  # seconds; only stops a hung command, never asserted on


def run(home: Path, *args: str, input: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RESYNC_")}  # drops RESYNC_BROKER_URL too
    clean.update(RESYNC_HOME=str(home), **env)
    return subprocess.run([sys.executable, "-m", "resync", *args], env=clean, capture_output=True, text=True,
                          timeout=HANG_GUARD, input=input)


def ok(home: Path, *args: str, input: str | None = None, **env: str) -> str:
    out = run(home, *args, input=input, **env)
    assert out.returncode == 0, out.stderr
    return out.stdout


def ok_json(home: Path, *args: str, **env: str) -> Any:
    return json.loads(ok(home, *args, **env))


def error_line(out: subprocess.CompletedProcess[str]) -> str:
    """The single ``error: ...`` line a failed command prints."""
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error:"), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A home with a 50-student district for 2027, and what ``seed --json`` printed."""
    home = tmp_path_factory.mktemp("seeded")
    return home, ok_json(home, "seed", "--students", "50", "--year", YEAR, "--json")


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """A home after one ``resync demo --students 60`` for school year 2027, and that run's output."""
    home = tmp_path_factory.mktemp("demo")
    out = run(home, "demo", "--students", "60", RESYNC_SCHOOL_YEAR=YEAR)
    assert out.returncode == 0, out.stderr
    return home, out


# 1. bad arguments: one "error:" line that says how to mend it ------------------------------------------


@pytest.mark.parametrize(("args", "hint"), [
    (["send", "Enrolment"], "Enrollment"),
    (["send"], "--all"),
    (["send", "--all", "Enrollment"], "either --all or object names"),
    (["status", "--bogus"], "--help"),
    (["seed", "--students", "0"], "1<=x"),
    (["--district", "Bad Id!", "status"], "lowercase letters, digits"),
    (["agent", "run"], "RESYNC_BROKER_URL"),
    (["send", "--all", "--max-rate", "0"], "1<=x"),
    (["verify", "Enrolment"], "Enrollment"),
    (["verify", "--district", "district-2", "--year", "2027"], "current, previous or next"),
    (["verify", "--district", "district-2"], "RESYNC_BROKER_URL"),
    (["send", "School", "--ref-id", "zz"], "32 hexadecimal digits"),
    (["send", "School", "--cascade"], "--cascade goes with --ref-id"),
    (["send", "School", "District", "--ref-id", "A" * 32], "exactly one OBJECT"),
    (["send", "--all", "--ref-id", "A" * 32], "exactly one OBJECT"),
    (["send", "School", "--ref-id", "A" * 32], "resync seed"),
], ids=["unknown-object", "no-objects", "all-and-names", "unknown-option", "zero-students", "bad-district",
        "agent-no-broker", "zero-rate", "verify-unknown-object", "state-verify-year", "state-verify-no-broker",
        "ref-id-not-a-refid", "cascade-without-ref-id", "ref-id-two-objects", "ref-id-with-all",
        "ref-id-unseeded"])
def test_bad_arguments_print_one_error_line(tmp_path: Path, args: list[str], hint: str) -> None:
    assert hint in error_line(run(tmp_path, *args))


def test_seed_twice_needs_reset(seeded: tuple[Path, dict[str, Any]]) -> None:
    home, _ = seeded
    assert "--reset" in error_line(run(home, "seed", "--students", "50", "--year", YEAR))


# 2. seed and dry-run plans -------------------------------------------------------------------------------


def test_seed_json(seeded: tuple[Path, dict[str, Any]]) -> None:
    _, counts = seeded
    assert counts["records"] > 0
    assert isinstance(counts["objects"], dict) and counts["objects"]
    assert counts["records"] == sum(counts["objects"].values())


def test_full_dry_run_plans_every_object_in_order(seeded: tuple[Path, dict[str, Any]]) -> None:
    home, counts = seeded
    names = [o["object"] for o in ok_json(home, "objects", "--json")]
    plan = ok_json(home, "send", "--all", "--dry-run", "--year", YEAR, "--json")
    assert [p["object"] for p in plan] == names
    assert {p["object"]: p["records"] for p in plan} == {n: counts["objects"].get(n, 0) for n in names}


def test_dry_run_with_dependencies_adds_parents_and_queues_nothing(seeded: tuple[Path, dict[str, Any]]) -> None:
    home, _ = seeded
    plan = ok_json(home, "send", "Enrollment", "--check-dependencies", "--dry-run", "--json", "--year", YEAR)
    assert [p["object"] for p in plan] == ["District", "School", "Calendar", "ScheduleStructure", "PersonIdentity",
                                           "Enrollment"]
    assert ok_json(home, "history", "--json") == []


def test_a_rate_capped_batch_keeps_its_cap_in_history(tmp_path: Path) -> None:
    ok(tmp_path, "seed", "--students", "20", "--year", YEAR, RESYNC_SCHOOL_YEAR=YEAR)
    out = ok(tmp_path, "send", "--all", "--max-rate", "750", RESYNC_SCHOOL_YEAR=YEAR)
    assert "at most 750 records/s" in out
    [batch] = ok_json(tmp_path, "history", "--json", RESYNC_SCHOOL_YEAR=YEAR)
    assert batch["max_rate"] == 750 and batch["status"] == "queued"


def test_verify_and_a_delta_resync_on_the_embedded_default(tmp_path: Path) -> None:
    import sqlite3

    ok(tmp_path, "seed", "--students", "30", "--year", YEAR, RESYNC_SCHOOL_YEAR=YEAR)
    assert "completed" in ok(tmp_path, "send", "--all", "--wait", RESYNC_SCHOOL_YEAR=YEAR)
    clean = ok_json(tmp_path, "verify", "--json", RESYNC_SCHOOL_YEAR=YEAR)
    assert sum(r["differences"] for r in clean["objects"]) == 0
    assert "no differences: no resync needed" in ok(tmp_path, "verify", RESYNC_SCHOOL_YEAR=YEAR)

    with sqlite3.connect(tmp_path / "district.db") as db:
        (gone,) = db.execute("SELECT min(ref_id) FROM test_score").fetchone()
        db.execute("DELETE FROM test_score WHERE ref_id = ?", (gone,))
    found = ok_json(tmp_path, "verify", "TestScore", "--details", "--json", RESYNC_SCHOOL_YEAR=YEAR)
    [score] = found["objects"]
    assert score["state_only"] == 1 and score["details"]["state_only"] == [gone] and score["resync_recommended"]
    table = ok(tmp_path, "verify", "TestScore", "--details", RESYNC_SCHOOL_YEAR=YEAR)
    assert gone in table and "--only-changed" in table

    ok(tmp_path, "send", "--all", "--only-changed", "--wait", RESYNC_SCHOOL_YEAR=YEAR)
    latest = ok_json(tmp_path, "history", "--json", RESYNC_SCHOOL_YEAR=YEAR)[0]
    assert latest["delta"] is True and latest["sent"] == latest["processed"] == 1 and latest["errors"] == 0
    assert "full, delta" in ok(tmp_path, "history", RESYNC_SCHOOL_YEAR=YEAR)
    after = ok_json(tmp_path, "verify", "--json", RESYNC_SCHOOL_YEAR=YEAR)
    assert sum(r["differences"] for r in after["objects"]) == 0

    # a whole resync sweeps what the district deleted before the command ends, though its broker ends with it
    with sqlite3.connect(tmp_path / "district.db") as db:
        (gone,) = db.execute("SELECT min(ref_id) FROM test_score").fetchone()
        db.execute("DELETE FROM test_score WHERE ref_id = ?", (gone,))
    ok(tmp_path, "send", "TestScore", "--wait", RESYNC_SCHOOL_YEAR=YEAR)
    swept = ok_json(tmp_path, "verify", "TestScore", "--json", RESYNC_SCHOOL_YEAR=YEAR)["objects"]
    assert swept[0]["state_only"] == 0 and swept[0]["differences"] == 0


# 3. the demo and what the administrator sees afterwards --------------------------------------------------


def test_demo_says_it_uses_the_embedded_default(demo_home: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    _, out = demo_home
    assert "embedded default" in out.stdout + out.stderr


def test_status_after_demo(demo_home: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    home, _ = demo_home
    rows = ok_json(home, "status", "--json", "--year", YEAR)
    assert isinstance(rows, list) and rows
    keys = {"object", "parent", "last_resync", "sent", "processed", "errors", "status"}
    for r in rows:
        assert keys <= r.keys(), r
        assert r["sent"] == r["processed"], r
        assert r["status"] in ("green", "yellow", "red"), r
    calendar = next(r for r in rows if r["object"] == "Calendar")
    assert calendar["status"] == "red"  # the excluded summer calendar is refused by the state
    hidden = ok_json(home, "status", "--hide-completed", "--json", "--year", YEAR)
    assert all(r["status"] != "green" for r in hidden)
    assert any(r["object"] == "Calendar" for r in hidden)


def test_history_log_errors_and_queue_after_demo(demo_home: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    home, _ = demo_home
    history = ok_json(home, "history", "--json")
    assert [b["status"] for b in history] == ["completed"]
    log = ok_json(home, "log", "--errors", "--json", "--limit", "5")
    assert 0 < len(log) <= 5
    assert all(r["status"] == "error" for r in log)
    assert isinstance(ok_json(home, "errors", "--json"), list)
    queue = ok_json(home, "queue", "--json")
    assert isinstance(queue, dict) and {"queues", "in_flight"} <= queue.keys()


def test_demo_ends_with_live_changes_arriving(demo_home: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    home, out = demo_home
    shown = out.stdout
    assert "Live changes at the state" in shown
    assert "(renamed)" in shown and "Live Sync Elementary" in shown and "deleted" in shown, shown
    live = ok_json(home, "live", "--json")
    assert live["captured"] is True
    sent = {o["object"]: o for o in live["objects"]}
    assert sent["School"]["sent"] == 2 and sent["School"]["errors"] == 0 and sent["School"]["lag_seconds"] is None
    assert all(r["captured"] for r in ok_json(home, "capture", "status", "--json"))
    [at_state] = ok_json(home, "live", "--state", "--json")
    assert at_state["changes"] == sum(o["sent"] for o in live["objects"]) and at_state["errors"] == 0


def test_selective_sync_on_the_embedded_default(tmp_path: Path) -> None:
    ok(tmp_path, "seed", "--students", "30", "--year", YEAR)
    ok(tmp_path, "send", "--all", "--wait", RESYNC_SCHOOL_YEAR=YEAR)
    school = ok_json(tmp_path, "log", "--object", "School", "--json", "--limit", "1")[0]["ref_id"]
    plan = ok_json(tmp_path, "send", "School", "--ref-id", school.lower(), "--cascade", "--dry-run", "--json",
                   RESYNC_SCHOOL_YEAR=YEAR)
    assert plan[0] == {"object": "School", "records": 1} and len(plan) > 2
    ok(tmp_path, "send", "School", "--ref-id", school, "--cascade", "--wait", RESYNC_SCHOOL_YEAR=YEAR)
    newest = ok_json(tmp_path, "history", "--json")[0]
    assert newest["kind"] == "selective" and newest["status"] == "completed"
    assert newest["sent"] == newest["processed"] == sum(p["records"] for p in plan)
    assert "Selective" not in ok(tmp_path, "status", RESYNC_SCHOOL_YEAR=YEAR)
    missing = "F" * 32
    assert f"School {missing} does not exist at the district" in error_line(
        run(tmp_path, "send", "School", "--ref-id", missing, RESYNC_SCHOOL_YEAR=YEAR))


def test_demo_again_without_reset_resyncs(tmp_path: Path) -> None:
    for _ in range(2):
        ok(tmp_path, "demo", "--students", "60", RESYNC_SCHOOL_YEAR=YEAR)
    assert [b["status"] for b in ok_json(tmp_path, "history", "--json")] == ["completed", "completed"]


# 4. the catalog ---------------------------------------------------------------------------------------------


def test_objects_json(tmp_path: Path) -> None:
    objs = ok_json(tmp_path, "objects", "--json")
    assert len(objs) == 61
    assert {o["object"]: o["inferred"] for o in objs}["SchoolMonth"] is True
    assert {o["object"]: o["inferred"] for o in objs}["Enrollment"] is False


# 5. the status table --------------------------------------------------------------------------------------------


def test_status_table(demo_home: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    home, _ = demo_home
    text = " ".join(ok(home, "status", "--year", YEAR).split())  # the legend may wrap between words
    assert "Processed:" in text
    assert "still processing" in text
    # piped, every dot looks the same: each says its colour, as the JSON does
    rows = {r["object"]: r["status"] for r in ok_json(home, "status", "--json", "--year", YEAR)}
    for line in ok(home, "status", "--year", YEAR).splitlines():
        for name, colour in rows.items():
            if f" {name} " in line and "Processed:" in line:
                assert f"● {colour}" in line, line


def test_partial_resync_without_check_dependencies_says_what_it_risks(tmp_path: Path) -> None:
    ok(tmp_path, "seed", "--students", "5", "--year", YEAR)
    out = " ".join(ok(tmp_path, "send", "Roster", "--year", YEAR).split())
    assert "without --check-dependencies sends no parent" in out and "strongly recommended" in out
    assert "Warning" not in ok(tmp_path, "send", "Roster", "--check-dependencies", "--year", YEAR)
