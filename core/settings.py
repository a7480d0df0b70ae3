"""Settings: one dataclass, built once from the environment (prefix ``RESYNC_``) and command-line flags."""

from __future__ import annotations

import datetime as dt
import difflib
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from core.brokers.base import QUEUE_TYPES, check_district
from messages.codec import MAX_MESSAGE
from messages.errors import ConfigError

_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")


def current_school_year(today: dt.date | None = None) -> int:
    """School years are named by the calendar year they end in: 2026-27 is 2027."""
    today = today or dt.date.today()
    return today.year + 1 if today.month >= 7 else today.year


def _pairs(value: str) -> dict[str, str]:
    out = {}
    for item in filter(None, (p.strip() for p in value.split(","))):
        key, sep, val = item.partition("=")
        if not sep:
            raise ConfigError(f"RESYNC_DISTRICT_USERS item {item!r} is not district=user")
        out[key.strip()] = val.strip()
    return out


def _whole(key: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"RESYNC_{key.upper()}={raw!r} is not a whole number") from None


VARIABLES = frozenset(f"RESYNC_{k}" for k in (
    "HOME", "BROKER_URL", "MANAGEMENT_URL", "DISTRICT_DB", "STATE_DB", "DISTRICT", "STATE_USER", "WEB_HOST",
    "WEB_SECRET", "RECEIVER_NAME", "METRICS_HOST", "DISTRICTS", "DISTRICT_USERS", "OBJECTS", "SCHOOL_YEAR",
    "MAX_BODY", "MAX_IN_FLIGHT", "HEARTBEAT", "WEB_PORT", "KEEP_BATCHES", "KEEP_DAYS", "KEEP_HISTORY_DAYS",
    "METRICS_PORT", "TODAY", "BROKER_CA_FILE", "BROKER_CERT_FILE", "BROKER_KEY_FILE", "WEB_SECURE_COOKIES",
    "QUEUE_TYPE", "SYNC_YEARS", "PREVIOUS_YEAR_OBJECTS", "NEXT_YEAR_OBJECTS", "YEAR_END", "YEAR_START",
    "REMINDER_DAYS", "LOG_LEVEL"))
"""Every environment variable resync reads: another ``RESYNC_`` variable is a mistake (most likely a typo)."""


def _unknown(env: Mapping[str, str]) -> list[str]:
    out = []
    for name in sorted(k for k in env if k.startswith("RESYNC_") and k not in VARIABLES):
        close = difflib.get_close_matches(name, VARIABLES, n=1)
        out.append(f"{name} is not a setting resync knows" + (f": did you mean {close[0]}?" if close else
                   ": remove it (the README lists the settings)"))
    return out


def _month_day(key: str, value: str) -> tuple[int, int]:
    try:
        month, day = (int(p) for p in value.split("-"))
        dt.date(2000, month, day)
    except ValueError:
        raise ConfigError(f"RESYNC_{key.upper()}={value!r} is not a month and day (MM-DD, e.g. 06-30)") from None
    return month, day


def _check_broker_url(url: str) -> None:
    p = urllib.parse.urlsplit(url)
    try:
        port_ok = p.port is None or p.port > 0
    except ValueError:
        port_ok = False
    if p.scheme not in ("amqp", "amqps") or not p.hostname or not port_ok:
        raise ConfigError(f"RESYNC_BROKER_URL (--broker-url) {url.rsplit('@', 1)[-1][:80]!r} is not an AMQP URL: "
                          "use amqp://user:password@host:5672/vhost (amqps:// for TLS)")


@dataclass(frozen=True)
class Settings:
    home: Path = Path("resync-data")
    broker_url: str | None = None
    management_url: str | None = None
    district_db: str | None = None
    state_db: str | None = None
    district: str = "district-1"
    districts: tuple[str, ...] = ()
    """Districts the state receiver consumes; defaults to ``district``."""
    district_users: Mapping[str, str] = field(default_factory=dict)
    """Broker user each district publishes as (default: the district id)."""
    state_user: str = "state"
    objects: tuple[str, ...] | None = None
    school_year: int = field(default_factory=current_school_year)
    max_body: int = 256 * 1024
    max_in_flight: int = 4_000
    """Records the agent may have sent that the state has not answered yet (0: no limit). Keeps the
    event queue short, where the broker is cheapest, and stops a batch from flooding a state that is down."""
    sync_years: frozenset[str] = frozenset()
    """Adjacent school years synced besides the current one: ``previous``, ``next``."""
    year_objects: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Objects configured for the previous / next year (default: every year-scoped object)."""
    year_end: tuple[int, int] = (6, 30)
    year_start: tuple[int, int] = (8, 15)
    reminder_days: int = 30
    today: dt.date | None = None
    broker_tls: Mapping[str, str] = field(default_factory=dict)
    heartbeat: int = 30
    keep_batches: int = 10
    """Per-record rows (agent log, receiver inbox) of the newest N batches are kept; 0: every batch's."""
    keep_days: int = 90
    """Live outcomes, errors and alerts are kept N days; 0: forever."""
    keep_history_days: int = 0
    """Batch history (per-object counts) is kept N days; 0: forever."""
    receiver_name: str | None = None
    """This receiver's name among those sharing the state database (default: host name and process id)."""
    queue_type: str = "classic"
    """``classic``, or ``quorum`` for queues replicated across a RabbitMQ cluster."""
    metrics_port: int = 0
    """Port of the daemon's Prometheus metrics, /healthz and /readyz (0: not served)."""
    metrics_host: str = "127.0.0.1"
    web_host: str = "127.0.0.1"
    web_port: int = 8080
    web_secret: str | None = None
    """Signs the console's session cookies; without it each start signs with a new key (sessions end)."""
    web_secure_cookies: bool = False
    """Mark the session cookie Secure (sent over HTTPS only): on when the console is served behind TLS."""
    """Seconds between AMQP heartbeats (0: off): a connection silent for two of them is dropped and made again."""
    """``ca_certs``, ``certfile``, ``keyfile`` for ``amqps://`` (RESYNC_BROKER_CA_FILE, _CERT_FILE, _KEY_FILE)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """The settings from ``env`` (default the process environment) and ``overrides``; every mistake at once,
        one line each, in one ``ConfigError``."""
        env = os.environ if env is None else env
        mistakes: list[str] = []

        def get(key: str) -> str:
            return env.get(f"RESYNC_{key}", "").strip()

        def items(key: str) -> tuple[str, ...]:
            return tuple(p.strip() for p in get(key).split(",") if p.strip())

        def attempt(key: str, parse: Any) -> None:
            try:
                values[key] = parse()
            except ConfigError as e:
                mistakes.append(str(e))

        values: dict[str, Any] = {}
        if get("HOME"):
            values["home"] = Path(get("HOME"))
        for key in ("broker_url", "management_url", "district_db", "state_db", "district", "state_user", "web_host",
                    "web_secret", "receiver_name", "metrics_host"):
            if get(key.upper()):
                values[key] = get(key.upper())
        if get("DISTRICTS"):
            values["districts"] = items("DISTRICTS")
        if get("DISTRICT_USERS"):
            attempt("district_users", lambda: _pairs(get("DISTRICT_USERS")))
        if get("OBJECTS"):
            values["objects"] = items("OBJECTS")
        for key in ("school_year", "max_body", "max_in_flight", "heartbeat", "web_port", "keep_batches", "keep_days",
                    "keep_history_days", "metrics_port"):
            if get(key.upper()):
                attempt(key, lambda key=key: _whole(key, get(key.upper())))
        if get("TODAY"):
            try:
                values["today"] = dt.date.fromisoformat(get("TODAY"))
                values.setdefault("school_year", current_school_year(values["today"]))
            except ValueError:
                mistakes.append(f"RESYNC_TODAY={get('TODAY')!r} is not a date (YYYY-MM-DD)")
        tls = {opt: get(f"BROKER_{key}_FILE") for opt, key in (("ca_certs", "CA"), ("certfile", "CERT"),
                                                                ("keyfile", "KEY")) if get(f"BROKER_{key}_FILE")}
        if tls:
            values["broker_tls"] = tls
        if get("WEB_SECURE_COOKIES"):
            flag = get("WEB_SECURE_COOKIES").lower()
            if flag not in ("true", "false", "1", "0", "yes", "no"):
                mistakes.append(f"RESYNC_WEB_SECURE_COOKIES={get('WEB_SECURE_COOKIES')!r}: use true or false")
            values["web_secure_cookies"] = flag in ("true", "1", "yes")
        if get("QUEUE_TYPE"):
            values["queue_type"] = get("QUEUE_TYPE").lower()
        if get("SYNC_YEARS"):
            years = frozenset(y.lower() for y in items("SYNC_YEARS"))
            if not years <= {"previous", "next"}:
                mistakes.append(f"RESYNC_SYNC_YEARS={get('SYNC_YEARS')!r}: use previous, next or previous,next")
            values["sync_years"] = years & {"previous", "next"}
        values["year_objects"] = {w: items(f"{w.upper()}_YEAR_OBJECTS") for w in ("previous", "next")
                                  if get(f"{w.upper()}_YEAR_OBJECTS")}
        for key in ("year_end", "year_start"):
            if get(key.upper()):
                attempt(key, lambda key=key: _month_day(key, get(key.upper())))
        if get("REMINDER_DAYS"):
            if get("REMINDER_DAYS").isdigit():
                values["reminder_days"] = int(get("REMINDER_DAYS"))
            else:
                mistakes.append("RESYNC_REMINDER_DAYS must be a whole number of days")
        mistakes += _unknown(env)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        mistakes += settings._out_of_range()
        if mistakes:
            raise ConfigError("\n".join(dict.fromkeys(mistakes)))
        return settings

    def _out_of_range(self) -> list[str]:
        out = []
        if not 1024 <= self.max_body <= MAX_MESSAGE:
            out.append(f"RESYNC_MAX_BODY={self.max_body} is out of range: use 1024 to {MAX_MESSAGE} bytes (the "
                       "broker refuses larger messages)")
        if not (self.heartbeat == 0 or 2 <= self.heartbeat <= 3600):
            out.append(f"RESYNC_HEARTBEAT={self.heartbeat} is out of range: use 2 to 3600 seconds, or 0 to turn "
                       "heartbeats off")
        for key in ("keep_batches", "keep_days", "keep_history_days"):
            if getattr(self, key) < 0:
                out.append(f"RESYNC_{key.upper()}={getattr(self, key)} is negative: use a whole number, or 0 to "
                           "keep forever")
        if not 1 <= self.web_port <= 65535:
            out.append(f"RESYNC_WEB_PORT={self.web_port} is out of range: use 1 to 65535")
        if not 0 <= self.metrics_port <= 65535:
            out.append(f"RESYNC_METRICS_PORT={self.metrics_port} is out of range: use 1 to 65535, or 0 not to "
                       "serve metrics")
        if self.queue_type not in QUEUE_TYPES:
            out.append(f"RESYNC_QUEUE_TYPE={self.queue_type!r} is not a queue type: use classic, or quorum on a "
                       "RabbitMQ cluster")
        if self.receiver_name is not None and not _NAME.match(self.receiver_name):
            out.append(f"RESYNC_RECEIVER_NAME={self.receiver_name[:80]!r} is not a name: use 1-128 letters, "
                       "digits, '.', '-' or '_'")
        try:
            if self.broker_url and not self.broker_url.startswith("memory://"):
                _check_broker_url(self.broker_url)
        except ConfigError as e:
            out.append(str(e))
        for d in (self.district, *self.districts):
            try:
                check_district(d)
            except ConfigError as e:
                out.append(str(e))
        return out

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @property
    def district_db_url(self) -> str:
        return self.district_db or self._embedded("district.db")

    @property
    def state_db_url(self) -> str:
        return self.state_db or self._embedded("state.db")

    def _embedded(self, name: str) -> str:
        """The embedded default's SQLite file, in a home folder made on first use (a URL given explicitly
        must name a folder that exists: a mistyped path is said, not created)."""
        self.home.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{self.home / name}"

    @property
    def receiver_districts(self) -> tuple[str, ...]:
        return self.districts or (self.district,)

    def user_for(self, district: str) -> str:
        return self.district_users.get(district, self.district_users.get("*", district))

    def resolve_year(self, value: str | int | None) -> int:
        """``current`` / ``previous`` / ``next`` / ``YYYY`` to a school year this district syncs."""
        if value is None or value == "current":
            return self.school_year
        offsets = {"previous": -1, "next": 1}
        if isinstance(value, str) and value in offsets:
            year = self.school_year + offsets[value]
        elif isinstance(value, int) or re.fullmatch(r"[0-9]{4}", value):
            year = int(value)
        else:
            raise ConfigError(f"--year {str(value)[:40]!r}: use current, previous, next or a year like 2027")
        if year not in self.synced_years:
            allowed = ", ".join(str(y) for y in sorted(self.synced_years))
            raise ConfigError(f"school year {year} is not synced by this district (synced: {allowed}; "
                              "RESYNC_SYNC_YEARS=previous,next adds the adjacent years)")
        return year

    @property
    def synced_years(self) -> set[int]:
        offsets = {"previous": -1, "next": 1}
        return {self.school_year, *(self.school_year + offsets[w] for w in self.sync_years)}

    def year_label(self, year: int) -> str:
        return {self.school_year: "current", self.school_year - 1: "previous", self.school_year + 1: "next"}.get(
            year, str(year))

    @property
    def today_date(self) -> dt.date:
        return self.today or dt.date.today()
