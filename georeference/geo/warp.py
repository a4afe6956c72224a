"""Warp a raw scan with its GCPs and clip polygon into a georeferenced Cloud Optimized GeoTIFF.

The output has three colour bands and an alpha band that is 0 outside the scan and outside
the clip, 512-pixel tiles, compression (DEFLATE unless configured otherwise) and internal
overviews. GDAL clients such as QGIS and MapServer read it and can stream parts of it.
"""

from __future__ import annotations

import logging
import math
import os
import time
import uuid
from dataclasses import dataclass
from typing import Callable

from osgeo import gdal, ogr, osr

from georeference.errors import JobInputError, ProcessingError
from georeference.geo.overviews import build_overviews
from georeference.geo.transformation import TransformationSpec, srs_from_epsg

gdal.UseExceptions()

logger = logging.getLogger(__name__)

BLOCK_SIZE = 512

# Compression of the geo image -> COG creation options. DEFLATE is readable by every GDAL
# build and libtiff; ZSTD (GDAL 2.3+ built with libzstd) is faster to write and smaller.
# Scans carry JPEG noise, so a horizontal predictor makes them larger here, not smaller.
COMPRESSIONS = {
    "DEFLATE": ["COMPRESS=DEFLATE", "LEVEL=6"],
    "ZSTD": ["COMPRESS=ZSTD", "LEVEL=1"],
    "LZW": ["COMPRESS=LZW"],
}

COG_OPTIONS = [
    f"BLOCKSIZE={BLOCK_SIZE}",
    "OVERVIEWS=FORCE_USE_EXISTING",
    "NUM_THREADS=ALL_CPUS",
    "BIGTIFF=IF_SAFER",
]

# The uncompressed intermediate: written once by the warp, read twice (overviews, COG copy).
PLAIN_OPTIONS = ["TILED=YES", f"BLOCKXSIZE={BLOCK_SIZE}", f"BLOCKYSIZE={BLOCK_SIZE}",
                 "BIGTIFF=IF_SAFER", "SPARSE_OK=YES"]

# Nearest neighbour, as gdalwarp uses by default: the geo image keeps about the scan's own
# resolution, so each output pixel is one scan pixel and averaging would only blur lines.
WARP_RESAMPLING = "near"

# Memory GDAL's warper may use per chunk, in bytes.
WARP_MEMORY_LIMIT = 64 * 1024 * 1024

# Points per edge when a rectangle is transformed to EPSG:4326, so curved edges stay close.
EDGE_DENSITY = 21


@dataclass(frozen=True)
class Residual:
    """How far one GCP lies from where the fitted transformation puts it."""

    index: int
    target_units: float
    pixels: float


@dataclass(frozen=True)
class Residuals:
    """Per-point residuals and their root mean square, in target units and in scan pixels."""

    points: tuple[Residual, ...]
    rms_target_units: float
    rms_pixels: float

    def summary(self, units: str) -> str:
        """Return a one-line text for logs and the job's comment."""
        per_point = ", ".join(f"{r.index + 1}: {r.target_units:.3g} {units}/{r.pixels:.2f} px"
                              for r in self.points)
        return (f"GCP residuals RMS {self.rms_target_units:.3g} {units} "
                f"({self.rms_pixels:.2f} px); per point {per_point}")


@dataclass(frozen=True)
class GeoImage:
    """A georeferenced GeoTIFF written by ``write_geo_image``."""

    path: str
    width: int
    height: int
    epsg: int
    bounds: tuple[float, float, float, float]
    footprint_geojson: str


def open_scan(path: str) -> gdal.Dataset:
    """Open a raw scan and check that it can be read to its last row.

    Raises:
        JobInputError: the file is missing, not a raster GDAL can read, or truncated.
    """
    if not os.path.isfile(path):
        raise JobInputError(f"raw scan not found: {path}")
    try:
        dataset = gdal.Open(path, gdal.GA_ReadOnly)
    except RuntimeError as exc:
        raise JobInputError(f"raw scan {path} is not readable: {exc}") from None
    if dataset is None or dataset.RasterCount == 0:
        raise JobInputError(f"raw scan {path} has no raster bands")
    data_type = dataset.GetRasterBand(1).DataType
    if data_type != gdal.GDT_Byte:
        raise JobInputError(
            f"raw scan {path} has {gdal.GetDataTypeName(data_type)} pixels; only 8-bit scans "
            "are supported")

    width, height = dataset.RasterXSize, dataset.RasterYSize
    try:
        for band_index in range(1, dataset.RasterCount + 1):
            dataset.GetRasterBand(band_index).ReadRaster(0, height - 1, width, 1)
    except RuntimeError as exc:
        raise JobInputError(f"raw scan {path} is truncated or corrupt: {exc}") from None
    return dataset


def scan_size(path: str) -> tuple[int, int]:
    """Return the width and height of a raw scan in pixels, after checking it is readable."""
    dataset = open_scan(path)
    return dataset.RasterXSize, dataset.RasterYSize


def make_gcp_vrt(scan_path: str, spec: TransformationSpec, vrt_path: str) -> None:
    """Write a VRT of the scan that carries the GCPs and their CRS, the input of every warp."""
    scan = open_scan(scan_path)
    # Every product is RGB + alpha: grey scans repeat their band, palette scans expand.
    expand = None
    if scan.GetRasterBand(1).GetColorTable() is not None:
        bands, expand = [1], "rgb"
    elif scan.RasterCount >= 3:
        bands = [1, 2, 3]
    else:
        bands = [1, 1, 1]
    options = gdal.TranslateOptions(
        format="VRT", bandList=bands, rgbExpand=expand, GCPs=spec.gdal_gcps(),
        outputSRS=spec.srs().ExportToWkt())
    gdal.Translate(vrt_path, scan, options=options)


def compute_residuals(spec: TransformationSpec, width: int, height: int) -> Residuals:
    """Fit the transformation to its GCPs and measure how far each point lies off the fit."""
    dataset = gdal.GetDriverByName("MEM").Create("", width, height, 1, gdal.GDT_Byte)
    dataset.SetGCPs(spec.gdal_gcps(), spec.srs().ExportToWkt())
    transformer = gdal.Transformer(dataset, None, spec.transformer_options)

    residuals = []
    for index, point in enumerate(spec.gcps):
        ok, (x, y, _) = transformer.TransformPoint(0, point.pixel_x, point.pixel_y)
        right_ok, (right_x, right_y, _) = transformer.TransformPoint(
            0, point.pixel_x + 1, point.pixel_y)
        target_error = math.hypot(x - point.x, y - point.y) if ok else math.inf
        # The local size of one scan pixel in target units turns the error into pixels.
        pixel_size = math.hypot(right_x - x, right_y - y) if ok and right_ok else 0.0
        pixel_error = target_error / pixel_size if pixel_size > 0 else math.inf
        residuals.append(Residual(index, target_error, pixel_error))

    count = len(residuals)
    rms_target = math.sqrt(sum(r.target_units ** 2 for r in residuals) / count)
    rms_pixels = math.sqrt(sum(r.pixels ** 2 for r in residuals) / count)
    return Residuals(tuple(residuals), rms_target, rms_pixels)


def scan_footprint(spec: TransformationSpec, width: int, height: int) -> ogr.Geometry:
    """Return the scan's outline as the transformation places it, in EPSG:4326."""
    dataset = gdal.GetDriverByName("MEM").Create("", width, height, 1, gdal.GDT_Byte)
    dataset.SetGCPs(spec.gdal_gcps(), spec.srs().ExportToWkt())
    transformer = gdal.Transformer(dataset, None, spec.transformer_options)
    steps = [i / (EDGE_DENSITY - 1) for i in range(EDGE_DENSITY)]
    outline = ([(width * t, 0.0) for t in steps] + [(width, height * t) for t in steps[1:]]
               + [(width * (1 - t), height) for t in steps[1:]]
               + [(0.0, height * (1 - t)) for t in steps[1:]])
    ring = ogr.Geometry(ogr.wkbLinearRing)
    for pixel_x, pixel_y in outline:
        ok, (x, y, _) = transformer.TransformPoint(0, pixel_x, pixel_y)
        if ok:
            ring.AddPoint_2D(x, y)
    polygon = ogr.Geometry(ogr.wkbPolygon)
    polygon.AddGeometry(ring)
    polygon.AssignSpatialReference(spec.srs())
    if spec.epsg != 4326:
        polygon.TransformTo(srs_from_epsg(4326))
    return polygon


def _write_cutline(clip: ogr.Geometry, path: str) -> None:
    driver = ogr.GetDriverByName("GeoJSON")
    datasource = driver.CreateDataSource(path)
    layer = datasource.CreateLayer("clip", clip.GetSpatialReference(), ogr.wkbPolygon)
    feature = ogr.Feature(layer.GetLayerDefn())
    feature.SetGeometry(clip)
    layer.CreateFeature(feature)
    datasource = None


def footprint_polygon(bounds: tuple[float, float, float, float], epsg: int) -> ogr.Geometry:
    """Return a rectangle in a CRS as a densified polygon in EPSG:4326 (lon/lat order)."""
    min_x, min_y, max_x, max_y = bounds
    steps = [i / (EDGE_DENSITY - 1) for i in range(EDGE_DENSITY)]
    outline = ([(min_x + (max_x - min_x) * t, min_y) for t in steps]
               + [(max_x, min_y + (max_y - min_y) * t) for t in steps[1:]]
               + [(max_x - (max_x - min_x) * t, max_y) for t in steps[1:]]
               + [(min_x, max_y - (max_y - min_y) * t) for t in steps[1:]])
    ring = ogr.Geometry(ogr.wkbLinearRing)
    for x, y in outline:
        ring.AddPoint_2D(x, y)
    polygon = ogr.Geometry(ogr.wkbPolygon)
    polygon.AddGeometry(ring)
    if epsg != 4326:
        polygon.AssignSpatialReference(srs_from_epsg(epsg))
        polygon.TransformTo(srs_from_epsg(4326))
    return polygon


def plan_warp(gcp_vrt: str, spec: TransformationSpec, clip: ogr.Geometry | None,
              warped_vrt: str, max_size: int, work_dir: str) -> dict:
    """Check the warp's size and clip by describing it as a VRT; return the warp options.

    Raises:
        JobInputError: the output would exceed ``max_size`` pixels on a side, or the clip
            does not intersect the map.
    """
    cutline_path = None
    if clip is not None:
        source = gdal.Open(gcp_vrt)
        footprint = scan_footprint(spec, source.RasterXSize, source.RasterYSize)
        if not footprint.Intersects(clip):
            raise JobInputError("clip polygon does not intersect the map")
        cutline_path = os.path.join(work_dir, f"clip-{uuid.uuid4().hex}.geojson")
        _write_cutline(clip, cutline_path)

    warp_options = dict(
        dstSRS=spec.srs().ExportToWkt(), dstAlpha=True, resampleAlg=WARP_RESAMPLING,
        multithread=True, warpOptions=["NUM_THREADS=ALL_CPUS"],
        warpMemoryLimit=WARP_MEMORY_LIMIT, tps=spec.algorithm == "tps",
        polynomialOrder=spec.order if spec.algorithm != "tps" else None,
        cutlineDSName=cutline_path, cropToCutline=clip is not None)
    try:
        dataset = gdal.Warp(warped_vrt, gcp_vrt,
                            options=gdal.WarpOptions(format="VRT", **warp_options))
    except RuntimeError as exc:
        text = str(exc).lower()
        if clip is not None and "cutline" in text:
            raise JobInputError(f"clip polygon does not intersect the map: {exc}") from None
        if "illegal" in text or "too large" in text or "cannot compute" in text:
            raise JobInputError(
                f"the warped map would be absurdly large or undefined ({exc}); "
                "the GCPs are probably wrong") from None
        raise ProcessingError("warp", f"cannot set up the warp: {exc}") from exc
    if dataset is None:
        raise ProcessingError("warp", "GDAL returned no dataset")

    width, height = dataset.RasterXSize, dataset.RasterYSize
    if width > max_size or height > max_size:
        raise JobInputError(
            f"the warped map would be {width} x {height} pixels, more than the limit of "
            f"{max_size} on a side; the GCPs are probably wrong")
    return warp_options


def _dataset_bounds(dataset: gdal.Dataset) -> tuple[float, float, float, float]:
    origin_x, pixel_width, _, origin_y, _, pixel_height = dataset.GetGeoTransform()
    max_x = origin_x + pixel_width * dataset.RasterXSize
    min_y = origin_y + pixel_height * dataset.RasterYSize
    return (origin_x, min_y, max_x, origin_y)


def write_geo_image(gcp_vrt: str, spec: TransformationSpec, clip: ogr.Geometry | None,
                    output_path: str, max_size: int, work_dir: str,
                    progress: Callable[[float], bool] | None = None,
                    compression: str = "DEFLATE") -> GeoImage:
    """Warp the scan into a COG at ``output_path``.

    Args:
        gcp_vrt: the scan as a VRT with GCPs, from ``make_gcp_vrt``.
        spec: the checked transformation.
        clip: a valid polygon in EPSG:4326, or None to keep the whole scan.
        output_path: where the GeoTIFF is written; its folder must exist.
        max_size: the largest output width or height accepted, in pixels.
        work_dir: scratch folder for the warp's intermediate files.
        progress: called with the completed fraction; returning False cancels the warp.
        compression: a key of ``COMPRESSIONS``.

    Raises:
        JobInputError: the output would be too large or the clip misses the map.
        ProcessingError: GDAL failed while warping or writing.
    """
    warped_vrt = os.path.join(work_dir, f"warped-{uuid.uuid4().hex}.vrt")
    warp_options = plan_warp(gcp_vrt, spec, clip, warped_vrt, max_size, work_dir)

    def callback(complete: float, message: str, data: object) -> int:
        return 1 if progress is None or progress(complete) else 0

    plain_path = os.path.join(work_dir, f"plain-{uuid.uuid4().hex}.tif")
    started = time.monotonic()
    try:
        # copyMetadata=False: the scan's own TIFF tags (scanner software, document name)
        # do not describe the georeferenced map.
        plain = gdal.Warp(plain_path, gcp_vrt, options=gdal.WarpOptions(
            format="GTiff", creationOptions=PLAIN_OPTIONS, callback=callback,
            copyMetadata=False, **warp_options))
        plain.GetRasterBand(4).SetColorInterpretation(gdal.GCI_AlphaBand)
        warped_at = time.monotonic()
        build_overviews(plain, BLOCK_SIZE)
        overviews_at = time.monotonic()
        if progress is not None and not progress(1.0):
            raise ProcessingError("warp", "cancelled")
        gdal.Translate(output_path, plain, options=gdal.TranslateOptions(
            format="COG", creationOptions=COG_OPTIONS + COMPRESSIONS[compression],
            callback=callback))
        logger.debug("geo image: warp %.2f s, overviews %.2f s, COG %.2f s",
                     warped_at - started, overviews_at - warped_at,
                     time.monotonic() - overviews_at)
    except RuntimeError as exc:
        raise ProcessingError("warp", f"cannot write {output_path}: {exc}") from exc
    finally:
        plain = None
        if os.path.exists(plain_path):
            os.unlink(plain_path)

    result = gdal.Open(output_path)
    bounds = _dataset_bounds(result)
    footprint = footprint_polygon(bounds, spec.epsg)
    return GeoImage(path=output_path, width=result.RasterXSize, height=result.RasterYSize,
                    epsg=spec.epsg, bounds=bounds, footprint_geojson=footprint.ExportToJson())


def image_epsg(path: str) -> int | None:
    """Return the EPSG code of a GeoTIFF's CRS, or None when it has no identifiable code."""
    dataset = gdal.Open(path)
    srs = osr.SpatialReference(wkt=dataset.GetProjection())
    srs.AutoIdentifyEPSG()
    code = srs.GetAuthorityCode(None)
    return int(code) if code else None
