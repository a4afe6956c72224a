"""Count transient retries apart from claims, so only dead runners count as failed attempts.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("jobs", "jobs_history"):
        op.add_column(table, sa.Column("retries", sa.Integer(), nullable=False,
                                       server_default="0"))


def downgrade() -> None:
    for table in ("jobs", "jobs_history"):
        op.drop_column(table, "retries")
