"""Decode a JPEG-compressed TIFF scan straight to a half, a quarter or an eighth of its size.

libjpeg can compute each 8x8 block's inverse DCT at 4x4, 2x2 or 1x1 pixels. The result is
close to an area average of the block, and much cheaper than decoding the block whole. GDAL reads
JPEG-in-TIFF only at full size, so the scan reduction (``scan_reduction``) would decode
every pixel and then average it away. Here the strips or tiles of the file are read
directly instead. Pillow reads the TIFF tags without decoding. Each block is joined with
the file's shared JPEG tables into a complete JPEG stream, which Pillow decodes at a
reduced draft size. On the sample scan (8382 x 9089, JPEG strips of 16 rows), halving
took 0.14-0.19 CPU-s this way, against 0.33-0.45 CPU-s for GDAL's decode plus Pillow's
2x2 average, and the two results differ by a PSNR of 60 dB.

Only a plain file is taken this way: 8-bit gray or RGB (or YCbCr) samples, one plane, no
alpha, upright, with strips or tiles whose size the scale divides. A VRT that maps the
bands of such a file one to one (as a GCP VRT does) counts as the file. The first block is
also decoded at full size and compared with GDAL's pixels, so a colour space that libjpeg
would read differently from GDAL sends the scan back to GDAL's decoder.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import xml.etree.ElementTree as ElementTree
from typing import BinaryIO

import numpy as np
from osgeo import gdal
from PIL import Image, TiffImagePlugin

logger = logging.getLogger(__name__)

gdal.UseExceptions()

MAX_DCT_SCALE = 8
"""Largest reduction libjpeg applies to a block (1/8). Pillow averages larger factors further."""

MAX_MEAN_DIFFERENCE = 1.0
"""Largest mean absolute difference, in levels of 255, between the first block decoded
here and by GDAL. Both use libjpeg's default integer IDCT, so they normally agree exactly."""

_JPEG = 7
_PHOTOMETRIC_ACCEPTED = {1: 1, 2: 3, 6: 3}
"""TIFF photometric interpretation (black is zero, RGB, YCbCr) to the samples per pixel it needs."""

_TAG = {"width": 256, "height": 257, "bits": 258, "compression": 259, "photometric": 262,
        "strip_offsets": 273, "orientation": 274, "samples": 277, "rows_per_strip": 278,
        "strip_byte_counts": 279, "planar": 284, "tile_width": 322, "tile_length": 323,
        "tile_offsets": 324, "tile_byte_counts": 325, "extra_samples": 338, "jpeg_tables": 347}

_SIMPLE_SOURCE_CHILDREN = {"SourceFilename", "SourceBand", "SourceProperties", "SrcRect", "DstRect"}


class ScaledJpegTiff:
    """A JPEG-compressed TIFF whose rows are read already reduced by a power of two.

    ``read`` may be called from several threads at once, because every call opens the file itself.
    """

    def __init__(self, path: str, factor: int, size: tuple[int, int], block: tuple[int, int],
                 offsets: tuple[int, ...], byte_counts: tuple[int, ...],
                 tables: bytes | None, mode: str) -> None:
        self._path = path
        self._factor = factor
        self._scale = min(factor, MAX_DCT_SCALE)
        self._width, self._height = size
        self._block_width, self._block_height = block
        self._blocks_across = -(-self._width // self._block_width)
        self._offsets = offsets
        self._byte_counts = byte_counts
        self._tables = tables
        self._mode = mode

    @classmethod
    def open(cls, dataset: gdal.Dataset, factor: int) -> ScaledJpegTiff | None:
        """Return a reader of ``dataset``'s pixels reduced ``factor`` times, or None when the
        dataset is not a JPEG-compressed TIFF that this reader decodes exactly like GDAL."""
        path = _pixel_file(dataset)
        if path is None:
            return None
        tags = _first_directory_tags(path)
        if tags is None:
            return None
        reader = cls._from_tags(path, tags, factor, dataset)
        if reader is None or not reader._agrees_with_gdal(dataset):
            return None
        logger.debug("Decoding %s at 1/%d with libjpeg's scaled IDCT", path, reader._scale)
        return reader

    def read(self, first_row: int, rows: int) -> Image.Image:
        """Return scan rows ``first_row`` to ``first_row + rows``, each axis reduced ``factor`` times.

        ``first_row`` is a multiple of the factor. Boxes at the right and bottom edges
        average the pixels they have, as Pillow's ``reduce`` does.
        """
        scale = self._scale
        last_row = min(first_row + rows, self._height)
        top = first_row // scale
        canvas = Image.new(self._mode, (-(-self._width // scale), -(-last_row // scale) - top))
        with open(self._path, "rb") as file:
            for block_row in range(first_row // self._block_height,
                                   (last_row - 1) // self._block_height + 1):
                y = block_row * self._block_height // scale - top
                for block_column in range(self._blocks_across):
                    index = block_row * self._blocks_across + block_column
                    canvas.paste(self._decode(file, index, block_row),
                                 (block_column * self._block_width // scale, y))
        if self._factor > scale:
            return canvas.reduce(self._factor // scale)
        return canvas

    @classmethod
    def _from_tags(cls, path: str, tags: dict, factor: int,
                   dataset: gdal.Dataset) -> ScaledJpegTiff | None:
        def tag(name: str, default: object = None) -> object:
            return tags.get(_TAG[name], default)

        samples = tag("samples", 1)
        if (tag("compression") != _JPEG
                or _PHOTOMETRIC_ACCEPTED.get(tag("photometric")) != samples
                or dataset.RasterCount != samples
                or any(bits != 8 for bits in _as_tuple(tag("bits", 8)))
                or tag("planar", 1) != 1
                or tag("orientation", 1) != 1
                or tag("extra_samples") is not None):
            return None
        width, height = tag("width"), tag("height")
        if (width, height) != (dataset.RasterXSize, dataset.RasterYSize):
            return None

        if tag("tile_offsets") is not None:
            block = (tag("tile_width"), tag("tile_length"))
            offsets, byte_counts = tag("tile_offsets"), tag("tile_byte_counts")
        else:
            block = (width, min(tag("rows_per_strip", height), height))
            offsets, byte_counts = tag("strip_offsets"), tag("strip_byte_counts")
        if offsets is None or byte_counts is None or not _scales_evenly(block, width, factor):
            return None
        offsets, byte_counts = _as_tuple(offsets), _as_tuple(byte_counts)
        blocks = -(-width // block[0]) * -(-height // block[1])
        if len(offsets) < blocks or len(byte_counts) < blocks or 0 in byte_counts[:blocks]:
            return None  # A sparse file: GDAL fills missing blocks, which this reader cannot do.

        tables = tag("jpeg_tables")
        mode = "L" if samples == 1 else "RGB"
        return cls(path, factor, (width, height), block, offsets, byte_counts,
                   bytes(tables) if tables else None, mode)

    def _agrees_with_gdal(self, dataset: gdal.Dataset) -> bool:
        """Return True when the first block decoded at full size matches GDAL's pixels."""
        width = min(self._block_width, self._width)
        height = min(self._block_height, self._height)
        # A damaged first block leaves the scan to GDAL, which then reports the damage itself.
        try:
            with open(self._path, "rb") as file, self._open_block(file, 0) as decoded:
                ours = np.asarray(decoded.crop((0, 0, width, height)), dtype=np.int16)
            theirs = dataset.ReadAsArray(0, 0, width, height, interleave="pixel").astype(np.int16)
        except (OSError, ValueError, SyntaxError, RuntimeError):
            return False
        if ours.shape != theirs.shape:
            return False
        difference = float(np.abs(ours - theirs).mean())
        if difference > MAX_MEAN_DIFFERENCE:
            logger.debug("Not decoding %s with scaled IDCT: first block differs from GDAL's by %.2f",
                         self._path, difference)
            return False
        return True

    def _decode(self, file: BinaryIO, index: int, block_row: int) -> Image.Image:
        """Return block ``index`` reduced by the DCT scale and cropped to the image."""
        scale = self._scale
        rows = min(self._block_height, self._height - block_row * self._block_height)
        column = index % self._blocks_across
        columns = min(self._block_width, self._width - column * self._block_width)
        with self._open_block(file, index) as image:
            frame_width, frame_height = image.size
            # A tile that sticks out of the image contains padding, which the scaled IDCT would
            # average into the last partial box. So such a tile is decoded whole.
            pads_partial_box = ((frame_width > columns and columns % scale)
                                or (frame_height > rows and rows % scale))
            if not pads_partial_box:
                image.draft(self._mode, (max(1, frame_width // scale), max(1, frame_height // scale)))
            image.load()
            done = _achieved_scale((frame_width, frame_height), image.size)
            if done > scale:
                raise ValueError(f"JPEG block {index} of {self._path} decoded at 1/{done}, not 1/{scale}")
            decoded = image.crop((0, 0, -(-columns // done), -(-rows // done)))
        if done < scale:
            # Pillow averages what libjpeg did not: a padded tile, or a last strip fewer
            # than ``scale`` rows high.
            decoded = decoded.reduce(scale // done)
        return decoded

    def _open_block(self, file: BinaryIO, index: int) -> Image.Image:
        file.seek(self._offsets[index])
        data = file.read(self._byte_counts[index])
        if self._tables is not None and len(self._tables) > 4:
            # The tables are a JPEG stream of their own (SOI, tables, EOI). The block's
            # stream follows them without its SOI.
            data = self._tables[:-2] + data[2:]
        return Image.open(io.BytesIO(data), formats=["JPEG"])


def _first_directory_tags(path: str) -> dict | None:
    """Return the tags of a TIFF file's first image directory, or None if it is not a TIFF.

    The directory is read without ``Image.open``, whose decompression bomb check rejects
    scans above about 179 million pixels, which a large map sheet can reach.
    """
    try:
        with open(path, "rb") as file:
            header = file.read(8)
            if header[2:3] == b"\x2b":  # BigTIFF: the first directory's offset takes 8 bytes
                header += file.read(8)
            directory = TiffImagePlugin.ImageFileDirectory_v2(header)
            file.seek(directory.next)
            directory.load(file)
            return dict(directory)
    except (OSError, ValueError, SyntaxError, struct.error):
        return None


def _as_tuple(value: object) -> tuple:
    """Return a TIFF tag's value as a tuple: Pillow gives a single value without one."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _scales_evenly(block: tuple[object, object], width: int, factor: int) -> bool:
    """Return True when blocks start on whole boxes of the DCT scale, so none is split."""
    scale = min(factor, MAX_DCT_SCALE)
    block_width, block_height = block
    if not all(isinstance(size, int) and size > 0 for size in block):
        return False
    return block_height % scale == 0 and (block_width == width or block_width % scale == 0)


def _achieved_scale(frame: tuple[int, int], decoded: tuple[int, int]) -> int:
    """Return the scale by which libjpeg reduced a frame, from its decoded size."""
    for scale in (8, 4, 2, 1):
        if decoded == (-(-frame[0] // scale), -(-frame[1] // scale)):
            return scale
    raise ValueError(f"JPEG block of {frame} pixels decoded to an unexpected size {decoded}")


def _pixel_file(dataset: gdal.Dataset) -> str | None:
    """Return the TIFF file that contains ``dataset``'s pixels unchanged, or None."""
    driver = dataset.GetDriver().ShortName
    if driver == "GTiff":
        return dataset.GetDescription()
    if driver != "VRT":
        return None

    try:
        root = ElementTree.fromstring(dataset.GetMetadata("xml:VRT")[0])
    except (ElementTree.ParseError, IndexError, TypeError):
        return None
    bands = root.findall("VRTRasterBand")
    if len(bands) != dataset.RasterCount:
        return None
    files = {_band_file(band, number, dataset) for number, band in enumerate(bands, start=1)}
    if len(files) != 1 or None in files:
        return None

    path = files.pop()
    try:
        target = gdal.Open(path)
    except RuntimeError:
        return None
    if target.GetDriver().ShortName != "GTiff" or target.RasterCount != dataset.RasterCount:
        return None
    return path


def _band_file(band: ElementTree.Element, number: int, dataset: gdal.Dataset) -> str | None:
    """Return the file of a VRT band that copies band ``number`` of that file whole, or None."""
    sources = [child for child in band if child.tag.endswith("Source")]
    if len(sources) != 1 or sources[0].tag != "SimpleSource" or band.get("subClass"):
        return None
    source = sources[0]
    if any(child.tag not in _SIMPLE_SOURCE_CHILDREN for child in source):
        return None
    if source.findtext("SourceBand") != str(number):
        return None
    if not _is_whole(source.find("SrcRect"), dataset) or not _is_whole(source.find("DstRect"), dataset):
        return None

    name = source.find("SourceFilename")
    if name is None or not name.text:
        return None
    path = name.text
    if name.get("relativeToVRT") == "1":
        path = os.path.join(os.path.dirname(dataset.GetDescription()), path)
    return os.path.abspath(path)


def _is_whole(rect: ElementTree.Element | None, dataset: gdal.Dataset) -> bool:
    """Return True when a VRT source rectangle is absent or covers the whole raster."""
    if rect is None:
        return True
    try:
        values = [float(rect.get(key, "nan")) for key in ("xOff", "yOff", "xSize", "ySize")]
    except ValueError:
        return False
    return values == [0.0, 0.0, float(dataset.RasterXSize), float(dataset.RasterYSize)]
