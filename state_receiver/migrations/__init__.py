"""The state side's schema versions (the receiver's tables): Alembic revisions in ``versions/``, run by
``core.migrations``."""

from pathlib import Path

from core.migrations import Side

STATE = Side("state", Path(__file__).parent, "resync_state_schema", "receiver_inbox")
