"""An agent and a receiver in this process on the in-process broker: how the embedded default runs a job
that needs both sides (the demo, a verification), with nothing installed."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

from agent.daemon import Agent
from core.brokers import Broker, Topology, broker_for
from core.db import engine
from core.settings import Settings
from messages.catalog import Catalog
from state_receiver.daemon import Receiver

DRAIN_LIMIT = 60.0
"""Seconds to wait, at the end, for what is still queued to be handled."""


@contextlib.contextmanager
def local_site(settings: Settings, catalog: Catalog, broker: Broker | None = None) -> Iterator[Callable[[], bool]]:
    """Run both daemons until the block ends; yields a check that both are still alive. Their log lines
    would drown the command's own output: below a warning they are left out unless asked for."""
    import click

    from core import logs

    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.find_root().params.get("log_level") == "INFO":
        logs.configure("WARNING")
    broker = broker or broker_for(settings)
    settings = settings.with_(district_users={"*": broker.user}) if not settings.district_users else settings
    # both sides in one process, on one connection's identity: the agent takes answers from that identity
    # and no metrics port: two daemons in one process cannot both serve it
    settings = settings.with_(state_user=broker.user, metrics_port=0)
    stop = threading.Event()
    receiver = Receiver(settings, broker, engine(settings.state_db_url), catalog)
    agent = Agent(settings, broker, engine(settings.district_db_url), catalog)
    receiver.setup()
    agent.setup()
    threads = [threading.Thread(target=receiver.run, args=(stop,), daemon=True),
               threading.Thread(target=agent.run, args=(stop,), daemon=True)]
    for t in threads:
        t.start()
    def alive() -> bool:
        return all(t.is_alive() for t in threads)

    try:
        yield alive
        # the in-process broker ends with this process: let the receiver take what is still queued (a
        # batch's end marker comes after its last acks, and the sweep runs on it), and the agent its acks
        queues = [q for d in settings.receiver_districts for q in (Topology.events(d), Topology.acks(d))]
        deadline = time.monotonic() + DRAIN_LIMIT
        while alive() and time.monotonic() < deadline and any(
                s.ready or s.unacknowledged for s in broker.queue_stats(queues)):
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
