"""Batch counts are kept as answers are given: ``receiver_batch_count`` holds every batch's answers per object,
and the inbox only the answers no state row carries. Counts of batches answered before are taken from their
inbox rows.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
safe_online = True  # one INSERT ... SELECT over the inbox; the receiver's writes wait for it


def upgrade() -> None:
    bind = op.get_bind()
    if not sa.inspect(bind).has_table("receiver_batch_count"):
        op.create_table(
            "receiver_batch_count",
            sa.Column("district_id", sa.String(64), primary_key=True),
            sa.Column("batch_id", sa.String(32), primary_key=True),
            sa.Column("object", sa.String(64), primary_key=True),
            sa.Column("processed", sa.Integer, nullable=False),
            sa.Column("errors", sa.Integer, nullable=False),
        )
    bind.execute(sa.text(
        "INSERT INTO receiver_batch_count (district_id, batch_id, object, processed, errors) "
        "SELECT i.district_id, i.batch_id, i.object, count(*), sum(CASE WHEN i.status = 'error' THEN 1 ELSE 0 END) "
        "FROM receiver_inbox i WHERE i.batch_id IS NOT NULL AND i.object IS NOT NULL AND NOT EXISTS ("
        "SELECT 1 FROM receiver_batch_count c WHERE c.district_id = i.district_id AND c.batch_id = i.batch_id) "
        "GROUP BY i.district_id, i.batch_id, i.object"))
