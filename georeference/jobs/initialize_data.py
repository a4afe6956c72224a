"""``initialize_data``: produce what is missing for every enabled map, rebuild the index.

Existing products are kept as they are; only a missing geo image, tile pyramid or mapfile
is made. The search index is rebuilt from the database afterwards.
"""

from __future__ import annotations

import os

from sqlalchemy import select

from georeference import publish
from georeference.errors import GeoreferenceError
from georeference.jobs.context import JobContext
from georeference.jobs.georeferencing import load_raw_map, prepare, stage_geo_image
from georeference.models import GeorefMap, Transformation
from georeference.publish import paths


def _complete_map(ctx: JobContext, georef_map: GeorefMap) -> list[str]:
    """Stage the missing products of one map; return their names."""
    settings = ctx.settings
    raw_map = load_raw_map(ctx, georef_map.raw_map_id)
    image_final = paths.geo_image_path(settings.georef_root, raw_map.map_type, raw_map.file_name)
    tiles_final = paths.tiles_path(settings.tms_root, raw_map.map_type, raw_map.file_name)
    mapfile_final = paths.mapfile_path(settings.mapfile_root, raw_map.id)

    image_missing = not os.path.isfile(image_final)
    tiles_missing = not os.path.isdir(tiles_final)
    mapfile_missing = not os.path.isfile(mapfile_final)
    if not (image_missing or tiles_missing or mapfile_missing):
        return []

    made = []
    image_current = image_final
    if image_missing or tiles_missing:
        transformation = ctx.session.get(Transformation, georef_map.transformation_id)
        prepared = prepare(ctx, transformation)
        if image_missing:
            image, _ = stage_geo_image(ctx, prepared)
            image_current = image.path
            georef_map.extent = image.footprint_geojson
            made.append("geo image")
        if tiles_missing:
            publish.stage_tiles(ctx, raw_map, prepared.spec, prepared.clip_wkt,
                                prepared.gcp_vrt)
            made.append("tiles")
    if mapfile_missing:
        publish.stage_mapfile(ctx, raw_map, image_final, image_current)
        made.append("mapfile")
    return made


def run(ctx: JobContext) -> None:
    """Check every enabled map's products, make the missing ones, rebuild the search index."""
    from georeference.publish.search import rebuild_index

    georef_maps = ctx.session.scalars(select(GeorefMap).order_by(GeorefMap.raw_map_id)).all()
    failures = []
    for georef_map in georef_maps:
        ctx.set_map(georef_map.raw_map_id)
        try:
            made = _complete_map(ctx, georef_map)
        except GeoreferenceError as exc:
            failures.append(f"map {georef_map.raw_map_id}: {exc}")
            ctx.logger.error("cannot complete products: %s", exc, extra={"action": "initialize"})
            continue
        if made:
            ctx.logger.info("made missing %s", ", ".join(made), extra={"action": "initialize"})
    ctx.logger.extra["map_id"] = None

    count = rebuild_index(ctx.session, ctx.settings, ctx.search_index)
    ctx.logger.info("search index rebuilt: %d documents", count, extra={"action": "reindex"})
    ctx.notes.append(f"checked {len(georef_maps)} enabled maps, rebuilt {count} search documents")
    if failures:
        ctx.notes.extend(failures)
