"""Whether what a district relies on is there: the broker knows who consumes each queue.

The state's receiver consumes the district's event queue and the district's agent its ack queue; a
queue with no consumer means that daemon has died, was never started, or cannot reach the broker. A
receiver that takes the district's records and answers none of them most often does not know the broker
user the district publishes as.
"""

from __future__ import annotations

from core.brokers import QueueStats, Topology, broker_for
from core.settings import Settings
from messages.errors import BrokerRefused, FatalError, ResyncError


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


def unanswered(stats: list[QueueStats], district: str, user: str, waiting: int) -> list[str]:
    """The likely cause when ``waiting`` records were sent a while ago, none of them is answered yet, and the
    state's receiver is there taking them."""
    events = {s.queue: s for s in stats}.get(Topology.events(district))
    if not waiting or events is None or events.consumers == 0:
        return []
    return [f"{waiting:,} record(s) sent and none answered, although the state's receiver consumes {events.queue}: "
            f"most likely the state's RESYNC_DISTRICT_USERS does not name {user!r} (the broker user this agent "
            f"publishes as) for {district}, so the receiver sets every record aside unanswered; ask the state to "
            "check it"]


def check(settings: Settings, waiting: int = 0, strict: bool = False) -> list[str]:
    """The warnings for this district (``waiting``: records sent a while ago with no answer at all), or none
    when there is no broker to ask (the embedded default runs both daemons inside the command). A broker that
    cannot be reached tells nothing about the daemons, unless ``strict``: then it is a ``FatalError``."""
    if not settings.broker_url:
        return []
    broker = broker_for(settings, "resync status")
    try:
        if strict:
            broker.connect().close()
        stats = broker.queue_stats(Topology.queues(settings.district))
    except BrokerRefused:
        raise
    except ResyncError as e:
        if strict:
            raise FatalError(f"cannot reach the broker: {e}") from None
        return []
    return warnings(stats, settings.district) + unanswered(stats, settings.district, broker.user, waiting)
