"""Enable a transformation for its raw map, or withdraw a map: the steps the handlers share."""

from __future__ import annotations

import contextvars
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy import select

from georeference.errors import JobInputError
from georeference.geo.clip import parse_clip
from georeference.geo.transformation import TransformationSpec, parse_transformation
from georeference.geo.warp import (GeoImage, compute_residuals, make_gcp_vrt, scan_footprint,
                                   scan_size, write_geo_image)
from georeference.jobs.context import JobContext
from georeference.models import GeorefMap, RawMap, Transformation, utcnow
from georeference import publish
from georeference.publish import paths

# A GCP residual RMS above this many scan pixels is logged as a warning: the points
# probably contain a misplaced one.
HIGH_RESIDUAL_PIXELS = 10.0


@dataclass(frozen=True)
class PreparedTransformation:
    """A transformation checked against its scan, with the scan as a GCP VRT."""

    raw_map: RawMap
    transformation: Transformation
    spec: TransformationSpec
    clip_wkt: str | None
    clip: object
    gcp_vrt: str


def load_transformation(ctx: JobContext, transformation_id: int) -> Transformation:
    """Return a transformation row and name its map in the job's log lines.

    Raises:
        JobInputError: no transformation has that id.
    """
    return load_transformation_and_product(ctx, transformation_id)[0]


def load_transformation_and_product(
        ctx: JobContext, transformation_id: int) -> tuple[Transformation, GeorefMap | None]:
    """Return a transformation row and its map's georef_maps row (None when not enabled).

    Both come in one statement: the review handlers need both, and a second lookup was a
    noticeable part of a quick job's cost.

    Raises:
        JobInputError: no transformation has that id.
    """
    row = ctx.session.execute(
        select(Transformation, GeorefMap)
        .outerjoin(GeorefMap, GeorefMap.raw_map_id == Transformation.raw_map_id)
        .where(Transformation.id == transformation_id)).first()
    if row is None:
        raise JobInputError(f"transformation {transformation_id} does not exist")
    transformation, georef_map = row
    ctx.set_map(transformation.raw_map_id)
    return transformation, georef_map


def load_raw_map(ctx: JobContext, raw_map_id: int) -> RawMap:
    """Return a raw map row.

    Raises:
        JobInputError: no raw map has that id.
    """
    raw_map = ctx.session.get(RawMap, raw_map_id)
    if raw_map is None:
        raise JobInputError(f"raw map {raw_map_id} does not exist")
    return raw_map


def prepare(ctx: JobContext, transformation: Transformation) -> PreparedTransformation:
    """Check a transformation against its scan and log the fit's residuals.

    Raises:
        JobInputError: the scan, the parameters or the clip are unusable.
    """
    raw_map = load_raw_map(ctx, transformation.raw_map_id)
    scan = paths.scan_path(ctx.settings.image_root, raw_map.rel_path)
    width, height = scan_size(scan)
    spec = parse_transformation(transformation.params, transformation.target_crs, width, height)
    clip = parse_clip(transformation.clip)
    if clip is not None and not scan_footprint(spec, width, height).Intersects(clip):
        raise JobInputError("clip polygon does not intersect the map")

    residuals = compute_residuals(spec, width, height)
    units = "m" if spec.srs().IsProjected() else "deg"
    summary = f"transformation {transformation.id}: {residuals.summary(units)}"
    if residuals.rms_pixels > HIGH_RESIDUAL_PIXELS:
        ctx.logger.warning("%s (above %.0f px: check the GCPs)", summary, HIGH_RESIDUAL_PIXELS,
                           extra={"action": "residuals"})
    else:
        ctx.logger.info("%s", summary, extra={"action": "residuals"})
    ctx.notes.append(summary)

    gcp_vrt = os.path.join(ctx.map_staging_dir(raw_map.id), "scan.vrt")
    make_gcp_vrt(scan, spec, gcp_vrt)
    return PreparedTransformation(raw_map, transformation, spec,
                                  clip.ExportToWkt() if clip is not None else None, clip,
                                  gcp_vrt)


def stage_geo_image(ctx: JobContext, prepared: PreparedTransformation,
                    cancelled: threading.Event | None = None) -> tuple[GeoImage, str]:
    """Warp the scan into the staging folder; return the image and its published path."""
    raw_map = prepared.raw_map
    final = paths.geo_image_path(ctx.settings.georef_root, raw_map.map_type, raw_map.file_name)
    work_dir = ctx.map_staging_dir(raw_map.id)
    staged = os.path.join(work_dir, "geo.tif")

    def keep_going(fraction: float) -> bool:
        return not ctx.should_stop() and not (cancelled is not None and cancelled.is_set())

    image = write_geo_image(prepared.gcp_vrt, prepared.spec, prepared.clip, staged,
                            ctx.settings.warp_max_size, work_dir, progress=keep_going,
                            compression=ctx.settings.geotiff_compression)
    ctx.products.replace(staged, final)
    ctx.logger.info("geo image written: %d x %d pixels, EPSG:%d -> %s", image.width,
                    image.height, image.epsg, final, extra={"action": "warp_done"})
    return image, final


def stage_image_and_tiles(ctx: JobContext,
                          prepared: PreparedTransformation) -> tuple[GeoImage, str]:
    """Build the geo image in a thread while the tiles are cut, both straight from the scan.

    Each step has single-threaded phases (overviews, reducing zoom levels), so running them
    side by side keeps both cores busy. GDAL releases the GIL while it warps and compresses.
    """
    cancelled = threading.Event()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"geo-image-{ctx.job_id}") as pool:
        # In the job's context, so that the thread's log lines carry the job's prefix.
        image_future = pool.submit(contextvars.copy_context().run, stage_geo_image, ctx,
                                   prepared, cancelled)
        try:
            publish.stage_tiles(ctx, prepared.raw_map, prepared.spec, prepared.clip_wkt,
                                prepared.gcp_vrt)
        except BaseException:
            cancelled.set()
            raise
        return image_future.result()


def record_georef_map(ctx: JobContext, raw_map: RawMap, transformation: Transformation,
                      footprint_geojson: str) -> None:
    """Insert or update the map's georef_maps row for the enabled transformation."""
    row = ctx.session.get(GeorefMap, raw_map.id)
    if row is None:
        row = GeorefMap(raw_map_id=raw_map.id)
        ctx.session.add(row)
    row.transformation_id = transformation.id
    row.rel_path = paths.geo_image_rel_path(raw_map.map_type, raw_map.file_name)
    row.extent = footprint_geojson
    row.last_processed = utcnow()


def enable_transformation(ctx: JobContext, transformation: Transformation) -> None:
    """Make a transformation the one in use for its map: geo image, tiles, mapfile, index."""
    if transformation.validation == "invalid":
        raise JobInputError(
            f"transformation {transformation.id} is marked invalid and cannot be enabled")

    prepared = prepare(ctx, transformation)
    image, image_final = stage_image_and_tiles(ctx, prepared)
    publish.stage_mapfile(ctx, prepared.raw_map, image_final, image.path)
    record_georef_map(ctx, prepared.raw_map, transformation, image.footprint_geojson)
    publish.update_search_document(ctx, prepared.raw_map.id)
    ctx.logger.info("transformation %d enabled", transformation.id,
                    extra={"action": "enabled"})


def withdraw_map(ctx: JobContext, raw_map: RawMap) -> None:
    """Take a map off the services: products removed, georef_maps row deleted, index updated."""
    publish.withdraw_products(ctx, raw_map)
    row = ctx.session.get(GeorefMap, raw_map.id)
    if row is not None:
        ctx.session.delete(row)
    publish.update_search_document(ctx, raw_map.id)
    ctx.logger.info("map withdrawn: no valid transformation is left",
                    extra={"action": "withdrawn"})
