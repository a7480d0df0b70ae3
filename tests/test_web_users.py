"""Console users: password hashes, roles, the failed-login throttle and the `resync users` commands."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from messages.errors import FatalError
from resync.web.security import FREE_ATTEMPTS, MAX_DELAY, Throttle
from resync.web.users import Role, hash_password, verify_password
from tests.test_cli import error_line, ok, ok_json, run


@settings(max_examples=10, deadline=None)  # scrypt is slow on purpose
@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_a_hash_verifies_its_password_only(password: str, other: str) -> None:
    stored = hash_password(password)
    assert stored.startswith("scrypt$16384$8$1$")
    assert verify_password(password, stored)
    assert verify_password(other, stored) == (other == password)


@given(st.text(max_size=200))
def test_a_damaged_hash_verifies_nothing(stored: str) -> None:
    assert not verify_password("password", stored)


def test_the_same_password_hashes_differently_each_time() -> None:
    assert hash_password("same password") != hash_password("same password")


def test_roles_are_ranked_and_parsed() -> None:
    assert Role.VIEW < Role.RUN < Role.DELETE < Role.ADMIN
    assert Role.parse(" Run ") is Role.RUN
    with pytest.raises(FatalError, match="view, run, delete, admin"):
        Role.parse("root")


def test_failed_logins_are_slowed_down_then_forgiven() -> None:
    t = Throttle()
    delays = []
    for _ in range(FREE_ATTEMPTS + 8):
        delays.append(t.delay("ada"))
        t.failed("ada")
    assert delays[:FREE_ATTEMPTS + 1] == [0.0] * FREE_ATTEMPTS + [0.5]
    assert delays[FREE_ATTEMPTS + 1] == 1.0 and delays[-1] == MAX_DELAY
    assert t.delay("bob") == 0.0  # one name's failures do not slow another's
    t.succeeded("ada")
    assert t.delay("ada") == 0.0


def test_the_throttle_forgets_the_oldest_names_under_a_flood() -> None:
    t = Throttle()
    for i in range(10_001):
        t.failed(f"name-{i}")
    assert len(t.failures) <= 10_000 and "name-10000" in t.failures


def test_users_commands(tmp_path: Path) -> None:
    out = run(tmp_path, "users", "add", "ada", "--role", "admin", "--password-stdin", input="short\n")
    assert error_line(out) == "error: a password needs at least 8 characters"
    assert "added" in ok(tmp_path, "users", "add", "ada", "--role", "admin", "--password-stdin", input="long enough\n")
    again = run(tmp_path, "users", "add", "ada", "--role", "view", "--password-stdin", input="long enough\n")
    assert "exists" in error_line(again) and again.returncode == 2
    bad = run(tmp_path, "users", "add", "bob", "--role", "root", "--password-stdin", input="long enough\n")
    assert bad.returncode == 2
    ok(tmp_path, "users", "add", "sam", "--role", "run", "--state", "--password-stdin", input="long enough\n")
    assert ok_json(tmp_path, "users", "list", "--json")[0] | {"created_at": ""} == {"name": "ada", "role": "admin",
                                                                                   "created_at": ""}
    assert [u["name"] for u in ok_json(tmp_path, "users", "list", "--state", "--json")] == ["sam"]
    assert "removed" in ok(tmp_path, "users", "remove", "ada")
    assert error_line(run(tmp_path, "users", "remove", "ada")) == "error: no user 'ada'; `resync users list` shows them"
