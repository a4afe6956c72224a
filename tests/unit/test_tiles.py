"""Tests of georeference.geo.tiles on small synthetic rasters and on the sample scan.

The synthetic sources are EPSG:3857 rasters aligned to the tile grid at
``ZOOM`` with exactly its resolution, so an average warp copies their pixels
unchanged and expected tile pixels can be computed from the source array.
"""

from __future__ import annotations

import io
import math
import os
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, osr
from PIL import Image

from georeference.geo import tiles as tiles_module
from georeference.geo.tiles import (
    HALF_WORLD_M,
    PALETTE_MIN_PSNR_DB,
    TILE_SIZE,
    build_tile_pyramid,
    encode_png,
    mercator_to_lonlat,
    palette_psnr,
    reduce_half,
    tile_resolution,
)

gdal.UseExceptions()

ZOOM = 10
FIRST_COL = 540
FIRST_ROW = 360
SAMPLE_SCAN = "/work/shared/data/maps/test-mtb.tif"
SAMPLE_NEATLINE_GCPS = (
    ((637, 652), (9.999999047035397, 48.90000152653428)),
    ((625, 7125), (9.999999047069203, 48.79999923774097)),
    ((7741, 7133), (10.166666985288636, 48.79999923771421)),
    ((7755, 668), (10.166666985254116, 48.90000152650738)),
)


def tile_origin(col: int, row: int, zoom: int = ZOOM) -> tuple[float, float]:
    """Return the top-left corner of an XYZ tile in EPSG:3857 metres."""
    span = TILE_SIZE * tile_resolution(zoom)
    return -HALF_WORLD_M + col * span, HALF_WORLD_M - row * span


def quadrant_image(width: int, height: int) -> np.ndarray:
    """Return an RGB image with four flat colours split at the centre, plus a
    one-pixel black grid line every 64 pixels, using only 5 colours."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[: height // 2, : width // 2] = (200, 30, 30)
    image[: height // 2, width // 2 :] = (30, 200, 30)
    image[height // 2 :, : width // 2] = (30, 30, 200)
    image[height // 2 :, width // 2 :] = (230, 230, 230)
    image[::64, :] = 0
    image[:, ::64] = 0
    return image


def write_mercator_raster(path: Path, image: np.ndarray, col: int = FIRST_COL, row: int = FIRST_ROW,
                          resolution: float = tile_resolution(ZOOM)) -> str:
    """Write ``image`` as an EPSG:3857 GeoTIFF whose top-left pixel is the top-left of tile (col, row)."""
    height, width = image.shape[:2]
    dataset = gdal.GetDriverByName("GTiff").Create(str(path), width, height, 3, gdal.GDT_Byte)
    left, top = tile_origin(col, row)
    dataset.SetGeoTransform((left, resolution, 0.0, top, 0.0, -resolution))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(3857)
    dataset.SetSpatialRef(srs)
    for band in range(3):
        dataset.GetRasterBand(band + 1).WriteArray(image[..., band])
    dataset = None
    return str(path)


def read_tile(root: Path, zoom: int, col: int, row_xyz: int, layout: str = "tms") -> np.ndarray:
    """Read one tile as an RGBA array, converting the XYZ row to the layout's file row."""
    file_row = 2**zoom - 1 - row_xyz if layout == "tms" else row_xyz
    with Image.open(root / str(zoom) / str(col) / f"{file_row}.png") as image:
        return np.asarray(image.convert("RGBA"))


def tile_files(root: Path) -> set[tuple[int, int, int]]:
    return {
        (int(path.parts[-3]), int(path.parts[-2]), int(path.stem))
        for path in root.glob("*/*/*.png")
    }


@pytest.fixture(scope="module")
def two_by_two(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, Path]:
    """A 2x2-tile source at ZOOM and its TMS pyramid built in one process."""
    directory = tmp_path_factory.mktemp("two_by_two")
    image = quadrant_image(2 * TILE_SIZE, 2 * TILE_SIZE)
    source = write_mercator_raster(directory / "source.tif", image)
    output = directory / "tiles"
    result = build_tile_pyramid(source, str(output), processes=1, title="Quadrants & lines")
    assert result.tile_count == 5
    return image, output


def test_default_zoom_range_native_to_single_tile(two_by_two: tuple[np.ndarray, Path]) -> None:
    _, output = two_by_two
    # Native resolution is exactly that of ZOOM, and the even-aligned 2x2 block fits one tile at ZOOM - 1.
    expected = {(ZOOM, FIRST_COL + c, 2**ZOOM - 1 - (FIRST_ROW + r)) for c in (0, 1) for r in (0, 1)}
    expected.add((ZOOM - 1, FIRST_COL // 2, 2 ** (ZOOM - 1) - 1 - FIRST_ROW // 2))
    assert tile_files(output) == expected


def test_top_zoom_tiles_copy_source_pixels(two_by_two: tuple[np.ndarray, Path]) -> None:
    image, output = two_by_two
    for c in (0, 1):
        for r in (0, 1):
            tile = read_tile(output, ZOOM, FIRST_COL + c, FIRST_ROW + r)
            expected = image[r * TILE_SIZE : (r + 1) * TILE_SIZE, c * TILE_SIZE : (c + 1) * TILE_SIZE]
            assert np.array_equal(tile[..., :3], expected), f"tile column {c} row {r}"
            assert (tile[..., 3] == 255).all()


def test_lower_zoom_is_2x2_average(two_by_two: tuple[np.ndarray, Path]) -> None:
    image, output = two_by_two
    tile = read_tile(output, ZOOM - 1, FIRST_COL // 2, FIRST_ROW // 2)
    expected = image.reshape(TILE_SIZE, 2, TILE_SIZE, 2, 3).astype(np.float64).mean(axis=(1, 3))
    assert np.abs(tile[..., :3].astype(np.float64) - expected).max() <= 1.0
    assert tile[10, 10, :3].tolist() == [200, 30, 30]
    assert tile[200, 200, :3].tolist() == [230, 230, 230]


def test_palette_png_written_for_few_colours(two_by_two: tuple[np.ndarray, Path]) -> None:
    _, output = two_by_two
    file_row = 2**ZOOM - 1 - FIRST_ROW
    with Image.open(output / str(ZOOM) / str(FIRST_COL) / f"{file_row}.png") as image:
        assert image.mode == "P"
        assert image.size == (TILE_SIZE, TILE_SIZE)


def test_tilemapresource_xml(two_by_two: tuple[np.ndarray, Path]) -> None:
    _, output = two_by_two
    root = ElementTree.parse(output / "tilemapresource.xml").getroot()
    assert root.tag == "TileMap"
    assert root.findtext("Title") == "Quadrants & lines"
    assert root.findtext("SRS") == "EPSG:3857"

    left, top = tile_origin(FIRST_COL, FIRST_ROW)
    right, bottom = tile_origin(FIRST_COL + 2, FIRST_ROW + 2)
    west, south = mercator_to_lonlat(left, bottom)
    east, north = mercator_to_lonlat(right, top)
    box = root.find("BoundingBox")
    assert box is not None
    assert float(box.get("minx")) == pytest.approx(west, abs=1e-9)
    assert float(box.get("miny")) == pytest.approx(south, abs=1e-9)
    assert float(box.get("maxx")) == pytest.approx(east, abs=1e-9)
    assert float(box.get("maxy")) == pytest.approx(north, abs=1e-9)
    origin = root.find("Origin")
    assert origin is not None
    assert float(origin.get("x")) == pytest.approx(west, abs=1e-9)
    assert float(origin.get("y")) == pytest.approx(south, abs=1e-9)

    tile_format = root.find("TileFormat")
    assert tile_format is not None
    assert tile_format.attrib == {"width": "256", "height": "256", "mime-type": "image/png", "extension": "png"}
    tile_sets = root.findall("TileSets/TileSet")
    assert [tile_set.get("href") for tile_set in tile_sets] == [str(ZOOM - 1), str(ZOOM)]
    assert float(tile_sets[1].get("units-per-pixel")) == pytest.approx(156543.03392804097 / 2**ZOOM)


def test_xyz_layout_keeps_rows_from_top(tmp_path: Path) -> None:
    image = quadrant_image(TILE_SIZE, 2 * TILE_SIZE)
    source = write_mercator_raster(tmp_path / "source.tif", image)
    result = build_tile_pyramid(source, str(tmp_path / "xyz"), layout="xyz", min_zoom=ZOOM, processes=1)
    assert result.layout == "xyz"
    assert tile_files(tmp_path / "xyz") == {(ZOOM, FIRST_COL, FIRST_ROW), (ZOOM, FIRST_COL, FIRST_ROW + 1)}
    upper = read_tile(tmp_path / "xyz", ZOOM, FIRST_COL, FIRST_ROW, layout="xyz")
    lower = read_tile(tmp_path / "xyz", ZOOM, FIRST_COL, FIRST_ROW + 1, layout="xyz")
    assert upper[100, 100, :3].tolist() == [200, 30, 30]
    assert lower[100, 100, :3].tolist() == [30, 30, 200]


def test_partial_map_edges_transparent(tmp_path: Path) -> None:
    # 1.5 tiles wide, 1.25 tiles high, starting half-way into tile (FIRST_COL, FIRST_ROW).
    image = np.full((320, 384, 3), 120, dtype=np.uint8)
    source_path = tmp_path / "source.tif"
    write_mercator_raster(source_path, image)
    dataset = gdal.Open(str(source_path), gdal.GA_Update)
    left, top = tile_origin(FIRST_COL, FIRST_ROW)
    resolution = tile_resolution(ZOOM)
    dataset.SetGeoTransform((left + 128 * resolution, resolution, 0.0, top - 64 * resolution, 0.0, -resolution))
    dataset = None

    output = tmp_path / "tiles"
    result = build_tile_pyramid(str(source_path), str(output), min_zoom=ZOOM, processes=1)

    # Columns 128..511 and rows 64..383 of the 2x2 tile block are covered.
    assert result.tile_count == 4
    upper_left = read_tile(output, ZOOM, FIRST_COL, FIRST_ROW)
    assert upper_left[63, 200, 3] == 0
    assert upper_left[64, 200, 3] == 255
    assert upper_left[100, 127, 3] == 0
    assert upper_left[100, 128, 3] == 255
    assert upper_left[100, 128, :3].tolist() == [120, 120, 120]
    lower_right = read_tile(output, ZOOM, FIRST_COL + 1, FIRST_ROW + 1)
    assert lower_right[127, 255, 3] == 255
    assert lower_right[128, 100, 3] == 0


def test_fully_transparent_tiles_not_written(tmp_path: Path) -> None:
    # A source covering part of one tile only: the zoom above has 4 tiles in
    # range but only one is touched by the map.
    image = np.full((64, 64, 3), 90, dtype=np.uint8)
    source = write_mercator_raster(tmp_path / "source.tif", image)
    output = tmp_path / "tiles"
    build_tile_pyramid(source, str(output), min_zoom=ZOOM, max_zoom=ZOOM + 1, processes=1)
    for zoom, col, file_row in tile_files(output):
        tile = read_tile(output, zoom, col, 2**zoom - 1 - file_row)
        assert tile[..., 3].any(), f"tile {zoom}/{col}/{file_row} is fully transparent"
    assert tile_files(output) == {
        (ZOOM, FIRST_COL, 2**ZOOM - 1 - FIRST_ROW),
        (ZOOM + 1, 2 * FIRST_COL, 2 ** (ZOOM + 1) - 1 - 2 * FIRST_ROW),
    }


def test_single_tile_reduced_down_many_zooms(tmp_path: Path) -> None:
    # One tile at ZOOM reduced four times: each zoom holds a single pending
    # strip that only the final flush turns into the next zoom.
    image = np.full((TILE_SIZE, TILE_SIZE, 3), 200, dtype=np.uint8)
    source = write_mercator_raster(tmp_path / "source.tif", image, col=FIRST_COL + 1, row=FIRST_ROW + 1)
    output = tmp_path / "tiles"
    result = build_tile_pyramid(source, str(output), min_zoom=ZOOM - 4, processes=1)
    expected = set()
    for level in range(5):
        zoom = ZOOM - level
        expected.add((zoom, (FIRST_COL + 1) >> level, 2**zoom - 1 - ((FIRST_ROW + 1) >> level)))
    assert tile_files(output) == expected
    assert result.tile_count == 5
    # At ZOOM - 4 the map is 16 x 16 pixels at offset (col, row) % 16 * 16 within its tile.
    tile = read_tile(output, ZOOM - 4, (FIRST_COL + 1) >> 4, (FIRST_ROW + 1) >> 4)
    offset_x, offset_y = (FIRST_COL + 1) % 16 * 16, (FIRST_ROW + 1) % 16 * 16
    assert tile[offset_y + 8, offset_x + 8].tolist() == [200, 200, 200, 255]
    assert tile[offset_y + 8, offset_x + 16, 3] == 0
    assert tile[offset_y - 1, offset_x + 8, 3] == 0
    assert tile[..., 3].astype(bool).sum() == 16 * 16


def test_alpha_weighted_edge_not_darkened(tmp_path: Path) -> None:
    image = np.full((TILE_SIZE, TILE_SIZE + 1, 3), 240, dtype=np.uint8)
    source = write_mercator_raster(tmp_path / "source.tif", image)
    output = tmp_path / "tiles"
    build_tile_pyramid(source, str(output), min_zoom=ZOOM - 1, max_zoom=ZOOM, processes=1)
    # At ZOOM - 1 the map column 256 becomes half of pixel 128: half alpha, full colour.
    # Premultiplying by alpha 128 and dividing again may round the colour down by one level;
    # a darkened edge would be near 120.
    parent = read_tile(output, ZOOM - 1, FIRST_COL // 2, FIRST_ROW // 2)
    assert parent[10, 127, :3].tolist() == [240, 240, 240]
    assert all(239 <= value <= 240 for value in parent[10, 128, :3].tolist())
    assert parent[10, 128, 3] == 128
    assert parent[10, 129, 3] == 0


def test_fine_scan_averaged_not_aliased(tmp_path: Path) -> None:
    """A scan four times finer than the top zoom: a one-pixel checkerboard turns grey.

    Sampled without averaging, every tile pixel would be black or white.
    """
    size = 4 * TILE_SIZE
    image = np.empty((size, size, 3), dtype=np.uint8)
    checker = ((np.arange(size)[:, None] + np.arange(size)[None, :]) % 2 * 255).astype(np.uint8)
    image[:, : size // 2] = checker[:, : size // 2, None]
    image[:, size // 2 :] = (200, 30, 30)
    path = write_mercator_raster(tmp_path / "fine.tif", image, resolution=tile_resolution(ZOOM) / 4)

    output = tmp_path / "tiles"
    result = build_tile_pyramid(path, str(output), max_zoom=ZOOM, processes=2)
    assert (result.max_zoom, result.tile_count) == (ZOOM, 1)
    tile = read_tile(output, ZOOM, FIRST_COL, FIRST_ROW)
    grey = tile[:, : TILE_SIZE // 2, :3].astype(int)
    assert grey.min() >= 127
    assert grey.max() <= 128
    assert np.all(tile[:, TILE_SIZE // 2 :, :3] == (200, 30, 30))
    assert np.all(tile[..., 3] == 255)


def test_neighbouring_tiles_have_no_seam(tmp_path: Path) -> None:
    # A horizontal staircase of 8 grey levels 32 apart across two tiles: far
    # enough apart for the fast octree palette to keep them exact. The pixels
    # either side of the seam must be opaque and keep their source values.
    ramp = (np.arange(2 * TILE_SIZE) // 64 * 32).astype(np.uint8)
    image = np.repeat(np.repeat(ramp[None, :, None], TILE_SIZE, axis=0), 3, axis=2)
    source = write_mercator_raster(tmp_path / "source.tif", image)
    output = tmp_path / "tiles"
    build_tile_pyramid(source, str(output), min_zoom=ZOOM, processes=1)
    left = read_tile(output, ZOOM, FIRST_COL, FIRST_ROW)
    right = read_tile(output, ZOOM, FIRST_COL + 1, FIRST_ROW)
    assert (left[:, -1, 3] == 255).all()
    assert (right[:, 0, 3] == 255).all()
    assert (left[:, -1, 0] == 96).all()
    assert (right[:, 0, 0] == 128).all()
    assert np.array_equal(np.concatenate([left, right], axis=1)[0, :, 0], ramp)


def test_clip_polygon_makes_outside_transparent(tmp_path: Path) -> None:
    image = quadrant_image(2 * TILE_SIZE, 2 * TILE_SIZE)
    source = write_mercator_raster(tmp_path / "source.tif", image)
    left, top = tile_origin(FIRST_COL, FIRST_ROW)
    middle, bottom = tile_origin(FIRST_COL + 1, FIRST_ROW + 2)
    west, north = mercator_to_lonlat(left, top)
    east, south = mercator_to_lonlat(middle, bottom)
    clip = f"POLYGON(({west} {south},{east} {south},{east} {north},{west} {north},{west} {south}))"

    output = tmp_path / "tiles"
    build_tile_pyramid(source, str(output), clip_wkt=clip, min_zoom=ZOOM, processes=1)

    # Only the western column of tiles lies inside the clip, so the other is not written.
    assert tile_files(output) == {(ZOOM, FIRST_COL, 2**ZOOM - 1 - FIRST_ROW - r) for r in (0, 1)}
    tile = read_tile(output, ZOOM, FIRST_COL, FIRST_ROW)
    assert (tile[..., 3] == 255).all()


def test_clip_polygon_cuts_inside_tile(tmp_path: Path) -> None:
    image = quadrant_image(2 * TILE_SIZE, 2 * TILE_SIZE)
    source = write_mercator_raster(tmp_path / "source.tif", image)
    resolution = tile_resolution(ZOOM)
    left, top = tile_origin(FIRST_COL, FIRST_ROW)
    right, bottom = tile_origin(FIRST_COL + 2, FIRST_ROW + 2)
    # Clip off the eastern 100 pixels.
    west, north = mercator_to_lonlat(left, top)
    east, south = mercator_to_lonlat(right - 100 * resolution, bottom)
    clip = f"POLYGON(({west} {south},{east} {south},{east} {north},{west} {north},{west} {south}))"

    output = tmp_path / "tiles"
    build_tile_pyramid(source, str(output), clip_wkt=clip, min_zoom=ZOOM, processes=1)
    tile = read_tile(output, ZOOM, FIRST_COL + 1, FIRST_ROW)
    assert (tile[:, :155, 3] == 255).all()
    assert (tile[:, 157:, 3] == 0).all()


def test_gcp_source_matches_geotransform_source(tmp_path: Path) -> None:
    image = quadrant_image(2 * TILE_SIZE, 2 * TILE_SIZE)
    georeferenced = write_mercator_raster(tmp_path / "source.tif", image)
    left, top = tile_origin(FIRST_COL, FIRST_ROW)
    resolution = tile_resolution(ZOOM)
    corners = [(0, 0), (512, 0), (512, 512), (0, 512)]
    gcps = [gdal.GCP(left + x * resolution, top - y * resolution, 0, x, y) for x, y in corners]
    gcp_path = str(tmp_path / "gcps.vrt")
    gdal.Translate(gcp_path, georeferenced, format="VRT", GCPs=gcps, outputSRS="EPSG:3857")
    assert gdal.Open(gcp_path).GetGeoTransform(can_return_null=True) is None

    output = tmp_path / "tiles"
    options = ["METHOD=GCP_POLYNOMIAL", "MAX_GCP_ORDER=1"]
    result = build_tile_pyramid(gcp_path, str(output), transformer_options=options, processes=1)
    assert (result.min_zoom, result.max_zoom) == (ZOOM - 1, ZOOM)
    for c in (0, 1):
        for r in (0, 1):
            tile = read_tile(output, ZOOM, FIRST_COL + c, FIRST_ROW + r)
            expected = image[r * TILE_SIZE : (r + 1) * TILE_SIZE, c * TILE_SIZE : (c + 1) * TILE_SIZE]
            differs = np.abs(tile[..., :3].astype(int) - expected).max(axis=2) > 2
            assert differs.mean() < 0.01, f"tile column {c} row {r}"


def test_two_processes_write_same_tiles(tmp_path: Path, two_by_two: tuple[np.ndarray, Path]) -> None:
    _, single_process_output = two_by_two
    image = quadrant_image(2 * TILE_SIZE, 2 * TILE_SIZE)
    source = write_mercator_raster(tmp_path / "source.tif", image)
    output = tmp_path / "tiles"
    result = build_tile_pyramid(source, str(output), processes=2, title="Quadrants & lines")
    assert tile_files(output) == tile_files(single_process_output)
    assert result.byte_count == sum(os.path.getsize(path) for path in output.glob("*/*/*.png"))
    for zoom, col, file_row in tile_files(output):
        relative = Path(str(zoom), str(col), f"{file_row}.png")
        assert (output / relative).read_bytes() == (single_process_output / relative).read_bytes()


def test_max_zoom_cap_limits_default(tmp_path: Path) -> None:
    image = quadrant_image(2 * TILE_SIZE, 2 * TILE_SIZE)
    source = write_mercator_raster(tmp_path / "source.tif", image)
    result = build_tile_pyramid(source, str(tmp_path / "tiles"), max_zoom_cap=ZOOM - 1, processes=1)
    assert (result.min_zoom, result.max_zoom) == (ZOOM - 1, ZOOM - 1)
    assert tile_files(tmp_path / "tiles") == {(ZOOM - 1, FIRST_COL // 2, 2 ** (ZOOM - 1) - 1 - FIRST_ROW // 2)}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"layout": "wmts"}, "layout 'wmts'"),
        ({"min_zoom": 12, "max_zoom": 11}, "min_zoom 12 is greater than max_zoom 11"),
        ({"max_zoom": 31}, "max_zoom 31"),
        ({"processes": 0}, "processes 0"),
        ({"clip_wkt": "LINESTRING(0 0, 1 1)"}, "POLYGON"),
    ],
)
def test_invalid_arguments_raise(tmp_path: Path, arguments: dict[str, object], message: str) -> None:
    source = write_mercator_raster(tmp_path / "source.tif", quadrant_image(64, 64))
    with pytest.raises(ValueError, match=message):
        build_tile_pyramid(source, str(tmp_path / "tiles"), **arguments)  # type: ignore[arg-type]


def test_source_without_georeferencing_raises(tmp_path: Path) -> None:
    path = str(tmp_path / "plain.tif")
    gdal.GetDriverByName("GTiff").Create(path, 32, 32, 3, gdal.GDT_Byte)
    with pytest.raises(ValueError, match="plain.tif.*no georeferencing"):
        build_tile_pyramid(path, str(tmp_path / "tiles"))


def test_reduce_half_weights_by_alpha() -> None:
    block = np.zeros((2, 4, 4), dtype=np.uint8)
    block[:, :2] = (255, 255, 255, 255)
    block[0, 0] = (0, 0, 0, 0)
    block[:, 2:] = (10, 20, 30, 255)
    result = reduce_half(block)
    assert result[0, 0].tolist() == [255, 255, 255, 191]
    assert result[0, 1].tolist() == [10, 20, 30, 255]


def test_encode_png_palette_is_faithful() -> None:
    rng = np.random.default_rng(7)
    palette = rng.integers(0, 256, size=(40, 3), dtype=np.uint8)
    rgba = np.empty((TILE_SIZE, TILE_SIZE, 4), dtype=np.uint8)
    rgba[..., :3] = palette[rng.integers(0, 40, size=(TILE_SIZE, TILE_SIZE))]
    rgba[..., 3] = 255
    rgba[:, :50, 3] = 0

    with Image.open(io.BytesIO(encode_png(rgba))) as image:
        assert image.mode == "P"
        assert "transparency" in image.info
        decoded = np.asarray(image.convert("RGBA"))
    assert (decoded[:, :50, 3] == 0).all()
    assert (decoded[:, 50:, 3] == 255).all()
    assert palette_psnr(rgba, decoded) >= PALETTE_MIN_PSNR_DB


def test_encode_png_noise_falls_back_to_rgba() -> None:
    rng = np.random.default_rng(11)
    rgba = rng.integers(0, 256, size=(TILE_SIZE, TILE_SIZE, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[:10, :10, 3] = 100

    with Image.open(io.BytesIO(encode_png(rgba))) as image:
        assert image.mode == "RGBA"
        assert np.array_equal(np.asarray(image), rgba)


@pytest.mark.parametrize("transparent_columns", [0, 50])
def test_palette_decision_matches_psnr(transparent_columns: int) -> None:
    """The encoder's histogram PSNR for opaque and 0/255-alpha tiles equals palette_psnr.

    Smooth gradients with noise have more than 256 colours, so the palette is lossy and
    the PSNR finite. That PSNR decides between palette and RGBA at 35 dB.
    """
    rng = np.random.default_rng(5)
    ramp = np.linspace(0, 255, TILE_SIZE)
    rgba = np.empty((TILE_SIZE, TILE_SIZE, 4), dtype=np.uint8)
    rgba[..., 0] = ramp[None, :]
    rgba[..., 1] = ramp[:, None]
    rgba[..., 2] = np.clip(128 + rng.normal(0, 12, (TILE_SIZE, TILE_SIZE)), 0, 255)
    rgba[..., 3] = 255
    rgba[:, :transparent_columns] = 0

    paletted, psnr = tiles_module._quantize(rgba)
    expected = palette_psnr(rgba, np.asarray(paletted.convert("RGBA")))
    assert 20.0 < expected < 60.0
    assert psnr == pytest.approx(expected, abs=1e-9)


@pytest.mark.skipif(not os.path.exists(SAMPLE_SCAN), reason="sample scan not available")
def test_sample_scan_from_gcps(tmp_path: Path) -> None:
    gcps = [gdal.GCP(lon, lat, 0, x, y) for (x, y), (lon, lat) in SAMPLE_NEATLINE_GCPS]
    source = str(tmp_path / "scan.vrt")
    gdal.Translate(source, SAMPLE_SCAN, format="VRT", GCPs=gcps, outputSRS="EPSG:4314")

    output = tmp_path / "tiles"
    options = ["METHOD=GCP_POLYNOMIAL", "MAX_GCP_ORDER=1"]
    result = build_tile_pyramid(source, str(output), transformer_options=options, max_zoom=13, processes=2)

    # At zoom 10 (tile width 0.35 degrees) the sheet lies inside one tile.
    assert (result.min_zoom, result.max_zoom) == (10, 13)
    assert result.tile_count == len(tile_files(output))
    # The sheet centre (10.083 E, 48.85 N in DHDN, about 100 m from WGS84) is opaque,
    # 10 km west of the sheet there is no scan.
    assert_pixel_alpha(output, 13, 10.0833, 48.85, 255)
    assert_pixel_alpha(output, 13, 9.88, 48.85, 0)


def assert_pixel_alpha(root: Path, zoom: int, lon: float, lat: float, expected: int) -> None:
    """Assert the alpha of the tile pixel at lon/lat; a missing tile counts as alpha 0."""
    resolution = tile_resolution(zoom)
    x = math.radians(lon) * 6378137.0
    y = math.log(math.tan(math.pi / 4 + math.radians(lat) / 2)) * 6378137.0
    column = int((x + HALF_WORLD_M) / resolution)
    row = int((HALF_WORLD_M - y) / resolution)
    tile_col, tile_row = column // TILE_SIZE, row // TILE_SIZE
    path = root / str(zoom) / str(tile_col) / f"{2**zoom - 1 - tile_row}.png"
    if not path.exists():
        assert expected == 0, f"tile {path} missing"
        return
    tile = read_tile(root, zoom, tile_col, tile_row)
    assert tile[row % TILE_SIZE, column % TILE_SIZE, 3] == expected
