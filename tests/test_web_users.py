"""Console users: password hashes, roles, the failed-login throttle and the `resync users` commands."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from messages.errors import FatalError
from resync.web.security import FREE_ATTEMPTS, Throttle, throttle_key
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
    keys = {"name:ada": FREE_ATTEMPTS}
    for _ in range(FREE_ATTEMPTS):  # the free attempts
        assert t.admit(keys) == 0.0
        t.settle(keys, False, "name:ada")
    first = t.admit(keys)
    assert 0 < first <= 0.5  # then each attempt must wait
    t.counts["name:ada"].locked_until = 0  # as if the wait had passed
    assert t.admit(keys) == 0.0
    t.settle(keys, False, "name:ada")
    assert first < t.admit(keys) <= 1.0  # longer after each failure
    assert t.admit({"name:bob": FREE_ATTEMPTS}) == 0.0  # one name's failures do not slow another's
    t.counts["name:ada"].locked_until = 0  # as if the wait had passed
    assert t.admit(keys) == 0.0
    t.settle(keys, True, "name:ada")
    assert "name:ada" not in t.counts  # a success forgives the name


def test_parallel_guesses_wait_their_turn() -> None:
    """Counted before the password is checked: attempts fired together do not share one free slot."""
    t = Throttle()
    keys = {"name:ada": FREE_ATTEMPTS}
    admitted = sum(t.admit(keys) == 0.0 for _ in range(30))
    assert admitted == FREE_ATTEMPTS + 1


def test_a_success_never_clears_a_clients_count() -> None:
    t = Throttle()
    client = {"client:1.2.3.4": 2}
    for _ in range(3):
        t.admit(client)
        t.settle(client, False, "name:x")
    t.counts["client:1.2.3.4"].locked_until = 0
    t.admit({**client, "name:mine": FREE_ATTEMPTS})
    t.settle({**client, "name:mine": FREE_ATTEMPTS}, True, "name:mine")
    assert t.counts["client:1.2.3.4"].failures == 3 and t.admit(client) > 0


def test_throttle_keys_have_a_fixed_size() -> None:
    assert len(throttle_key("name:district", "x" * 1_000_000)) == len(throttle_key("name:district", "a"))


def test_the_throttle_forgets_the_oldest_names_under_a_flood() -> None:
    t = Throttle()
    for i in range(10_001):
        t.admit({f"name-{i}": FREE_ATTEMPTS})
        t.settle({f"name-{i}": FREE_ATTEMPTS}, False, f"name-{i}")
    assert len(t.counts) <= 10_000 and "name-10000" in t.counts


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
