"""Product paths built from database values, checked to stay inside their configured roots."""

from __future__ import annotations

import os

from georeference.errors import PathOutsideRootError


def safe_join(root: str, *parts: str) -> str:
    """Join path parts below ``root`` and return the absolute path.

    Raises:
        PathOutsideRootError: a part is empty, absolute, contains a NUL byte, or the result
            would resolve (following symbolic links) to a place outside ``root``.
    """
    for part in parts:
        if not isinstance(part, str) or part.strip() == "" or "\x00" in part:
            raise PathOutsideRootError(f"invalid path part {part!r} below {root}")
        if os.path.isabs(part):
            raise PathOutsideRootError(f"path {part!r} must be relative to {root}")

    real_root = os.path.realpath(root)
    candidate = os.path.realpath(os.path.join(real_root, *parts))
    if os.path.commonpath([real_root, candidate]) != real_root or candidate == real_root:
        raise PathOutsideRootError(
            f"path {os.path.join(*parts)!r} leaves its root {root}")
    return os.path.join(os.path.abspath(root), *parts)


def map_type_folder(map_type: str) -> str:
    """Return the folder name for a map type: its lower-case form."""
    return map_type.strip().lower()


def scan_path(image_root: str, rel_path: str) -> str:
    """Return the raw scan's path for ``raw_maps.rel_path``."""
    return safe_join(image_root, rel_path)


def geo_image_rel_path(map_type: str, file_name: str) -> str:
    """Return ``georef_maps.rel_path`` for a map: ``<map_type lower>/<file_name>.tif``."""
    return f"{map_type_folder(map_type)}/{file_name}.tif"


def geo_image_path(georef_root: str, map_type: str, file_name: str) -> str:
    """Return the absolute path of a map's geo image below ``georef_root``."""
    return safe_join(georef_root, map_type_folder(map_type), f"{file_name}.tif")


def tiles_path(tms_root: str, map_type: str, file_name: str) -> str:
    """Return the folder of a map's tile pyramid below ``tms_root``."""
    return safe_join(tms_root, map_type_folder(map_type), file_name)


def mapfile_path(mapfile_root: str, raw_map_id: int) -> str:
    """Return the path of a map's mapfile below ``mapfile_root``."""
    return safe_join(mapfile_root, f"{int(raw_map_id)}.map")
