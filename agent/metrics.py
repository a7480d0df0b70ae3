"""The agent's Prometheus metrics (served with ``core.metrics``): records sent, acknowledged and refused, as they
happen; batch progress, the live-sync outbox and its lag, read from the district database at each scrape."""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Iterable, Iterator

from prometheus_client import Counter
from prometheus_client.core import REGISTRY, GaugeMetricFamily
from sqlalchemy import Engine, select

from agent.tables import batch, batch_object
from core.metrics import DatabaseCollector
from messages.envelope import Ack
from publisher.changes import Outbox

SENT = Counter("resync_agent_records_sent", "Records published and confirmed by the broker.", ["object", "kind"])
ACKNOWLEDGED = Counter("resync_agent_records_acknowledged", "Records the state answered ok.", ["object"])
REFUSED = Counter("resync_agent_records_refused", "Records the state refused, by error code.", ["object", "code"])
_OPEN = ("queued", "running", "sent")


def count_answers(acks: Iterable[Ack]) -> None:
    ok, refused = Tally[str](), Tally[tuple[str, str]]()
    for a in acks:
        if a.ok:
            ok[a.object or ""] += 1
        else:
            refused[a.object or "", a.error.code if a.error else ""] += 1
    for name, n in ok.items():
        ACKNOWLEDGED.labels(name).inc(n)
    for (name, code), n in refused.items():
        REFUSED.labels(name, code).inc(n)


class AgentCollector(DatabaseCollector):
    """Read at each scrape: the batches not finished yet, per state of their records, and live sync's backlog."""

    def __init__(self, engine: Engine, outbox: Outbox) -> None:
        self.engine, self.outbox = engine, outbox

    def _collect(self) -> Iterator[GaugeMetricFamily]:
        records = GaugeMetricFamily("resync_agent_batch_records", "Records of each unfinished batch: expected, "
                                    "sent, processed (answered) and errors.", labels=["batch", "kind", "status",
                                                                                      "state"])
        with self.engine.connect() as db:
            rows = db.execute(select(batch.c.batch_id, batch.c.kind, batch.c.status, batch_object.c.expected,
                                     batch_object.c.sent, batch_object.c.processed, batch_object.c.errors)
                              .join(batch_object, batch_object.c.batch_id == batch.c.batch_id)
                              .where(batch.c.status.in_(_OPEN))).all()
        totals: dict[tuple[str, str, str], list[int]] = {}
        for r in rows:
            t = totals.setdefault((r.batch_id, r.kind, r.status), [0, 0, 0, 0])
            for i, v in enumerate((r.expected, r.sent, r.processed, r.errors)):
                t[i] += v or 0
        for (batch_id, kind, status), values in totals.items():
            for state, v in zip(("expected", "sent", "processed", "errors"), values, strict=True):
                records.add_metric([batch_id, kind, status, state], v)
        yield records
        depth, oldest = self.outbox.depth()
        yield GaugeMetricFamily("resync_agent_outbox_depth", "Live changes captured and not yet published.",
                                value=depth)
        yield GaugeMetricFamily("resync_agent_live_lag_seconds", "Age of the oldest live change not yet published "
                                "(0: none waits).", value=max(0.0, time.time() - oldest) if oldest else 0.0)


def register(engine: Engine, outbox: Outbox) -> None:
    REGISTRY.register(AgentCollector(engine, outbox))
