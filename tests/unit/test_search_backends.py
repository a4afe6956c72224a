"""Search backends: the database rows, Elasticsearch through a local stand-in, the outbox."""

from __future__ import annotations

import json
import logging
from typing import Iterator

import pytest
from sqlalchemy import func, select, text

from georeference.errors import ConfigurationError
from georeference.models import RawMap, SearchDocument, SearchOutbox
from georeference.publish.search import (
    INDEX_MAPPING, DatabaseIndex, ElasticsearchIndex, build_document,
    find_documents_by_bbox, flush_outbox, get_document, open_index, pending_outbox,
    rebuild_index, remove_map_document, update_map_document)
from tests.es_standin import ElasticsearchStandin
from tests.unit.test_search_document import add_raw_map, georeference, polygon

job_logger = logging.getLogger("tests.search.job")

DRESDEN = [(13.6, 50.9), (13.9, 50.9), (13.9, 51.2), (13.6, 51.2), (13.6, 50.9)]
LEIPZIG = [(12.2, 51.2), (12.5, 51.2), (12.5, 51.5), (12.2, 51.5), (12.2, 51.2)]


@pytest.fixture
def standin() -> Iterator[ElasticsearchStandin]:
    server = ElasticsearchStandin()
    server.start()
    yield server
    server.stop()
    assert server.problems == []


@pytest.fixture
def es_settings(settings, standin):
    return settings.replace(search_backend="elasticsearch", search_url=standin.url,
                            search_index="vk-test", search_timeout=0.5)


@pytest.fixture
def es_index(es_settings) -> Iterator[ElasticsearchIndex]:
    index = open_index(es_settings)
    assert isinstance(index, ElasticsearchIndex)
    yield index
    index.close()


def count_rows(session, model) -> int:
    return session.scalar(select(func.count()).select_from(model))


# open_index


def test_open_index_database(settings):
    assert isinstance(open_index(settings), DatabaseIndex)


def test_open_index_rejects_unknown_backend(settings):
    with pytest.raises(ConfigurationError, match="georeference.search.backend"):
        open_index(settings.replace(search_backend="solr"))


def test_open_index_rejects_url_without_scheme(settings):
    with pytest.raises(ConfigurationError, match="georeference.search.url"):
        open_index(settings.replace(search_backend="elasticsearch", search_url="localhost"))


# database backend


def test_database_upsert_and_get(session_factory, settings):
    index = open_index(settings)
    with session_factory() as session:
        add_raw_map(session)
        georeference(session)
        assert update_map_document(session, settings, index, 7, job_logger) is True
        session.commit()

    with session_factory() as session:
        row = session.scalars(select(SearchDocument)).one()
        assert row.id == "oai:de:slub-dresden:vk:id-7"
        assert row.raw_map_id == 7
        assert row.has_georeference is True
        assert (row.min_lon, row.min_lat, row.max_lon, row.max_lat) == (13.7, 51.0, 13.8, 51.1)
        assert get_document(session, 7) == build_document(session, settings, 7)[1]
        assert get_document(session, 8) is None


def test_database_second_update_replaces(session_factory, settings):
    index = open_index(settings)
    with session_factory() as session:
        add_raw_map(session, title_short="Dresden")
        update_map_document(session, settings, index, 7, job_logger)
        session.commit()

    with session_factory() as session:
        session.get(RawMap, 7).metadata_record.title_short = "Dresden-Neustadt"
        georeference(session)
        update_map_document(session, settings, index, 7, job_logger)
        session.commit()

    with session_factory() as session:
        assert count_rows(session, SearchDocument) == 1
        document = get_document(session, 7)
        assert document["title"] == "Dresden-Neustadt"
        assert document["has_georeference"] is True
        assert session.scalars(select(SearchDocument.has_georeference)).one() is True


def test_database_upsert_after_id_template_change(session_factory, settings):
    index = open_index(settings)
    with session_factory() as session:
        add_raw_map(session)
        update_map_document(session, settings, index, 7, job_logger)
        update_map_document(session, settings.replace(search_id_template="vk-{map_id}"),
                            index, 7, job_logger)
        session.commit()

    with session_factory() as session:
        assert session.scalars(select(SearchDocument.id)).all() == ["vk-7"]


def test_database_write_rolls_back_with_job(session_factory, settings):
    index = open_index(settings)
    with session_factory() as session:
        add_raw_map(session)
        session.commit()

    with session_factory() as session:
        update_map_document(session, settings, index, 7, job_logger)
        session.rollback()

    with session_factory() as session:
        assert get_document(session, 7) is None


def test_database_remove_document(session_factory, settings):
    index = open_index(settings)
    with session_factory() as session:
        add_raw_map(session)
        update_map_document(session, settings, index, 7, job_logger)
        assert remove_map_document(session, settings, index, 7, job_logger) is True
        session.commit()

    with session_factory() as session:
        assert count_rows(session, SearchDocument) == 0


def add_three_maps(session, settings) -> None:
    """Dresden and Leipzig are georeferenced, map 3 is not."""
    index = open_index(settings)
    add_raw_map(session, map_id=1)
    georeference(session, map_id=1, clip=None, extent=DRESDEN, transformation_id=10)
    add_raw_map(session, map_id=2)
    georeference(session, map_id=2, clip=None, extent=LEIPZIG, transformation_id=20)
    add_raw_map(session, map_id=3)
    assert rebuild_index(session, settings, index) == 3


@pytest.mark.parametrize(("box", "expected"), [
    ((13.0, 50.0, 14.0, 52.0), [1]),            # contains Dresden
    ((13.7, 51.0, 13.8, 51.1), [1]),            # inside Dresden
    ((12.0, 50.0, 14.0, 52.0), [1, 2]),         # both cities
    ((13.9, 51.2, 14.5, 51.5), [1]),            # touches Dresden's corner
    ((12.6, 50.0, 13.5, 52.0), []),             # between the two
    ((13.6, 51.3, 13.9, 51.4), []),             # north of Dresden
    ((-180.0, -90.0, 180.0, 90.0), [1, 2]),     # world, without map 3 (no geometry)
    ((170.0, 50.0, 13.0, 52.0), [2]),           # crosses the antimeridian, up to 13°E
])
def test_database_bbox_query(session_factory, settings, box, expected):
    with session_factory() as session:
        add_three_maps(session, settings)

        documents = find_documents_by_bbox(session, *box)

    assert [document["map_id"] for document in documents] == expected


def test_database_bbox_rejects_inverted_latitudes(session_factory):
    with session_factory() as session:
        with pytest.raises(ValueError, match="min_lat 52.0 > max_lat 50.0"):
            find_documents_by_bbox(session, 13.0, 52.0, 14.0, 50.0)


def test_rebuild_skips_map_with_bad_geometry(session_factory, settings):
    with session_factory() as session:
        if session.bind.dialect.name != "sqlite":
            pytest.skip("PostGIS rejects text that is not GeoJSON, so it cannot be stored")
        add_raw_map(session, map_id=1)
        add_raw_map(session, map_id=2)
        georeference(session, map_id=2, clip=None, transformation_id=20)
        session.execute(text("UPDATE georef_maps SET extent = 'not geojson'"))

        assert rebuild_index(session, settings, open_index(settings)) == 1
        assert get_document(session, 1)["map_id"] == 1
        assert get_document(session, 2) is None


# elasticsearch backend


def test_es_creates_index_with_mapping(session_factory, es_settings, es_index, standin):
    with session_factory() as session:
        add_raw_map(session)
        assert update_map_document(session, es_settings, es_index, 7, job_logger) is True

    creations = standin.requests_to("PUT", "/vk-test")
    assert len(creations) == 1
    mappings = creations[0].body["mappings"]
    assert mappings == INDEX_MAPPING
    properties = mappings["properties"]
    assert properties["geometry"] == {"type": "geo_shape"}
    assert properties["map_id"] == {"type": "integer"}
    assert properties["title"]["type"] == "text"
    assert properties["keywords"] == {"type": "keyword"}
    assert properties["time_published"]["type"] == "date"
    assert properties["has_georeference"] == {"type": "boolean"}
    assert standin.indices["vk-test"].mappings == INDEX_MAPPING


def test_es_ensure_index_keeps_existing(es_index, standin):
    es_index.ensure_index()
    es_index.ensure_index()

    assert len(standin.requests_to("HEAD", "/vk-test")) == 2
    assert len(standin.requests_to("PUT", "/vk-test")) == 1


def test_es_upsert_by_id(session_factory, es_settings, es_index, standin):
    with session_factory() as session:
        add_raw_map(session, allow_download=True)
        georeference(session)
        update_map_document(session, es_settings, es_index, 7, job_logger)
        expected = build_document(session, es_settings, 7)[1]

    doc_path = "/vk-test/_doc/oai:de:slub-dresden:vk:id-7"
    writes = standin.requests_to("PUT", doc_path) + standin.requests_to("POST", doc_path)
    assert len(writes) == 1
    assert writes[0].body == expected
    assert writes[0].body["geometry"]["type"] == "Polygon"
    assert "json" in writes[0].headers["content-type"]
    assert standin.indices["vk-test"].documents == {"oai:de:slub-dresden:vk:id-7": expected}


def test_es_second_update_replaces(session_factory, es_settings, es_index, standin):
    with session_factory() as session:
        add_raw_map(session)
        update_map_document(session, es_settings, es_index, 7, job_logger)
        georeference(session)
        update_map_document(session, es_settings, es_index, 7, job_logger)

    documents = standin.indices["vk-test"].documents
    assert list(documents) == ["oai:de:slub-dresden:vk:id-7"]
    assert documents["oai:de:slub-dresden:vk:id-7"]["has_georeference"] is True
    assert standin.indices["vk-test"].versions["oai:de:slub-dresden:vk:id-7"] == 2


def test_es_remove_document(session_factory, es_settings, es_index, standin):
    with session_factory() as session:
        add_raw_map(session)
        update_map_document(session, es_settings, es_index, 7, job_logger)
        assert remove_map_document(session, es_settings, es_index, 7, job_logger) is True
        assert remove_map_document(session, es_settings, es_index, 7, job_logger) is True

    assert standin.indices["vk-test"].documents == {}


@pytest.mark.parametrize(("mode", "error_text"), [
    ("refuse", "Connection refused"),
    ("fail", "HTTP 503"),
    ("slow", "timed out"),
])
def test_es_unreachable_queues_in_outbox(session_factory, es_settings, es_index, standin,
                                         caplog, mode, error_text):
    standin.delay = 1.5
    with session_factory() as session:
        add_raw_map(session)
        georeference(session)
        session.commit()

    standin.set_mode(mode)
    with session_factory() as session, caplog.at_level(logging.WARNING, job_logger.name):
        assert update_map_document(session, es_settings, es_index, 7, job_logger) is False
        session.commit()

    warnings = [record.getMessage() for record in caplog.records
                if record.name == job_logger.name]
    assert len(warnings) == 1
    assert warnings[0].startswith("search document oai:de:slub-dresden:vk:id-7 "
                                  "not stored, queued for retry")
    assert error_text in warnings[0]

    with session_factory() as session:
        [row] = pending_outbox(session)
        assert row.raw_map_id == 7
        assert row.attempts == 0
        assert "vk-test" in row.last_error
        assert error_text in row.last_error

    standin.set_mode("ok")
    with session_factory() as session:
        assert flush_outbox(session, es_settings, es_index) == (1, 0)
        session.commit()

    with session_factory() as session:
        assert pending_outbox(session) == []
    with session_factory() as session:
        expected = build_document(session, es_settings, 7)[1]
    assert standin.indices["vk-test"].documents["oai:de:slub-dresden:vk:id-7"] == expected


def test_outbox_flush_sends_current_state(session_factory, es_settings, es_index, standin):
    standin.set_mode("refuse")
    with session_factory() as session:
        add_raw_map(session, title_short="old title")
        update_map_document(session, es_settings, es_index, 7, job_logger)
        session.commit()

    with session_factory() as session:
        session.get(RawMap, 7).metadata_record.title_short = "new title"
        session.commit()

    standin.set_mode("ok")
    with session_factory() as session:
        assert flush_outbox(session, es_settings, es_index) == (1, 0)
        session.commit()

    document = standin.indices["vk-test"].documents["oai:de:slub-dresden:vk:id-7"]
    assert document["title"] == "new title"


def test_outbox_failed_flush_counts_attempts(session_factory, es_settings, es_index, standin):
    standin.set_mode("refuse")
    with session_factory() as session:
        for map_id in (1, 2, 3):
            add_raw_map(session, map_id=map_id)
            update_map_document(session, es_settings, es_index, map_id, job_logger)
        session.commit()

    standin.set_mode("fail")
    with session_factory() as session:
        assert flush_outbox(session, es_settings, es_index) == (0, 3)
        assert flush_outbox(session, es_settings, es_index) == (0, 3)
        session.commit()

    with session_factory() as session:
        rows = {row.raw_map_id: row for row in pending_outbox(session)}
    # The flush stops at the first unreachable-index error, so only the oldest was tried.
    assert rows[1].attempts == 2
    assert "HTTP 503" in rows[1].last_error
    assert rows[2].attempts == 0
    assert "Connection refused" in rows[2].last_error
    assert rows[3].attempts == 0


def test_outbox_requeue_keeps_single_row(session_factory, es_settings, es_index, standin):
    standin.set_mode("refuse")
    with session_factory() as session:
        add_raw_map(session)
        update_map_document(session, es_settings, es_index, 7, job_logger)
        standin.set_mode("fail")
        update_map_document(session, es_settings, es_index, 7, job_logger)
        session.commit()

    with session_factory() as session:
        [row] = pending_outbox(session)
        assert "HTTP 503" in row.last_error


def test_outbox_cleared_by_direct_update(session_factory, es_settings, es_index, standin):
    standin.set_mode("refuse")
    with session_factory() as session:
        add_raw_map(session)
        update_map_document(session, es_settings, es_index, 7, job_logger)
        session.commit()

    standin.set_mode("ok")
    with session_factory() as session:
        assert update_map_document(session, es_settings, es_index, 7, job_logger) is True
        session.commit()

    with session_factory() as session:
        assert pending_outbox(session) == []


def test_outbox_deletes_document_of_removed_map(session_factory, es_settings, es_index,
                                                standin):
    with session_factory() as session:
        add_raw_map(session, map_id=5, with_metadata=False)
        update_map_document(session, es_settings, es_index, 5, job_logger)
        session.commit()

    standin.set_mode("refuse")
    with session_factory() as session:
        session.delete(session.get(RawMap, 5))
        assert remove_map_document(session, es_settings, es_index, 5, job_logger) is False
        session.commit()

    standin.set_mode("ok")
    with session_factory() as session:
        assert flush_outbox(session, es_settings, es_index) == (1, 0)
        session.commit()

    assert standin.requests_to("DELETE", "/vk-test/_doc/oai:de:slub-dresden:vk:id-5")
    assert standin.indices["vk-test"].documents == {}


def test_outbox_rejected_document_does_not_block(session_factory, es_settings, es_index,
                                                 standin):
    standin.set_mode("refuse")
    with session_factory() as session:
        add_raw_map(session, map_id=1)
        add_raw_map(session, map_id=2)
        update_map_document(session, es_settings, es_index, 1, job_logger)
        update_map_document(session, es_settings, es_index, 2, job_logger)
        session.commit()

    standin.set_mode("reject")
    with session_factory() as session:
        assert flush_outbox(session, es_settings, es_index) == (0, 2)
        rows = pending_outbox(session)
        assert [row.attempts for row in rows] == [1, 1]
        assert all("HTTP 400 document_parsing_exception" in row.last_error for row in rows)


def test_rebuild_index_on_elasticsearch(session_factory, es_settings, es_index, standin):
    with session_factory() as session:
        add_three_maps(session, es_settings)

    assert sorted(standin.indices["vk-test"].documents) == [
        "oai:de:slub-dresden:vk:id-1", "oai:de:slub-dresden:vk:id-2",
        "oai:de:slub-dresden:vk:id-3"]
    geometry = standin.indices["vk-test"].documents["oai:de:slub-dresden:vk:id-2"]["geometry"]
    assert geometry == json.loads(polygon(LEIPZIG))
