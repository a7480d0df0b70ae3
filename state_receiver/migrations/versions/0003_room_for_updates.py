"""The state's object tables leave half of each page free (PostgreSQL ``fillfactor``): every resync rewrites each
row, and with room on its page the new version goes beside the old one and no index is touched (a heap-only
update). Pages written from now on get the room; ``VACUUM FULL`` or ``pg_repack`` gives it to the rest.

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
safe_online = True  # a storage parameter: no rewrite, a brief lock per table

FILLFACTOR = 50


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    inspector = sa.inspect(bind)
    for name in inspector.get_table_names():
        columns = {c["name"] for c in inspector.get_columns(name)}
        if {"district_id", "ref_id", "last_msg_id", "applied_at"} <= columns:  # an object table
            op.execute(f'ALTER TABLE "{name}" SET (fillfactor = {FILLFACTOR})')
