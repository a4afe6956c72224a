"""``transformation_process``: enable a transformation for its raw map.

Description: ``{"transformation_id": N}``.
"""

from __future__ import annotations

from georeference.jobs.context import JobContext
from georeference.jobs.georeferencing import enable_transformation, load_transformation


def run(ctx: JobContext) -> None:
    """Warp the map with transformation N and publish it in place of what was there."""
    transformation = load_transformation(ctx, ctx.transformation_id())
    enable_transformation(ctx, transformation)
