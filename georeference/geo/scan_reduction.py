"""Shrink a georeferenced scan with an area average, keeping its georeferencing.

A tile pyramid whose highest zoom is coarser than the scan needs an area average of the
scan, not a point sample, or else thin lines and lettering alias. So the scan is averaged
down close to the resolution of that zoom and then warped with nearest neighbour. That is
much cheaper than GDAL's average kernel, and cheaper than warping at a finer zoom and
halving the result, because the warp then runs over far fewer pixels.

The reduced copy is georeferenced like the scan: GCP pixel and line positions and the
geotransform are scaled by the factor. That describes the same transformation for affine,
polynomial and thin plate spline fits. It lives in memory when small and in an
uncompressed GeoTIFF in a scratch folder otherwise, so a very large scan is never held
whole in memory.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future, wait

import numpy as np
from osgeo import gdal
from PIL import Image

from georeference.geo.jpeg_tiff import ScaledJpegTiff

logger = logging.getLogger(__name__)

gdal.UseExceptions()

MAX_COARSENING = 1.15
"""Ratio by which the reduced scan may be coarser than the target resolution. Pillow halves
an image about four times faster than it shrinks one by an arbitrary factor (measured: 0.1 s
against 0.4 s for the sample scan). So a scan 1.8 times finer than the target is halved, and
the result is about 10 % coarser than the target."""

IN_MEMORY_MAX_BYTES = 256 * 1024 * 1024
"""Reduced copies up to this size are kept in a MEM dataset; larger ones go to disk."""

OUTPUT_ROWS_PER_READ = 256
"""Rows of the reduced copy computed per read of the scan."""

STRIPS_IN_FLIGHT = 4
"""Strips being reduced by the pool at once, which bounds the memory they hold."""

_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


class ReductionStopped(RuntimeError):
    """Raised when the caller's ``should_stop`` returned True during the reduction."""


def reduction_factor(source_resolution: float, target_resolution: float) -> int:
    """Return the power of two by which to shrink the scan for the target resolution (1: none)."""
    factor = 1
    while source_resolution * factor * 2 <= target_resolution * MAX_COARSENING:
        factor *= 2
    return factor


def reduced_copy(open_source: Callable[[], gdal.Dataset], factor: int, scratch_dir: str,
                 pool: Executor | None = None,
                 should_stop: Callable[[], bool] | None = None,
                 memory_limit: int = IN_MEMORY_MAX_BYTES) -> gdal.Dataset:
    """Return the source shrunk ``factor`` times on each axis, georeferenced like the source.

    The arguments are those of ``ReducedScan``; this waits until every row is written.
    """
    reduced = ReducedScan(open_source, factor, scratch_dir, pool, should_stop, memory_limit)
    try:
        reduced.wait_for_rows(reduced.dataset.RasterYSize)
    finally:
        reduced.cancel()
    return reduced.dataset


class ReducedScan:
    """The source shrunk ``factor`` times on each axis, written strip by strip as rows are needed.

    Every output pixel is the average of a box of ``factor`` x ``factor`` scan pixels. The
    boxes at the right and bottom edges average the pixels they have. Pillow weights colours
    by alpha when the scan has an alpha band, so transparent pixels do not darken edges.
    A JPEG-compressed TIFF is decoded straight at the reduced size where it can be
    (``jpeg_tiff``), which averages each box inside libjpeg's inverse DCT instead.

    Strips are reduced in ``pool`` a few ahead of the rows asked for, so a warp that reads
    the copy from the top can start before the whole scan is decoded. ``dataset`` must only
    be used from the thread that calls ``wait_for_rows``, which also writes the strips.

    Args:
        open_source: returns a new handle of the scan (8-bit gray or RGB, optionally with an
            alpha band last). Each strip opens its own, because a GDAL dataset must not be
            read from two threads at once.
        factor: a power of two, at least 2.
        scratch_dir: where a copy too large for memory is written.
        pool: threads that decode and reduce strips side by side; None works in the caller.
        should_stop: polled between strips; True ends the reduction with ``ReductionStopped``.
        memory_limit: the largest copy, in bytes, kept in memory rather than on disk.
    """

    def __init__(self, open_source: Callable[[], gdal.Dataset], factor: int, scratch_dir: str,
                 pool: Executor | None = None, should_stop: Callable[[], bool] | None = None,
                 memory_limit: int = IN_MEMORY_MAX_BYTES) -> None:
        if factor < 2 or factor & (factor - 1):
            raise ValueError(f"reduction factor {factor} is not a power of two above 1")
        source = open_source()
        bands = source.RasterCount
        if bands not in _MODES:
            raise ValueError(
                f"invalid band count {bands}: expected gray or RGB, optionally with alpha")

        self._open_source = open_source
        self._factor = factor
        self._jpeg = ScaledJpegTiff.open(source, factor)
        self._pool = pool
        self._should_stop = should_stop
        width = -(-source.RasterXSize // factor)
        height = -(-source.RasterYSize // factor)
        self.dataset = _create_target(source, width, height, scratch_dir, memory_limit)
        _copy_georeferencing(source, self.dataset, factor)
        self.rows_written = 0
        self._next_row = 0
        self._in_flight: deque[tuple[int, Future[bytes]]] = deque()
        self._submit_ahead()

    def wait_for_rows(self, rows: int) -> None:
        """Write strips until at least ``rows`` rows (or all rows) of ``dataset`` are final."""
        rows = min(rows, self.dataset.RasterYSize)
        while self.rows_written < rows:
            if self._should_stop is not None and self._should_stop():
                raise ReductionStopped(
                    f"reduction of the scan stopped at row {self.rows_written * self._factor}")
            if self._pool is None:
                pixels = self._reduce_strip(self._next_row)
                self._next_row += OUTPUT_ROWS_PER_READ
            else:
                _, future = self._in_flight.popleft()
                pixels = future.result()
            _write_strip(self.dataset, self.rows_written, pixels)
            self.rows_written = min(self.rows_written + OUTPUT_ROWS_PER_READ,
                                    self.dataset.RasterYSize)
            self._submit_ahead()

    def cancel(self) -> None:
        """Cancel the strips not started yet and wait for those running."""
        for _, future in self._in_flight:
            future.cancel()
        wait([future for _, future in self._in_flight])
        self._in_flight.clear()

    def _submit_ahead(self) -> None:
        if self._pool is None:
            return
        while (len(self._in_flight) < STRIPS_IN_FLIGHT
               and self._next_row < self.dataset.RasterYSize):
            self._in_flight.append(
                (self._next_row, self._pool.submit(self._reduce_strip, self._next_row)))
            self._next_row += OUTPUT_ROWS_PER_READ

    def _reduce_strip(self, out_row: int) -> bytes:
        first = out_row * self._factor
        if self._jpeg is not None:
            try:
                return self._jpeg.read(first, OUTPUT_ROWS_PER_READ * self._factor).tobytes()
            except (OSError, ValueError, SyntaxError) as error:
                # GDAL decodes the strip instead, and reports the damage in its own terms.
                logger.debug("Scaled JPEG decoding of scan rows from %d failed: %s", first, error)
        source = self._open_source()
        rows = min(OUTPUT_ROWS_PER_READ * self._factor, source.RasterYSize - first)
        return _read_strip(source, first, rows).reduce(self._factor).tobytes()


def _write_strip(target: gdal.Dataset, out_row: int, pixels: bytes) -> None:
    bands, width = target.RasterCount, target.RasterXSize
    rows = len(pixels) // (bands * width)
    target.WriteRaster(0, out_row, width, rows, pixels, buf_pixel_space=bands,
                       buf_line_space=bands * width, buf_band_space=1)


def _read_strip(source: gdal.Dataset, first: int, rows: int) -> Image.Image:
    bands, width = source.RasterCount, source.RasterXSize
    raw = source.ReadRaster(0, first, width, rows, buf_pixel_space=bands,
                            buf_line_space=bands * width, buf_band_space=1)
    mode = _MODES[bands]
    return Image.frombuffer(mode, (width, rows), raw, "raw", mode, 0, 1)


def _create_target(source: gdal.Dataset, width: int, height: int, scratch_dir: str,
                   memory_limit: int) -> gdal.Dataset:
    bands = source.RasterCount
    if width * height * bands <= memory_limit:
        # Band by band, as GDAL's warper reads it: the tile build then took about 10 % less
        # CPU than with a pixel-interleaved copy (measured on the sample scan).
        target = gdal.GetDriverByName("MEM").Create("", width, height, bands, gdal.GDT_Byte)
    else:
        path = os.path.join(scratch_dir, "reduced-scan.tif")
        target = gdal.GetDriverByName("GTiff").Create(
            path, width, height, bands, gdal.GDT_Byte,
            options=["INTERLEAVE=PIXEL", "TILED=YES", "BIGTIFF=IF_SAFER"])
    for index in range(1, bands + 1):
        interpretation = source.GetRasterBand(index).GetColorInterpretation()
        target.GetRasterBand(index).SetColorInterpretation(interpretation)
    return target


def _copy_georeferencing(source: gdal.Dataset, target: gdal.Dataset, factor: int) -> None:
    if source.GetGCPCount():
        gcps = [gdal.GCP(gcp.GCPX, gcp.GCPY, gcp.GCPZ, gcp.GCPPixel / factor,
                         gcp.GCPLine / factor, gcp.Info, gcp.Id)
                for gcp in source.GetGCPs()]
        target.SetGCPs(gcps, source.GetGCPSpatialRef())
        return
    origin_x, x_step, x_skew, origin_y, y_skew, y_step = source.GetGeoTransform()
    target.SetGeoTransform((origin_x, x_step * factor, x_skew * factor,
                            origin_y, y_skew * factor, y_step * factor))
    target.SetSpatialRef(source.GetSpatialRef())
