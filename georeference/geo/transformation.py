"""Parse and check a transformation's parameters: algorithm, CRS and ground control points.

``transformations.params`` is JSON written by the web service::

    {"source": "pixel", "target": "EPSG:4314", "algorithm": "affine" | "polynom" | "tps",
     "order": 1..3 (optional, polynom only),
     "gcps": [{"source": [x, y], "target": [lon, lat]}, ...]}

Pixel coordinates count from the scan's top-left corner. Every check here raises
``JobInputError`` with a message that names the offending value, because these faults come
from people placing points and must be reported back, not retried.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from osgeo import gdal, osr

from georeference.errors import JobInputError

gdal.UseExceptions()
osr.UseExceptions()

ALGORITHMS = ("affine", "polynom", "tps")

# Polynomial order -> minimum number of GCPs, (order + 1)(order + 2) / 2.
MIN_GCPS_FOR_ORDER = {1: 3, 2: 6, 3: 10}

# GDAL picks order 2 from this many GCPs on when no order is given (gdal_crs.cpp, GDAL 3.x).
GDAL_ORDER_2_FROM = 10

# Two GCPs closer than this many pixels count as duplicates.
DUPLICATE_PIXEL_TOLERANCE = 0.5


@dataclass(frozen=True)
class ControlPoint:
    """One GCP: a scan pixel and the map coordinate it belongs at."""

    pixel_x: float
    pixel_y: float
    x: float
    y: float


@dataclass(frozen=True)
class TransformationSpec:
    """A checked transformation, ready to warp with.

    Attributes:
        algorithm: ``affine``, ``polynom`` or ``tps``.
        order: polynomial order used for ``affine``/``polynom``; None for ``tps``.
        epsg: EPSG code of the CRS the map is produced in (GCP targets are in it).
        gcps: the control points with targets in ``epsg``.
    """

    algorithm: str
    order: int | None
    epsg: int
    gcps: tuple[ControlPoint, ...]

    @property
    def transformer_options(self) -> list[str]:
        """Return the GDAL transformer options that reproduce this transformation."""
        if self.algorithm == "tps":
            return ["METHOD=GCP_TPS"]
        return ["METHOD=GCP_POLYNOMIAL", f"MAX_GCP_ORDER={self.order}"]

    def gdal_gcps(self) -> list[gdal.GCP]:
        """Return the GCPs as GDAL objects (x/y map coordinates, pixel/line scan position)."""
        return [gdal.GCP(point.x, point.y, 0.0, point.pixel_x, point.pixel_y)
                for point in self.gcps]

    def srs(self) -> osr.SpatialReference:
        """Return the target CRS with traditional lon/lat (x/y) axis order."""
        return srs_from_epsg(self.epsg)


def srs_from_epsg(epsg: int) -> osr.SpatialReference:
    """Return a spatial reference for an EPSG code, with x/y axis order as GIS software uses."""
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(int(epsg))
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def parse_crs(value: Any, what: str) -> int:
    """Return the EPSG code of a CRS given as ``"EPSG:4314"`` or as an integer code.

    Raises:
        JobInputError: the value is malformed or names a CRS missing from PROJ's database.
    """
    if isinstance(value, bool):
        raise JobInputError(f"{what} {value!r} is not a CRS; expected 'EPSG:<code>'")
    if isinstance(value, int):
        code = value
    elif isinstance(value, str) and value.upper().startswith("EPSG:") and value[5:].isdigit():
        code = int(value[5:])
    else:
        raise JobInputError(f"{what} {value!r} is not a CRS; expected 'EPSG:<code>'")
    try:
        srs_from_epsg(code)
    except RuntimeError:
        raise JobInputError(f"{what} EPSG:{code} is unknown to PROJ") from None
    return code


def _parse_point(value: Any, index: int, key: str) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise JobInputError(f"GCP {index + 1}: '{key}' must be a pair of numbers, got {value!r}")
    try:
        x, y = float(value[0]), float(value[1])
    except (TypeError, ValueError):
        raise JobInputError(
            f"GCP {index + 1}: '{key}' must be a pair of numbers, got {value!r}") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise JobInputError(f"GCP {index + 1}: '{key}' {value!r} is not finite")
    return x, y


def _parse_gcps(raw: Any) -> list[ControlPoint]:
    if not isinstance(raw, list):
        raise JobInputError(f"'gcps' must be a list of points, got {type(raw).__name__}")
    points = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or "source" not in item or "target" not in item:
            raise JobInputError(f"GCP {index + 1} must have 'source' and 'target', got {item!r}")
        pixel_x, pixel_y = _parse_point(item["source"], index, "source")
        x, y = _parse_point(item["target"], index, "target")
        points.append(ControlPoint(pixel_x, pixel_y, x, y))
    return points


def _choose_order(algorithm: str, requested: Any, gcp_count: int) -> int | None:
    if algorithm == "tps":
        return None
    if algorithm == "affine":
        return 1
    if requested is None:
        return 2 if gcp_count >= GDAL_ORDER_2_FROM else 1
    if isinstance(requested, bool) or not isinstance(requested, int) or requested not in (1, 2, 3):
        raise JobInputError(f"polynomial order {requested!r} is invalid; expected 1, 2 or 3")
    return requested


def _check_gcp_count(algorithm: str, order: int | None, gcp_count: int) -> None:
    needed = 3 if order is None else MIN_GCPS_FOR_ORDER[order]
    if gcp_count < needed:
        what = "thin plate spline" if order is None else f"{algorithm} (order {order})"
        raise JobInputError(f"{what} needs at least {needed} GCPs, got {gcp_count}")


def _check_within_scan(points: Sequence[ControlPoint], width: int, height: int) -> None:
    for index, point in enumerate(points):
        if not (0 <= point.pixel_x <= width and 0 <= point.pixel_y <= height):
            raise JobInputError(
                f"GCP {index + 1}: pixel ({point.pixel_x:g}, {point.pixel_y:g}) lies outside "
                f"the scan of {width} x {height} pixels")


def _check_distinct(points: Sequence[ControlPoint]) -> None:
    for i, first in enumerate(points):
        for j in range(i + 1, len(points)):
            second = points[j]
            if math.hypot(first.pixel_x - second.pixel_x,
                          first.pixel_y - second.pixel_y) < DUPLICATE_PIXEL_TOLERANCE:
                raise JobInputError(
                    f"GCPs {i + 1} and {j + 1} are duplicates: both at pixel "
                    f"({first.pixel_x:g}, {first.pixel_y:g})")
            if first.x == second.x and first.y == second.y:
                raise JobInputError(
                    f"GCPs {i + 1} and {j + 1} are duplicates: both at target "
                    f"({first.x:g}, {first.y:g})")


def _is_collinear(coordinates: np.ndarray) -> bool:
    """Return True when points lie on (nearly) one line: the second singular value vanishes."""
    centred = coordinates - coordinates.mean(axis=0)
    singular_values = np.linalg.svd(centred, compute_uv=False)
    return bool(singular_values[0] == 0 or singular_values[1] / singular_values[0] < 1e-3)


def _check_not_collinear(points: Sequence[ControlPoint]) -> None:
    pixels = np.array([[p.pixel_x, p.pixel_y] for p in points])
    targets = np.array([[p.x, p.y] for p in points])
    if _is_collinear(pixels):
        raise JobInputError("the GCPs' pixel positions lie on one line; "
                            "a transformation needs points spread over the map")
    if _is_collinear(targets):
        raise JobInputError("the GCPs' target coordinates lie on one line; "
                            "a transformation needs points spread over the map")


def _check_area_of_use(points: Sequence[ControlPoint], epsg: int) -> None:
    srs = srs_from_epsg(epsg)
    area = srs.GetAreaOfUse()
    if area is None:
        return
    to_wgs84 = osr.CoordinateTransformation(srs, srs_from_epsg(4326))
    # One degree of slack: maps often reach a little beyond the CRS's official area.
    slack = 1.0
    for index, point in enumerate(points):
        try:
            lon, lat, _ = to_wgs84.TransformPoint(point.x, point.y)
        except RuntimeError:
            lon = lat = math.nan
        inside = (math.isfinite(lon) and math.isfinite(lat)
                  and area.west_lon_degree - slack <= lon <= area.east_lon_degree + slack
                  and area.south_lat_degree - slack <= lat <= area.north_lat_degree + slack)
        if not inside:
            raise JobInputError(
                f"GCP {index + 1}: target ({point.x:g}, {point.y:g}) lies outside the valid "
                f"area of EPSG:{epsg} ({area.name})")


def _reproject_points(points: Sequence[ControlPoint], source_epsg: int,
                      target_epsg: int) -> list[ControlPoint]:
    transform = osr.CoordinateTransformation(srs_from_epsg(source_epsg),
                                             srs_from_epsg(target_epsg))
    reprojected = []
    for index, point in enumerate(points):
        x, y, _ = transform.TransformPoint(point.x, point.y)
        if not (math.isfinite(x) and math.isfinite(y)):
            raise JobInputError(
                f"GCP {index + 1}: target ({point.x:g}, {point.y:g}) cannot be transformed "
                f"from EPSG:{source_epsg} to EPSG:{target_epsg}")
        reprojected.append(ControlPoint(point.pixel_x, point.pixel_y, x, y))
    return reprojected


def parse_transformation(params_text: str, target_crs: int | None, scan_width: int,
                         scan_height: int) -> TransformationSpec:
    """Parse ``transformations.params`` and check it against the scan's size.

    Args:
        params_text: the JSON text of ``transformations.params``.
        target_crs: ``transformations.target_crs``; when set and different from the GCPs'
            CRS, the GCP targets are transformed into it and the map is produced in it.
        scan_width: width of the raw scan in pixels.
        scan_height: height of the raw scan in pixels.

    Raises:
        JobInputError: any fault in the parameters, naming the value.
    """
    try:
        params = json.loads(params_text)
    except (TypeError, ValueError) as exc:
        raise JobInputError(f"params is not valid JSON: {exc}") from None
    if not isinstance(params, dict):
        raise JobInputError("params must be a JSON object")

    if params.get("source", "pixel") != "pixel":
        raise JobInputError(f"params source {params.get('source')!r} is not supported; "
                            "expected 'pixel'")
    algorithm = params.get("algorithm")
    if algorithm not in ALGORITHMS:
        raise JobInputError(
            f"unknown algorithm {algorithm!r}; expected one of {', '.join(ALGORITHMS)}")
    gcp_epsg = parse_crs(params.get("target"), "params target CRS")

    points = _parse_gcps(params.get("gcps"))
    order = _choose_order(algorithm, params.get("order"), len(points))
    _check_gcp_count(algorithm, order, len(points))
    _check_within_scan(points, scan_width, scan_height)
    _check_distinct(points)
    _check_area_of_use(points, gcp_epsg)
    _check_not_collinear(points)

    epsg = gcp_epsg
    if target_crs is not None and int(target_crs) != gcp_epsg:
        epsg = parse_crs(int(target_crs), "target_crs")
        points = _reproject_points(points, gcp_epsg, epsg)

    return TransformationSpec(algorithm=algorithm, order=order, epsg=epsg, gcps=tuple(points))
