"""Sessions, CSRF tokens, tool rights and slowed-down logins: what every request passes through.

The session is a signed cookie (Starlette's ``SessionMiddleware``: HttpOnly, SameSite=strict) that names the user
and the side; the role is read from the side's database on every request, so removing a user or changing a role
takes effect at once. Every form carries the session's CSRF token, and every POST is refused without it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field

from starlette.exceptions import HTTPException
from starlette.requests import Request

from resync.web.users import Role, User, UserStore

FREE_ATTEMPTS = 3
"""Failed logins of one name before each next attempt must wait."""
FREE_PER_CLIENT = 20
"""The same for one client address (higher: behind a proxy every user shares one)."""
MAX_DELAY = 30.0
FORGET_AFTER = 15 * 60.0
"""Seconds after the last failure when a name's or a client's count starts again."""


class LoginRequired(Exception):
    """No session: the login page answers instead."""


@dataclass
class _Count:
    failures: int = 0
    checking: int = 0  # attempts under way: counted before the password is checked, so parallel guesses wait too
    locked_until: float = 0.0
    last: float = 0.0


@dataclass
class Throttle:
    """Failed logins per key (a user name, a client address): past the free attempts each next attempt is refused
    until a wait that doubles with every failure (up to ``MAX_DELAY``) has passed. A success clears a name's count,
    never a client's (or an attacker with an account of their own could clear it between guesses)."""

    counts: dict[str, _Count] = field(default_factory=dict)

    def _get(self, key: str, now: float) -> _Count:
        c = self.counts.get(key)
        if c is None or (not c.checking and now - c.last > FORGET_AFTER):
            c = self.counts[key] = _Count(last=now)
        return c

    @staticmethod
    def delay(failures: int, free: int) -> float:
        return 0.0 if failures < free else min(MAX_DELAY, 0.5 * 2 ** (failures - free))

    def admit(self, keys: dict[str, int]) -> float:
        """Seconds to wait before another attempt for ``keys`` (key -> free attempts), or 0 after reserving one."""
        now = time.monotonic()
        counts = {k: self._get(k, now) for k in keys}
        wait = max((c.locked_until - now for c in counts.values()), default=0.0)
        if wait > 0:
            return wait
        for key, c in counts.items():
            c.checking += 1
            c.locked_until = now + self.delay(c.failures + c.checking - 1, keys[key])
        self._bound()
        return 0.0

    def settle(self, keys: dict[str, int], ok: bool, name_key: str) -> None:
        now = time.monotonic()
        for key, free in keys.items():
            c = self._get(key, now)
            c.checking = max(0, c.checking - 1)
            c.last = now
            if ok and key == name_key:
                del self.counts[key]
            elif not ok:
                c.failures += 1
                c.locked_until = max(c.locked_until, now + self.delay(c.failures, free))

    def _bound(self) -> None:
        if len(self.counts) > 10_000:  # forget the oldest idle ones: memory stays bounded under a flood
            idle = sorted((k for k, c in self.counts.items() if not c.checking), key=lambda k: self.counts[k].last)
            for k in idle[:5_000]:
                del self.counts[k]


def throttle_key(kind: str, value: str) -> str:
    """Keys of a fixed size, whatever was posted."""
    return f"{kind}:" + hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()[:32]


def csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return str(token)


async def form(request: Request) -> dict[str, list[str]]:
    """The posted form, once its CSRF token matched the session's (403 otherwise)."""
    data = await request.form()
    sent = data.get("csrf")
    expected = request.session.get("csrf")
    if not isinstance(sent, str) or not expected or not hmac.compare_digest(sent, str(expected)):
        raise HTTPException(403, "the form's security token is missing or stale: reload the page and try again")
    return {k: [v for v in data.getlist(k) if isinstance(v, str)] for k in data}


def user(request: Request, users: dict[str, UserStore], side: str) -> User:
    """The signed-in user of ``side``; LoginRequired without a session, 403 for the other side's user."""
    name, their_side = request.session.get("user"), request.session.get("side")
    if not name or their_side not in users:
        raise LoginRequired
    if their_side != side:
        raise HTTPException(403, f"this page belongs to the {side}; you are signed in to the {their_side}")
    found = users[side].get(str(name))
    key = request.session.get("key")
    if found is None or not isinstance(key, str) or not hmac.compare_digest(key, found.session_key):
        # removed since, added again, or logged out (which gives the user a new key: every copy of an old
        # cookie is worthless from then on)
        request.session.clear()
        raise LoginRequired
    return found


def need(who: User, role: Role, what: str) -> None:
    if who.role < role:
        raise HTTPException(403, f"{what} needs the {role.label} right; {who.name} has {who.role.label}")
