"""A processed map through its real clients: MapServer, a tile reader and the search index."""

from __future__ import annotations

import io
import math
import os
import re
import subprocess
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest
from osgeo import gdal, osr
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from georeference.daemon.status import collect_status
from georeference.models import SearchOutbox
from georeference.publish.mapfile import mapfile_string
from georeference.publish.search import find_documents_by_bbox, get_document
from tests.es_standin import ElasticsearchStandin
from tests.factories import add_job, add_map, add_transformation, job_row, run_jobs, synthetic_params

gdal.UseExceptions()

MAPSERV = "/usr/lib/cgi-bin/mapserv"
# The synthetic map covers 13.70-13.76 E, 51.06-51.10 N (EPSG:4314); its centre is blue 200.
CENTRE = (13.73, 51.08)


@pytest.fixture
def published(settings, engine, session_factory):
    with session_factory() as session:
        add_map(session, settings)
        transformation_id = add_transformation(session, 10, synthetic_params())
        job_id = add_job(session, "transformation_process",
                         {"transformation_id": transformation_id})
        run_jobs(settings, engine)
        assert job_row(session, job_id).state == "completed"
    return settings


def _to_3857(lon, lat, epsg=4314):
    source, target = osr.SpatialReference(), osr.SpatialReference()
    source.ImportFromEPSG(epsg)
    target.ImportFromEPSG(3857)
    for srs in (source, target):
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    x, y, _ = osr.CoordinateTransformation(source, target).TransformPoint(lon, lat)
    return x, y


def _mapserv(settings, tmp_path, query):
    config = tmp_path / "mapserver.conf"
    pattern = "^" + re.escape(settings.mapfile_root) + r"/[0-9]+\.map$"
    config.write_text(f"CONFIG\n  ENV\n    MS_MAP_PATTERN {mapfile_string(pattern)}\n  END\nEND\n")
    mapfile = os.path.join(settings.mapfile_root, "10.map")
    environment = dict(os.environ, REQUEST_METHOD="GET", MAPSERVER_CONFIG_FILE=str(config),
                       QUERY_STRING=f"map={mapfile}&{query}")
    completed = subprocess.run([MAPSERV], env=environment, capture_output=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    head, _, body = completed.stdout.partition(b"\r\n\r\n")
    return head.decode("latin-1"), body


def test_mapserver_serves_published_map(published, tmp_path):
    head, body = _mapserv(published, tmp_path,
                          "SERVICE=WMS&VERSION=1.3.0&REQUEST=GetCapabilities")
    assert "xml" in head
    capabilities = body.decode("utf-8")
    assert "<Title>Map 10</Title>" in capabilities
    for crs in ("EPSG:3857", "EPSG:4326", "EPSG:4314"):
        assert crs in capabilities

    min_x, min_y = _to_3857(13.70, 51.06)
    max_x, max_y = _to_3857(13.76, 51.10)
    pad_x, pad_y = (max_x - min_x) * 0.25, (max_y - min_y) * 0.25
    bbox = f"{min_x - pad_x},{min_y - pad_y},{max_x + pad_x},{max_y + pad_y}"
    head, body = _mapserv(published, tmp_path,
                          "SERVICE=WMS&VERSION=1.3.0&REQUEST=GetMap&LAYERS=synthetic&STYLES="
                          f"&CRS=EPSG:3857&BBOX={bbox}&WIDTH=300&HEIGHT=300&FORMAT=image/png")
    assert "image/png" in head, body[:300]
    pixels = np.asarray(Image.open(io.BytesIO(body)).convert("RGBA"))
    # The map fills the middle two thirds: blue 200 and opaque there, transparent at the rim.
    centre = pixels[150, 150]
    assert centre[3] == 255
    assert abs(int(centre[2]) - 200) <= 3
    assert abs(int(centre[0]) - 125) <= 8
    assert pixels[5, 5, 3] == 0
    assert pixels[294, 294, 3] == 0
    assert (pixels[..., 3] == 255).mean() == pytest.approx(4 / 9, abs=0.06)


def test_wcs_returns_geotiff(published, tmp_path):
    head, body = _mapserv(published, tmp_path,
                          "SERVICE=WCS&VERSION=2.0.1&REQUEST=GetCoverage&COVERAGEID=synthetic"
                          "&FORMAT=image/tiff")
    assert "image/tiff" in head, body[:300]
    gdal.FileFromMemBuffer("/vsimem/coverage.tif", body)
    try:
        coverage = gdal.Open("/vsimem/coverage.tif")
        assert coverage.RasterCount == 4
        srs = osr.SpatialReference(wkt=coverage.GetProjection())
        assert srs.GetAuthorityCode(None) == "4314"
        origin_x, _, _, origin_y, _, _ = coverage.GetGeoTransform()
        assert origin_x == pytest.approx(13.70, abs=1e-3)
        assert origin_y == pytest.approx(51.10, abs=1e-3)
    finally:
        gdal.Unlink("/vsimem/coverage.tif")


def _tile_index(x, y, zoom):
    world = 2 * math.pi * 6378137.0
    size = world / 2 ** zoom
    column = int((x + world / 2) // size)
    row_from_top = int((world / 2 - y) // size)
    offset = ((x + world / 2) % size / size * 256, (world / 2 - y) % size / size * 256)
    return column, row_from_top, offset


def test_tiles_show_map_in_tms_order(published):
    root = os.path.join(published.tms_root, "m", "synthetic")
    resource = ElementTree.parse(os.path.join(root, "tilemapresource.xml")).getroot()
    assert resource.findtext("SRS") == "EPSG:3857"
    orders = [int(tile_set.get("order")) for tile_set in resource.iter("TileSet")]
    zoom = max(orders)
    assert sorted(int(name) for name in os.listdir(root) if name.isdigit()) == orders

    x, y = _to_3857(*CENTRE)
    column, row_from_top, (pixel_x, pixel_y) = _tile_index(x, y, zoom)
    tms_row = 2 ** zoom - 1 - row_from_top
    tile = np.asarray(Image.open(os.path.join(root, str(zoom), str(column), f"{tms_row}.png"))
                      .convert("RGBA"))
    pixel = tile[int(pixel_y), int(pixel_x)]
    assert pixel[3] == 255
    assert abs(int(pixel[2]) - 200) <= 4
    assert abs(int(pixel[0]) - 125) <= 8
    # The XYZ row of the same tile must not exist unless the two orders coincide.
    if tms_row != row_from_top:
        assert not os.path.exists(os.path.join(root, str(zoom), str(column),
                                               f"{row_from_top}.png"))


def test_search_document_in_embedded_index(published, session_factory):
    with session_factory() as session:
        document = get_document(session, 10)
        hits = find_documents_by_bbox(session, 13.72, 51.07, 13.74, 51.09)
        misses = find_documents_by_bbox(session, 10.0, 48.0, 10.1, 48.1)

    assert document["map_id"] == 10
    assert document["title_long"] == "Map 10"
    assert document["has_georeference"] is True
    assert document["keywords"] == "Messtischblatt;Lithografie"
    types = [resource["type"] for resource in document["online_resources"]]
    assert types == ["WMS", "WCS", "download"]
    assert document["tms_urls"] == ["http://localhost/tms/m/synthetic"]
    ring = document["geometry"]["coordinates"][0]
    assert min(point[0] for point in ring) == pytest.approx(13.70, abs=0.005)
    assert [hit["map_id"] for hit in hits] == [10]
    assert misses == []


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_elasticsearch_outbox_through_jobs(settings, engine, session_factory):
    standin = ElasticsearchStandin()
    standin.start()
    try:
        es_settings = settings.replace(search_backend="elasticsearch", search_url=standin.url,
                                       search_index="vk-test", search_timeout=0.5)
        with session_factory() as session:
            add_map(session, es_settings)
            transformation_id = add_transformation(session, 10, synthetic_params())
            add_job(session, "transformation_process", {"transformation_id": transformation_id})
            run_jobs(es_settings, engine)

            documents = standin.indices["vk-test"].documents
            document = documents["oai:de:slub-dresden:vk:id-10"]
            assert document["has_georeference"] is True
            assert session.scalars(select(SearchOutbox)).all() == []

            standin.set_mode("refuse")
            job_id = add_job(session, "transformation_set_invalid",
                             {"transformation_id": transformation_id})
            run_jobs(es_settings, engine)
            assert job_row(session, job_id).state == "completed"
            waiting = session.scalars(select(SearchOutbox)).all()
            assert [row.raw_map_id for row in waiting] == [10]
            assert waiting[0].last_error
            assert "search index updates waiting: 1" in collect_status(es_settings)
            assert documents["oai:de:slub-dresden:vk:id-10"]["has_georeference"] is True

            standin.set_mode("ok")
            run_jobs(es_settings, engine)
            session.expire_all()
            assert session.scalars(select(SearchOutbox)).all() == []
            assert documents["oai:de:slub-dresden:vk:id-10"]["has_georeference"] is False
    finally:
        standin.stop()
    assert standin.problems == []
