"""Halve RGBA rasters with an alpha-weighted 2x2 average: tile pyramids and GeoTIFF overviews.

Colours are averaged weighted by alpha, so fully transparent pixels (whose RGB is undefined,
usually black) do not darken the map's edge in lower resolutions. Where all four pixels of a
2x2 quad have the same alpha, the weighted average equals the plain one, so Pillow's C box
reduction does the bulk and only the few quads along edges, whose alphas differ, are
recomputed with weights in numpy.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# Pillow refuses images wider or taller than this; wider blocks are reduced in parts.
MAX_PART_WIDTH = 16384


def _quad_extremes(alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    corners = (alpha[0::2, 0::2], alpha[0::2, 1::2], alpha[1::2, 0::2], alpha[1::2, 1::2])
    low = np.minimum(np.minimum(corners[0], corners[1]), np.minimum(corners[2], corners[3]))
    high = np.maximum(np.maximum(corners[0], corners[1]), np.maximum(corners[2], corners[3]))
    return low, high


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
    return result


def reduce_half(block: np.ndarray) -> np.ndarray:
    """Halve an RGBA block (even height and width) with an alpha-weighted 2x2 average.

    Alpha itself is the plain average of the four pixels; colours are weighted by alpha.
    """
    if block.shape[0] % 2 or block.shape[1] % 2:
        raise ValueError(f"block of {block.shape[1]} x {block.shape[0]} pixels is not even")
    if block.shape[1] > MAX_PART_WIDTH:
        half = MAX_PART_WIDTH
        return np.concatenate([reduce_half(block[:, :half]), reduce_half(block[:, half:])], axis=1)

    alpha = block[..., 3]
    if not alpha.any():
        return np.zeros((block.shape[0] // 2, block.shape[1] // 2, 4), dtype=np.uint8)
    # Declared premultiplied ("RGBa"), Pillow reduces all four channels with a plain
    # average and skips its own premultiplication, which the edge quads get below.
    contiguous = np.ascontiguousarray(block)
    image = Image.frombuffer("RGBa", (block.shape[1], block.shape[0]), contiguous, "raw",
                             "RGBa", 0, 1)
    result = np.array(image.reduce(2))
    low, high = _quad_extremes(alpha)
    rows, columns = np.nonzero(low != high)
    if len(rows):
        result[rows, columns] = _weighted_quads(block, rows, columns)
    transparent = high == 0
    result[transparent] = 0
    return result
