"""The agent log knows a batch's answers by record, not by msg_id: one row per record of a batch, appended in the
order the records were sent (``ux_agent_log_record``); an answer outside any batch is known by its msg_id
(``ux_agent_log_msg_id``, on those rows only). ``ix_agent_log_batch`` goes: the record index leads with the same
columns.

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
safe_online = True  # the agent's writes to the log wait while the indexes are built

LOOSE = "batch_id IS NULL OR object IS NULL OR ref_id IS NULL"


def _agent_log() -> sa.Table:
    """The table as this revision leaves it (SQLite rebuilds it to drop release 0.1's UNIQUE (msg_id))."""
    errors, loose = sa.text("status = 'error'"), sa.text(LOOSE)
    return sa.Table(
        "agent_log", sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("msg_id", sa.String(32), nullable=False),
        sa.Column("batch_id", sa.String(32)),
        sa.Column("object", sa.String(64)),
        sa.Column("ref_id", sa.String(32)),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("category", sa.Integer),
        sa.Column("code", sa.String(8)),
        sa.Column("description", sa.Text),
        sa.Column("logged_at", sa.String(32), nullable=False),
        sa.Index("ux_agent_log_record", "batch_id", "object", "ref_id", unique=True),
        sa.Index("ux_agent_log_msg_id", "msg_id", unique=True, postgresql_where=loose, sqlite_where=loose),
        sa.Index("ix_agent_log_batch_id", "batch_id", "id"),
        sa.Index("ix_agent_log_object_id", "object", "id"),
        sa.Index("ix_agent_log_errors", "id", postgresql_where=errors, sqlite_where=errors),
    )


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("agent_log", copy_from=_agent_log(), recreate="always"):
            pass
        return
    loose = sa.text(LOOSE)
    op.drop_constraint("agent_log_msg_id_key", "agent_log", type_="unique")
    op.drop_index("ix_agent_log_batch", "agent_log")
    op.create_index("ux_agent_log_record", "agent_log", ["batch_id", "object", "ref_id"], unique=True)
    op.create_index("ux_agent_log_msg_id", "agent_log", ["msg_id"], unique=True, postgresql_where=loose)
