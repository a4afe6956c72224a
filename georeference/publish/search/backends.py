"""The two search backends: rows in the vkdb itself, or an Elasticsearch index.

Both store one document per raw map under its public id and replace it on every update.
The ``database`` backend writes in the caller's session, so a document commits or rolls
back with the job. The ``elasticsearch`` backend sends each document at once and raises
``StorageError`` when the index cannot store it. The callers in ``__init__`` then queue the
update in ``search_outbox``.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Protocol

import elastic_transport
from elasticsearch import ApiError, Elasticsearch, NotFoundError
from sqlalchemy import and_, delete, or_, select
from sqlalchemy.orm import Session

from georeference.errors import ConfigurationError, StorageError
from georeference.models import SearchDocument, utcnow
from georeference.publish.search.document import geometry_bbox
from georeference.settings import Settings

logger = logging.getLogger(__name__)

# Mapping of the Elasticsearch index, sent when the runner creates the index. Fields not
# listed here are kept in _source but not indexed ("dynamic": false), so a new document
# field does not fail an update. It becomes searchable only once added to this mapping,
# and an existing index needs a reindex for that.
INDEX_MAPPING: dict[str, Any] = {
    "dynamic": False,
    "properties": {
        "map_id": {"type": "integer"},
        "file_name": {"type": "keyword"},
        "description": {"type": "text"},
        "map_scale": {"type": "integer"},
        "zoomify_url": {"type": "keyword", "index": False},
        "map_type": {"type": "keyword"},
        "keywords": {"type": "keyword"},
        "title_long": {"type": "text"},
        "title": {"type": "text", "fields": {"sort": {"type": "keyword"}}},
        "permalink": {"type": "keyword", "index": False},
        "slub_url": {"type": "keyword", "index": False},
        "online_resources": {
            "properties": {
                "url": {"type": "keyword", "index": False},
                "type": {"type": "keyword"},
            },
        },
        "tms_urls": {"type": "keyword", "index": False},
        "thumb_url": {"type": "keyword", "index": False},
        "geometry": {"type": "geo_shape"},
        "has_georeference": {"type": "boolean"},
        "time_published": {"type": "date", "format": "strict_date"},
    },
}


class SearchIndexUnavailable(StorageError):
    """Raised when the search index cannot be reached: connection failed, timed out or 5xx.

    A plain ``StorageError`` from a backend means the index responded but rejected the
    request (a 4xx such as a mapping conflict), which a retry alone will not fix.
    """


class SearchIndex(Protocol):
    """A place that stores search documents, keyed by public id."""

    def ensure_index(self) -> None:
        """Create the index if it does not exist yet."""

    def upsert(self, session: Session, doc_id: str, raw_map_id: int,
               document: dict[str, Any]) -> None:
        """Insert or replace the document of one raw map."""

    def delete(self, session: Session, doc_id: str, raw_map_id: int) -> None:
        """Remove the document of one raw map; a missing document is no error."""

    def close(self) -> None:
        """Release connections."""


class DatabaseIndex:
    """Search documents as rows of ``search_documents`` in the vkdb.

    Every write goes through the caller's session and is never committed here, so the
    document is part of the job's transaction. This backend never raises
    ``SearchIndexUnavailable``: a database error is the job's own error.
    """

    def ensure_index(self) -> None:
        """Do nothing: the schema migration creates ``search_documents``."""

    def upsert(self, session: Session, doc_id: str, raw_map_id: int,
               document: dict[str, Any]) -> None:
        """Write the document row of a raw map, replacing an older one of the same map.

        An older row under another id (after a change of ``search_id_template``) is deleted
        first, because ``raw_map_id`` is unique.
        """
        existing = session.scalars(
            select(SearchDocument).where(SearchDocument.raw_map_id == raw_map_id)
        ).one_or_none()
        if existing is not None and existing.id != doc_id:
            session.delete(existing)
            session.flush()
            existing = None

        row = existing if existing is not None else SearchDocument(id=doc_id,
                                                                   raw_map_id=raw_map_id)
        _fill_row(row, document)
        if existing is None:
            session.add(row)
        session.flush()

    def delete(self, session: Session, doc_id: str, raw_map_id: int) -> None:
        """Delete the document row of a raw map, whatever its id."""
        session.execute(delete(SearchDocument).where(SearchDocument.raw_map_id == raw_map_id))

    def close(self) -> None:
        """Do nothing: the caller owns the session and its connection."""


def _fill_row(row: SearchDocument, document: dict[str, Any]) -> None:
    row.document = json.dumps(document, ensure_ascii=False, sort_keys=True)
    row.has_georeference = bool(document.get("has_georeference"))
    bbox = geometry_bbox(document.get("geometry"))
    row.min_lon, row.min_lat, row.max_lon, row.max_lat = bbox or (None, None, None, None)
    row.updated = utcnow()


def get_document(session: Session, raw_map_id: int) -> dict[str, Any] | None:
    """Return the stored document of a raw map from ``search_documents``, or None."""
    text = session.scalars(
        select(SearchDocument.document).where(SearchDocument.raw_map_id == raw_map_id)
    ).one_or_none()
    return json.loads(text) if text is not None else None


def find_documents_by_bbox(session: Session, min_lon: float, min_lat: float,
                           max_lon: float, max_lat: float) -> list[dict[str, Any]]:
    """Return the documents whose bounding box intersects a lon/lat box, by raw map id.

    Touching edges count as intersecting. A box with ``min_lon > max_lon`` crosses the
    antimeridian and matches both its part east of ``min_lon`` and west of ``max_lon``.
    Documents without geometry never match.

    Raises:
        ValueError: ``min_lat > max_lat``.
    """
    if min_lat > max_lat:
        raise ValueError(f"invalid bounding box: min_lat {min_lat} > max_lat {max_lat}")

    def lon_overlap(west: float, east: float) -> Any:
        return and_(SearchDocument.min_lon <= east, SearchDocument.max_lon >= west)

    if min_lon <= max_lon:
        lon_condition = lon_overlap(min_lon, max_lon)
    else:
        lon_condition = or_(lon_overlap(min_lon, 180.0), lon_overlap(-180.0, max_lon))

    statement = (
        select(SearchDocument.document)
        .where(lon_condition, SearchDocument.min_lat <= max_lat,
               SearchDocument.max_lat >= min_lat)
        .order_by(SearchDocument.raw_map_id)
    )
    return [json.loads(text) for text in session.scalars(statement)]


class ElasticsearchIndex:
    """Search documents in an Elasticsearch 8 index, through the official client.

    The client does not retry (``max_retries=0``). An update that fails is queued in
    ``search_outbox`` by the caller and sent again by ``flush_outbox``, so a job waits at
    most about ``search_timeout`` seconds per request for an index that is down.
    """

    def __init__(self, settings: Settings) -> None:
        self.url = settings.search_url
        self.index_name = settings.search_index
        try:
            self.client = Elasticsearch(
                settings.search_url,
                request_timeout=settings.search_timeout,
                max_retries=0,
                retry_on_timeout=False,
            )
        except ValueError as exc:
            raise ConfigurationError(
                f"invalid value for georeference.search.url: {settings.search_url!r} ({exc})"
            ) from None
        self._index_checked = False

    def ensure_index(self) -> None:
        """Create the index with ``INDEX_MAPPING`` unless it exists.

        Raises:
            SearchIndexUnavailable: the index cannot be reached.
            StorageError: Elasticsearch rejected the index creation.
        """
        with self._translate_errors("check or create the index"):
            if not self.client.indices.exists(index=self.index_name):
                self._create_index()
        self._index_checked = True

    def _create_index(self) -> None:
        try:
            self.client.indices.create(index=self.index_name, mappings=INDEX_MAPPING)
        except ApiError as exc:
            # Another runner may have created it between our check and our request.
            if exc.meta.status == 400 and exc.message == "resource_already_exists_exception":
                return
            raise
        logger.info("created search index %s at %s", self.index_name, self.url)

    def upsert(self, session: Session, doc_id: str, raw_map_id: int,
               document: dict[str, Any]) -> None:
        """Index the document under its id, replacing an older version.

        The session is unused: the document is sent at once and does not roll back with it.

        Raises:
            SearchIndexUnavailable: the index cannot be reached.
            StorageError: Elasticsearch rejected the document.
        """
        if not self._index_checked:
            self.ensure_index()
        with self._translate_errors(f"index document {doc_id}"):
            self.client.index(index=self.index_name, id=doc_id, document=document)

    def delete(self, session: Session, doc_id: str, raw_map_id: int) -> None:
        """Delete the document with this id; a missing document or index is no error."""
        with self._translate_errors(f"delete document {doc_id}"):
            try:
                self.client.delete(index=self.index_name, id=doc_id)
            except NotFoundError:
                pass

    def close(self) -> None:
        """Close the client's connection pool."""
        self.client.close()

    def _translate_errors(self, action: str) -> "_ErrorTranslation":
        return _ErrorTranslation(f"{action} in search index {self.index_name} at {self.url}")


class _ErrorTranslation:
    """Context manager that turns client errors into ``StorageError`` with a clear message."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, traceback: Any) -> bool:
        if exc is None:
            return False
        if isinstance(exc, ApiError):
            status = exc.meta.status
            error_class = SearchIndexUnavailable if status >= 500 else StorageError
            # HEAD responses carry no body, so there is only the status to report.
            reason = f"HTTP {status} {exc.message}" if exc.body else f"HTTP {status}"
            raise error_class(f"cannot {self.what}: {reason}") from exc
        if isinstance(exc, (elastic_transport.ConnectionError,
                            elastic_transport.ConnectionTimeout)):
            raise SearchIndexUnavailable(f"cannot {self.what}: {exc.message}") from exc
        if isinstance(exc, elastic_transport.TransportError):
            raise StorageError(f"cannot {self.what}: {exc.message}") from exc
        return False


def open_index(settings: Settings) -> SearchIndex:
    """Return the backend that ``georeference.search.backend`` names.

    Raises:
        ConfigurationError: the backend name or the Elasticsearch URL is invalid.
    """
    if settings.search_backend == "database":
        return DatabaseIndex()
    if settings.search_backend == "elasticsearch":
        return ElasticsearchIndex(settings)
    raise ConfigurationError(
        f"invalid value for georeference.search.backend: {settings.search_backend!r} "
        "(expected database or elasticsearch)")
