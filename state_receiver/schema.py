"""The state database: every district's objects keyed by ``(district_id, ref_id)``, and the receiver's own
tables: the inbox (one row per message answered: the ack the district got), excluded records, batch
markers, the state's error log."""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Boolean, Column, Engine, Float, Index, Integer, MetaData, String, Table, Text

from core.migrations import prepare
from core.tables import REFID, object_tables
from messages.catalog import Catalog


class StateSchema:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.layouts: dict[str, Any] = {}
        """How each object's message becomes its row (``apply._layout``), worked out once."""
        self.metadata = MetaData()
        self.tables: dict[str, Table] = object_tables(self.metadata, catalog, state=True)
        m = self.metadata
        self.inbox = Table(
            "receiver_inbox", m,
            # msg_id first: lookups name many msg_ids of one district, and the index must serve them
            # even before the planner has statistics
            Column("msg_id", REFID, primary_key=True),
            Column("district_id", String(64), primary_key=True),
            Column("digest", String(32), nullable=False),
            Column("batch_id", REFID),
            Column("object", String(64)),
            Column("ref_id", REFID),
            Column("school_year", Integer),
            Column("status", String(8), nullable=False),
            Column("category", Integer),
            Column("code", String(8)),
            Column("description", Text),
            Column("received_at", String(32), nullable=False),
            Index("ix_receiver_inbox_batch", "district_id", "batch_id", "object"),
        )
        self.excluded = Table(
            "receiver_excluded", m,
            Column("district_id", String(64), primary_key=True),
            Column("object", String(64), primary_key=True),
            Column("ref_id", REFID, primary_key=True),
            Column("code", String(8), nullable=False),
        )
        # records deleted by a versioned delete: an older change read before the delete (a resync page) that
        # arrives after it must not bring the record back
        self.tombstones = Table(
            "receiver_tombstone", m,
            Column("district_id", String(64), primary_key=True),
            Column("object", String(64), primary_key=True),
            Column("ref_id", REFID, primary_key=True),
            Column("version", BigInteger, nullable=False),
            Column("deleted_at", String(32), nullable=False),
            Index("ix_receiver_tombstone_ref_id", "district_id", "ref_id"),
            Index("ix_receiver_tombstone_deleted_at", "deleted_at"),
        )
        # a batch's answers per object, kept when retention removes its inbox rows
        self.batch_counts = Table(
            "receiver_batch_count", m,
            Column("district_id", String(64), primary_key=True),
            Column("batch_id", REFID, primary_key=True),
            Column("object", String(64), primary_key=True),
            Column("processed", Integer, nullable=False),
            Column("errors", Integer, nullable=False),
        )
        # live sync as the state sees it, per district: the last change applied and how long it took to arrive
        self.live = Table(
            "receiver_live", m,
            Column("district_id", String(64), primary_key=True),
            Column("day", String(10), nullable=False),
            Column("changes", Integer, nullable=False),  # live changes answered that day
            Column("errors", Integer, nullable=False),
            Column("last_change", String(32)),  # when the district captured the last change applied
            Column("last_applied", String(32)),
            Column("lag_ms", BigInteger),  # capture to apply, for the last delivery batch
        )
        # the receivers sharing this database, each seen a moment ago: they spread the districts between them
        self.members = Table(
            "receiver_member", m,
            Column("name", String(128), primary_key=True),
            Column("host", String(255), nullable=False),
            Column("pid", Integer, nullable=False),
            Column("started_at", String(32), nullable=False),
            Column("seen", Float, nullable=False),  # the database's clock, in seconds: receivers' clocks may differ
            Column("districts", Text, nullable=False),  # JSON: the districts it serves (RESYNC_DISTRICTS)
            Column("consuming", Text, nullable=False),  # JSON: those whose queues it consumes now
        )
        # which receiver may consume each district's event queue: taken only from a receiver no longer running,
        # given up once it has answered all the queue sent it
        self.claims = Table(
            "receiver_claim", m,
            Column("district_id", String(64), primary_key=True),
            Column("receiver", String(128), nullable=False),
            Column("claimed_at", String(32), nullable=False),
        )
        self.markers = Table(
            "receiver_marker", m,
            Column("district_id", String(64), primary_key=True),
            Column("msg_id", REFID, primary_key=True),
            Column("batch_id", REFID, nullable=False),
            Column("kind", String(16), nullable=False),
            Column("object", String(64)),
            Column("school_year", Integer),
            Column("count", Integer),
            Column("received_at", String(32), nullable=False),
        )
        self.error_log = Table(
            "receiver_error_log", m,
            Column("id", Integer, primary_key=True, autoincrement=True),
            Column("district_id", String(64)),
            Column("msg_id", String(64)),
            Column("object", String(64)),
            Column("ref_id", String(64)),
            Column("batch_id", REFID),  # retention removes a batch's errors with its other rows
            Column("category", Integer, nullable=False),
            Column("code", String(8), nullable=False),
            Column("description", Text, nullable=False),
            Column("extended", Text),
            Column("logged_at", String(32), nullable=False),
            Index("ix_receiver_error_log_batch", "district_id", "batch_id"),
        )

        # records a finished resync found gone from the district, while they are removed
        self.sweep = Table(
            "receiver_sweep", m,
            Column("district_id", String(64), primary_key=True),
            Column("object", String(64), primary_key=True),
            Column("ref_id", REFID, primary_key=True),
        )
        # records gone from the district that still had children at the state when their batch ended: they
        # go once those children have (a later batch of the child's object or year removes or moves them)
        self.deferred = Table(
            "receiver_deferred", m,
            Column("district_id", String(64), primary_key=True),
            Column("object", String(64), primary_key=True),
            Column("ref_id", REFID, primary_key=True),
            Column("held_by", String(64), nullable=False),
            Column("deferred_at", String(32), nullable=False),
        )
        self.sweep_log = Table(
            "receiver_sweep_log", m,
            Column("id", Integer, primary_key=True, autoincrement=True),
            Column("district_id", String(64), nullable=False),
            Column("batch_id", REFID, nullable=False),
            Column("object", String(64), nullable=False),
            Column("school_year", Integer),
            Column("removed", Integer, nullable=False),
            Column("note", Text),
            Column("swept_at", String(32), nullable=False),
        )
        self.verifications = Table(
            "state_verification", m,
            *_asked_of_a_district(),  # status: requested | completed | failed
            Column("school_year", Integer),
            Column("completed_at", String(32)),
            Column("result", Text),  # JSON: the district's per-object comparison
            Column("message", Text),  # why the district could not verify
        )
        self.requests = Table(
            "state_request", m,
            *_asked_of_a_district(),  # status: requested | running | completed | cancelled
            Column("batch_id", REFID),
            Column("school_year", Integer),
            Column("started_at", String(32)),
            Column("completed_at", String(32)),
        )
        self.alerts = Table(
            "state_alert", m,
            Column("id", Integer, primary_key=True, autoincrement=True),
            Column("process", String(64), nullable=False),
            Column("name", String(200), nullable=False),
            Column("posted", String(32), nullable=False),
            Column("read", Boolean, nullable=False, default=False),
            Column("detail", Text),
        )

    def create(self, engine: Engine) -> None:
        """The state's tables at this version's schema (see ``core.migrations``)."""
        from state_receiver.migrations import STATE

        prepare(engine, STATE, [self.metadata])


def _asked_of_a_district() -> list[Column[Any]]:
    """What the state keeps of anything it asks a district's agent to do (resync, verify)."""
    return [
        Column("request_id", REFID, primary_key=True),
        Column("district_id", String(64), nullable=False),
        Column("objects", Text),  # JSON list, or null for all
        Column("year", String(8), nullable=False),
        Column("requested_by", String(128), nullable=False),
        Column("requested_at", String(32), nullable=False),
        Column("status", String(16), nullable=False),
    ]
