"""Console users and their tool rights, kept in the side's own database (district or state).

Passwords are stored as scrypt hashes (memory-hard, from the standard library) with their parameters, so a
stronger setting later still verifies the old ones. Roles are ranked: each includes the rights of those below.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from sqlalchemy import Column, Engine, MetaData, String, Table, delete, insert, select, update

from core.db import create_all
from messages.envelope import now_ts
from messages.errors import FatalError

metadata = MetaData()
console_user = Table(
    "console_user", metadata,
    Column("name", String(64), primary_key=True),
    Column("role", String(16), nullable=False),
    Column("password", String(255), nullable=False),
    Column("created_at", String(32), nullable=False),
    Column("session_key", String(64), nullable=False),  # in every session cookie; a new one ends them all
)

_N, _R, _P = 2**14, 8, 1  # 16 MiB of memory per guess
_DUMMY = "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$" + "A" * 88  # verified against when the user is unknown


class Role(IntEnum):
    """What a user may do; each role includes the ones below it."""

    VIEW = 1  # read every page
    RUN = 2  # send, cancel, verify, request
    DELETE = 3  # delete alerts, requeue dead letters
    ADMIN = 4  # manage users

    @classmethod
    def parse(cls, value: str) -> Role:
        try:
            return cls[value.strip().upper()]
        except KeyError:
            raise FatalError(f"role {value!r} is not one of view, run, delete, admin") from None

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: Role
    created_at: str
    session_key: str


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, maxmem=64 * 1024 * 1024, dklen=64)
    return f"scrypt${_N}${_R}${_P}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             maxmem=64 * 1024 * 1024, dklen=len(expected) or 64)
    except (ValueError, TypeError):
        return False
    return scheme == "scrypt" and hmac.compare_digest(got, expected)


class UserStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(self) -> None:
        create_all(metadata, self.engine)

    def add(self, name: str, role: Role, password: str) -> None:
        if not name.strip() or len(name) > 64 or not name.isprintable():
            raise FatalError("a user name is 1 to 64 printable characters")
        if len(password) < 8:
            raise FatalError("a password needs at least 8 characters")
        with self.engine.begin() as conn:
            if conn.execute(select(console_user.c.name).where(console_user.c.name == name)).first():
                raise FatalError(f"user {name!r} exists; remove it first (`resync users remove {name}`)")
            conn.execute(insert(console_user).values(name=name, role=role.label, password=hash_password(password),
                                                     created_at=now_ts(), session_key=secrets.token_urlsafe(24)))

    def end_sessions(self, name: str) -> None:
        """Every session of ``name`` ends (logout): their cookies name a key that is no longer theirs."""
        with self.engine.begin() as conn:
            conn.execute(update(console_user).where(console_user.c.name == name)
                         .values(session_key=secrets.token_urlsafe(24)))

    def remove(self, name: str) -> bool:
        if self.get(name) is None:
            return False
        with self.engine.begin() as conn:
            return conn.execute(delete(console_user).where(console_user.c.name == name)).rowcount > 0

    def list(self) -> list[User]:
        with self.engine.connect() as conn:
            return [_user(r) for r in conn.execute(select(console_user).order_by(console_user.c.name))]

    def _row(self, name: str) -> Any:
        if not 0 < len(name) <= 64 or "\x00" in name:  # no such user can exist
            return None
        with self.engine.connect() as conn:
            return conn.execute(select(console_user).where(console_user.c.name == name)).first()

    def get(self, name: str) -> User | None:
        r = self._row(name)
        return None if r is None else _user(r)

    def check(self, name: str, password: str) -> User | None:
        """The user if the password is theirs; an unknown name costs the same time as a wrong password."""
        r = self._row(name)
        ok = verify_password(password, r.password if r is not None else _DUMMY)
        return _user(r) if r is not None and ok else None


def _user(r: Any) -> User:
    return User(r.name, Role.parse(r.role), r.created_at, r.session_key)
