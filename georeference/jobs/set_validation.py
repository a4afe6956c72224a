"""``transformation_set_valid`` and ``transformation_set_invalid``: record a review.

Description: ``{"transformation_id": N, "comment": "…"}``.
"""

from __future__ import annotations

from georeference.errors import JobInputError
from georeference.jobs.context import JobContext
from georeference.jobs.georeferencing import (enable_transformation, load_raw_map,
                                              load_transformation_and_product, withdraw_map)
from georeference.models import Transformation


def _record_review(ctx: JobContext, transformation: Transformation, validation: str) -> None:
    comment = ctx.description.get("comment")
    if comment is not None and not isinstance(comment, str):
        raise JobInputError(f"job description has a non-text comment {comment!r}")
    transformation.validation = validation
    if comment is not None:
        transformation.comment = comment
    ctx.logger.info("transformation %d marked %s", transformation.id, validation,
                    extra={"action": "reviewed"})


def run_set_valid(ctx: JobContext) -> None:
    """Mark transformation N valid; enable it if its map has no georeferenced product yet."""
    transformation, georef_map = load_transformation_and_product(ctx, ctx.transformation_id())
    _record_review(ctx, transformation, "valid")

    if georef_map is None:
        enable_transformation(ctx, transformation)


def find_fallback(ctx: JobContext, transformation: Transformation) -> Transformation | None:
    """Walk the ``overwrites`` chain back to the nearest valid or unreviewed transformation."""
    seen = {transformation.id}
    candidate_id = transformation.overwrites
    while candidate_id and candidate_id not in seen:
        seen.add(candidate_id)
        candidate = ctx.session.get(Transformation, candidate_id)
        if candidate is None or candidate.raw_map_id != transformation.raw_map_id:
            return None
        if candidate.validation in ("valid", "missing"):
            return candidate
        candidate_id = candidate.overwrites
    return None


def run_set_invalid(ctx: JobContext) -> None:
    """Mark transformation N invalid; if it is in use, fall back or withdraw the map."""
    transformation, georef_map = load_transformation_and_product(ctx, ctx.transformation_id())
    _record_review(ctx, transformation, "invalid")

    if georef_map is None or georef_map.transformation_id != transformation.id:
        return

    fallback = find_fallback(ctx, transformation)
    if fallback is not None:
        ctx.logger.info("falling back to transformation %d", fallback.id,
                        extra={"action": "fallback"})
        enable_transformation(ctx, fallback)
    else:
        withdraw_map(ctx, load_raw_map(ctx, transformation.raw_map_id))
