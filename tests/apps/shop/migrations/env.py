"""alembic's environment: runs in the release's own folder (the working directory), so the
marker it logs says which release's migration ran."""

import os

from alembic import context
from sqlalchemy import create_engine

with open("release.txt") as f:
    release = f.read().strip()
with open(os.path.join("data", "migration-runs.log"), "a") as f:  # data/ is shared by every release
    f.write(f"{release} {os.getcwd()}\n")

engine = create_engine("sqlite:///data/app.db")
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
