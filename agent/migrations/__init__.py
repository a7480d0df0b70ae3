"""The district side's schema versions (the agent's own tables; never the SIS's): Alembic revisions in
``versions/``, run by ``core.migrations``."""

from pathlib import Path

from core.migrations import Side

DISTRICT = Side("district", Path(__file__).parent, "resync_district_schema", "resync_batch")
