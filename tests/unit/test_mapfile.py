"""Tests of the mapfile writer against the real MapServer 8 CGI and real GeoTIFFs.

Each test writes a synthetic georeferenced GeoTIFF and a mapfile into ``tmp_path`` and runs
``/usr/lib/cgi-bin/mapserv`` as a CGI process: ``REQUEST_METHOD`` and ``QUERY_STRING`` in the
environment, and ``MAPSERVER_CONFIG_FILE`` pointing at a config file whose ``MS_MAP_PATTERN``
admits the mapfiles in ``tmp_path``. Requests name the mapfile with ``map=``, as the published
online resource URLs do.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import xml.etree.ElementTree as ElementTree
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, osr
from PIL import Image

from georeference.errors import ProcessingError
from georeference.publish.mapfile import (
    MapServiceSpec,
    mapfile_string,
    read_image_spec,
    render_mapfile,
    sanitize_layer_name,
    write_mapfile,
)

MAPSERV = "/usr/lib/cgi-bin/mapserv"
URL_TEMPLATE = "http://localhost/cgi-bin/mapserv?map={mapfile}"

# The synthetic map: 200 x 150 pixels in DHDN (EPSG:4314). Each quadrant of the inner area
# has its own colour. A 20 pixel border is magenta with alpha 0, so a renderer that ignored
# the alpha band would show magenta instead of transparency.
WIDTH, HEIGHT = 200, 150
EPSG = 4314
EXTENT = (10.0, 48.8, 10.17, 48.9)
BORDER = 20
HIDDEN_COLOUR = (255, 0, 255)
QUADRANT_COLOURS = {
    "top_left": (220, 20, 20),
    "top_right": (20, 200, 40),
    "bottom_left": (30, 40, 210),
    "bottom_right": (230, 210, 30),
}
# Pixel (column, row) in the middle of each quadrant and of the left border.
QUADRANT_PIXELS = {
    "top_left": (60, 47),
    "top_right": (140, 47),
    "bottom_left": (60, 102),
    "bottom_right": (140, 102),
}
BORDER_PIXEL = (10, 75)

WMS_NS = {"wms": "http://www.opengis.net/wms", "xlink": "http://www.w3.org/1999/xlink"}
WCS20_NS = {"wcs": "http://www.opengis.net/wcs/2.0", "gml": "http://www.opengis.net/gml/3.2"}

HOSTILE_TITLES = [
    'Karte "Sachsen" 1:25 000',
    "Meilenblatt 'Dresden' \\ Nr. 3\\",
    "Blatt END\nEND\nLAYER NAME \"injected\" TYPE RASTER STATUS ON DATA \"/etc/passwd\" END",
    "# kein Kommentar // auch keiner /* und */ nicht",
    'Ende \\" END "i',
    "Tab\tCR\rNUL\x00Unit\x1fDEL\x7f Zeile\u2028Absatz\u2029Ende",
    "Größe & <Maßstab> ‚Zitat‘ 🗺",
]


def _expected_text(value: str) -> str:
    """Return what MapServer should report for ``value``: control characters as spaces."""
    return re.sub(r"[\x00-\x1f\x7f\u2028\u2029]", " ", value)


# --- fixtures and helpers -------------------------------------------------------------------


def _pixel_to_geo(column: float, row: float) -> tuple[float, float]:
    minx, miny, maxx, maxy = EXTENT
    lon = minx + (column + 0.5) * (maxx - minx) / WIDTH
    lat = maxy - (row + 0.5) * (maxy - miny) / HEIGHT
    return lon, lat


def _make_geotiff(path: Path) -> None:
    red, green, blue = (np.empty((HEIGHT, WIDTH), np.uint8) for _ in range(3))
    alpha = np.zeros((HEIGHT, WIDTH), np.uint8)
    alpha[BORDER:HEIGHT - BORDER, BORDER:WIDTH - BORDER] = 255
    middle_row, middle_column = HEIGHT // 2, WIDTH // 2
    areas = {
        "top_left": (slice(0, middle_row), slice(0, middle_column)),
        "top_right": (slice(0, middle_row), slice(middle_column, WIDTH)),
        "bottom_left": (slice(middle_row, HEIGHT), slice(0, middle_column)),
        "bottom_right": (slice(middle_row, HEIGHT), slice(middle_column, WIDTH)),
    }
    for name, area in areas.items():
        for band, value in zip((red, green, blue), QUADRANT_COLOURS[name]):
            band[area] = value
    for band, value in zip((red, green, blue), HIDDEN_COLOUR):
        band[alpha == 0] = value

    options = ["TILED=YES", "COMPRESS=DEFLATE", "PHOTOMETRIC=RGB", "ALPHA=YES"]
    dataset = gdal.GetDriverByName("GTiff").Create(str(path), WIDTH, HEIGHT, 4, gdal.GDT_Byte,
                                                   options)
    minx, miny, maxx, maxy = EXTENT
    dataset.SetGeoTransform((minx, (maxx - minx) / WIDTH, 0.0, maxy, 0.0, -(maxy - miny) / HEIGHT))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(EPSG)
    dataset.SetSpatialRef(srs)
    for index, band in enumerate((red, green, blue, alpha), start=1):
        dataset.GetRasterBand(index).WriteArray(band)
    dataset = None


@pytest.fixture
def geotiff(tmp_path: Path) -> str:
    path = tmp_path / "georef" / "df_dk_0010001_5248.tif"
    path.parent.mkdir()
    _make_geotiff(path)
    return str(path)


@pytest.fixture
def mapserver_config(tmp_path: Path) -> str:
    """Write a MapServer config file that admits mapfiles in ``tmp_path/mapfiles``."""
    folder = tmp_path / "mapfiles"
    folder.mkdir()
    pattern = "^" + re.escape(str(folder)) + r"/[^/]+\.map$"
    path = tmp_path / "mapserver.conf"
    path.write_text(f"CONFIG\n  ENV\n    MS_MAP_PATTERN {mapfile_string(pattern)}\n  END\nEND\n",
                    encoding="utf-8")
    return str(path)


def _spec(geotiff: str, tmp_path: Path, **changes: object) -> MapServiceSpec:
    mapfile = str(tmp_path / "mapfiles" / "17.map")
    url = URL_TEMPLATE.format(mapfile=mapfile)
    spec = MapServiceSpec(
        raw_map_id=17,
        layer_name="df_dk_0010001_5248",
        title="Meßtischblatt 5248: Dresden",
        abstract="Topographische Karte 1:25 000",
        image_path=geotiff,
        epsg=EPSG,
        extent=EXTENT,
        allow_download=True,
        wms_url=url,
        wcs_url=url,
    )
    return replace(spec, **changes)


def _mapfile_path(tmp_path: Path) -> str:
    return str(tmp_path / "mapfiles" / "17.map")


def _mapserv(config: str, mapfile: str, query: str) -> tuple[dict[str, str], bytes]:
    """Run mapserv as a CGI and return its headers (lower-case names) and body."""
    environment = dict(os.environ)
    environment.pop("MS_MAPFILE", None)
    environment.update({
        "REQUEST_METHOD": "GET",
        "QUERY_STRING": f"map={mapfile}&{query}",
        "MAPSERVER_CONFIG_FILE": config,
    })
    completed = subprocess.run([MAPSERV], env=environment, capture_output=True, timeout=60,
                               check=False)
    assert completed.returncode == 0, completed.stderr.decode(errors="replace")
    output = completed.stdout
    match = re.search(rb"\r?\n\r?\n", output)
    assert match is not None, output[:500]
    headers = {}
    for line in output[:match.start()].decode("latin-1").splitlines():
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers, output[match.end():]


def _xml(headers: dict[str, str], body: bytes) -> ElementTree.Element:
    assert "xml" in headers["content-type"], body[:500]
    return ElementTree.fromstring(body)


def _wms_capabilities(config: str, mapfile: str) -> ElementTree.Element:
    return _xml(*_mapserv(config, mapfile, "SERVICE=WMS&REQUEST=GetCapabilities&VERSION=1.3.0"))


def _named_layers(capabilities: ElementTree.Element) -> dict[str, ElementTree.Element]:
    layers = capabilities.iter("{http://www.opengis.net/wms}Layer")
    return {layer.findtext("wms:Name", namespaces=WMS_NS): layer for layer in layers}


def _bounds_3857() -> tuple[float, float, float, float]:
    source, target = osr.SpatialReference(), osr.SpatialReference()
    source.ImportFromEPSG(EPSG)
    target.ImportFromEPSG(3857)
    for srs in (source, target):
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    transform = osr.CoordinateTransformation(source, target)
    return transform.TransformBounds(*EXTENT, 21)


def _to_3857(lon: float, lat: float) -> tuple[float, float]:
    source, target = osr.SpatialReference(), osr.SpatialReference()
    source.ImportFromEPSG(EPSG)
    target.ImportFromEPSG(3857)
    for srs in (source, target):
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    x, y, _ = osr.CoordinateTransformation(source, target).TransformPoint(lon, lat)
    return x, y


def _open_geotiff(body: bytes, name: str) -> gdal.Dataset:
    path = f"/vsimem/{name}.tif"
    gdal.FileFromMemBuffer(path, body)
    dataset = gdal.Open(path)
    assert dataset is not None, body[:500]
    return dataset


# --- mapfile_string -------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "literal"), [
    ("plain", '"plain"'),
    ("", '""'),
    ('say "hi"', '"say \\"hi\\""'),
    ("it's", '"it\'s"'),
    ("C:\\maps\\", '"C:\\\\maps\\\\"'),
    ('\\"', '"\\\\\\""'),
    ("a\nb\r\nc\td", '"a b  c d"'),
    ("NUL\x00here", '"NUL here"'),
    ("END # not a comment", '"END # not a comment"'),
    ("line\u2028separator", '"line separator"'),
    ("Dresden–Neustadt ü", '"Dresden–Neustadt ü"'),
    ("lone \ud800 surrogate", '"lone \ufffd surrogate"'),
])
def test_mapfile_string_escapes(value: str, literal: str) -> None:
    assert mapfile_string(value) == literal


def test_mapfile_string_single_line_utf8() -> None:
    literal = mapfile_string("".join(chr(code) for code in range(0, 0x250)) + "\udfff")
    assert "\n" not in literal
    assert "\r" not in literal
    assert "\x00" not in literal
    assert literal.encode("utf-8").decode("utf-8") == literal


# --- layer names, image spec and rendering --------------------------------------------------


@pytest.mark.parametrize(("file_name", "layer_name"), [
    ("df_dk_0010001_5248", "df_dk_0010001_5248"),
    ("mtb-5248.tif", "mtb-5248_tif"),
    ('a b"c/../d', "a_b_c____d"),
    ("5248", "map_5248"),
    ("-x", "map_-x"),
    ("", "map_"),
    ("Größe", "Gr__e"),
])
def test_sanitize_layer_name(file_name: str, layer_name: str) -> None:
    assert sanitize_layer_name(file_name) == layer_name


def test_read_image_spec_returns_epsg_and_extent(geotiff: str) -> None:
    epsg, extent = read_image_spec(geotiff)
    assert epsg == EPSG
    assert extent == pytest.approx(EXTENT, abs=1e-9)


def test_read_image_spec_rejects_image_without_crs(tmp_path: Path) -> None:
    path = str(tmp_path / "plain.tif")
    dataset = gdal.GetDriverByName("GTiff").Create(path, 10, 10, 1, gdal.GDT_Byte)
    dataset.SetGeoTransform((0.0, 1.0, 0.0, 10.0, 0.0, -1.0))
    dataset = None
    with pytest.raises(ProcessingError, match="has no CRS"):
        read_image_spec(path)


def test_read_image_spec_rejects_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ProcessingError, match="cannot open"):
        read_image_spec(str(tmp_path / "missing.tif"))


def test_render_uses_metres_for_projected_crs(geotiff: str, tmp_path: Path) -> None:
    spec = _spec(geotiff, tmp_path, epsg=31468, extent=(4600000.0, 5600000.0, 4610000.0, 5608000.0))
    text = render_mapfile(spec)
    assert "\n  UNITS METERS\n" in text
    assert '"ows_srs" "EPSG:31468 EPSG:3857 EPSG:4326"' in text


@pytest.mark.parametrize("changes", [
    {"image_path": "relative/map.tif"},
    {"extent": (10.17, 48.8, 10.0, 48.9)},
    {"extent": (10.0, float("nan"), 10.17, 48.9)},
    {"epsg": 0},
])
def test_render_rejects_invalid_spec(geotiff: str, tmp_path: Path,
                                     changes: dict[str, object]) -> None:
    with pytest.raises(ProcessingError):
        render_mapfile(_spec(geotiff, tmp_path, **changes))


def test_write_mapfile_replaces_file_and_leaves_no_temporary(geotiff: str,
                                                            tmp_path: Path) -> None:
    path = str(tmp_path / "new" / "17.map")
    write_mapfile(_spec(geotiff, tmp_path, title="first"), path)
    write_mapfile(_spec(geotiff, tmp_path, title="second"), path)
    text = Path(path).read_text(encoding="utf-8")
    assert text == render_mapfile(_spec(geotiff, tmp_path, title="second"))
    assert sorted(os.listdir(os.path.dirname(path))) == ["17.map"]


def test_write_mapfile_keeps_old_file_when_rendering_fails(geotiff: str,
                                                           tmp_path: Path) -> None:
    path = str(tmp_path / "17.map")
    write_mapfile(_spec(geotiff, tmp_path), path)
    before = Path(path).read_text(encoding="utf-8")
    with pytest.raises(ProcessingError):
        write_mapfile(_spec(geotiff, tmp_path, epsg=-1), path)
    assert Path(path).read_text(encoding="utf-8") == before
    assert not os.path.exists(path + ".tmp")


# --- WMS through the real MapServer ---------------------------------------------------------


def test_wms_capabilities_list_layer_crs_and_extent(geotiff: str, tmp_path: Path,
                                                     mapserver_config: str) -> None:
    mapfile = _mapfile_path(tmp_path)
    spec = _spec(geotiff, tmp_path)
    write_mapfile(spec, mapfile)

    capabilities = _wms_capabilities(mapserver_config, mapfile)

    layers = _named_layers(capabilities)
    layer = layers["df_dk_0010001_5248"]
    assert layer.findtext("wms:Title", namespaces=WMS_NS) == spec.title
    assert layer.findtext("wms:Abstract", namespaces=WMS_NS) == spec.abstract
    root_layer = capabilities.find("wms:Capability/wms:Layer", WMS_NS)
    offered = {element.text for element in root_layer.findall("wms:CRS", WMS_NS)}
    assert {"EPSG:4314", "EPSG:3857", "EPSG:4326"} <= offered

    boxes = {box.get("CRS"): box for box in layer.findall("wms:BoundingBox", WMS_NS)}
    # WMS 1.3.0 gives EPSG:4314 in its axis order, latitude first, printed to 6 decimals.
    native = boxes["EPSG:4314"]
    minx, miny, maxx, maxy = EXTENT
    assert [float(native.get(key)) for key in ("minx", "miny", "maxx", "maxy")] == \
        pytest.approx([miny, minx, maxy, maxx], abs=1e-6)
    # MapServer and GDAL may pick different DHDN to WGS 84 transformations: allow 500 m.
    mercator = boxes["EPSG:3857"]
    assert [float(mercator.get(key)) for key in ("minx", "miny", "maxx", "maxy")] == \
        pytest.approx(list(_bounds_3857()), abs=500.0)

    get_map = capabilities.find(
        "wms:Capability/wms:Request/wms:GetMap/wms:DCPType/wms:HTTP/wms:Get/wms:OnlineResource",
        WMS_NS)
    assert get_map.get(f"{{{WMS_NS['xlink']}}}href").startswith(spec.wms_url)


@pytest.mark.parametrize("title", HOSTILE_TITLES)
def test_hostile_title_keeps_mapfile_structure(geotiff: str, tmp_path: Path,
                                              mapserver_config: str, title: str) -> None:
    mapfile = _mapfile_path(tmp_path)
    write_mapfile(_spec(geotiff, tmp_path, title=title, abstract=title), mapfile)

    capabilities = _wms_capabilities(mapserver_config, mapfile)

    layers = _named_layers(capabilities)
    assert set(layers) == {"vk_map_17", "df_dk_0010001_5248"}
    layer = layers["df_dk_0010001_5248"]
    assert layer.findtext("wms:Title", namespaces=WMS_NS) == _expected_text(title)
    assert layer.findtext("wms:Abstract", namespaces=WMS_NS) == _expected_text(title)


def test_hostile_paths_and_urls_are_escaped(tmp_path: Path, mapserver_config: str) -> None:
    folder = tmp_path / 'we"ird \\ END # dir'
    folder.mkdir()
    image_path = folder / "map.tif"
    _make_geotiff(image_path)
    mapfile = _mapfile_path(tmp_path)
    url = 'http://localhost/cgi-bin/mapserv?map=' + mapfile + '&x="END"#'
    write_mapfile(_spec(str(image_path), tmp_path, wms_url=url, wcs_url=url), mapfile)

    capabilities = _wms_capabilities(mapserver_config, mapfile)
    get_map = capabilities.find(
        "wms:Capability/wms:Request/wms:GetMap/wms:DCPType/wms:HTTP/wms:Get/wms:OnlineResource",
        WMS_NS)
    assert get_map.get(f"{{{WMS_NS['xlink']}}}href").startswith(url)

    # The DATA path reached GDAL intact: the coverage comes back with the map's pixels.
    headers, body = _mapserv(mapserver_config, mapfile,
                             "SERVICE=WCS&REQUEST=GetCoverage&VERSION=2.0.1"
                             "&COVERAGEID=df_dk_0010001_5248&FORMAT=image/tiff")
    assert headers["content-type"] == "image/tiff", body[:500]
    dataset = _open_geotiff(body, "hostile_path")
    column, row = QUADRANT_PIXELS["top_right"]
    assert [int(dataset.GetRasterBand(index).ReadAsArray()[row, column]) for index in (1, 2, 3)] \
        == list(QUADRANT_COLOURS["top_right"])


def test_wms_getmap_in_web_mercator_shows_map_pixels(geotiff: str, tmp_path: Path,
                                                     mapserver_config: str) -> None:
    mapfile = _mapfile_path(tmp_path)
    write_mapfile(_spec(geotiff, tmp_path), mapfile)
    minx, miny, maxx, maxy = _bounds_3857()
    width, height = 400, 360

    headers, body = _mapserv(
        mapserver_config, mapfile,
        "SERVICE=WMS&REQUEST=GetMap&VERSION=1.3.0&LAYERS=df_dk_0010001_5248&STYLES="
        f"&CRS=EPSG:3857&BBOX={minx},{miny},{maxx},{maxy}&WIDTH={width}&HEIGHT={height}"
        "&FORMAT=image/png&TRANSPARENT=TRUE")

    assert headers["content-type"] == "image/png", body[:500]
    image = Image.open(io.BytesIO(body))
    assert image.size == (width, height)
    image = image.convert("RGBA")

    def pixel_at(column: float, row: float) -> tuple[int, int, int, int]:
        x, y = _to_3857(*_pixel_to_geo(column, row))
        return image.getpixel((int((x - minx) / (maxx - minx) * width),
                               int((maxy - y) / (maxy - miny) * height)))

    for name, (column, row) in QUADRANT_PIXELS.items():
        red, green, blue, alpha = pixel_at(column, row)
        assert alpha == 255, name
        assert (red, green, blue) == pytest.approx(QUADRANT_COLOURS[name], abs=3), name
    assert pixel_at(*BORDER_PIXEL)[3] == 0


# --- WCS through the real MapServer ---------------------------------------------------------


def test_wcs_offered_when_download_allowed(geotiff: str, tmp_path: Path,
                                           mapserver_config: str) -> None:
    mapfile = _mapfile_path(tmp_path)
    write_mapfile(_spec(geotiff, tmp_path, allow_download=True), mapfile)

    capabilities = _xml(*_mapserv(mapserver_config, mapfile,
                                  "SERVICE=WCS&REQUEST=GetCapabilities&VERSION=2.0.1"))
    coverage_ids = [element.text for element in capabilities.iter(f"{{{WCS20_NS['wcs']}}}CoverageId")]
    assert coverage_ids == ["df_dk_0010001_5248"]

    description = _xml(*_mapserv(mapserver_config, mapfile,
                                 "SERVICE=WCS&REQUEST=DescribeCoverage&VERSION=2.0.1"
                                 "&COVERAGEID=df_dk_0010001_5248"))
    high = description.find(".//gml:GridEnvelope/gml:high", WCS20_NS)
    assert high is not None and high.text.split() == [str(WIDTH - 1), str(HEIGHT - 1)]


@pytest.mark.parametrize(("version", "query"), [
    ("2.0.1", "SERVICE=WCS&REQUEST=GetCoverage&VERSION=2.0.1&COVERAGEID=df_dk_0010001_5248"
              "&FORMAT=image/tiff"),
    ("1.0.0", "SERVICE=WCS&REQUEST=GetCoverage&VERSION=1.0.0&COVERAGE=df_dk_0010001_5248"
              "&FORMAT=GTiff&CRS=EPSG:4314&BBOX=10.0,48.8,10.17,48.9"
              f"&WIDTH={WIDTH}&HEIGHT={HEIGHT}"),
])
def test_wcs_getcoverage_returns_geotiff(geotiff: str, tmp_path: Path, mapserver_config: str,
                                         version: str, query: str) -> None:
    mapfile = _mapfile_path(tmp_path)
    write_mapfile(_spec(geotiff, tmp_path, allow_download=True), mapfile)

    headers, body = _mapserv(mapserver_config, mapfile, query)

    assert headers["content-type"] == "image/tiff", body[:500]
    dataset = _open_geotiff(body, f"coverage_{version}")
    assert (dataset.RasterXSize, dataset.RasterYSize, dataset.RasterCount) == (WIDTH, HEIGHT, 4)
    assert dataset.GetSpatialRef().GetAuthorityCode(None) == str(EPSG)
    origin_x, pixel_width, _, origin_y, _, pixel_height = dataset.GetGeoTransform()
    assert (origin_x, origin_y) == pytest.approx((EXTENT[0], EXTENT[3]), abs=1e-9)
    assert (pixel_width, pixel_height) == pytest.approx(
        ((EXTENT[2] - EXTENT[0]) / WIDTH, -(EXTENT[3] - EXTENT[1]) / HEIGHT), rel=1e-9)
    bands = [dataset.GetRasterBand(index).ReadAsArray() for index in range(1, 5)]
    for name, (column, row) in QUADRANT_PIXELS.items():
        assert [int(band[row, column]) for band in bands] == [*QUADRANT_COLOURS[name], 255], name
    column, row = BORDER_PIXEL
    assert int(bands[3][row, column]) == 0


@pytest.mark.parametrize("query", [
    "SERVICE=WCS&REQUEST=GetCapabilities&VERSION=2.0.1",
    "SERVICE=WCS&REQUEST=GetCapabilities&VERSION=1.0.0",
    "SERVICE=WCS&REQUEST=DescribeCoverage&VERSION=2.0.1&COVERAGEID=df_dk_0010001_5248",
    "SERVICE=WCS&REQUEST=GetCoverage&VERSION=2.0.1&COVERAGEID=df_dk_0010001_5248"
    "&FORMAT=image/tiff",
    "SERVICE=WCS&REQUEST=GetCoverage&VERSION=1.0.0&COVERAGE=df_dk_0010001_5248&FORMAT=GTiff"
    "&CRS=EPSG:4314&BBOX=10.0,48.8,10.17,48.9&WIDTH=200&HEIGHT=150",
])
def test_wcs_rejected_when_download_not_allowed(geotiff: str, tmp_path: Path,
                                                mapserver_config: str, query: str) -> None:
    mapfile = _mapfile_path(tmp_path)
    write_mapfile(_spec(geotiff, tmp_path, allow_download=False), mapfile)

    headers, body = _mapserv(mapserver_config, mapfile, query)

    assert "xml" in headers["content-type"]
    assert b"WCS request not enabled" in body
    assert b"df_dk_0010001_5248" not in body


def test_wms_still_served_when_download_not_allowed(geotiff: str, tmp_path: Path,
                                                    mapserver_config: str) -> None:
    mapfile = _mapfile_path(tmp_path)
    write_mapfile(_spec(geotiff, tmp_path, allow_download=False), mapfile)

    capabilities = _wms_capabilities(mapserver_config, mapfile)

    assert "df_dk_0010001_5248" in _named_layers(capabilities)
