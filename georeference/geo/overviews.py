"""Internal overviews of an RGBA GeoTIFF, computed strip by strip with the alpha-weighted average.

GDAL 3.6's AVERAGE overviews weight by the alpha band too, but on an RGBA image they ran
about three times slower than the plain average (3.3 s against 1.2 s for 10067 x 7201
pixels, measured on a 2-core machine). Reducing strips with Pillow and numpy gives the
same weighting in a fraction of the time, and memory stays bounded by a few strips (one
being read, one being halved, one waiting to be written).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from osgeo import gdal

from georeference.geo.reduce import reduce_half

gdal.UseExceptions()

# Rows of the finer level read per step; must be even.
STRIP_ROWS = 1024


def overview_factors(width: int, height: int, block_size: int) -> list[int]:
    """Return the factors 2, 4, 8 … until the overview fits into one block, as COGs have them."""
    factors = []
    factor = 2
    while max(width, height) / (factor // 2) > block_size:
        factors.append(factor)
        factor *= 2
    return factors


def _read_rgba(dataset: gdal.Dataset | None, bands: list[gdal.Band], width: int, row: int,
               rows: int) -> np.ndarray:
    """Read a strip as (rows, width, 4), padded with transparent pixels to even sizes."""
    strip = np.zeros((rows + rows % 2, width + width % 2, 4), dtype=np.uint8)
    if dataset is not None:
        # One pixel-interleaved read of the full-resolution image, straight into the strip.
        dataset.ReadAsArray(0, row, width, rows, buf_obj=strip[:rows, :width], interleave="pixel")
        return strip
    for index, band in enumerate(bands):
        strip[:rows, :width, index] = band.ReadAsArray(0, row, width, rows)
    return strip


def _write_rgba(bands: list[gdal.Band], row: int, pixels: np.ndarray) -> None:
    for index, band in enumerate(bands):
        band.WriteArray(np.ascontiguousarray(pixels[..., index]), 0, row)


def build_overviews(dataset: gdal.Dataset, block_size: int) -> list[int]:
    """Add internal overviews to an RGBA dataset opened for update; return their factors.

    Raises:
        ValueError: the dataset does not have exactly four bands.
    """
    if dataset.RasterCount != 4:
        raise ValueError(f"expected an RGBA dataset, got {dataset.RasterCount} bands")
    factors = overview_factors(dataset.RasterXSize, dataset.RasterYSize, block_size)
    if not factors:
        return []
    dataset.BuildOverviews("NONE", factors)

    bands = [dataset.GetRasterBand(index) for index in range(1, 5)]
    # One thread halves a strip while this one reads the next and writes the previous:
    # GDAL, Pillow and numpy release the GIL for most of that work.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="overviews") as pool:
        for level in range(len(factors)):
            finer = bands if level == 0 else [band.GetOverview(level - 1) for band in bands]
            coarser = [band.GetOverview(level) for band in bands]
            _halve_level(dataset if level == 0 else None, finer, coarser, pool)
    dataset.FlushCache()
    return factors


def _halve_level(dataset: gdal.Dataset | None, finer: list[gdal.Band], coarser: list[gdal.Band],
                 pool: ThreadPoolExecutor) -> None:
    width, height = finer[0].XSize, finer[0].YSize
    out_width, out_height = coarser[0].XSize, coarser[0].YSize

    def write(out_row: int, reduced: np.ndarray) -> None:
        reduced = reduced[:max(0, min(reduced.shape[0], out_height - out_row)), :out_width]
        if reduced.shape[0]:
            _write_rgba(coarser, out_row, reduced)

    pending: tuple[int, Future[np.ndarray]] | None = None
    for row in range(0, height, STRIP_ROWS):
        rows = min(STRIP_ROWS, height - row)
        future = pool.submit(reduce_half, _read_rgba(dataset, finer, width, row, rows))
        if pending is not None:
            write(pending[0], pending[1].result())
        pending = (row // 2, future)
    if pending is not None:
        write(pending[0], pending[1].result())
