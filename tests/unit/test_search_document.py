"""Search documents: geometry normalization and the document contract with the frontend."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from osgeo import ogr

from georeference.errors import ConfigurationError, JobInputError
from georeference.models import GeorefMap, Metadata, RawMap, Transformation
from georeference.publish.search import build_document, normalize_geometry
from georeference.publish.search.document import geometry_bbox, signed_area


def polygon(*rings: list[tuple[float, float]]) -> str:
    return json.dumps({"type": "Polygon", "coordinates": [[list(p) for p in r] for r in rings]})


def assert_valid_for_geo_shape(geometry: dict[str, Any]) -> None:
    """Check what Elasticsearch requires of a geo_shape polygon."""
    assert geometry["type"] == "Polygon"
    rings = geometry["coordinates"]
    for index, ring in enumerate(rings):
        assert ring[0] == ring[-1], f"ring {index} is not closed"
        assert len(ring) >= 4, f"ring {index} has fewer than 4 positions"
        for first, second in zip(ring, ring[1:]):
            assert first != second, f"ring {index} repeats position {first}"
        for lon, lat in ring:
            assert -180.0 <= lon <= 180.0
            assert -90.0 <= lat <= 90.0
    assert signed_area(rings[0]) > 0, "outer ring is not counter-clockwise"
    for hole in rings[1:]:
        assert signed_area(hole) < 0, "hole is not clockwise"
    assert ogr.CreateGeometryFromJson(json.dumps(geometry)).IsValid()


SQUARE_CCW = [(10.0, 50.0), (11.0, 50.0), (11.0, 51.0), (10.0, 51.0), (10.0, 50.0)]
SQUARE_CW = list(reversed(SQUARE_CCW))


# normalize_geometry


def test_normalize_keeps_valid_ccw_polygon():
    geometry = normalize_geometry(polygon(SQUARE_CCW))

    assert geometry == {"type": "Polygon", "coordinates": [[list(p) for p in SQUARE_CCW]]}
    assert_valid_for_geo_shape(geometry)


def test_normalize_reverses_clockwise_ring():
    geometry = normalize_geometry(polygon(SQUARE_CW))

    assert_valid_for_geo_shape(geometry)
    assert signed_area(geometry["coordinates"][0]) == pytest.approx(1.0)
    assert sorted(map(tuple, geometry["coordinates"][0][:-1])) == sorted(SQUARE_CCW[:-1])


def test_normalize_orients_hole_clockwise():
    hole_ccw = [(10.2, 50.2), (10.8, 50.2), (10.8, 50.8), (10.2, 50.8), (10.2, 50.2)]
    geometry = normalize_geometry(polygon(SQUARE_CW, hole_ccw))

    assert_valid_for_geo_shape(geometry)
    assert len(geometry["coordinates"]) == 2
    assert signed_area(geometry["coordinates"][1]) == pytest.approx(-0.36)


def test_normalize_closes_unclosed_ring():
    geometry = normalize_geometry(polygon(SQUARE_CCW[:-1]))

    assert_valid_for_geo_shape(geometry)
    assert geometry["coordinates"][0] == [list(p) for p in SQUARE_CCW]


def test_normalize_removes_duplicate_points():
    ring = [(10.0, 50.0), (10.0, 50.0), (11.0, 50.0), (11.0, 51.0), (11.0, 51.0),
            (11.0, 51.0), (10.0, 51.0), (10.0, 50.0)]
    geometry = normalize_geometry(polygon(ring))

    assert_valid_for_geo_shape(geometry)
    assert geometry["coordinates"][0] == [list(p) for p in SQUARE_CCW]


def test_normalize_bow_tie_keeps_largest_part():
    # Crosses itself at (12.25, 50.5): the left triangle has 9 times the right one's area.
    bow_tie = [(10.0, 49.0), (13.0, 51.0), (13.0, 50.0), (10.0, 52.0), (10.0, 49.0)]
    assert not ogr.CreateGeometryFromJson(polygon(bow_tie)).IsValid()

    geometry = normalize_geometry(polygon(bow_tie))

    assert_valid_for_geo_shape(geometry)
    assert signed_area(geometry["coordinates"][0]) == pytest.approx(3.375)
    assert geometry_bbox(geometry) == pytest.approx((10.0, 49.0, 12.25, 52.0))


def test_normalize_bow_tie_with_open_ring():
    geometry = normalize_geometry(polygon([(0.0, 0.0), (2.0, 2.0), (2.0, 0.0), (0.0, 2.0)]))

    assert_valid_for_geo_shape(geometry)
    assert signed_area(geometry["coordinates"][0]) == pytest.approx(1.0)


def test_normalize_multipolygon_keeps_largest():
    small = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]
    large = [[5.0, 5.0], [5.0, 8.0], [8.0, 8.0], [8.0, 5.0], [5.0, 5.0]]
    text = json.dumps({"type": "MultiPolygon", "coordinates": [[small], [large]]})

    geometry = normalize_geometry(text)

    assert_valid_for_geo_shape(geometry)
    assert geometry_bbox(geometry) == (5.0, 5.0, 8.0, 8.0)


def test_normalize_shifts_longitudes_beyond_180():
    ring = [(190.0, 10.0), (200.0, 10.0), (200.0, 20.0), (190.0, 20.0), (190.0, 10.0)]
    geometry = normalize_geometry(polygon(ring))

    assert_valid_for_geo_shape(geometry)
    assert geometry_bbox(geometry) == (-170.0, 10.0, -160.0, 20.0)


def test_normalize_cuts_polygon_at_world_bounds():
    ring = [(170.0, 80.0), (185.0, 80.0), (185.0, 95.0), (170.0, 95.0), (170.0, 80.0)]
    geometry = normalize_geometry(polygon(ring))

    assert_valid_for_geo_shape(geometry)
    assert geometry_bbox(geometry) == (170.0, 80.0, 180.0, 90.0)


def test_normalize_drops_third_dimension():
    text = json.dumps({"type": "Polygon", "coordinates": [[[*p, 120.0] for p in SQUARE_CCW]]})
    geometry = normalize_geometry(text)

    assert_valid_for_geo_shape(geometry)
    assert all(len(position) == 2 for position in geometry["coordinates"][0])


@pytest.mark.parametrize("text", [
    None,
    "",
    "  ",
    json.dumps({"type": "LineString", "coordinates": [[0, 0], [1, 1]]}),
    json.dumps({"type": "Point", "coordinates": [0, 0]}),
    polygon([(0.0, 0.0), (1.0, 1.0), (2.0, 2.0), (0.0, 0.0)]),
])
def test_normalize_without_area_is_none(text):
    assert normalize_geometry(text) is None


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '{"type": "Polygon"}'])
def test_normalize_rejects_non_geojson(text):
    with pytest.raises(JobInputError, match="invalid GeoJSON geometry"):
        normalize_geometry(text)


# build_document


CLIP = [(13.70, 51.00), (13.80, 51.00), (13.80, 51.10), (13.70, 51.10), (13.70, 51.00)]
EXTENT = [(13.60, 50.90), (13.90, 50.90), (13.90, 51.20), (13.60, 51.20), (13.60, 50.90)]


def add_raw_map(session, map_id: int = 7, *, allow_download: bool = False,
                with_metadata: bool = True, **metadata: Any) -> RawMap:
    raw_map = RawMap(id=map_id, file_name=f"df_dk_{map_id:07d}", map_type="M",
                     rel_path=f"mtb/df_dk_{map_id:07d}.tif", map_scale=25000,
                     allow_download=allow_download)
    session.add(raw_map)
    session.flush()
    if with_metadata:
        values = dict(
            title="Topographische Karte (Messtischblatt) 4948 : Dresden, 1925",
            title_short="Dresden", description="Messtischblatt 1:25000",
            type="Messtischblatt", technic="Lithografie & Umdruck",
            ppn="ppn33592090X", permalink="http://digital.slub-dresden.de/id33592090X",
            link_zoomify="http://fotothek.slub-dresden.de/zooms/df_dk/ImageProperties.xml",
            time_of_publication=dt.datetime(1925, 1, 1),
            link_thumb_small="http://fotothek.slub-dresden.de/thumbs/df_dk.jpg",
            link_thumb_mid="http://fotothek.slub-dresden.de/mids/df_dk.jpg",
        )
        values.update(metadata)
        session.add(Metadata(raw_map_id=map_id, **values))
        session.flush()
    return raw_map


def georeference(session, map_id: int = 7, *, clip: list | None = CLIP,
                 extent: list | None = EXTENT, transformation_id: int = 70) -> None:
    session.add(Transformation(id=transformation_id, params="{}", raw_map_id=map_id,
                               validation="valid",
                               clip=polygon(clip) if clip is not None else None))
    session.flush()
    session.add(GeorefMap(raw_map_id=map_id, transformation_id=transformation_id,
                          rel_path=f"mtb/df_dk_{map_id:07d}.tif",
                          extent=polygon(extent) if extent is not None else None))
    session.flush()


def test_document_of_georeferenced_map(session_factory, settings):
    settings = settings.replace(
        url_tms="https://tms.example.test/{map_type}/{file_name}",
        url_wms="https://wms.example.test/map/{map_id}?map={mapfile}",
        url_wcs="https://wcs.example.test/map?map={mapfile}",
        url_slub="https://digital.slub-dresden.de/{ppn}")
    with session_factory() as session:
        add_raw_map(session, allow_download=True)
        georeference(session)

        doc_id, document = build_document(session, settings, 7)

    assert doc_id == "oai:de:slub-dresden:vk:id-7"
    assert document == {
        "map_id": 7,
        "file_name": "df_dk_0000007",
        "description": "Messtischblatt 1:25000",
        "map_scale": 25000,
        "zoomify_url": "http://fotothek.slub-dresden.de/zooms/df_dk/ImageProperties.xml",
        "map_type": "M",
        "keywords": "Messtischblatt;Lithografie & Umdruck",
        "title_long": "Topographische Karte (Messtischblatt) 4948 : Dresden, 1925",
        "title": "Dresden",
        "permalink": "http://digital.slub-dresden.de/id33592090X",
        "slub_url": "https://digital.slub-dresden.de/ppn33592090X",
        "online_resources": [
            {"url": "http://digital.slub-dresden.de/id33592090X", "type": "Permalink"},
            {"url": "https://wms.example.test/map/7?map=7.map"
                    "&SERVICE=WMS&VERSION=1.3.0&REQUEST=GetCapabilities", "type": "WMS"},
            {"url": "https://wcs.example.test/map?map=7.map"
                    "&SERVICE=WCS&VERSION=2.0.1&REQUEST=GetCapabilities", "type": "WCS"},
            {"url": "https://wcs.example.test/map?map=7.map&SERVICE=WCS&VERSION=2.0.1"
                    "&REQUEST=GetCoverage&COVERAGEID=df_dk_0000007&FORMAT=image/tiff",
             "type": "download"},
        ],
        "tms_urls": ["https://tms.example.test/m/df_dk_0000007"],
        "thumb_url": "http://fotothek.slub-dresden.de/mids/df_dk.jpg",
        "geometry": {"type": "Polygon", "coordinates": [[list(p) for p in CLIP]]},
        "has_georeference": True,
        "time_published": "1925-01-01",
    }
    json.dumps(document)  # The document must serialize as it is.


def test_document_without_download_has_no_wcs(session_factory, settings):
    with session_factory() as session:
        add_raw_map(session, allow_download=False)
        georeference(session)

        _, document = build_document(session, settings, 7)

    types = [resource["type"] for resource in document["online_resources"]]
    assert types == ["Permalink", "WMS"]
    assert document["online_resources"][1]["url"] == (
        "http://localhost/cgi-bin/mapserv?map=7.map"
        "&SERVICE=WMS&VERSION=1.3.0&REQUEST=GetCapabilities")


def test_document_of_map_without_georeference(session_factory, settings):
    with session_factory() as session:
        add_raw_map(session, allow_download=True)

        _, document = build_document(session, settings, 7)

    assert document["has_georeference"] is False
    assert document["geometry"] is None
    assert document["tms_urls"] == []
    assert document["online_resources"] == [
        {"url": "http://digital.slub-dresden.de/id33592090X", "type": "Permalink"}]


def test_document_geometry_falls_back_to_extent(session_factory, settings):
    with session_factory() as session:
        add_raw_map(session)
        georeference(session, clip=None)

        _, document = build_document(session, settings, 7)

    assert document["geometry"] == {"type": "Polygon",
                                    "coordinates": [[list(p) for p in EXTENT]]}


def test_document_clip_without_area_uses_extent(session_factory, settings):
    flat_clip = [(13.7, 51.0), (13.8, 51.0), (13.9, 51.0), (13.7, 51.0)]
    with session_factory() as session:
        add_raw_map(session)
        georeference(session, clip=flat_clip)

        _, document = build_document(session, settings, 7)

    assert geometry_bbox(document["geometry"]) == (13.6, 50.9, 13.9, 51.2)


def test_document_uses_enabled_transformation(session_factory, settings):
    other_clip = [(13.0, 50.0), (14.0, 50.0), (14.0, 52.0), (13.0, 52.0), (13.0, 50.0)]
    with session_factory() as session:
        add_raw_map(session)
        georeference(session, transformation_id=70)
        session.add(Transformation(id=71, params="{}", raw_map_id=7, validation="missing",
                                   clip=polygon(other_clip)))
        session.flush()

        _, document = build_document(session, settings, 7)

    assert document["geometry"]["coordinates"] == [[list(p) for p in CLIP]]


def test_document_geometry_made_ccw(session_factory, settings):
    with session_factory() as session:
        add_raw_map(session)
        georeference(session, clip=list(reversed(CLIP)))

        _, document = build_document(session, settings, 7)

    assert_valid_for_geo_shape(document["geometry"])
    assert signed_area(document["geometry"]["coordinates"][0]) == pytest.approx(0.01)


@pytest.mark.parametrize(("map_type", "technic", "keywords"), [
    ("Messtischblatt", "Lithografie", "Messtischblatt;Lithografie"),
    ("Messtischblatt", None, "Messtischblatt"),
    ("", "Kupferstich", "Kupferstich"),
    (None, "  ", ""),
])
def test_document_keywords(session_factory, settings, map_type, technic, keywords):
    with session_factory() as session:
        add_raw_map(session, type=map_type, technic=technic)

        _, document = build_document(session, settings, 7)

    assert document["keywords"] == keywords


def test_document_thumb_falls_back_to_small(session_factory, settings):
    with session_factory() as session:
        add_raw_map(session, link_thumb_mid=None)

        _, document = build_document(session, settings, 7)

    assert document["thumb_url"] == "http://fotothek.slub-dresden.de/thumbs/df_dk.jpg"


def test_document_without_metadata(session_factory, settings):
    with session_factory() as session:
        add_raw_map(session, with_metadata=False)

        _, document = build_document(session, settings, 7)

    assert document["map_id"] == 7
    assert document["title"] is None
    assert document["keywords"] == ""
    assert document["slub_url"] is None
    assert document["time_published"] is None
    assert document["online_resources"] == []


def test_document_id_template(session_factory, settings):
    settings = settings.replace(search_id_template="vk:{map_id}")
    with session_factory() as session:
        add_raw_map(session, map_id=12)

        doc_id, _ = build_document(session, settings, 12)

    assert doc_id == "vk:12"


def test_document_template_with_unknown_placeholder(session_factory, settings):
    settings = settings.replace(url_tms="https://tms.example.test/{layer}/{file_name}")
    with session_factory() as session:
        add_raw_map(session)
        georeference(session)

        with pytest.raises(ConfigurationError, match=r"georeference\.url\.tms.*\{layer\}"):
            build_document(session, settings, 7)


def test_document_of_missing_map(session_factory, settings):
    with session_factory() as session:
        with pytest.raises(JobInputError, match="raw map 404 not found"):
            build_document(session, settings, 404)


def test_document_download_uses_layer_name(session_factory, settings):
    with session_factory() as session:
        raw_map = add_raw_map(session, allow_download=True)
        raw_map.file_name = "1925 Dresden.Süd"
        georeference(session)

        _, document = build_document(session, settings, 7)

    download = document["online_resources"][-1]
    assert download["type"] == "download"
    assert "&COVERAGEID=map_1925_Dresden_S_d&FORMAT=image/tiff" in download["url"]
