"""The command group, its context (settings built once, the catalog, the stores) and what every command shares."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import click

from agent.store import AgentStore
from core import logs
from core.brokers import Broker, broker_for
from core.db import engine
from core.settings import Settings
from messages import catalog as catalog_mod
from messages.catalog import Catalog
from messages.errors import FatalError

JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
YEAR = click.option("--year", help="current, previous, next, or a year like 2027 (default: current).")


class Ctx:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._catalog: Catalog | None = None

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = catalog_mod.load(self.settings.objects)
        return self._catalog

    def store(self) -> AgentStore:
        store = AgentStore(engine(self.settings.district_db_url))
        store.create()
        return store

    def year(self, year: str | None) -> int:
        return self.settings.resolve_year(year)

    def state_engine(self) -> Any:
        from state_receiver.schema import StateSchema

        eng = engine(self.settings.state_db_url)
        StateSchema(self.catalog).create(eng)
        return eng


pass_ctx = click.make_pass_decorator(Ctx)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--broker-url", envvar="RESYNC_BROKER_URL", help="amqp://user:pass@host/vhost (default: in-process).")
@click.option("--district-db", envvar="RESYNC_DISTRICT_DB", help="SQLAlchemy URL of the district database.")
@click.option("--state-db", envvar="RESYNC_STATE_DB", help="SQLAlchemy URL of the state database.")
@click.option("--district", envvar="RESYNC_DISTRICT", help="This district's id (default district-1).")
@click.option("--home", envvar="RESYNC_HOME", type=click.Path(path_type=Path), help="Folder for embedded SQLite files.")
@click.option("--log-level", envvar="RESYNC_LOG_LEVEL", default="INFO", show_default=True)
@click.pass_context
def cli(ctx: click.Context, broker_url: str | None, district_db: str | None, state_db: str | None,
        district: str | None, home: Path | None, log_level: str) -> None:
    """Resync a district's data objects to the state over RabbitMQ."""
    logs.configure(log_level)
    ctx.obj = Ctx(Settings.from_env(broker_url=broker_url, district_db=district_db, state_db=state_db,
                                    district=district, home=home))


def needs_broker(c: Ctx, what: str) -> Broker:
    if not c.settings.broker_url:
        raise FatalError(f"{what} needs RESYNC_BROKER_URL (or --broker-url): the in-process broker lives inside "
                         "one process; `resync demo` runs agent and receiver together on it")
    return broker_for(c.settings, f"resync {what}")  # the name `rabbitmqctl list_connections` shows


def run_daemon(target: Any) -> None:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    target(stop)
