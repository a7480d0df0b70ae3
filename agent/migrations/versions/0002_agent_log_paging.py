"""The agent log gets an index in id order per batch, per object and for errors: the console pages it by id
under each filter, and a page costs the same at any depth.

Revision ID: 0002
"""

from alembic import op
from sqlalchemy import text

revision = "0002"
down_revision = "0001"
safe_online = True  # CREATE INDEX holds the agent's writes to the log while it runs, and they wait


def upgrade() -> None:
    op.create_index("ix_agent_log_batch_id", "agent_log", ["batch_id", "id"])
    op.create_index("ix_agent_log_object_id", "agent_log", ["object", "id"])
    errors = text("status = 'error'")
    op.create_index("ix_agent_log_errors", "agent_log", ["id"], postgresql_where=errors, sqlite_where=errors)
