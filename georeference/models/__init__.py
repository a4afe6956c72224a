"""SQLAlchemy models of the vkdb, with the table and column names the web service uses.

The web service owns ``raw_maps``, ``metadata``, ``transformations`` and inserts ``jobs``.
The runner writes ``georef_maps``, ``jobs_history`` and its own tables ``search_documents``
and ``search_outbox``.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text,
                        text)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from georeference.models.geometry import Geometry

JOB_STATES = ("not_started", "running", "completed", "failed")
VALIDATION_STATES = ("missing", "valid", "invalid")


def utcnow() -> dt.datetime:
    """Return the current time in UTC without a zone, as the vkdb's timestamp columns hold it."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    """Declarative base of all vkdb models."""


class RawMap(Base):
    """A scanned map in the library's collection."""

    __tablename__ = "raw_maps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    file_name: Mapped[str] = mapped_column(String(255), nullable=False)
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    map_type: Mapped[str] = mapped_column(String(255), nullable=False)
    # EPSG code of the CRS the map is usually georeferenced in.
    default_crs: Mapped[int | None] = mapped_column(Integer)
    rel_path: Mapped[str] = mapped_column(String(255), nullable=False)
    map_scale: Mapped[int | None] = mapped_column(Integer)
    allow_download: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)

    metadata_record: Mapped["Metadata | None"] = relationship(
        back_populates="raw_map", uselist=False)


class Metadata(Base):
    """Catalogue metadata of a raw map."""

    __tablename__ = "metadata"

    raw_map_id: Mapped[int] = mapped_column(ForeignKey("raw_maps.id"), primary_key=True)
    title: Mapped[str | None] = mapped_column(Text)
    title_short: Mapped[str | None] = mapped_column(Text)
    title_serie: Mapped[str | None] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    measures: Mapped[str | None] = mapped_column(Text)
    type: Mapped[str | None] = mapped_column(Text)
    technic: Mapped[str | None] = mapped_column(Text)
    ppn: Mapped[str | None] = mapped_column(Text)
    permalink: Mapped[str | None] = mapped_column(Text)
    license: Mapped[str | None] = mapped_column(Text)
    owner: Mapped[str | None] = mapped_column(Text)
    link_zoomify: Mapped[str | None] = mapped_column(Text)
    time_of_publication: Mapped[dt.datetime | None] = mapped_column(DateTime)
    link_thumb_small: Mapped[str | None] = mapped_column(Text)
    link_thumb_mid: Mapped[str | None] = mapped_column(Text)

    raw_map: Mapped[RawMap] = relationship(back_populates="metadata_record")


class Transformation(Base):
    """A set of ground control points and a clip polygon submitted for a raw map."""

    __tablename__ = "transformations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    submitted: Mapped[dt.datetime] = mapped_column(DateTime, nullable=False, default=utcnow)
    user_id: Mapped[str | None] = mapped_column(String(255))
    # JSON text: {"source": "pixel", "target": "EPSG:…", "algorithm": …, "gcps": […]}.
    params: Mapped[str] = mapped_column(Text, nullable=False)
    # EPSG code of the CRS to produce the map in, or None for the GCPs' own CRS.
    target_crs: Mapped[int | None] = mapped_column(Integer)
    validation: Mapped[str] = mapped_column(String(20), nullable=False, default="missing")
    raw_map_id: Mapped[int] = mapped_column(ForeignKey("raw_maps.id"), nullable=False)
    # Id of the transformation this one replaces, 0 for none.
    overwrites: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    comment: Mapped[str | None] = mapped_column(Text)
    clip: Mapped[str | None] = mapped_column(Geometry("GEOMETRY"))


class GeorefMap(Base):
    """The georeferenced product of a raw map: which transformation is enabled, and where."""

    __tablename__ = "georef_maps"

    raw_map_id: Mapped[int] = mapped_column(ForeignKey("raw_maps.id"), primary_key=True)
    transformation_id: Mapped[int] = mapped_column(
        ForeignKey("transformations.id"), nullable=False)
    rel_path: Mapped[str] = mapped_column(String(255), nullable=False)
    # Footprint of the geo image as a polygon in EPSG:4326.
    extent: Mapped[str | None] = mapped_column(Geometry("POLYGON"))
    last_processed: Mapped[dt.datetime | None] = mapped_column(DateTime)


class _JobColumns:
    type: Mapped[str] = mapped_column(String(100), nullable=False)
    # JSON text, for example {"transformation_id": 12}.
    description: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(20), nullable=False, default="not_started")
    submitted: Mapped[dt.datetime] = mapped_column(DateTime, nullable=False, default=utcnow)
    user_id: Mapped[str | None] = mapped_column(String(255))
    comment: Mapped[str | None] = mapped_column(Text)

    # Columns of the runner, added by its migration; the web service leaves them at their
    # defaults. raw_map_id is resolved from the description before a job is claimed, so
    # jobs of one map run one at a time and in order (0: the job concerns no single map).
    raw_map_id: Mapped[int | None] = mapped_column(Integer)
    claimed_by: Mapped[str | None] = mapped_column(String(255))
    started: Mapped[dt.datetime | None] = mapped_column(DateTime)
    finished: Mapped[dt.datetime | None] = mapped_column(DateTime)
    lease_expires: Mapped[dt.datetime | None] = mapped_column(DateTime)
    # Claims of the job that did not end in a release; a job whose runners died this
    # often fails.
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0,
                                          server_default="0")
    # Releases after transient errors (database or index unreachable); sets the backoff.
    retries: Mapped[int] = mapped_column(Integer, nullable=False, default=0,
                                         server_default="0")


class Job(_JobColumns, Base):
    """A unit of work queued by the web service or an operator."""

    __tablename__ = "jobs"
    __table_args__ = (
        # The queue in claim order, and the running jobs by lease, for the claim query.
        Index("jobs_pending_idx", "submitted", "id",
              postgresql_where=text("state = 'not_started'"),
              sqlite_where=text("state = 'not_started'")),
        Index("jobs_running_idx", "lease_expires",
              postgresql_where=text("state = 'running'"),
              sqlite_where=text("state = 'running'")),
        Index("jobs_claim_idx", "state", "raw_map_id", "submitted", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)


class JobHistory(_JobColumns, Base):
    """A copy of a job in its final state."""

    __tablename__ = "jobs_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)


class SearchDocument(Base):
    """One search document per raw map, for the embedded ``database`` search backend."""

    __tablename__ = "search_documents"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    raw_map_id: Mapped[int] = mapped_column(Integer, nullable=False, unique=True)
    document: Mapped[str] = mapped_column(Text, nullable=False)
    has_georeference: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    # Bounding box of the document's geometry in EPSG:4326, for bounding-box queries.
    min_lon: Mapped[float | None] = mapped_column(Float)
    min_lat: Mapped[float | None] = mapped_column(Float)
    max_lon: Mapped[float | None] = mapped_column(Float)
    max_lat: Mapped[float | None] = mapped_column(Float)
    updated: Mapped[dt.datetime] = mapped_column(DateTime, nullable=False, default=utcnow)


class SearchOutbox(Base):
    """A search document update that could not be sent yet and waits for a retry."""

    __tablename__ = "search_outbox"

    raw_map_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    queued: Mapped[dt.datetime] = mapped_column(DateTime, nullable=False, default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)


class Runner(Base):
    """A runner process that is alive or was alive, with its heartbeat."""

    __tablename__ = "runners"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    host: Mapped[str] = mapped_column(String(255), nullable=False)
    pid: Mapped[int] = mapped_column(Integer, nullable=False)
    started: Mapped[dt.datetime] = mapped_column(DateTime, nullable=False, default=utcnow)
    heartbeat: Mapped[dt.datetime] = mapped_column(DateTime, nullable=False, default=utcnow)
    current_job_id: Mapped[int | None] = mapped_column(Integer)
