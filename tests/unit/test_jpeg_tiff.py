"""Tests of georeference.geo.jpeg_tiff: JPEG-compressed TIFFs decoded at a reduced size.

The reference for every reduced read is GDAL's full-size decode of the same file averaged
in boxes by Pillow, which is what the scan reduction does without this module. The scaled
IDCT is a different average, so the comparison is by PSNR: 45 dB is an RMS difference
of about 1.4 levels of 255.
"""

from __future__ import annotations

import logging
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, osr
from PIL import Image

from georeference.geo.jpeg_tiff import ScaledJpegTiff
from georeference.geo.scan_reduction import ReducedScan

gdal.UseExceptions()

SIZE = (603, 389)
"""Width and height: odd, so the last box of each row and column is partial."""

MIN_PSNR_DB = 45.0


def smooth_pixels(bands: int, width: int = SIZE[0], height: int = SIZE[1]) -> np.ndarray:
    """Return (rows, columns, bands) of smooth waves that JPEG keeps well, different per band."""
    y, x = np.mgrid[0:height, 0:width]
    channels = [128 + 100 * np.sin(x / 23.0 + band) * np.cos(y / 17.0 - band)
                for band in range(bands)]
    return np.clip(np.dstack(channels), 0, 255).astype(np.uint8)


def write_tiff(path: Path, pixels: np.ndarray, options: list[str]) -> str:
    height, width, bands = pixels.shape
    dataset = gdal.GetDriverByName("GTiff").Create(str(path), width, height, bands, gdal.GDT_Byte,
                                                   options=options)
    for index in range(bands):
        dataset.GetRasterBand(index + 1).WriteArray(pixels[..., index])
    dataset = None
    return str(path)


def gdal_reduced(path: str, factor: int) -> np.ndarray:
    """GDAL's full decode of the file, averaged in factor x factor boxes by Pillow."""
    pixels = gdal.Open(path).ReadAsArray(interleave="pixel")
    return np.asarray(Image.fromarray(pixels).reduce(factor))


def psnr(first: np.ndarray, second: np.ndarray) -> float:
    mse = float(np.mean((first.astype(np.float64) - second.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def gcp_vrt(path: str, vrt_path: Path) -> str:
    """Wrap a file in a VRT with corner GCPs, as the jobs do with a raw scan."""
    width, height = SIZE
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(31467)
    gcps = [gdal.GCP(3500000.0 + x, 5600000.0 - y, 0.0, x, y)
            for x, y in ((0, 0), (width, 0), (0, height), (width, height))]
    gdal.Translate(str(vrt_path), path, format="VRT", GCPs=gcps, outputSRS=srs.ExportToWkt())
    return str(vrt_path)


LAYOUTS = {
    "RGB strips of 16 rows": (3, ["COMPRESS=JPEG", "PHOTOMETRIC=RGB", "BLOCKYSIZE=16"]),
    "YCbCr strips of 16 rows": (3, ["COMPRESS=JPEG", "PHOTOMETRIC=YCBCR", "BLOCKYSIZE=16"]),
    "YCbCr tiles of 64 pixels": (3, ["COMPRESS=JPEG", "PHOTOMETRIC=YCBCR", "TILED=YES",
                                     "BLOCKXSIZE=64", "BLOCKYSIZE=64"]),
    "gray strips of 8 rows": (1, ["COMPRESS=JPEG", "BLOCKYSIZE=8"]),
    "RGB strips of 24 rows": (3, ["COMPRESS=JPEG", "BLOCKYSIZE=24"]),
    "RGB strips in a BigTIFF": (3, ["COMPRESS=JPEG", "BLOCKYSIZE=16", "BIGTIFF=YES"]),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("factor", [2, 4, 8, 16])
def test_whole_scan_matches_box_average(tmp_path: Path, layout: str, factor: int) -> None:
    """Should give GDAL's decode averaged in boxes, partial edge boxes and padded tiles included."""
    bands, options = LAYOUTS[layout]
    path = write_tiff(tmp_path / "scan.tif", smooth_pixels(bands), options)

    reader = ScaledJpegTiff.open(gdal.Open(path), factor)
    assert reader is not None
    ours = np.asarray(reader.read(0, SIZE[1]))

    expected = gdal_reduced(path, factor)
    assert ours.shape == expected.shape
    assert psnr(ours, expected) >= MIN_PSNR_DB
    # No single pixel far off, as a dark padded row or column would be.
    assert int(np.abs(ours.astype(np.int16) - expected).max()) <= 12


@pytest.mark.parametrize(("first_row", "rows"), [(16, 32), (48, 96), (384, 64)])
def test_partial_read_matches_whole_read(tmp_path: Path, first_row: int, rows: int) -> None:
    """Should give the same rows as one read of everything, also where a strip is cut."""
    path = write_tiff(tmp_path / "scan.tif", smooth_pixels(3), ["COMPRESS=JPEG", "BLOCKYSIZE=24"])
    reader = ScaledJpegTiff.open(gdal.Open(path), 8)
    assert reader is not None

    whole = np.asarray(reader.read(0, SIZE[1]))
    part = np.asarray(reader.read(first_row, rows))

    last = -(-min(first_row + rows, SIZE[1]) // 8)
    assert part.shape == (last - first_row // 8, whole.shape[1], 3)
    assert np.array_equal(part, whole[first_row // 8:last])


def test_reads_from_threads_agree(tmp_path: Path) -> None:
    """Should give the same pixels when strips are read from several threads at once."""
    path = write_tiff(tmp_path / "scan.tif", smooth_pixels(3), ["COMPRESS=JPEG", "BLOCKYSIZE=16"])
    reader = ScaledJpegTiff.open(gdal.Open(path), 2)
    assert reader is not None
    starts = list(range(0, SIZE[1], 64))

    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda row: np.asarray(reader.read(row, 64)), starts))

    assert np.array_equal(np.vstack(parallel), np.asarray(reader.read(0, SIZE[1])))


def test_gcp_vrt_reads_its_file(tmp_path: Path) -> None:
    """Should see through a GCP VRT that maps the file's bands one to one."""
    path = write_tiff(tmp_path / "scan.tif", smooth_pixels(3), ["COMPRESS=JPEG", "BLOCKYSIZE=16"])
    vrt = gcp_vrt(path, tmp_path / "scan.vrt")

    reader = ScaledJpegTiff.open(gdal.Open(vrt), 2)

    assert reader is not None
    assert psnr(np.asarray(reader.read(0, SIZE[1])), gdal_reduced(path, 2)) >= MIN_PSNR_DB


@pytest.mark.parametrize("case", [
    "LZW compression",
    "VRT of a window",
    "VRT with bands swapped",
    "RGB with alpha",
])
def test_other_files_left_to_gdal(tmp_path: Path, case: str) -> None:
    """Should return None for a file or VRT whose pixels are not one JPEG TIFF read as it is."""
    jpeg = ["COMPRESS=JPEG", "BLOCKYSIZE=16"]
    if case == "LZW compression":
        source = gdal.Open(write_tiff(tmp_path / "scan.tif", smooth_pixels(3), ["COMPRESS=LZW"]))
    elif case == "VRT of a window":
        path = write_tiff(tmp_path / "scan.tif", smooth_pixels(3), jpeg)
        source = gdal.Translate(str(tmp_path / "window.vrt"), path, format="VRT",
                                srcWin=[16, 16, 256, 256])
    elif case == "VRT with bands swapped":
        path = write_tiff(tmp_path / "scan.tif", smooth_pixels(3), jpeg)
        source = gdal.Translate(str(tmp_path / "bgr.vrt"), path, format="VRT", bandList=[3, 2, 1])
    else:
        source = gdal.Open(write_tiff(tmp_path / "scan.tif", smooth_pixels(4),
                                      jpeg + ["PHOTOMETRIC=RGB", "ALPHA=YES"]))

    assert ScaledJpegTiff.open(source, 2) is None


def _set_photometric(path: str, value: int) -> None:
    """Overwrite the PhotometricInterpretation entry of a little-endian classic TIFF in place."""
    with open(path, "r+b") as file:
        header = file.read(8)
        assert header[:4] == b"II*\x00"
        (ifd,) = struct.unpack("<I", header[4:])
        file.seek(ifd)
        (entries,) = struct.unpack("<H", file.read(2))
        for index in range(entries):
            entry = ifd + 2 + 12 * index
            file.seek(entry)
            (tag,) = struct.unpack("<H", file.read(2))
            if tag == 262:
                file.seek(entry + 8)
                file.write(struct.pack("<H", value))
                return
    raise AssertionError("no PhotometricInterpretation tag")


def test_colour_space_mismatch_rejected(tmp_path: Path, caplog) -> None:
    """Should reject a file that libjpeg would convert differently from GDAL.

    An RGB JPEG TIFF relabelled as YCbCr: GDAL then converts the samples from YCbCr to
    RGB, while libjpeg in Pillow follows the stream's own marking as RGB.
    """
    path = write_tiff(tmp_path / "scan.tif", smooth_pixels(3),
                      ["COMPRESS=JPEG", "PHOTOMETRIC=RGB", "BLOCKYSIZE=16"])
    _set_photometric(path, 6)

    with caplog.at_level(logging.DEBUG, logger="georeference.geo.jpeg_tiff"):
        reader = ScaledJpegTiff.open(gdal.Open(path), 2)

    assert reader is None
    assert "differs from GDAL's" in caplog.text


def test_reduced_scan_uses_scaled_decode(tmp_path: Path, caplog) -> None:
    """Should reduce a JPEG TIFF behind a GCP VRT by scaled decoding, to GDAL's box average."""
    path = write_tiff(tmp_path / "scan.tif", smooth_pixels(3), ["COMPRESS=JPEG", "BLOCKYSIZE=16"])
    vrt = gcp_vrt(path, tmp_path / "scan.vrt")

    with caplog.at_level(logging.DEBUG, logger="georeference.geo.jpeg_tiff"), \
            ThreadPoolExecutor(2) as pool:
        reduced = ReducedScan(lambda: gdal.Open(vrt), 4, str(tmp_path), pool)
        reduced.wait_for_rows(reduced.dataset.RasterYSize)
        ours = reduced.dataset.ReadAsArray(interleave="pixel")
        gcps = [(gcp.GCPPixel, gcp.GCPLine) for gcp in reduced.dataset.GetGCPs()]

    assert "scaled IDCT" in caplog.text
    assert psnr(ours, gdal_reduced(path, 4)) >= MIN_PSNR_DB
    assert gcps == [(0.0, 0.0), (SIZE[0] / 4, 0.0), (0.0, SIZE[1] / 4), (SIZE[0] / 4, SIZE[1] / 4)]


def test_scan_above_pillow_pixel_limit(tmp_path: Path) -> None:
    """Should read a scan larger than Pillow's decompression bomb limit, as big sheets are."""
    path = str(tmp_path / "large.tif")
    dataset = gdal.GetDriverByName("GTiff").Create(path, 14000, 13000, 1, gdal.GDT_Byte,
                                                   options=["COMPRESS=JPEG", "TILED=YES"])
    dataset.GetRasterBand(1).Fill(77)
    dataset = None
    assert 14000 * 13000 > 2 * Image.MAX_IMAGE_PIXELS

    reader = ScaledJpegTiff.open(gdal.Open(path), 8)

    assert reader is not None
    strip = np.asarray(reader.read(0, 512))
    assert strip.shape == (64, 1750)
    assert np.unique(strip).tolist() == [77]


def test_damaged_strip_reported_by_gdal(tmp_path: Path) -> None:
    """Should let GDAL decode a strip that Pillow cannot, so the error is GDAL's own."""
    from georeference.geo.jpeg_tiff import _first_directory_tags

    path = write_tiff(tmp_path / "scan.tif", smooth_pixels(3), ["COMPRESS=JPEG", "BLOCKYSIZE=16"])
    tags = _first_directory_tags(path)
    assert tags is not None
    offset, size = tags[273][10], tags[279][10]
    with open(path, "r+b") as file:
        # An end-of-image marker 40 bytes into strip 10, and nothing after it.
        file.seek(offset + 40)
        file.write(b"\xff\xd9" + b"\x00" * (size - 42))

    reduced = ReducedScan(lambda: gdal.Open(path), 2, str(tmp_path))
    with pytest.raises(RuntimeError, match="TIFFReadEncodedStrip"):
        reduced.wait_for_rows(reduced.dataset.RasterYSize)
