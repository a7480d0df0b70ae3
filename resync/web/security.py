"""Sessions, CSRF tokens, tool rights and slowed-down logins: what every request passes through.

The session is a signed cookie (Starlette's ``SessionMiddleware``: HttpOnly, SameSite=strict) that names the user
and the side; the role is read from the side's database on every request, so removing a user or changing a role
takes effect at once. Every form carries the session's CSRF token, and every POST is refused without it.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
import time
from dataclasses import dataclass, field

from starlette.exceptions import HTTPException
from starlette.requests import Request

from resync.web.users import Role, User, UserStore

FREE_ATTEMPTS = 3
"""Failed logins of one name before each next attempt is slowed down."""
MAX_DELAY = 30.0


class LoginRequired(Exception):
    """No session: the login page answers instead."""


@dataclass
class Throttle:
    """Failed logins per user name (and per client): after ``FREE_ATTEMPTS`` each further attempt waits twice as
    long as the one before, up to ``MAX_DELAY`` seconds; a success clears it."""

    failures: dict[str, tuple[int, float]] = field(default_factory=dict)

    def delay(self, key: str) -> float:
        count, _ = self.failures.get(key, (0, 0.0))
        return 0.0 if count < FREE_ATTEMPTS else min(MAX_DELAY, 0.5 * 2 ** (count - FREE_ATTEMPTS))

    def failed(self, key: str) -> None:
        count, _ = self.failures.get(key, (0, 0.0))
        self.failures[key] = (count + 1, time.monotonic())
        if len(self.failures) > 10_000:  # forget the oldest: memory stays bounded under a flood of names
            oldest = sorted(self.failures, key=lambda k: self.failures[k][1])[:5_000]
            for k in oldest:
                del self.failures[k]

    def succeeded(self, key: str) -> None:
        self.failures.pop(key, None)

    async def wait(self, *keys: str) -> None:
        await asyncio.sleep(max(self.delay(k) for k in keys))


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
    if found is None:  # removed since they signed in
        request.session.clear()
        raise LoginRequired
    return found


def need(who: User, role: Role, what: str) -> None:
    if who.role < role:
        raise HTTPException(403, f"{what} needs the {role.label} right; {who.name} has {who.role.label}")
