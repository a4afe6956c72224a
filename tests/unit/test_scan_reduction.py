"""Tests of georeference.geo.scan_reduction on small synthetic rasters."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, osr

from georeference.geo.scan_reduction import (
    ReducedScan,
    ReductionStopped,
    reduced_copy,
    reduction_factor,
)

gdal.UseExceptions()


def write_raster(path: Path, pixels: np.ndarray, *, alpha: bool = False,
                 geotransform: tuple[float, ...] | None = (500000.0, 2.0, 0.0, 5600000.0, 0.0, -2.0),
                 gcps: list[gdal.GCP] | None = None) -> str:
    """Write a (rows, columns, bands) array as a GeoTIFF in EPSG:31467, by geotransform or by GCPs."""
    height, width, bands = pixels.shape
    dataset = gdal.GetDriverByName("GTiff").Create(str(path), width, height, bands, gdal.GDT_Byte)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(31467)
    if gcps is not None:
        dataset.SetGCPs(gcps, srs)
    else:
        dataset.SetGeoTransform(geotransform)
        dataset.SetSpatialRef(srs)
    for index in range(bands):
        dataset.GetRasterBand(index + 1).WriteArray(pixels[..., index])
    if alpha:
        dataset.GetRasterBand(bands).SetColorInterpretation(gdal.GCI_AlphaBand)
    dataset = None
    return str(path)


def read_pixels(dataset: gdal.Dataset) -> np.ndarray:
    return np.dstack([dataset.GetRasterBand(index + 1).ReadAsArray()
                      for index in range(dataset.RasterCount)])


def box_average(pixels: np.ndarray, factor: int) -> np.ndarray:
    """Reference: the mean of each factor x factor box, partial boxes at the edges included."""
    height, width, bands = pixels.shape
    out = np.empty((-(-height // factor), -(-width // factor), bands), dtype=np.uint8)
    for row in range(out.shape[0]):
        for column in range(out.shape[1]):
            box = pixels[row * factor:(row + 1) * factor, column * factor:(column + 1) * factor]
            out[row, column] = np.round(box.reshape(-1, bands).mean(axis=0))
    return out


@pytest.fixture()
def noise(tmp_path: Path) -> tuple[np.ndarray, str]:
    """A 603 x 389 RGB raster of random values: odd sizes leave partial boxes at both edges."""
    pixels = np.random.default_rng(7).integers(0, 256, (389, 603, 3), dtype=np.uint8)
    return pixels, write_raster(tmp_path / "noise.tif", pixels)


@pytest.mark.parametrize(("source", "target", "expected"), [
    (2.61, 4.78, 2),     # the sample scan at zoom 15: halved, 9 % coarser than the zoom
    (2.61, 2.39, 1),     # the same scan at zoom 16: finer than the scan, nothing to average
    (1.0, 8.0, 8),
    (1.0, 7.0, 8),       # 8 is 14 % coarser than the target: allowed up to 15 %
    (1.0, 6.9, 4),       # 8 would be 16 % coarser
    (1.0, 1.7, 1),       # 2 would be 18 % coarser
])
def test_reduction_factor(source: float, target: float, expected: int) -> None:
    assert reduction_factor(source, target) == expected


@pytest.mark.parametrize("factor", [2, 4])
def test_box_average_with_partial_edge_boxes(noise: tuple[np.ndarray, str], tmp_path: Path,
                                             factor: int) -> None:
    pixels, path = noise
    reduced = reduced_copy(lambda: gdal.Open(path), factor, str(tmp_path))
    assert (reduced.RasterXSize, reduced.RasterYSize) == (-(-603 // factor), -(-389 // factor))
    difference = np.abs(read_pixels(reduced).astype(int) - box_average(pixels, factor))
    assert difference.max() <= 1  # Pillow rounds in fixed point


def test_geotransform_scaled(noise: tuple[np.ndarray, str], tmp_path: Path) -> None:
    _, path = noise
    reduced = reduced_copy(lambda: gdal.Open(path), 4, str(tmp_path))
    assert reduced.GetGeoTransform() == pytest.approx((500000.0, 8.0, 0.0, 5600000.0, 0.0, -8.0))
    assert reduced.GetSpatialRef().GetAuthorityCode(None) == "31467"


def test_gcps_scaled_to_the_same_places(tmp_path: Path) -> None:
    pixels = np.full((300, 400, 3), 90, dtype=np.uint8)
    gcps = [gdal.GCP(500000.0, 5600000.0, 0.0, 10.0, 20.0),
            gdal.GCP(500800.0, 5600000.0, 0.0, 390.0, 22.0),
            gdal.GCP(500000.0, 5599400.0, 0.0, 12.0, 290.0)]
    path = write_raster(tmp_path / "gcps.tif", pixels, gcps=gcps)
    reduced = reduced_copy(lambda: gdal.Open(path), 2, str(tmp_path))
    scaled = [(gcp.GCPPixel, gcp.GCPLine, gcp.GCPX, gcp.GCPY) for gcp in reduced.GetGCPs()]
    assert scaled == [(5.0, 10.0, 500000.0, 5600000.0), (195.0, 11.0, 500800.0, 5600000.0),
                      (6.0, 145.0, 500000.0, 5599400.0)]
    assert reduced.GetGCPSpatialRef().GetAuthorityCode(None) == "31467"


def test_alpha_weights_colours(tmp_path: Path) -> None:
    """Transparent pixels, black or red, do not change the colour of a box, only its alpha."""
    pixels = np.zeros((4, 4, 4), dtype=np.uint8)
    pixels[:, :2] = (220, 10, 10, 255)     # left half opaque red, right half transparent black
    pixels[:, 2:] = (0, 0, 0, 0)
    pixels[:2, 1] = (220, 10, 10, 0)       # transparent red pixels count for nothing either
    path = write_raster(tmp_path / "alpha.tif", pixels, alpha=True)
    reduced = read_pixels(reduced_copy(lambda: gdal.Open(path), 2, str(tmp_path)))
    assert reduced[0, 0].tolist() == pytest.approx([220, 10, 10, 128], abs=1)
    assert reduced[1, 0].tolist() == pytest.approx([220, 10, 10, 255], abs=1)
    assert reduced[:, 1, 3].tolist() == [0, 0]


def test_large_copy_written_to_disk(noise: tuple[np.ndarray, str],
                                                      tmp_path: Path) -> None:
    _, path = noise
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    in_memory = reduced_copy(lambda: gdal.Open(path), 2, str(scratch))
    on_disk = reduced_copy(lambda: gdal.Open(path), 2, str(scratch), memory_limit=1000)
    assert on_disk.GetDriver().ShortName == "GTiff"
    assert [p.name for p in scratch.iterdir()] == ["reduced-scan.tif"]
    assert in_memory.GetDriver().ShortName == "MEM"
    assert np.array_equal(read_pixels(on_disk), read_pixels(in_memory))


def test_threads_give_the_same_pixels(tmp_path: Path) -> None:
    """Strips reduced in a pool, each with its own dataset handle, land in their own rows."""
    pixels = np.random.default_rng(3).integers(0, 256, (2100, 300, 3), dtype=np.uint8)
    path = write_raster(tmp_path / "tall.tif", pixels)
    opened: list[int] = []

    def open_source() -> gdal.Dataset:
        opened.append(threading.get_ident())
        return gdal.Open(path)

    with ThreadPoolExecutor(max_workers=2) as pool:
        threaded = read_pixels(reduced_copy(open_source, 2, str(tmp_path), pool))
    alone = read_pixels(reduced_copy(lambda: gdal.Open(path), 2, str(tmp_path)))
    assert np.array_equal(threaded, alone)
    assert len(opened) == 1 + 5  # one to read the size, one per strip of 256 of the 1050 rows


def test_should_stop_ends_the_reduction(noise: tuple[np.ndarray, str], tmp_path: Path) -> None:
    _, path = noise
    with pytest.raises(ReductionStopped, match="stopped at row 0"):
        reduced_copy(lambda: gdal.Open(path), 2, str(tmp_path), should_stop=lambda: True)


def test_factor_must_be_a_power_of_two(noise: tuple[np.ndarray, str], tmp_path: Path) -> None:
    _, path = noise
    with pytest.raises(ValueError, match="factor 3"):
        reduced_copy(lambda: gdal.Open(path), 3, str(tmp_path))


def test_rows_written_as_needed(tmp_path: Path) -> None:
    """A warp reading from the top gets the first strip before the rest of the scan is written."""
    pixels = np.random.default_rng(9).integers(0, 256, (2100, 300, 3), dtype=np.uint8)
    path = write_raster(tmp_path / "tall.tif", pixels)

    with ThreadPoolExecutor(max_workers=2) as pool:
        reduced = ReducedScan(lambda: gdal.Open(path), 2, str(tmp_path), pool)
        reduced.wait_for_rows(10)
        first_strip = reduced.rows_written
        reduced.wait_for_rows(reduced.dataset.RasterYSize + 99)
        reduced.cancel()

    assert first_strip == 256
    assert reduced.rows_written == 1050
    written = read_pixels(reduced.dataset)
    assert np.abs(written.astype(int) - box_average(pixels, 2)).max() <= 1
