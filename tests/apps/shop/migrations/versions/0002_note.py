"""r2: a nullable column (r1's code keeps working: it does not name it)."""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade():
    op.add_column("items", sa.Column("note", sa.String(50), nullable=True))


def downgrade():
    op.drop_column("items", "note")
