"""Tests of georeference.geo.affine_warp against GDAL's own nearest-neighbour warp."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, osr

from georeference.geo.affine_warp import AffineStripWarper
from georeference.geo.tiles import HALF_WORLD_M, TILE_SIZE, tile_resolution

gdal.UseExceptions()

ZOOM = 17
WIDTH, HEIGHT = 900, 700


def mercator_wkt() -> str:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(3857)
    return srs.ExportToWkt()


def write_scan(path: Path, bands: int, gcps: list[gdal.GCP]) -> str:
    """Write a scan with lines, text-like noise and flat areas, georeferenced by GCPs in EPSG:4326."""
    rng = np.random.default_rng(3)
    pixels = np.full((HEIGHT, WIDTH, 3), 235, dtype=np.uint8)
    pixels[::9] = (40, 40, 40)
    pixels[:, ::13] = (180, 30, 30)
    pixels[200:500, 300:700] = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    dataset = gdal.GetDriverByName("GTiff").Create(str(path), WIDTH, HEIGHT, bands, gdal.GDT_Byte)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4326)
    dataset.SetGCPs(gcps, srs)
    if bands == 2:
        dataset.GetRasterBand(1).WriteArray(pixels[..., 0])
        alpha = np.full((HEIGHT, WIDTH), 255, dtype=np.uint8)
        alpha[:, :100] = 0
        dataset.GetRasterBand(2).WriteArray(alpha)
        dataset.GetRasterBand(2).SetColorInterpretation(gdal.GCI_AlphaBand)
    else:
        for band in range(3):
            dataset.GetRasterBand(band + 1).WriteArray(pixels[..., band])
    dataset = None
    return str(path)


def rotated_gcps(middle_shift: float = 0.0) -> list[gdal.GCP]:
    """Corners of a scan turned by about 11 degrees near Dresden, plus its middle point.

    ``middle_shift`` moves the middle point in longitude, which bends a thin plate spline.
    """
    corners = [((0, 0), (13.700, 51.060)), ((WIDTH, 0), (13.712, 51.0585)),
               ((0, HEIGHT), (13.6985, 51.0535)), ((WIDTH, HEIGHT), (13.7105, 51.052))]
    gcps = [gdal.GCP(lon, lat, 0, x, y) for (x, y), (lon, lat) in corners]
    gcps.append(gdal.GCP(13.70525 + middle_shift, 51.056, 0, WIDTH / 2, HEIGHT / 2))
    return gcps


def strips_both_ways(path: str, options: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Warp the scan's footprint at ZOOM with AffineStripWarper and with GDAL; return both."""
    source = gdal.Open(path)
    has_alpha = source.RasterCount == 2
    suggestion = gdal.Warp("", source, format="VRT", dstSRS="EPSG:3857", transformerOptions=options)
    origin_x, _, _, origin_y, _, _ = suggestion.GetGeoTransform()
    resolution = tile_resolution(ZOOM)
    span = TILE_SIZE * resolution
    left = -HALF_WORLD_M + np.floor((origin_x + HALF_WORLD_M) / span) * span
    top = HALF_WORLD_M - np.floor((HALF_WORLD_M - origin_y) / span) * span
    columns, rows = 5, 4
    width, height = columns * TILE_SIZE, rows * TILE_SIZE

    warper = AffineStripWarper(source, options, mercator_wkt(), 1 if has_alpha else 3, has_alpha,
                               TILE_SIZE)
    strips = []
    for row in range(rows):
        strip = warper.warp(left, top - row * span, resolution, width, TILE_SIZE)
        assert strip is not None
        strips.append(strip)
    ours = np.concatenate(strips)

    target = gdal.GetDriverByName("MEM").Create("", width, height, 2 if has_alpha else 4)
    target.SetGeoTransform((left, resolution, 0.0, top, 0.0, -resolution))
    target.SetProjection(mercator_wkt())
    target.GetRasterBand(target.RasterCount).SetColorInterpretation(gdal.GCI_AlphaBand)
    gdal.Warp(target, source, resampleAlg="near", srcAlpha=has_alpha, dstAlpha=True,
              warpOptions=["INIT_DEST=0"], transformerOptions=options)
    bands = [target.GetRasterBand(index + 1).ReadAsArray() for index in range(target.RasterCount)]
    if has_alpha:
        bands = [bands[0], bands[0], bands[0], bands[1]]
    return ours, np.dstack(bands)


@pytest.mark.parametrize(("bands", "options", "shift"), [
    (3, ["METHOD=GCP_POLYNOMIAL", "MAX_GCP_ORDER=1"], 0.0),
    (3, ["METHOD=GCP_POLYNOMIAL", "MAX_GCP_ORDER=1"], 0.0004),   # least squares over 5 points
    (3, ["METHOD=GCP_TPS"], 0.0002),    # a 14 m correction bends the spline
    (2, ["METHOD=GCP_POLYNOMIAL", "MAX_GCP_ORDER=1"], 0.0),
])
def test_matches_gdal_nearest_warp(tmp_path: Path, bands: int, options: list[str],
                                   shift: float) -> None:
    path = write_scan(tmp_path / "scan.tif", bands, rotated_gcps(shift))
    ours, gdals = strips_both_ways(path, options)

    visible = gdals[..., 3] > 0
    assert visible.mean() > 0.3
    assert ((ours[..., 3] > 0) == visible).mean() >= 0.999
    both = visible & (ours[..., 3] > 0)
    identical = np.all(ours == gdals, axis=-1)
    assert identical[both].mean() >= 0.97
    # Both warps approximate the transformation to 0.125 scan pixels, so where they differ,
    # a position rounded the other way: ours must equal one of GDAL's 3 x 3 neighbours.
    near_match = np.zeros_like(identical)
    padded = np.pad(gdals, ((1, 1), (1, 1), (0, 0)))
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            shifted = padded[dy:dy + gdals.shape[0], dx:dx + gdals.shape[1]]
            near_match |= np.all(ours == shifted, axis=-1)
    assert near_match[both].mean() >= 0.999
    assert np.all(ours[~(ours[..., 3] > 0)] == 0)


def test_extreme_bend_left_to_gdal(tmp_path: Path) -> None:
    """A spline bent by a 140 m shift on an 840 m wide sheet is not affine even over 16 pixels.

    Those strips come back as None, for GDAL's warper; the others are still warped here.
    """
    path = write_scan(tmp_path / "scan.tif", 3, rotated_gcps(0.002))
    source = gdal.Open(path)
    options = ["METHOD=GCP_TPS"]
    warper = AffineStripWarper(source, options, mercator_wkt(), 3, False, TILE_SIZE)
    suggestion = gdal.Warp("", source, format="VRT", dstSRS="EPSG:3857", transformerOptions=options)
    origin_x, _, _, origin_y, _, _ = suggestion.GetGeoTransform()
    resolution = tile_resolution(ZOOM)
    span = TILE_SIZE * resolution

    results = [warper.warp(origin_x, origin_y - row * span, resolution, 5 * TILE_SIZE, TILE_SIZE)
               for row in range(4)]

    assert any(strip is None for strip in results)
    assert any(strip is not None for strip in results)
