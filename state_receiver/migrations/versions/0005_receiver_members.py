"""Receivers sharing a state database spread the districts between them: each keeps a row while it runs, and a
claim on each district it consumes.

Revision ID: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
safe_online = True  # a new table


def upgrade() -> None:
    if not sa.inspect(op.get_bind()).has_table("receiver_claim"):
        op.create_table(
            "receiver_claim",
            sa.Column("district_id", sa.String(64), primary_key=True),
            sa.Column("receiver", sa.String(128), nullable=False),
            sa.Column("claimed_at", sa.String(32), nullable=False),
        )
    if sa.inspect(op.get_bind()).has_table("receiver_member"):
        return
    op.create_table(
        "receiver_member",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", sa.String(32), nullable=False),
        sa.Column("seen", sa.Float, nullable=False),
        sa.Column("districts", sa.Text, nullable=False),
        sa.Column("consuming", sa.Text, nullable=False),
    )
