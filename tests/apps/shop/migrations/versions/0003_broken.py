"""r3: a migration that raises (the release must never serve)."""

revision = "0003"
down_revision = "0002"


def upgrade():
    raise RuntimeError("0003: cannot backfill items.note (a bug in this release)")


def downgrade():
    pass
