"""Release 0.1: the layout every database made before schema versions has (the base of every upgrade).

Revision ID: 0001
"""

revision = "0001"
down_revision = None
safe_online = True


def upgrade() -> None:
    """Nothing: a database of release 0.1 is stamped with this revision as it is."""
