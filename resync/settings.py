"""Settings: one dataclass, built once from the environment (prefix ``RESYNC_``) and command-line flags."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from messages.errors import ConfigError
from resync.brokers.base import check_district


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

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if env is None else env

        def get(key: str) -> str:
            return env.get(f"RESYNC_{key}", "").strip()

        def items(key: str) -> tuple[str, ...]:
            return tuple(p.strip() for p in get(key).split(",") if p.strip())

        values: dict[str, Any] = {}
        if get("HOME"):
            values["home"] = Path(get("HOME"))
        for key in ("broker_url", "management_url", "district_db", "state_db", "district", "state_user"):
            if get(key.upper()):
                values[key] = get(key.upper())
        if get("DISTRICTS"):
            values["districts"] = items("DISTRICTS")
        if get("DISTRICT_USERS"):
            values["district_users"] = _pairs(get("DISTRICT_USERS"))
        if get("OBJECTS"):
            values["objects"] = items("OBJECTS")
        for key in ("school_year", "max_body"):
            raw = get(key.upper())
            if raw:
                try:
                    values[key] = int(raw)
                except ValueError:
                    raise ConfigError(f"RESYNC_{key.upper()}={raw!r} is not a whole number") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        check_district(settings.district)
        for d in settings.districts:
            check_district(d)
        return settings

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @property
    def district_db_url(self) -> str:
        return self.district_db or f"sqlite:///{self.home / 'district.db'}"

    @property
    def state_db_url(self) -> str:
        return self.state_db or f"sqlite:///{self.home / 'state.db'}"

    @property
    def receiver_districts(self) -> tuple[str, ...]:
        return self.districts or (self.district,)

    def user_for(self, district: str) -> str:
        return self.district_users.get(district, self.district_users.get("*", district))
