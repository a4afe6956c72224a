"""Add the runner's job claim columns, its own tables and the new-job notification.

An existing vkdb keeps working for the web service: it only inserts 'not_started' jobs,
and every added column is nullable or has a default.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

NOTIFY_CHANNEL = "georeference_jobs"

_JOB_COLUMNS = (
    ("raw_map_id", sa.Integer(), None),
    ("claimed_by", sa.String(255), None),
    ("started", sa.DateTime(), None),
    ("finished", sa.DateTime(), None),
    ("lease_expires", sa.DateTime(), None),
    ("attempts", sa.Integer(), "0"),
)


def upgrade() -> None:
    for table in ("jobs", "jobs_history"):
        for name, type_, default in _JOB_COLUMNS:
            op.add_column(table, sa.Column(name, type_, nullable=default is None,
                                           server_default=default))
    op.create_index("jobs_claim_idx", "jobs", ["state", "raw_map_id", "submitted", "id"])

    op.create_table(
        "search_documents",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("raw_map_id", sa.Integer(), nullable=False, unique=True),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("has_georeference", sa.Boolean(), nullable=False),
        sa.Column("min_lon", sa.Float()),
        sa.Column("min_lat", sa.Float()),
        sa.Column("max_lon", sa.Float()),
        sa.Column("max_lat", sa.Float()),
        sa.Column("updated", sa.DateTime(), nullable=False),
    )
    op.create_index("search_documents_bbox_idx", "search_documents",
                    ["min_lon", "max_lon", "min_lat", "max_lat"])
    op.create_table(
        "search_outbox",
        sa.Column("raw_map_id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("queued", sa.DateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text()),
    )
    op.create_table(
        "runners",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started", sa.DateTime(), nullable=False),
        sa.Column("heartbeat", sa.DateTime(), nullable=False),
        sa.Column("current_job_id", sa.Integer()),
    )

    # A new job wakes the runners listening on the channel at once instead of at their
    # next poll.
    op.execute(f"""
        CREATE OR REPLACE FUNCTION georeference_notify_job() RETURNS trigger AS $$
        BEGIN
            PERFORM pg_notify('{NOTIFY_CHANNEL}', NEW.id::text);
            RETURN NEW;
        END;
        $$ LANGUAGE plpgsql;
    """)
    op.execute("DROP TRIGGER IF EXISTS georeference_notify_job ON jobs")
    op.execute("""
        CREATE TRIGGER georeference_notify_job AFTER INSERT ON jobs
        FOR EACH ROW EXECUTE FUNCTION georeference_notify_job()
    """)


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS georeference_notify_job ON jobs")
    op.execute("DROP FUNCTION IF EXISTS georeference_notify_job()")
    op.drop_table("runners")
    op.drop_table("search_outbox")
    op.drop_index("search_documents_bbox_idx", table_name="search_documents")
    op.drop_table("search_documents")
    op.drop_index("jobs_claim_idx", table_name="jobs")
    for table in ("jobs", "jobs_history"):
        for name, _type, _default in reversed(_JOB_COLUMNS):
            op.drop_column(table, name)
