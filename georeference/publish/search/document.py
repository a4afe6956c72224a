"""Build the search document of one raw map, the contract with the portal's frontend.

``build_document`` reads a raw map, its metadata and its georeference and returns the public
id and the document. ``normalize_geometry`` makes the footprint fit an Elasticsearch
``geo_shape``. Elasticsearch rejects polygons with self-intersections and unclosed rings, and
it reads ring orientation to decide whether a polygon crosses the antimeridian. Clip polygons
drawn by users and extents computed from warped images break these rules often enough that
every geometry goes through ``normalize_geometry``, whichever backend stores the document.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from urllib.parse import quote

from osgeo import gdal, ogr
from sqlalchemy.orm import Session

from georeference.errors import ConfigurationError, JobInputError
from georeference.geo.clip import largest_polygon, rectangle
from georeference.models import GeorefMap, Metadata, RawMap, Transformation
from georeference.publish.mapfile import sanitize_layer_name
from georeference.settings import Settings

ogr.UseExceptions()

logger = logging.getLogger(__name__)

Position = list[float]
Ring = list[Position]

# The valid lon/lat range of EPSG:4326. Geometry outside it is cut off.
WORLD_BOUNDS = (-180.0, -90.0, 180.0, 90.0)


def normalize_geometry(geojson_text: str | None) -> dict[str, Any] | None:
    """Return a valid, closed, counter-clockwise GeoJSON polygon for a stored geometry.

    It closes open rings, drops repeated consecutive positions and repairs the shape with
    OGR ``MakeValid``. A shape lying wholly beyond ±180° moves back by 360°, and the rest is
    cut to the world bounds. Of the polygon parts, the one with the largest area is kept.
    The outer ring ends up counter-clockwise and holes clockwise (RFC 7946 right-hand rule).

    Args:
        geojson_text: GeoJSON geometry in EPSG:4326, or None or "" for no geometry.

    Returns:
        A GeoJSON ``Polygon`` dict, or None when the input is empty or has no area
        (a point, a line, or a ring that collapses when repaired).

    Raises:
        JobInputError: the text is not a GeoJSON geometry.
    """
    if geojson_text is None or not geojson_text.strip():
        return None

    geojson = _parse_geojson(geojson_text)
    try:
        cleaned = _clean_positions(geojson)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise JobInputError(
            f"invalid GeoJSON geometry {geojson_text[:80]!r}: malformed coordinates ({exc!r})"
        ) from None
    geometry = _to_ogr(cleaned)
    if geometry is None or geometry.IsEmpty():
        return None

    if not _is_valid(geometry):
        geometry = geometry.MakeValid()
    geometry = _fit_world_bounds(geometry)

    polygon = largest_polygon(geometry)
    if polygon is None:
        return None

    coordinates = json.loads(polygon.ExportToJson())["coordinates"]
    return _orient_polygon(coordinates)


def geometry_bbox(geometry: dict[str, Any] | None) -> tuple[float, float, float, float] | None:
    """Return (min_lon, min_lat, max_lon, max_lat) of a normalized polygon, None for none."""
    if geometry is None:
        return None
    outer_ring = geometry["coordinates"][0]
    longitudes = [position[0] for position in outer_ring]
    latitudes = [position[1] for position in outer_ring]
    return min(longitudes), min(latitudes), max(longitudes), max(latitudes)


def signed_area(ring: Ring) -> float:
    """Return the shoelace area of a closed ring: positive when counter-clockwise."""
    total = 0.0
    for (x1, y1, *_), (x2, y2, *_) in zip(ring, ring[1:]):
        total += x1 * y2 - x2 * y1
    return total / 2.0


def _parse_geojson(geojson_text: str) -> dict[str, Any]:
    try:
        geojson = json.loads(geojson_text)
    except ValueError as exc:
        raise JobInputError(f"invalid GeoJSON geometry {geojson_text[:80]!r}: {exc}") from None
    if not isinstance(geojson, dict) or "type" not in geojson:
        raise JobInputError(
            f"invalid GeoJSON geometry {geojson_text[:80]!r}: expected an object with 'type'")
    return geojson


def _clean_positions(geojson: dict[str, Any]) -> dict[str, Any]:
    """Close the rings of (multi)polygons and drop repeated consecutive positions.

    This runs before OGR parses the geometry, because OGR only warns about open rings
    and GEOS then fails on them.
    """
    kind = geojson["type"]
    if kind == "Polygon":
        return {**geojson, "coordinates": [_clean_ring(ring) for ring in geojson["coordinates"]]}
    if kind == "MultiPolygon":
        polygons = [[_clean_ring(ring) for ring in polygon]
                    for polygon in geojson["coordinates"]]
        return {**geojson, "coordinates": polygons}
    if kind == "GeometryCollection":
        members = [_clean_positions(member) for member in geojson.get("geometries", [])]
        return {**geojson, "geometries": members}
    return geojson


def _clean_ring(ring: Ring) -> Ring:
    cleaned: Ring = []
    for position in ring:
        point = [float(value) for value in position[:2]]
        if not cleaned or point != cleaned[-1]:
            cleaned.append(point)
    if cleaned and cleaned[0] != cleaned[-1]:
        cleaned.append(list(cleaned[0]))
    return cleaned


def _to_ogr(geojson: dict[str, Any]) -> ogr.Geometry | None:
    try:
        geometry = ogr.CreateGeometryFromJson(json.dumps(geojson))
    except RuntimeError as exc:
        raise JobInputError(f"invalid GeoJSON geometry of type {geojson['type']!r}: {exc}") \
            from None
    if geometry is None:
        raise JobInputError(f"invalid GeoJSON geometry of type {geojson['type']!r}")
    geometry.FlattenTo2D()
    return geometry


def _is_valid(geometry: ogr.Geometry) -> bool:
    """Check validity without GEOS printing the reason to stderr, as invalid input is expected."""
    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        return bool(geometry.IsValid())
    finally:
        gdal.PopErrorHandler()


def _fit_world_bounds(geometry: ogr.Geometry) -> ogr.Geometry:
    """Shift a shape that lies wholly east of 180° or west of -180° by 360°, then cut it.

    NOTE: a shape that straddles the antimeridian (say 170° to 190°) loses the part beyond
    180°, so its search geometry is smaller than the map.
    """
    min_lon, max_lon, min_lat, max_lat = geometry.GetEnvelope()
    west, south, east, north = WORLD_BOUNDS
    if min_lon >= east:
        geometry = _translate(geometry, -360.0)
    elif max_lon <= west:
        geometry = _translate(geometry, 360.0)

    min_lon, max_lon, min_lat, max_lat = geometry.GetEnvelope()
    if min_lon >= west and max_lon <= east and min_lat >= south and max_lat <= north:
        return geometry
    return geometry.Intersection(rectangle(*WORLD_BOUNDS))


def _translate(geometry: ogr.Geometry, dx: float) -> ogr.Geometry:
    geojson = json.loads(geometry.ExportToJson())
    return ogr.CreateGeometryFromJson(json.dumps(_shift_coordinates(geojson, dx)))


def _shift_coordinates(value: Any, dx: float) -> Any:
    if isinstance(value, dict):
        return {key: _shift_coordinates(item, dx) if key in ("coordinates", "geometries")
                else item for key, item in value.items()}
    if isinstance(value, list) and value and isinstance(value[0], (int, float)):
        return [value[0] + dx, *value[1:]]
    if isinstance(value, list):
        return [_shift_coordinates(item, dx) for item in value]
    return value


def _orient_polygon(coordinates: list[Ring]) -> dict[str, Any]:
    """Orient the outer ring counter-clockwise and the holes clockwise, dropping repeats."""
    rings: list[Ring] = []
    for index, ring in enumerate(coordinates):
        ring = _clean_ring(ring)
        if len(ring) < 4:
            continue
        area = signed_area(ring)
        outer = index == 0
        if (outer and area < 0) or (not outer and area > 0):
            ring.reverse()
        rings.append(ring)
    return {"type": "Polygon", "coordinates": rings}


def build_document(session: Session, settings: Settings,
                   raw_map_id: int) -> tuple[str, dict[str, Any]]:
    """Build the search document of a raw map from the database as it is now.

    The map counts as georeferenced when it has a ``georef_maps`` row. Its geometry is the
    clip polygon of the enabled transformation (``georef_maps.transformation_id``) and,
    when that has none or the clip has no area, the extent of the geo image.

    Returns:
        The public id (``settings.search_id_template``) and the document.

    Raises:
        JobInputError: the raw map does not exist, or a stored geometry is not GeoJSON.
        ConfigurationError: a URL template names an unknown placeholder.
    """
    raw_map = session.get(RawMap, raw_map_id)
    if raw_map is None:
        raise JobInputError(f"raw map {raw_map_id} not found")
    metadata = session.get(Metadata, raw_map_id)
    georef_map = session.get(GeorefMap, raw_map_id)

    geometry = _georef_geometry(session, georef_map) if georef_map is not None else None
    fields = _url_fields(raw_map)
    document: dict[str, Any] = {
        "map_id": raw_map.id,
        "file_name": raw_map.file_name,
        "description": _metadata_value(metadata, "description"),
        "map_scale": raw_map.map_scale,
        "zoomify_url": _metadata_value(metadata, "link_zoomify"),
        "map_type": raw_map.map_type,
        "keywords": _keywords(metadata),
        "title_long": _metadata_value(metadata, "title"),
        "title": _metadata_value(metadata, "title_short"),
        "permalink": _metadata_value(metadata, "permalink"),
        "slub_url": _slub_url(settings, metadata, fields),
        "online_resources": _online_resources(settings, raw_map, metadata,
                                              georef_map is not None, fields),
        "tms_urls": _tms_urls(settings, raw_map, georef_map is not None, fields),
        "thumb_url": (_metadata_value(metadata, "link_thumb_mid")
                      or _metadata_value(metadata, "link_thumb_small")),
        "geometry": geometry,
        "has_georeference": georef_map is not None,
        "time_published": _time_published(metadata),
    }
    return public_id(settings, raw_map_id), document


def public_id(settings: Settings, raw_map_id: int) -> str:
    """Return the public id of a raw map, the key of its search document."""
    return _format_template("georeference.search.id_template", settings.search_id_template,
                            {"map_id": raw_map_id})


def coverage_id(raw_map: RawMap) -> str:
    """Return the WCS coverage id of a map, the layer name its mapfile gets."""
    return sanitize_layer_name(raw_map.file_name)


def _georef_geometry(session: Session, georef_map: GeorefMap) -> dict[str, Any] | None:
    transformation = session.get(Transformation, georef_map.transformation_id)
    clip = transformation.clip if transformation is not None else None
    geometry = normalize_geometry(clip)
    if geometry is None and clip:
        logger.warning("map=%s clip polygon of transformation %s has no area; "
                       "using the extent of the geo image", georef_map.raw_map_id,
                       georef_map.transformation_id)
    if geometry is None:
        geometry = normalize_geometry(georef_map.extent)
    return geometry


def _metadata_value(metadata: Metadata | None, name: str) -> Any:
    if metadata is None:
        return None
    return getattr(metadata, name)


def _keywords(metadata: Metadata | None) -> str:
    """Join the map's type and technic with ';', skipping empty ones."""
    values = [_metadata_value(metadata, "type"), _metadata_value(metadata, "technic")]
    return ";".join(value.strip() for value in values if value and value.strip())


def _time_published(metadata: Metadata | None) -> str | None:
    published = _metadata_value(metadata, "time_of_publication")
    return published.date().isoformat() if published is not None else None


def _url_fields(raw_map: RawMap) -> dict[str, Any]:
    """Return the values every URL template may use."""
    return {
        "map_id": raw_map.id,
        "map_type": raw_map.map_type,
        "file_name": raw_map.file_name,
        "mapfile": f"{raw_map.id}.map",
    }


def _format_template(key: str, template: str, fields: dict[str, Any]) -> str:
    try:
        return template.format(**fields)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigurationError(
            f"invalid value for {key}: {template!r} cannot be filled ({exc!r}); "
            f"available placeholders: {', '.join('{' + name + '}' for name in fields)}"
        ) from None


def _slub_url(settings: Settings, metadata: Metadata | None,
              fields: dict[str, Any]) -> str | None:
    ppn = _metadata_value(metadata, "ppn")
    if not ppn:
        return None
    return _format_template("georeference.url.slub", settings.url_slub, {**fields, "ppn": ppn})


def _tms_urls(settings: Settings, raw_map: RawMap, georeferenced: bool,
              fields: dict[str, Any]) -> list[str]:
    if not georeferenced:
        return []
    tms_fields = {**fields, "map_type": raw_map.map_type.lower()}
    return [_format_template("georeference.url.tms", settings.url_tms, tms_fields)]


def _with_query(url: str, query: str) -> str:
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}{query}"


def _online_resources(settings: Settings, raw_map: RawMap, metadata: Metadata | None,
                      georeferenced: bool, fields: dict[str, Any]) -> list[dict[str, str]]:
    """List the permalink, and the OGC services of a georeferenced map.

    WCS and its GetCoverage download appear only when ``raw_maps.allow_download`` is set,
    matching the mapfile, which offers GeoTIFF output only then.
    """
    resources: list[dict[str, str]] = []
    permalink = _metadata_value(metadata, "permalink")
    if permalink:
        resources.append({"url": permalink, "type": "Permalink"})
    if not georeferenced:
        return resources

    wms = _format_template("georeference.url.wms", settings.url_wms, fields)
    resources.append({"url": _with_query(wms, "SERVICE=WMS&VERSION=1.3.0&REQUEST=GetCapabilities"),
                      "type": "WMS"})
    if raw_map.allow_download:
        wcs = _format_template("georeference.url.wcs", settings.url_wcs, fields)
        resources.append({
            "url": _with_query(wcs, "SERVICE=WCS&VERSION=2.0.1&REQUEST=GetCapabilities"),
            "type": "WCS"})
        resources.append({
            "url": _with_query(wcs, "SERVICE=WCS&VERSION=2.0.1&REQUEST=GetCoverage"
                                    f"&COVERAGEID={quote(coverage_id(raw_map))}&FORMAT=image/tiff"),
            "type": "download"})
    return resources
