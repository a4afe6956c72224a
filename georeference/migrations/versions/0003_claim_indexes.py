"""Partial indexes that keep a claim fast however long the jobs table grows.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("jobs_pending_idx", "jobs", ["submitted", "id"],
                    postgresql_where=sa.text("state = 'not_started'"))
    op.create_index("jobs_running_idx", "jobs", ["lease_expires"],
                    postgresql_where=sa.text("state = 'running'"))


def downgrade() -> None:
    op.drop_index("jobs_running_idx", table_name="jobs")
    op.drop_index("jobs_pending_idx", table_name="jobs")
