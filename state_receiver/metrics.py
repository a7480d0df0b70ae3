"""The receiver's Prometheus metrics (served with ``core.metrics``), per district: records applied and refused
by object and error code, dead letters and apply time as they happen; at each scrape, the districts it consumes
and live sync's lag as the state saw it last."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import Counter, Histogram
from prometheus_client.core import REGISTRY, GaugeMetricFamily
from sqlalchemy import Engine, select

from core.metrics import DatabaseCollector
from messages.envelope import Ack
from state_receiver.schema import StateSchema

RECORDS = Counter("resync_receiver_records", "Records answered, ok or error.", ["district", "object", "result"])
REFUSED = Counter("resync_receiver_refused", "Records refused, by error code.", ["district", "code"])
DEAD_LETTERS = Counter("resync_receiver_dead_letters", "Messages set aside on the dead-letter queue.", ["district"])
APPLY_SECONDS = Histogram("resync_receiver_apply_seconds", "Decoding and applying one delivery batch (up to a "
                          "thousand messages, every district in it).",
                          buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))


def count_answers(acks: Mapping[str, list[Ack]], dead: Iterator[str]) -> None:
    records, refused = Tally[tuple[str, str, str]](), Tally[tuple[str, str]]()
    for district, answers in acks.items():
        for a in answers:
            records[district, a.object or "", "ok" if a.ok else "error"] += 1
            if not a.ok:
                refused[district, a.error.code if a.error else ""] += 1
    for (district, name, result), n in records.items():
        RECORDS.labels(district, name, result).inc(n)
    for (district, code), n in refused.items():
        REFUSED.labels(district, code).inc(n)
    for district, n in Tally(dead).items():
        DEAD_LETTERS.labels(district).inc(n)


class ReceiverCollector(DatabaseCollector):
    def __init__(self, engine: Engine, schema: StateSchema, districts: Callable[[], tuple[set[str], set[str]]]) -> None:
        self.engine, self.schema, self.districts = engine, schema, districts

    def _collect(self) -> Iterator[GaugeMetricFamily]:
        consuming, served = self.districts()
        gauge = GaugeMetricFamily("resync_receiver_consuming", "1 for each district whose queue this receiver "
                                  "consumes, 0 for those it serves and another receiver has.", labels=["district"])
        for d in sorted(served | consuming):
            gauge.add_metric([d], 1 if d in consuming else 0)
        yield gauge
        live = self.schema.live
        with self.engine.connect() as db:
            rows = db.execute(select(live.c.district_id, live.c.lag_ms).where(
                live.c.district_id.in_(sorted(consuming)))).all()
        lag = GaugeMetricFamily("resync_receiver_live_lag_seconds", "Capture at the district to apply at the state, "
                                "for the last live changes applied.", labels=["district"])
        for district, ms in rows:
            lag.add_metric([district], (ms or 0) / 1000)
        yield lag


def register(engine: Engine, schema: StateSchema, districts: Callable[[], tuple[set[str], set[str]]]) -> None:
    REGISTRY.register(ReceiverCollector(engine, schema, districts))
