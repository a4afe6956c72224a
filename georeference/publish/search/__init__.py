"""Search index of the map portal: one document per raw map, and the outbox for retries.

Job handlers call ``update_map_document`` after they changed a map. With the ``database``
backend the document is written in the job's transaction. With ``elasticsearch`` it is sent
at once. When the index cannot take it, the update waits in ``search_outbox`` (also in the
job's transaction, so the georeferencing itself is kept) until ``flush_outbox`` sends it.
"""

from __future__ import annotations

import logging
from typing import Union

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from georeference.errors import JobInputError, StorageError
from georeference.models import RawMap, SearchOutbox, utcnow
from georeference.publish.search.backends import (
    INDEX_MAPPING, DatabaseIndex, ElasticsearchIndex, SearchIndex, SearchIndexUnavailable,
    find_documents_by_bbox, get_document, open_index)
from georeference.publish.search.document import (
    build_document, normalize_geometry, public_id)
from georeference.settings import Settings

__all__ = [
    "INDEX_MAPPING", "DatabaseIndex", "ElasticsearchIndex", "SearchIndex",
    "SearchIndexUnavailable", "build_document", "find_documents_by_bbox", "flush_outbox",
    "get_document", "normalize_geometry", "open_index", "pending_outbox", "public_id",
    "queue_map_update",
    "rebuild_index", "remove_map_document", "update_map_document",
]

logger = logging.getLogger(__name__)

JobLogger = Union[logging.Logger, "logging.LoggerAdapter[logging.Logger]"]


def update_map_document(session: Session, settings: Settings, index: SearchIndex,
                        raw_map_id: int, logger: JobLogger) -> bool:
    """Build the document of a raw map and store it, or queue it when the index fails.

    ``logger`` is the job's logger, which puts the job and map ids in front of each line.

    Call it as the job's last step before commit: Elasticsearch receives the document at
    once, so a later rollback would leave the index ahead of the database.

    Returns:
        True when the index took the document, False when the update was queued in
        ``search_outbox`` (logged as a WARNING on ``logger``).

    Raises:
        JobInputError: the raw map does not exist or has an unreadable geometry.
    """
    doc_id, document = build_document(session, settings, raw_map_id)
    try:
        index.upsert(session, doc_id, raw_map_id, document)
    except StorageError as exc:
        _queue_in_outbox(session, raw_map_id, exc)
        logger.warning("search document %s not stored, queued for retry: %s", doc_id, exc)
        return False

    _remove_from_outbox(session, raw_map_id)
    logger.info("search document %s updated", doc_id)
    return True


def remove_map_document(session: Session, settings: Settings, index: SearchIndex,
                        raw_map_id: int, logger: JobLogger) -> bool:
    """Delete the document of a raw map, or queue the deletion when the index fails.

    ``flush_outbox`` deletes a queued map's document when its raw map no longer exists.

    Returns:
        True when the document is gone, False when the deletion was queued.
    """
    doc_id = public_id(settings, raw_map_id)
    try:
        index.delete(session, doc_id, raw_map_id)
    except StorageError as exc:
        _queue_in_outbox(session, raw_map_id, exc)
        logger.warning("search document %s not deleted, queued for retry: %s", doc_id, exc)
        return False

    _remove_from_outbox(session, raw_map_id)
    logger.info("search document %s deleted", doc_id)
    return True


def rebuild_index(session: Session, settings: Settings, index: SearchIndex) -> int:
    """Create the index if needed and store the document of every raw map.

    A map whose document cannot be built (bad stored geometry) is logged and skipped.
    Maps that waited in the outbox leave it, since their document is now current.

    NOTE: documents of raw maps that no longer exist are not removed.

    Returns:
        The number of documents stored.

    Raises:
        StorageError: the index failed, so the rebuild stopped; run it again.
    """
    index.ensure_index()
    stored = 0
    for raw_map_id in session.scalars(select(RawMap.id).order_by(RawMap.id)).all():
        try:
            doc_id, document = build_document(session, settings, raw_map_id)
        except JobInputError as exc:
            logger.warning("map=%s skipped in index rebuild: %s", raw_map_id, exc)
            continue
        index.upsert(session, doc_id, raw_map_id, document)
        _remove_from_outbox(session, raw_map_id)
        stored += 1
    logger.info("search index rebuilt with %d documents", stored)
    return stored


def flush_outbox(session: Session, settings: Settings, index: SearchIndex) -> tuple[int, int]:
    """Send the queued updates again, oldest first, rebuilding each document from now.

    A sent update leaves the outbox. A failed one stays with ``attempts`` raised by one and
    the error in ``last_error``. When the index is unreachable the flush stops at the first
    failure, because the rest would only wait for the same timeout. A document that the
    index rejects does not stop the others. On PostgreSQL, rows that another runner is
    flushing at the same time are skipped (``FOR UPDATE SKIP LOCKED``).

    Returns:
        (updates sent, updates still waiting).
    """
    rows = session.scalars(
        select(SearchOutbox)
        .order_by(SearchOutbox.queued, SearchOutbox.raw_map_id)
        .with_for_update(skip_locked=True)
    ).all()

    sent = 0
    for row in rows:
        try:
            _send_current_state(session, settings, index, row.raw_map_id)
        except SearchIndexUnavailable as exc:
            _record_failure(row, exc)
            break
        except (StorageError, JobInputError) as exc:
            _record_failure(row, exc)
            continue
        session.delete(row)
        sent += 1
        logger.info("map=%s queued search update sent", row.raw_map_id)

    session.flush()
    waiting = session.scalar(select(func.count()).select_from(SearchOutbox)) or 0
    return sent, waiting


def queue_map_update(session: Session, raw_map_id: int) -> None:
    """Queue the map's document in the outbox, in the caller's transaction.

    This is the transactional outbox for an external index: the queued update commits
    together with the job's changes, and ``flush_outbox`` sends it after the commit. So the
    index is not ahead of the database, and an update that fails stays queued until sent.
    """
    if session.get(SearchOutbox, raw_map_id) is None:
        session.add(SearchOutbox(raw_map_id=raw_map_id, queued=utcnow(), attempts=0))
        session.flush()


def pending_outbox(session: Session) -> list[SearchOutbox]:
    """Return the updates waiting in ``search_outbox``, oldest first."""
    return list(session.scalars(
        select(SearchOutbox).order_by(SearchOutbox.queued, SearchOutbox.raw_map_id)))


def _send_current_state(session: Session, settings: Settings, index: SearchIndex,
                        raw_map_id: int) -> None:
    """Store the map's document as the database has it now, or delete it if the map is gone."""
    if session.get(RawMap, raw_map_id) is None:
        index.delete(session, public_id(settings, raw_map_id), raw_map_id)
        return
    doc_id, document = build_document(session, settings, raw_map_id)
    index.upsert(session, doc_id, raw_map_id, document)


def _record_failure(row: SearchOutbox, exc: Exception) -> None:
    row.attempts += 1
    row.last_error = str(exc)
    logger.warning("map=%s queued search update failed again (attempt %d): %s",
                   row.raw_map_id, row.attempts, exc)


def _queue_in_outbox(session: Session, raw_map_id: int, exc: Exception) -> None:
    """Add the map to the outbox, or refresh the error of its waiting entry."""
    row = session.get(SearchOutbox, raw_map_id)
    if row is None:
        session.add(SearchOutbox(raw_map_id=raw_map_id, queued=utcnow(), attempts=0,
                                 last_error=str(exc)))
    else:
        row.last_error = str(exc)
    session.flush()


def _remove_from_outbox(session: Session, raw_map_id: int) -> None:
    row = session.get(SearchOutbox, raw_map_id)
    if row is not None:
        session.delete(row)
        session.flush()
