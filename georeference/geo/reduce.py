"""Halve RGBA rasters with an alpha-weighted 2x2 average: tile pyramids and GeoTIFF overviews.

Colours are averaged weighted by alpha, so fully transparent pixels (black, as GDAL's warp
leaves them) do not darken the map's edge in lower resolutions. Where all four pixels of a
2x2 quad have the same alpha, the weighted average equals the plain one, so Pillow's C box
reduction does the bulk and only the few quads along edges, whose alphas differ, are
recomputed with weights in numpy.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# Pillow refuses images wider or taller than this; wider blocks are reduced in parts.
MAX_PART_WIDTH = 16384


def _mixed_quads(alpha: np.ndarray) -> np.ndarray:
    """Return a mask, one entry per 2x2 quad, of the quads whose four alphas are not all equal."""
    across = alpha[:, 0::2] != alpha[:, 1::2]
    mixed = across[0::2] | across[1::2]
    mixed |= alpha[0::2, 0::2] != alpha[1::2, 0::2]
    return mixed


def _weighted_quads(block: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    quads = np.stack([block[2 * rows + dy, 2 * columns + dx]
                      for dy in (0, 1) for dx in (0, 1)], axis=1).astype(np.uint32)
    weights = quads[..., 3]
    alpha_sum = weights.sum(axis=1)
    color_sum = (quads[..., :3] * weights[..., None]).sum(axis=1)
    divisor = np.maximum(alpha_sum, 1)[:, None]
    result = np.empty((len(rows), 4), dtype=np.uint8)
    result[:, :3] = (color_sum + divisor // 2) // divisor
    result[:, 3] = (alpha_sum + 2) >> 2
    # An alpha that rounds to 0 makes the pixel fully transparent: its colour becomes 0 too.
    result[result[:, 3] == 0] = 0
    return result


def reduce_half(block: np.ndarray) -> np.ndarray:
    """Halve an RGBA block (even height and width) with an alpha-weighted 2x2 average.

    Alpha itself is the plain average of the four pixels; colours are weighted by alpha.
    Fully transparent input pixels are expected to have colour 0, as GDAL's warp and the
    tile clip leave them. Fully transparent output pixels then have colour 0 as well.
    """
    if block.shape[0] % 2 or block.shape[1] % 2:
        raise ValueError(f"block of {block.shape[1]} x {block.shape[0]} pixels is not even")
    if block.shape[1] > MAX_PART_WIDTH:
        half = MAX_PART_WIDTH
        return np.concatenate([reduce_half(block[:, :half]), reduce_half(block[:, half:])], axis=1)

    # Declared premultiplied ("RGBa"), Pillow reduces all four channels with a plain
    # average and skips its own premultiplication, which the edge quads get below.
    contiguous = np.ascontiguousarray(block)
    image = Image.frombuffer("RGBa", (block.shape[1], block.shape[0]), contiguous, "raw",
                             "RGBa", 0, 1)
    alpha_image = image.getchannel("a")
    lowest, highest = alpha_image.getextrema()
    if highest == 0:
        return np.zeros((block.shape[0] // 2, block.shape[1] // 2, 4), dtype=np.uint8)
    result = np.array(image.reduce(2))
    if lowest == highest:
        return result
    rows, columns = np.nonzero(_mixed_quads(np.asarray(alpha_image)))
    if len(rows):
        result[rows, columns] = _weighted_quads(contiguous, rows, columns)
    return result
