"""Clip polygons drawn by people: parse, repair and reduce them to one valid polygon.

Clip polygons arrive as GeoJSON in EPSG:4326 and are often invalid: bow-ties, spikes,
repeated points. They are repaired with GEOS (through OGR's ``MakeValid``) and the largest
polygon part is kept, because the warp's cutline and the search index need one polygon.
"""

from __future__ import annotations

import json

from osgeo import ogr, osr

from georeference.errors import JobInputError

ogr.UseExceptions()

_POLYGONAL = (ogr.wkbPolygon, ogr.wkbMultiPolygon)


def rectangle(min_x: float, min_y: float, max_x: float, max_y: float) -> ogr.Geometry:
    """Return an axis-aligned rectangle as an OGR polygon, without a spatial reference."""
    ring = ogr.Geometry(ogr.wkbLinearRing)
    for x, y in ((min_x, min_y), (max_x, min_y), (max_x, max_y), (min_x, max_y), (min_x, min_y)):
        ring.AddPoint_2D(x, y)
    polygon = ogr.Geometry(ogr.wkbPolygon)
    polygon.AddGeometry(ring)
    return polygon


def largest_polygon(geometry: ogr.Geometry) -> ogr.Geometry | None:
    """Return a copy of the part with the largest area, or None when no part has an area.

    ``MakeValid`` splits a bow-tie into a multipolygon and may return a collection with
    lines or points besides the polygons.
    """
    candidates = [part for part in _polygon_parts(geometry) if part.GetArea() > 0.0]
    if not candidates:
        return None
    return max(candidates, key=lambda part: part.GetArea())


def _polygon_parts(geometry: ogr.Geometry) -> list[ogr.Geometry]:
    flat_type = ogr.GT_Flatten(geometry.GetGeometryType())
    if flat_type == ogr.wkbPolygon:
        return [geometry.Clone()]
    if flat_type in (ogr.wkbMultiPolygon, ogr.wkbGeometryCollection):
        parts: list[ogr.Geometry] = []
        for index in range(geometry.GetGeometryCount()):
            parts.extend(_polygon_parts(geometry.GetGeometryRef(index)))
        return parts
    return []


def parse_clip(geojson_text: str | None) -> ogr.Geometry | None:
    """Return the clip as one valid OGR polygon in EPSG:4326, or None when there is no clip.

    Raises:
        JobInputError: the clip is not GeoJSON, not a polygon, or empty after repair.
    """
    if geojson_text is None or geojson_text.strip() == "":
        return None
    try:
        parsed = json.loads(geojson_text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and parsed.get("coordinates") in ([], [[]]):
        raise JobInputError("clip polygon is empty")
    try:
        geometry = ogr.CreateGeometryFromJson(geojson_text) if parsed is not None else None
    except RuntimeError:
        geometry = None
    if geometry is None:
        raise JobInputError(f"clip polygon is not valid GeoJSON: {geojson_text[:80]!r}")

    if ogr.GT_Flatten(geometry.GetGeometryType()) not in _POLYGONAL:
        raise JobInputError(
            f"clip must be a polygon, got a {geometry.GetGeometryName().lower()}")
    geometry.FlattenTo2D()
    if geometry.IsEmpty():
        raise JobInputError("clip polygon is empty")

    if not geometry.IsValid():
        geometry = geometry.MakeValid()
    largest = largest_polygon(geometry)
    if largest is None:
        raise JobInputError("clip polygon has no area after repairing it")

    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4326)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    largest.AssignSpatialReference(srs)
    return largest
