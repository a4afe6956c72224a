"""Bad jobs fail alone, with a message naming the fault, and leave published products intact."""

from __future__ import annotations

import hashlib
import json
import math
import os

import pytest

from georeference.models import GeorefMap
from tests.factories import (SYNTHETIC_CORNERS, SYNTHETIC_HEIGHT, SYNTHETIC_WIDTH, add_job,
                             add_map, add_transformation, history_row, job_row, run_jobs,
                             synthetic_params)


def _gcps(points):
    return [{"source": list(pixel), "target": list(target)} for pixel, target in points]


def _params(**changes):
    params = json.loads(synthetic_params())
    params.update(changes)
    return json.dumps(params)


GOOD = SYNTHETIC_CORNERS

BAD_TRANSFORMATIONS = {
    "too few gcps": (_params(gcps=_gcps(GOOD[:2])), None, "needs at least 3 GCPs, got 2"),
    "too few for order 2": (_params(algorithm="polynom", order=2), None,
                            "needs at least 6 GCPs, got 4"),
    "duplicate gcps": (_params(gcps=_gcps([GOOD[0], GOOD[1], GOOD[1], GOOD[2]])), None,
                       "are duplicates"),
    "collinear gcps": (_params(gcps=_gcps([((0, 0), (13.70, 51.10)), ((100, 100), (13.71, 51.09)),
                                           ((200, 200), (13.72, 51.08))])), None,
                       "lie on one line"),
    "gcp outside scan": (_params(gcps=_gcps([((SYNTHETIC_WIDTH + 50, 0), (13.76, 51.10))]
                                            + list(GOOD[1:]))), None,
                         "lies outside the scan"),
    "gcp not finite": (json.dumps({"source": "pixel", "target": "EPSG:4314",
                                   "algorithm": "affine",
                                   "gcps": _gcps(GOOD[:3]) + [
                                       {"source": [1, 1], "target": [math.inf, 51.0]}]}),
                       None, "not finite"),
    "gcp outside crs area": (_params(gcps=_gcps([((0, 0), (150.0, -30.0))] + list(GOOD[1:]))),
                             None, "outside the valid area of EPSG:4314"),
    "unknown algorithm": (_params(algorithm="spline9"), None, "unknown algorithm 'spline9'"),
    "malformed crs": (_params(target="WGS84 please"), None, "is not a CRS"),
    "unknown crs": (_params(target="EPSG:999999"), None, "EPSG:999999 is unknown"),
    "unknown target_crs": (_params(), 999998, "EPSG:999998 is unknown"),
    "params not json": ("{gcps: oops", None, "params is not valid JSON"),
    "bad order": (_params(algorithm="polynom", order=7), None, "polynomial order 7 is invalid"),
}

BAD_CLIPS = {
    "clip is a point": (json.dumps({"type": "Point", "coordinates": [13.7, 51.1]}),
                        "clip must be a polygon, got a point"),
    "clip is empty": (json.dumps({"type": "Polygon", "coordinates": []}), "clip polygon is empty"),
    "clip misses map": (json.dumps({"type": "Polygon", "coordinates": [[
        [0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]}), "does not intersect the map"),
    "clip not geojson": ("POLYGON((0 0, 1 0, 1 1, 0 0))", "not valid GeoJSON"),
}


def _digest(path):
    with open(path, "rb") as product:
        return hashlib.sha256(product.read()).hexdigest()


@pytest.fixture
def published(settings, engine, session_factory):
    """A map with a published transformation; returns the geo image path and its digest."""
    with session_factory() as session:
        add_map(session, settings)
        good = add_transformation(session, 10, synthetic_params())
        add_job(session, "transformation_process", {"transformation_id": good})
        run_jobs(settings, engine)
        assert session.get(GeorefMap, 10).transformation_id == good
    image = os.path.join(settings.georef_root, "m", "synthetic.tif")
    return good, image, _digest(image)


def _assert_failed_cleanly(session, settings, job_id, expected, published):
    good, image, digest = published
    job = job_row(session, job_id)
    assert job.state == "failed"
    assert expected in job.comment
    assert history_row(session, job_id).state == "failed"
    session.expire_all()
    assert session.get(GeorefMap, 10).transformation_id == good
    assert _digest(image) == digest
    assert os.listdir(settings.tmp_root) == []


@pytest.mark.parametrize("case", sorted(BAD_TRANSFORMATIONS))
def test_bad_transformation_fails_job(settings, engine, session_factory, published, case):
    params, target_crs, expected = BAD_TRANSFORMATIONS[case]
    with session_factory() as session:
        bad = add_transformation(session, 10, params, target_crs=target_crs)
        job_id = add_job(session, "transformation_process", {"transformation_id": bad})
        run_jobs(settings, engine)
        _assert_failed_cleanly(session, settings, job_id, expected, published)


def test_absurd_warp_size_fails_job(settings, engine, session_factory, published):
    # The synthetic map warps to about 600 x 500 pixels; a limit of 300 must reject it.
    limited = settings.replace(warp_max_size=300)
    with session_factory() as session:
        again = add_transformation(session, 10, synthetic_params())
        job_id = add_job(session, "transformation_process", {"transformation_id": again})
        run_jobs(limited, engine)
        _assert_failed_cleanly(session, settings, job_id, "more than the limit of 300", published)


def test_wild_gcp_fails_on_size(settings, engine, session_factory, published):
    # One point 400 km off makes a second-order polynomial explode towards the scan's edges.
    points = list(SYNTHETIC_CORNERS) + [((300, 250), (13.73, 51.08)), ((150, 125), (7.0, 51.09))]
    params = json.dumps({"source": "pixel", "target": "EPSG:4314", "algorithm": "polynom",
                         "order": 2, "gcps": _gcps(points)})
    with session_factory() as session:
        wild = add_transformation(session, 10, params)
        job_id = add_job(session, "transformation_process", {"transformation_id": wild})
        run_jobs(settings.replace(warp_max_size=5000), engine)
        _assert_failed_cleanly(session, settings, job_id, "the GCPs are probably wrong", published)


@pytest.mark.parametrize("case", sorted(BAD_CLIPS))
def test_bad_clip_fails_job(settings, engine, session_factory, published, case):
    clip, expected = BAD_CLIPS[case]
    if case == "clip not geojson" and engine.dialect.name == "postgresql":
        pytest.skip("PostGIS rejects text that is not GeoJSON when it is stored")
    with session_factory() as session:
        bad = add_transformation(session, 10, synthetic_params(), clip=clip)
        job_id = add_job(session, "transformation_process", {"transformation_id": bad})
        run_jobs(settings, engine)
        _assert_failed_cleanly(session, settings, job_id, expected, published)


@pytest.mark.parametrize("damage", ["missing", "truncated", "not an image"])
def test_bad_scan_fails_job(settings, engine, session_factory, published, damage):
    scan = os.path.join(settings.image_root, "scans", "synthetic.tif")
    if damage == "missing":
        os.unlink(scan)
        expected = "raw scan not found"
    elif damage == "truncated":
        size = os.path.getsize(scan)
        with open(scan, "r+b") as scan_file:
            scan_file.truncate(size // 3)
        expected = "raw scan"
    else:
        with open(scan, "wb") as scan_file:
            scan_file.write(b"this is not a TIFF file at all")
        expected = "is not readable"
    with session_factory() as session:
        bad = add_transformation(session, 10, synthetic_params())
        job_id = add_job(session, "transformation_process", {"transformation_id": bad})
        run_jobs(settings, engine)
        _assert_failed_cleanly(session, settings, job_id, expected, published)


@pytest.mark.parametrize("job_type, description, expected", [
    ("transformation_explode", {"transformation_id": 1}, "unknown job type 'transformation_explode'"),
    ("transformation_process", "{not json", "job description is not valid JSON"),
    ("transformation_process", {}, "lacks 'transformation_id'"),
    ("transformation_process", {"transformation_id": "seven"}, "invalid transformation_id 'seven'"),
    ("transformation_process", {"transformation_id": 987654}, "transformation 987654 does not exist"),
    ("transformation_set_valid", {"transformation_id": 987654}, "transformation 987654 does not exist"),
])
def test_bad_job_row_fails_alone(settings, engine, session_factory, published, job_type,
                                 description, expected):
    good, _, _ = published
    with session_factory() as session:
        bad_id = add_job(session, job_type, description)
        next_id = add_job(session, "transformation_set_valid", {"transformation_id": good})
        summary = run_jobs(settings, engine)

        assert summary.failed == [bad_id]
        assert summary.completed == [next_id]
        _assert_failed_cleanly(session, settings, bad_id, expected, published)


def test_file_name_escaping_root_fails(settings, engine, session_factory):
    with session_factory() as session:
        add_map(session, settings, map_id=11, file_name="../../escape",
                rel_path="scans/escape.tif")
        transformation_id = add_transformation(session, 11, synthetic_params())
        job_id = add_job(session, "transformation_process",
                         {"transformation_id": transformation_id})
        run_jobs(settings, engine)
        job = job_row(session, job_id)
        assert job.state == "failed"
        assert "leaves its root" in job.comment
        assert session.get(GeorefMap, 11) is None
    assert not os.path.exists(os.path.join(os.path.dirname(settings.georef_root), "escape.tif"))
