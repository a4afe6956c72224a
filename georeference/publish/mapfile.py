"""MapServer mapfiles that publish one georeferenced map as WMS and, if allowed, as WCS.

Each enabled map gets its own mapfile ``<mapfile_root>/<raw_map_id>.map`` with one raster
layer: the georeferenced GeoTIFF (red, green, blue and alpha band) in the map's own CRS. WMS
clients can request it in that CRS, EPSG:3857 and EPSG:4326. Where the catalogue allows
downloads, the same layer is also a WCS coverage whose GetCoverage returns a GeoTIFF.

Titles, descriptions, paths and URLs come from the database, so every one of them goes through
``mapfile_string``. The structure of the file comes from ``templates/mapfile.map``; the Python
code only fills in finished tokens.
"""

from __future__ import annotations

import logging
import math
import os
import re
import string
import unicodedata
from dataclasses import dataclass
from importlib import resources

from osgeo import gdal, osr

from georeference.errors import ProcessingError

logger = logging.getLogger(__name__)

STEP = "mapfile"
TEMPLATE_NAME = "mapfile.map"

# CRSs every WMS offers besides the map's own: web mercator for the viewer and WGS 84.
EXTRA_WMS_EPSG_CODES = (3857, 4326)

# WCS 2.0 uses the layer name as coverage id, which must be an XML NCName. A layer name that
# does not start with a letter or underscore gets this prefix.
LAYER_NAME_PREFIX = "map_"

# WMS requests that MapServer accepts. "*" would also enable GetMetadata, GetStyles and
# DescribeLayer.
WMS_REQUESTS = "GetCapabilities GetMap GetFeatureInfo GetLegendGraphic"
_UNSAFE_LAYER_CHARACTERS = re.compile(r"[^A-Za-z0-9_-]")

# Unicode categories that mapfile_string replaces with a space: control characters (Cc, among
# them NUL, tab, CR and LF) and the line and paragraph separators (Zl, Zp). NUL would end the
# C string inside MapServer, and XML 1.0 forbids most control characters in the capabilities
# documents that MapServer builds from the metadata.
_CONTROL_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})


@dataclass(frozen=True)
class MapServiceSpec:
    """Everything a mapfile needs to know about one published map.

    Attributes:
        raw_map_id: id of the raw map, used in the MapServer map name.
        layer_name: WMS layer and WCS coverage name, derived from the raw map's file name.
            ``render_mapfile`` passes it through ``sanitize_layer_name``.
        title: catalogue title, shown as WMS layer and service title.
        abstract: catalogue description; may be empty.
        image_path: absolute path of the georeferenced GeoTIFF.
        epsg: EPSG code of the GeoTIFF's CRS.
        extent: ``(minx, miny, maxx, maxy)`` of the GeoTIFF in its own CRS, x being easting or
            longitude whatever the CRS's axis order.
        allow_download: whether to offer the WCS, through which users download the GeoTIFF.
        wms_url: online resource URL of the WMS, with the mapfile path already filled in.
        wcs_url: online resource URL of the WCS, with the mapfile path already filled in.
    """

    raw_map_id: int
    layer_name: str
    title: str
    abstract: str
    image_path: str
    epsg: int
    extent: tuple[float, float, float, float]
    allow_download: bool
    wms_url: str
    wcs_url: str


def mapfile_string(value: str) -> str:
    """Return ``value`` as a double-quoted mapfile string literal that MapServer reads back.

    MapServer's lexer (``maplexer.l``, MapServer 8.0) ends a string at the first unescaped
    quote that opened it and turns ``\\"``, ``\\'`` and ``\\\\`` into the character after the
    backslash. Escaping every backslash and double quote therefore keeps quotes, ``#``, ``END``
    and anything else inside the literal. Control characters, line breaks and NUL become
    spaces, and lone surrogates become U+FFFD, so the value stays on one line and is valid
    UTF-8 and XML.

    The caller must follow the literal with whitespace: MapServer reads a closing ``"``
    directly followed by ``i`` as a case-insensitive string token.

    Args:
        value: any string, for example a title from the database.

    Returns:
        The literal including its surrounding double quotes.
    """
    cleaned = "".join(_clean_character(character) for character in value)
    escaped = cleaned.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _clean_character(character: str) -> str:
    category = unicodedata.category(character)
    if category in _CONTROL_CATEGORIES:
        return " "
    if category == "Cs":
        return "\ufffd"
    return character


def sanitize_layer_name(name: str) -> str:
    """Turn a file name into a layer name of ASCII letters, digits, ``_`` and ``-``.

    Every other character becomes ``_``. A result that is empty or does not start with a
    letter or ``_`` gets the prefix ``map_``, because WCS 2.0 coverage ids must be XML NCNames.
    """
    safe = _UNSAFE_LAYER_CHARACTERS.sub("_", name)
    if not safe or not (safe[0].isalpha() or safe[0] == "_"):
        safe = LAYER_NAME_PREFIX + safe
    return safe


def read_image_spec(image_path: str) -> tuple[int, tuple[float, float, float, float]]:
    """Read the EPSG code and extent of a georeferenced GeoTIFF.

    Args:
        image_path: path of the GeoTIFF.

    Returns:
        ``(epsg, (minx, miny, maxx, maxy))`` with the extent in the image's CRS, x being
        easting or longitude.

    Raises:
        ProcessingError: the file cannot be opened, has no CRS with an EPSG code, or has a
            rotated or sheared geotransform, whose extent MapServer cannot describe.
    """
    # GDAL raises RuntimeError or returns None, depending on whether some module has called
    # gdal.UseExceptions().
    try:
        dataset = gdal.OpenEx(image_path, gdal.OF_RASTER)
    except RuntimeError as error:
        raise ProcessingError(STEP, f"cannot open {image_path!r}: {error}") from error
    if dataset is None:
        raise ProcessingError(STEP, f"cannot open {image_path!r}: {gdal.GetLastErrorMsg()}")
    try:
        epsg = _epsg_of(dataset.GetSpatialRef(), image_path)
        extent = _extent_of(dataset.GetGeoTransform(can_return_null=True),
                            dataset.RasterXSize, dataset.RasterYSize, image_path)
    finally:
        dataset = None
    return epsg, extent


def _epsg_of(srs: osr.SpatialReference | None, image_path: str) -> int:
    if srs is None:
        raise ProcessingError(STEP, f"{image_path!r} has no CRS")
    srs = srs.Clone()
    if srs.GetAuthorityName(None) != "EPSG":
        srs.AutoIdentifyEPSG()
    code = srs.GetAuthorityCode(None)
    if srs.GetAuthorityName(None) != "EPSG" or not code:
        raise ProcessingError(STEP, f"the CRS of {image_path!r} has no EPSG code")
    return int(code)


def _extent_of(geotransform: tuple[float, ...] | None, width: int, height: int,
               image_path: str) -> tuple[float, float, float, float]:
    if geotransform is None:
        raise ProcessingError(STEP, f"{image_path!r} has no geotransform")
    origin_x, pixel_width, row_rotation, origin_y, column_rotation, pixel_height = geotransform
    if row_rotation != 0.0 or column_rotation != 0.0:
        raise ProcessingError(STEP, f"{image_path!r} has a rotated geotransform")
    xs = (origin_x, origin_x + width * pixel_width)
    ys = (origin_y, origin_y + height * pixel_height)
    return min(xs), min(ys), max(xs), max(ys)


def render_mapfile(spec: MapServiceSpec) -> str:
    """Render the mapfile text for ``spec`` from ``templates/mapfile.map``.

    Raises:
        ProcessingError: the spec has an invalid EPSG code, extent or image path.
    """
    _check_spec(spec)
    layer_name = sanitize_layer_name(spec.layer_name)
    extent = " ".join(_format_number(value) for value in spec.extent)
    values = {
        "map_name": mapfile_string(f"vk_map_{spec.raw_map_id}"),
        "extent": extent,
        "units": _units_of(spec.epsg),
        "projection": mapfile_string(f"init=epsg:{spec.epsg}"),
        "layer_name": mapfile_string(layer_name),
        "image_path": mapfile_string(spec.image_path),
        "web_metadata": _metadata_lines(_web_metadata(spec)),
        "layer_metadata": _metadata_lines(_layer_metadata(spec, extent)),
    }
    return _load_template().substitute(values)


def write_mapfile(spec: MapServiceSpec, path: str) -> None:
    """Render the mapfile for ``spec`` and write it to ``path`` atomically.

    The text goes to ``path + ".tmp"`` first and then replaces ``path`` with ``os.replace``,
    so a MapServer request that reads the file meanwhile reads the old or the new file, never
    half of one. The parent folder is created if missing.
    """
    text = render_mapfile(spec)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary_path = path + ".tmp"
    try:
        with open(temporary_path, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary_path, path)
    except BaseException:
        if os.path.exists(temporary_path):
            os.remove(temporary_path)
        raise
    logger.info("Wrote mapfile %s for raw map %s (WCS %s)", path, spec.raw_map_id,
                "on" if spec.allow_download else "off")


def _check_spec(spec: MapServiceSpec) -> None:
    if spec.epsg <= 0:
        raise ProcessingError(STEP, f"invalid EPSG code {spec.epsg} for raw map {spec.raw_map_id}")
    if len(spec.extent) != 4 or not all(math.isfinite(value) for value in spec.extent):
        raise ProcessingError(STEP, f"invalid extent {spec.extent!r} for raw map {spec.raw_map_id}")
    minx, miny, maxx, maxy = spec.extent
    if not (minx < maxx and miny < maxy):
        raise ProcessingError(STEP, f"empty extent {spec.extent!r} for raw map {spec.raw_map_id}")
    if not os.path.isabs(spec.image_path):
        raise ProcessingError(STEP, f"image path {spec.image_path!r} is not absolute")


def _web_metadata(spec: MapServiceSpec) -> list[tuple[str, str]]:
    srs_list = " ".join(f"EPSG:{code}" for code in _wms_epsg_codes(spec.epsg))
    entries = [
        ("ows_title", spec.title),
        ("ows_abstract", spec.abstract),
        ("ows_srs", srs_list),
        ("wms_srs", srs_list),
        ("wms_onlineresource", spec.wms_url),
        ("wms_enable_request", WMS_REQUESTS),
        # A BoundingBox element for every offered CRS, not only the layer's own.
        ("wms_bbox_extended", "true"),
        ("wms_feature_info_mime_type", "text/plain"),
    ]
    if spec.allow_download:
        entries += [
            ("wcs_label", spec.title),
            ("wcs_description", spec.abstract),
            ("wcs_onlineresource", spec.wcs_url),
            ("wcs_enable_request", "*"),
        ]
    else:
        # MapServer disables requests that no *_enable_request names. The explicit "!*" keeps
        # an "ows_enable_request" added later from turning the WCS on.
        entries.append(("wcs_enable_request", "!*"))
    return entries


def _layer_metadata(spec: MapServiceSpec, extent: str) -> list[tuple[str, str]]:
    entries = [
        ("ows_title", spec.title),
        ("ows_abstract", spec.abstract),
        ("ows_extent", extent),
        ("wms_extent", extent),
    ]
    if spec.allow_download:
        entries += [
            ("wcs_label", spec.title),
            ("wcs_description", spec.abstract),
            ("wcs_formats", "GTiff"),
            ("wcs_nativeformat", "GTiff"),
            ("wcs_rangeset_name", "bands"),
            ("wcs_rangeset_label", "red, green, blue, alpha"),
            ("wcs_band_names", "red green blue alpha"),
        ]
    return entries


def _wms_epsg_codes(epsg: int) -> list[int]:
    return [epsg] + [code for code in EXTRA_WMS_EPSG_CODES if code != epsg]


def _metadata_lines(entries: list[tuple[str, str]]) -> str:
    # An empty abstract or description would become an empty XML element, so it is left out.
    return "\n".join(f"      {mapfile_string(key)} {mapfile_string(value)}"
                     for key, value in entries if value)


def _units_of(epsg: int) -> str:
    """Return the MapServer UNITS keyword for an EPSG CRS, which scale hints depend on."""
    srs = osr.SpatialReference()
    if srs.ImportFromEPSG(epsg) != 0:
        raise ProcessingError(STEP, f"unknown EPSG code {epsg}")
    if srs.IsGeographic():
        return "DD"
    metres_per_unit = srs.GetLinearUnits()
    if math.isclose(metres_per_unit, 1.0):
        return "METERS"
    if math.isclose(metres_per_unit, 0.3048) or math.isclose(metres_per_unit, 1200 / 3937):
        return "FEET"
    raise ProcessingError(STEP, f"EPSG:{epsg} has a linear unit MapServer cannot name "
                                f"({metres_per_unit} m)")


def _format_number(value: float) -> str:
    # repr gives the shortest text that reads back to the same float. MapServer's lexer also
    # accepts its exponent form, such as 1.5e-05.
    return repr(float(value))


def _load_template() -> string.Template:
    text = resources.files("georeference").joinpath("templates", TEMPLATE_NAME).read_text(
        encoding="utf-8")
    return string.Template(text)
