"""Alembic environment: runs the runner's migrations on the connection it is handed."""

from __future__ import annotations

from alembic import context

from georeference.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the migrations through 'georeference-runner init-db'")

context.configure(connection=connection, target_metadata=Base.metadata,
                  version_table="georeference_alembic_version")
with context.begin_transaction():
    context.run_migrations()
