"""Publishing steps: TMS tiles, MapServer mapfile and search document of an enabled map.

Each step builds its product in the job's staging folder and registers it with the job's
``StagedProducts``. Nothing reaches the published roots before the loop installs them.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

from georeference.errors import JobInputError, ProcessingError
from georeference.models import Metadata, RawMap
from georeference.publish import paths

if TYPE_CHECKING:
    from georeference.geo.transformation import TransformationSpec
    from georeference.jobs.context import JobContext


def stage_tiles(ctx: JobContext, raw_map: RawMap, spec: TransformationSpec,
                clip_wkt: str | None, gcp_vrt: str) -> None:
    """Cut the map's tile pyramid straight from the scan and stage it."""
    from georeference.geo.tiles import build_tile_pyramid

    settings = ctx.settings
    final = paths.tiles_path(settings.tms_root, raw_map.map_type, raw_map.file_name)
    work_dir = ctx.map_staging_dir(raw_map.id)
    staged = os.path.join(work_dir, "tiles")
    try:
        pyramid = build_tile_pyramid(
            gcp_vrt, staged, transformer_options=spec.transformer_options, clip_wkt=clip_wkt,
            min_zoom=settings.tms_min_zoom, max_zoom_cap=settings.tms_max_zoom,
            layout=settings.tms_layout, processes=settings.tms_processes,
            title=raw_map.file_name, pool=ctx.tile_pool, should_stop=ctx.should_stop,
            scratch_dir=work_dir)
    except ValueError as exc:
        raise JobInputError(f"cannot cut tiles: {exc}") from None
    except (OSError, RuntimeError) as exc:
        raise ProcessingError("tiles", _describe_os_error(exc)) from exc
    ctx.products.replace(staged, final)
    ctx.logger.info("tiles built: zoom %d-%d, %d tiles, %.1f MB -> %s", pyramid.min_zoom,
                    pyramid.max_zoom, pyramid.tile_count, pyramid.byte_count / 1e6, final,
                    extra={"action": "tiles_done"})


def _describe_os_error(exc: BaseException) -> str:
    """Return an error's text, saying plainly when the disk is full."""
    text = str(exc)
    if getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in text:
        return f"disk full while writing: {text}"
    return text


def map_title(session, raw_map: RawMap) -> tuple[str, str]:
    """Return the catalogue title and description of a map, falling back to its file name."""
    record = session.get(Metadata, raw_map.id)
    title = (record.title or record.title_short) if record else None
    description = record.description if record else None
    return title or raw_map.file_name, description or ""


def stage_mapfile(ctx: JobContext, raw_map: RawMap, image_final_path: str,
                  image_current_path: str) -> None:
    """Write the map's WMS/WCS mapfile for the geo image and stage it.

    Args:
        image_final_path: where the geo image is published, which the mapfile names.
        image_current_path: where the geo image can be read now (staged or published).
    """
    from georeference.publish.mapfile import MapServiceSpec, read_image_spec, write_mapfile

    settings = ctx.settings
    final = paths.mapfile_path(settings.mapfile_root, raw_map.id)
    epsg, extent = read_image_spec(image_current_path)
    title, abstract = map_title(ctx.session, raw_map)
    url_values = dict(mapfile=final, map_id=raw_map.id, file_name=raw_map.file_name,
                      map_type=paths.map_type_folder(raw_map.map_type))
    spec = MapServiceSpec(
        raw_map_id=raw_map.id, layer_name=raw_map.file_name, title=title, abstract=abstract,
        image_path=image_final_path, epsg=epsg, extent=extent,
        allow_download=bool(raw_map.allow_download),
        wms_url=settings.url_wms.format(**url_values),
        wcs_url=settings.url_wcs.format(**url_values))
    staged = os.path.join(ctx.map_staging_dir(raw_map.id), f"{raw_map.id}.map")
    write_mapfile(spec, staged)
    ctx.products.replace(staged, final)
    ctx.logger.info("mapfile written -> %s", final, extra={"action": "mapfile_done"})


def update_search_document(ctx: JobContext, raw_map_id: int) -> None:
    """Bring the map's search document in line with the database state of this job.

    The embedded index is written in the job's transaction. An external index gets the
    update through the outbox once the job has committed (see ``queue_map_update``).
    """
    from georeference.publish.search import (DatabaseIndex, queue_map_update,
                                             update_map_document)

    ctx.session.flush()
    if isinstance(ctx.search_index, DatabaseIndex):
        update_map_document(ctx.session, ctx.settings, ctx.search_index, raw_map_id,
                            ctx.logger)
    else:
        queue_map_update(ctx.session, raw_map_id)
        ctx.search_updates_queued = True


def withdraw_products(ctx: JobContext, raw_map: RawMap) -> None:
    """Remove the map's geo image, tiles and mapfile when the job commits."""
    settings = ctx.settings
    for final in (paths.geo_image_path(settings.georef_root, raw_map.map_type, raw_map.file_name),
                  paths.tiles_path(settings.tms_root, raw_map.map_type, raw_map.file_name),
                  paths.mapfile_path(settings.mapfile_root, raw_map.id)):
        if os.path.lexists(final):
            ctx.products.remove(final)
