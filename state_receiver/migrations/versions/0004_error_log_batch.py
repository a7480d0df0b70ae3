"""The state's error log names each error's batch, so retention removes a batch's errors with its inbox rows.

Revision ID: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
safe_online = True  # a nullable column and an index: the receiver's error writes wait while it is built


def upgrade() -> None:
    op.add_column("receiver_error_log", sa.Column("batch_id", sa.String(32)))
    op.create_index("ix_receiver_error_log_batch", "receiver_error_log", ["district_id", "batch_id"])
