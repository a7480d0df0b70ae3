"""The agent's share of verification: it asks the state for its manifest, compares it with the district's
records as it arrives, plans delta batches from the differences, and answers the state's verify
requests with a report. Runs on the agent's publisher thread; manifest parts come in on its ack thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy import Engine

from agent.status import pick_objects
from agent.store import STATE, AgentStore
from agent.verification_store import PENDING, VerifyStore, compare_run
from core.brokers import Broker, Topology
from core.retry import TRANSIENT
from core.settings import Settings
from messages.catalog import Catalog
from messages.codec import MAX_TEXT, REPORT_REFS, encode_manifest_request, encode_verify_report
from messages.envelope import Kind, ManifestPart, ManifestRequest, ResyncRequest, VerifyReport, now_ts, stable_id
from messages.errors import ConfigError, FatalError
from messages.manifest import Comparison
from messages.text import clean

log = structlog.get_logger()


class Verifier:
    def __init__(self, settings: Settings, broker: Broker, engine: Engine, catalog: Catalog,
                 store: AgentStore) -> None:
        self.settings, self.broker, self.engine, self.catalog = settings, broker, engine, catalog
        self.district = settings.district
        self.store = store
        self.runs = VerifyStore(engine)
        self._parts = threading.Condition()  # notified as manifest parts come in

    def on_parts(self, parts: list[ManifestPart]) -> None:
        """Keep the parts of verifications waiting for them; a part of anything else is dropped (logged)."""
        # "queued" too: the request goes out before the run is marked requested, and the answer can come first
        waiting = {r for r in {p.request for p in parts} if (run := self.runs.run(r)) and run["status"] in PENDING}
        stray = [p for p in parts if p.request not in waiting]
        if stray:
            log.warning("manifest parts for no verification waiting for them dropped", parts=len(stray),
                        requests=sorted({p.request for p in stray})[:5])
        if waiting:
            self.runs.add_parts([p for p in parts if p.request in waiting])
        with self._parts:
            self._parts.notify_all()

    def plan_delta(self, batch_id: str, year: int, should_stop: Callable[[], bool]) -> str | None:
        """Compare the batch's objects with the state's manifest (once: a resumed batch keeps its plan) and set
        each object's expected count to its differences. Returns the run, or None if stopped first."""
        run = self.runs.for_batch(batch_id)
        if run is None:
            names = [o["object"] for o in self.store.batch_objects(batch_id)]
            self.runs.queue(names, year, requested_by="delta batch", batch_id=batch_id)
            run = self.runs.for_batch(batch_id)
            assert run is not None
        while run["status"] != "completed":
            if run["status"] == "failed":
                raise FatalError(f"the delta batch could not be planned: {run['message']}")
            if run["status"] == "queued":
                self._request_manifest(run)
            elif self._answering(run):
                results = self._compare(run, should_stop)
                if results is not None:
                    self.store.set_expected(batch_id, {r.object: r.differences for r in results})
                elif should_stop():
                    return None
            elif should_stop():
                return None
            else:
                time.sleep(0.3)
            run = self.runs.run(run["run_id"]) or run
        return str(run["run_id"])

    def step(self, stop: threading.Event) -> bool:
        """Move verification runs on: send the manifest requests queued, compare the manifests coming in."""
        did = False
        for run in self.runs.pending():
            try:
                if run["status"] == "queued":
                    self._request_manifest(run)
                    did = True
                elif self._answering(run):
                    self._compare(run, stop.is_set)
                    did = True
            except TRANSIENT:
                raise
            except Exception as e:  # a bug or bad data: fail this run, keep publishing
                log.exception("verification failed", run=run["run_id"])
                self.runs.set(run["run_id"], status="failed", completed_at=now_ts(), message=str(e)[:1000])
        return did

    def _answering(self, run: dict[str, Any]) -> bool:
        """The state has reached the request and is sending its manifest: from here the rest follows at once,
        so the comparison can start, one object behind the state."""
        return self.runs.has_manifest(run["run_id"], run["objects"][0])

    def _request_manifest(self, run: dict[str, Any]) -> None:
        request = ManifestRequest(stable_id(run["run_id"], "manifest"), now_ts(), self.district, run["run_id"],
                                  run["objects"], run["school_year"])
        with self.broker.connect() as conn:
            conn.publish(Topology.events(self.district), encode_manifest_request(request), kind=Kind.MANIFEST_REQUEST,
                         message_id=request.msg_id)
            conn.flush()
        self.runs.set(run["run_id"], status="requested", requested_at=now_ts())
        log.info("manifest requested", run=run["run_id"], objects=len(run["objects"]))

    def _compare(self, run: dict[str, Any], should_stop: Callable[[], bool]) -> list[Comparison] | None:
        run_id = run["run_id"]

        def arrived(name: str) -> bool:
            with self._parts:
                while not self.runs.has_manifest(run_id, name):
                    if should_stop():
                        return False
                    self._parts.wait(0.5)
            return True

        try:
            results = compare_run(self.engine, self.catalog, self.runs, run_id, arrived)
            if results is None:
                return None
        except TRANSIENT:
            raise
        except Exception as e:  # bad data or a bug: fail this run, keep serving
            log.exception("verification failed", run=run_id)
            if run["initiator"] == STATE and run["request_id"]:
                self._report(run["request_id"], run["school_year"], [], f"the district could not compare: {e}")
            self.runs.set(run_id, status="failed", completed_at=now_ts(), message=str(e)[:1000])
            return None
        if run["initiator"] == STATE and run["request_id"]:  # first: a crash before ``finish`` compares again
            details = self.runs.details(run_id)
            self._report(run["request_id"], run["school_year"],
                         [{**r.as_dict(), "details": {k: v[:REPORT_REFS] for k, v in
                                                      details.get(r.object, {}).items()}} for r in results])
        self.runs.finish(run_id, results)
        log.info("verification completed", run=run_id, differences=sum(r.differences for r in results))
        return results

    def _report(self, request_id: str, year: int, objects: list[dict[str, Any]], error: str | None = None) -> None:
        """Send the state the outcome of the verification it asked for (the same id each time: a report sent
        twice is filed once)."""
        report = VerifyReport(stable_id(request_id, "report"), now_ts(), self.district, request_id, year, objects,
                              None if error is None else clean(error, MAX_TEXT))
        with self.broker.connect() as conn:
            conn.publish(Topology.events(self.district), encode_verify_report(report), kind=Kind.VERIFY_REPORT,
                         message_id=report.msg_id)
            conn.flush()

    def on_request(self, request: ResyncRequest) -> str | None:
        """The state asks to compare: queue a verification whose outcome goes back to the state."""
        if self.runs.has_request(request.request_id):
            return None
        year = self.settings.resolve_year(request.year)
        try:
            names = pick_objects(self.catalog, self.settings, request.objects or [],
                                 send_all=request.objects is None, check_dependencies=False, year=year, strict=False)
        except ConfigError:  # an empty list of objects
            names = []
        if not names:
            reason = f"state verify request {request.request_id} names no object that syncs for school year {year}"
            self.store.log_error(reason, category=8)
            self._report(request.request_id, year, [], reason)
            return None
        self.runs.queue(names, year, initiator=STATE, requested_by="state", request_id=request.request_id)
        log.info("state verification requested", objects=len(names), year=year)
        return None
