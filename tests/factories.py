"""Rows, scans and runs for the job tests: small helpers shared by several test modules."""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Sequence

import numpy as np
from osgeo import gdal
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from georeference.daemon.loop import JobLoop, RunSummary
from georeference.models import Job, JobHistory, Metadata, RawMap, Transformation
from georeference.publish.search import open_index
from georeference.settings import Settings
from tests.conftest import SAMPLE_SCAN

gdal.UseExceptions()

SYNTHETIC_WIDTH = 600
SYNTHETIC_HEIGHT = 500

# The synthetic scan's pixel corners and where they belong, in EPSG:4314 (lon, lat).
SYNTHETIC_CORNERS = (
    ((0, 0), (13.70, 51.10)),
    ((SYNTHETIC_WIDTH, 0), (13.76, 51.10)),
    ((SYNTHETIC_WIDTH, SYNTHETIC_HEIGHT), (13.76, 51.06)),
    ((0, SYNTHETIC_HEIGHT), (13.70, 51.06)),
)


def synthetic_pixels(width: int = SYNTHETIC_WIDTH, height: int = SYNTHETIC_HEIGHT) -> np.ndarray:
    """Return a (3, height, width) array: red grows to the right, green downwards, blue 200."""
    columns = np.arange(width, dtype=np.float64)
    rows = np.arange(height, dtype=np.float64)
    red = np.tile((columns * 250 / width).astype(np.uint8), (height, 1))
    green = np.tile((rows * 250 / height).astype(np.uint8)[:, None], (1, width))
    blue = np.full((height, width), 200, dtype=np.uint8)
    return np.stack([red, green, blue])


def write_synthetic_scan(path: str) -> None:
    """Write an ungeoreferenced RGB TIFF like a library scan, with a known colour ramp."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = synthetic_pixels()
    dataset = gdal.GetDriverByName("GTiff").Create(
        path, SYNTHETIC_WIDTH, SYNTHETIC_HEIGHT, 3, gdal.GDT_Byte, ["COMPRESS=DEFLATE"])
    for band in range(3):
        dataset.GetRasterBand(band + 1).WriteArray(pixels[band])
    dataset = None


def synthetic_params(algorithm: str = "affine", corners: Sequence = SYNTHETIC_CORNERS,
                     **extra: Any) -> str:
    """Return transformation params for the synthetic scan with GCPs at its corners."""
    gcps = [{"source": list(pixel), "target": list(target)} for pixel, target in corners]
    if algorithm != "affine":
        # A fifth point in the middle keeps polynomial and spline fits well defined.
        gcps.append({"source": [SYNTHETIC_WIDTH / 2, SYNTHETIC_HEIGHT / 2],
                     "target": [13.73, 51.08]})
    return json.dumps({"source": "pixel", "target": "EPSG:4314", "algorithm": algorithm,
                       "gcps": gcps, **extra})


def add_map(session: Session, settings: Settings, map_id: int = 10, file_name: str = "synthetic",
            map_type: str = "M", real_scan: bool = False, allow_download: bool = True,
            rel_path: str | None = None) -> RawMap:
    """Insert a raw map with metadata and put its scan below the image root."""
    rel_path = rel_path or f"scans/{file_name}.tif"
    scan = os.path.join(settings.image_root, rel_path)
    if real_scan:
        os.makedirs(os.path.dirname(scan), exist_ok=True)
        shutil.copyfile(SAMPLE_SCAN, scan)
    else:
        write_synthetic_scan(scan)
    raw_map = RawMap(id=map_id, file_name=file_name, enabled=True, map_type=map_type,
                     default_crs=4314, rel_path=rel_path, map_scale=25000,
                     allow_download=allow_download)
    session.add(raw_map)
    session.flush()
    session.add(Metadata(raw_map_id=map_id, title=f"Map {map_id}", title_short=f"M{map_id}",
                         type="Messtischblatt", technic="Lithografie", ppn=f"ppn{map_id}"))
    session.commit()
    return raw_map


def add_transformation(session: Session, raw_map_id: int, params: str,
                       validation: str = "missing", overwrites: int = 0,
                       clip: str | None = None, target_crs: int | None = None) -> int:
    transformation = Transformation(params=params, raw_map_id=raw_map_id, validation=validation,
                                    overwrites=overwrites, clip=clip, target_crs=target_crs,
                                    user_id="tester")
    session.add(transformation)
    session.commit()
    return transformation.id


def add_job(session: Session, job_type: str, description: Any) -> int:
    text = description if isinstance(description, str) or description is None \
        else json.dumps(description)
    job = Job(type=job_type, description=text, user_id="tester")
    session.add(job)
    session.commit()
    return job.id


def run_jobs(settings: Settings, engine: Engine) -> RunSummary:
    """Run every pending job once, the way ``georeference-runner run --once`` does."""
    loop = JobLoop(settings, engine, open_index(settings))
    loop.store.register()
    try:
        summary = loop.run_pending()
    finally:
        loop.close()
    loop.store.unregister()
    return summary


def job_row(session: Session, job_id: int) -> Job:
    session.expire_all()
    return session.get(Job, job_id)


def history_row(session: Session, job_id: int) -> JobHistory | None:
    session.expire_all()
    return session.scalars(select(JobHistory).where(JobHistory.id == job_id)).first()
