"""The real sample scan, a Messtischblatt, georeferenced with its four neatline corners.

The neatline corners are known in EPSG:4314; a correct warp puts them at the corners of the
clipped image to within one output pixel.
"""

from __future__ import annotations

import json
import os

import pytest
from osgeo import gdal, osr

from georeference.models import GeorefMap
from georeference.publish.search import get_document
from georeference.sample import NEATLINE_GCPS, neatline_clip_geojson, sample_params
from tests.factories import add_job, add_map, add_transformation, job_row, run_jobs

gdal.UseExceptions()

NEATLINE_WEST = 9.999999047035397
NEATLINE_EAST = 10.166666985288636
NEATLINE_SOUTH = 48.79999923771421
NEATLINE_NORTH = 48.90000152653428


@pytest.fixture
def real_settings(settings):
    # Tiles up to zoom 13 keep the test short; tiling itself is tested elsewhere.
    return settings.replace(tms_max_zoom=13)


def _process_real(session, settings, engine, algorithm="affine", clip=True, target_crs=None):
    add_map(session, settings, map_id=1, file_name="test-mtb", real_scan=True)
    params = sample_params(algorithm)
    if algorithm != "affine":
        # Order 1 fits four points; a spline needs no more either, but a centre point
        # keeps both well defined. It lies on the affine fit through the corners.
        params["gcps"].append({"source": [4189.5, 3894.5],
                               "target": [(NEATLINE_WEST + NEATLINE_EAST) / 2,
                                          (NEATLINE_SOUTH + NEATLINE_NORTH) / 2]})
    transformation_id = add_transformation(
        session, 1, json.dumps(params), clip=neatline_clip_geojson() if clip else None,
        target_crs=target_crs)
    job_id = add_job(session, "transformation_process", {"transformation_id": transformation_id})
    run_jobs(settings, engine)
    job = job_row(session, job_id)
    assert job.state == "completed", job.comment
    return os.path.join(settings.georef_root, "m", "test-mtb.tif")


def _bounds(image):
    origin_x, pixel_x, _, origin_y, _, pixel_y = image.GetGeoTransform()
    return (origin_x, origin_y + pixel_y * image.RasterYSize,
            origin_x + pixel_x * image.RasterXSize, origin_y), abs(pixel_x), abs(pixel_y)


@pytest.mark.parametrize("algorithm", ["affine", "polynom", "tps"])
def test_neatline_corners_land_in_place(real_settings, engine, session_factory, algorithm):
    if algorithm != "affine" and engine.dialect.name == "postgresql":
        pytest.skip("the algorithms differ only in GDAL; one database covers them")
    with session_factory() as session:
        path = _process_real(session, real_settings, engine, algorithm)
        georef_map = session.get(GeorefMap, 1)
        extent = json.loads(georef_map.extent)
        document = get_document(session, 1)

    image = gdal.Open(path)
    srs = osr.SpatialReference(wkt=image.GetProjection())
    assert srs.GetAuthorityCode(None) == "4314"
    (west, south, east, north), pixel_x, pixel_y = _bounds(image)
    # The clip is the neatline stored in EPSG:4326 and taken back to EPSG:4314, which moves
    # its corners by far less than a pixel (1.9e-5 degrees).
    assert west == pytest.approx(NEATLINE_WEST, abs=pixel_x)
    assert east == pytest.approx(NEATLINE_EAST, abs=pixel_x)
    assert south == pytest.approx(NEATLINE_SOUTH, abs=pixel_y)
    assert north == pytest.approx(NEATLINE_NORTH, abs=pixel_y)
    # The reference warp of this scan has 1.954e-5 degrees per pixel.
    assert pixel_x == pytest.approx(1.954e-5, rel=0.01)

    # The scan carries TIFFTAG_SOFTWARE=Adobe Photoshop; the geo image must not claim it.
    assert "TIFFTAG_SOFTWARE" not in image.GetMetadata()

    alpha = image.GetRasterBand(4).ReadAsArray(image.RasterXSize // 2 - 50,
                                               image.RasterYSize // 2 - 50, 100, 100)
    assert (alpha == 255).all()

    lons = [point[0] for point in extent["coordinates"][0]]
    lats = [point[1] for point in extent["coordinates"][0]]
    # The extent is the image footprint in EPSG:4326: DHDN -> WGS 84 shifts it by under
    # 0.002 degrees here.
    assert min(lons) == pytest.approx(west, abs=0.002)
    assert max(lons) == pytest.approx(east, abs=0.002)
    assert min(lats) == pytest.approx(south, abs=0.002)
    assert max(lats) == pytest.approx(north, abs=0.002)
    assert document["has_georeference"] is True


def test_unclipped_warp_matches_reference(real_settings, engine, session_factory):
    if engine.dialect.name == "postgresql":
        pytest.skip("the warp does not depend on the database; SQLite covers it")
    with session_factory() as session:
        path = _process_real(session, real_settings, engine, clip=False)

    image = gdal.Open(path)
    # gdalwarp -order 1 with the same GCPs gives 10067 x 7201 pixels (GDAL 3.6.2).
    assert image.RasterXSize == pytest.approx(10067, abs=3)
    assert image.RasterYSize == pytest.approx(7201, abs=3)
    alpha = image.GetRasterBand(4)
    corners = [alpha.ReadAsArray(x, y, 1, 1)[0, 0]
               for x, y in ((0, 0), (image.RasterXSize - 1, 0), (0, image.RasterYSize - 1),
                            (image.RasterXSize - 1, image.RasterYSize - 1))]
    # The scan is slightly rotated, so some corners of the bounding box lie outside it.
    assert 0 in corners
    assert alpha.ReadAsArray(image.RasterXSize // 2, image.RasterYSize // 2, 1, 1)[0, 0] == 255

    # The neatline corner at scan pixel (637, 652) must lie where its GCP puts it.
    (west, _, _, north), pixel_x, pixel_y = _bounds(image)
    (_, (lon, lat)) = NEATLINE_GCPS[0]
    column = (lon - west) / pixel_x
    row = (north - lat) / pixel_y
    assert 0 < column < image.RasterXSize
    assert 0 < row < image.RasterYSize


def test_target_crs_differs_from_gcps(real_settings, engine, session_factory):
    if engine.dialect.name == "postgresql":
        pytest.skip("the reprojection does not depend on the database; SQLite covers it")
    with session_factory() as session:
        path = _process_real(session, real_settings, engine, target_crs=31467)

    image = gdal.Open(path)
    srs = osr.SpatialReference(wkt=image.GetProjection())
    assert srs.GetAuthorityCode(None) == "31467"
    (west, south, east, north), _, _ = _bounds(image)
    to_gk = osr.CoordinateTransformation(*[_srs(code) for code in (4314, 31467)])
    corner_x, corner_y, _ = to_gk.TransformPoint(NEATLINE_WEST, NEATLINE_NORTH)
    # In Gauss-Krueger zone 3 the neatline is slightly rotated: the image's bounding box
    # contains the corner within a few metres.
    assert west - 5 <= corner_x <= west + 300
    assert north - 300 <= corner_y <= north + 5


def _srs(code):
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(code)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs
