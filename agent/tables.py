"""Every table the agent keeps in the district database, in one metadata: batch history (the vendor's
DISBatchHistory, kept for every batch), per-object counts, the agent log (one final outcome per record), the
error log, process alerts, and the verification runs with the state's manifest parts and the differences found."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Index, Integer, MetaData, String, Table, Text, text

metadata = MetaData()

batch = Table(
    "resync_batch", metadata,
    Column("batch_id", String(32), primary_key=True),
    Column("kind", String(16), nullable=False),  # full | partial
    Column("initiator", String(16), nullable=False),  # district | state
    Column("requested_by", String(128), nullable=False),
    Column("school_year", Integer, nullable=False),
    Column("check_dependencies", Boolean, nullable=False),
    Column("status", String(16), nullable=False),  # queued | running | sent | completed | failed | cancelled
    Column("created_at", String(32), nullable=False),
    Column("started_at", String(32)),
    Column("sent_at", String(32)),
    Column("completed_at", String(32)),
    Column("message", Text),
    Column("request_id", String(32), unique=True),  # the state's request, for a state-initiated batch
    Column("max_rate", Integer),  # records per second the agent may send, or null for as fast as it can
    Column("delta", Boolean),  # only what differs from the state's manifest (null: an older, whole batch)
)

batch_object = Table(
    "resync_batch_object", metadata,
    Column("batch_id", String(32), primary_key=True),
    Column("object", String(64), primary_key=True),
    Column("position", Integer, nullable=False),
    Column("school_year", Integer, nullable=False),
    Column("expected", Integer, nullable=False),
    Column("started_at", String(32)),
    Column("sent_at", String(32)),
    Column("completed_at", String(32)),
    Column("changes_sent_at", String(32)),  # a delta batch: its missing and different records all sent
    Column("sent", Integer, nullable=False, default=0),
    Column("processed", Integer, nullable=False, default=0),
    Column("errors", Integer, nullable=False, default=0),
    Column("last_ref_id", String(32), nullable=False, default=""),
    Index("ix_resync_batch_object_object", "object", "school_year"),
)

batch_selection = Table(
    "resync_batch_selection", metadata,
    # the records a selective batch sends (`resync send OBJECT --ref-id ...`, with --cascade everything under them)
    Column("batch_id", String(32), primary_key=True),
    Column("object", String(64), primary_key=True),
    Column("ref_id", String(32), primary_key=True),
)

_ERRORS = text("status = 'error'")
LOOSE = "batch_id IS NULL OR object IS NULL OR ref_id IS NULL"
"""An answer that names no record of a batch (live sync, or a message the state could not read): known by
msg_id alone."""
agent_log = Table(
    "agent_log", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("msg_id", String(32), nullable=False),
    Column("batch_id", String(32)),
    Column("object", String(64)),
    Column("ref_id", String(32)),
    Column("status", String(8), nullable=False),
    Column("category", Integer),
    Column("code", String(8)),
    Column("description", Text),
    Column("logged_at", String(32), nullable=False),
    # one answer per record of a batch: keyed by the record, so a batch's answers, arriving in the order its
    # records were sent (object by object, ref_id by ref_id), are appended at the end of its range of the index
    # rather than scattered over it as msg_ids (hashes) would be
    Index("ux_agent_log_record", "batch_id", "object", "ref_id", unique=True),
    Index("ux_agent_log_msg_id", "msg_id", unique=True, postgresql_where=text(LOOSE), sqlite_where=text(LOOSE)),
    # the console pages the log newest first by id, filtered by batch, by object or to errors: each filter has
    # an index in id order, so a page costs the same at any depth (appends at the end of each range: cheap)
    Index("ix_agent_log_batch_id", "batch_id", "id"),
    Index("ix_agent_log_object_id", "object", "id"),
    Index("ix_agent_log_errors", "id", postgresql_where=_ERRORS, sqlite_where=_ERRORS),
)

error_log = Table(
    "agent_error_log", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("logged_at", String(32), nullable=False),
    Column("batch_id", String(32)),
    Column("object", String(64)),
    Column("ref_id", String(32)),
    Column("msg_id", String(32)),
    Column("category", Integer),
    Column("code", String(8)),
    Column("description", Text, nullable=False),
    Column("extended", Text),
)

live_in_flight = Table(
    "live_in_flight", metadata,
    # a change message the broker confirmed and the state has not answered yet: where the lag is counted from,
    # and what an answer 9.1 needs to heal the record
    Column("msg_id", String(32), primary_key=True),
    Column("object", String(64), nullable=False),
    Column("ref_id", String(32), nullable=False),
    Column("action", String(8), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("captured", String(32), nullable=False),
    Column("sent_at", String(32), nullable=False),
    Column("heal_of", String(32)),  # the change this message heals (a parent, or the record again)
    Column("heal", String(16)),  # wanted | sent: the state answered 9.1 and the agent heals it
)

live_day = Table(
    "live_day", metadata,
    # live changes per object and day: what `resync live` shows without reading the agent log
    Column("day", String(10), primary_key=True),
    Column("object", String(64), primary_key=True),
    Column("sent", Integer, nullable=False, default=0),
    Column("answered", Integer, nullable=False, default=0),
    Column("errors", Integer, nullable=False, default=0),
    Column("healed", Integer, nullable=False, default=0),
    Column("last_change", String(32)),  # when the last change sent was captured
    Column("last_answer", String(32)),
)

process_alert = Table(
    "process_alert", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("process", String(64), nullable=False),
    Column("name", String(200), nullable=False),
    Column("posted", String(32), nullable=False),
    Column("due", String(32)),
    Column("read", Boolean, nullable=False, default=False),
    Column("detail", Text),
)

verify_run = Table(
    "verify_run", metadata,
    Column("run_id", String(32), primary_key=True),
    Column("initiator", String(16), nullable=False),  # district | state
    Column("requested_by", String(128), nullable=False),
    Column("request_id", String(32), unique=True),  # the state's request, when the state asked
    Column("batch_id", String(32), unique=True),  # the delta batch this run plans
    Column("school_year", Integer, nullable=False),
    Column("objects", Text, nullable=False),  # JSON list, parents first
    Column("status", String(16), nullable=False),  # queued | requested | completed | failed
    Column("created_at", String(32), nullable=False),
    Column("requested_at", String(32)),
    Column("completed_at", String(32)),
    Column("message", Text),
    Column("result", Text),  # JSON: one Comparison per object
)

verify_part = Table(
    "verify_part", metadata,
    Column("run_id", String(32), primary_key=True),
    Column("object", String(64), primary_key=True),
    Column("part", Integer, primary_key=True),
    Column("last", Boolean, nullable=False),
    Column("entries", Text, nullable=False),
    Column("error", Text),
)

verify_diff = Table(
    "verify_diff", metadata,
    Column("run_id", String(32), primary_key=True),
    Column("object", String(64), primary_key=True),
    Column("ref_id", String(32), primary_key=True),
    Column("kind", String(16), nullable=False),  # district_only | state_only | mismatched
)
