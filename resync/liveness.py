"""Whether the daemons a district relies on are there: the broker knows who consumes each queue.

The state's receiver consumes the district's event queue and the district's agent its ack queue; a
queue with no consumer means that daemon has died, was never started, or cannot reach the broker.
"""

from __future__ import annotations

from resync.brokers import QueueStats, Topology, broker_for
from resync.settings import Settings


def warnings(stats: list[QueueStats], district: str) -> list[str]:
    """One line per daemon that is not consuming, from queue statistics (queues not listed: unknown)."""
    by_name = {s.queue: s for s in stats}
    out = []
    events, acks = by_name.get(Topology.events(district)), by_name.get(Topology.acks(district))
    if events is not None and events.consumers == 0:
        out.append(f"no receiver is consuming {events.queue} ({events.ready:,} message(s) waiting): the state's "
                   "`resync receiver run` is not running or cannot reach the broker")
    if acks is not None and acks.consumers == 0:
        out.append(f"no agent is consuming {acks.queue} ({acks.ready:,} answer(s) waiting): start "
                   "`resync agent run` for this district")
    return out


def check(settings: Settings) -> list[str]:
    """The warnings for this district, or none when there is no broker to ask (the embedded default runs
    both daemons inside the command) or it cannot be reached (the command says so elsewhere)."""
    if not settings.broker_url:
        return []
    broker = broker_for(settings)
    try:
        return warnings(broker.queue_stats(Topology.queues(settings.district)), settings.district)
    except Exception:  # a broker that cannot be asked tells nothing about the daemons
        return []
