"""The whole ``transformation_process`` job on a scan, as a NEW path for ``bench_pipeline.py``.

``bench_pipeline.py`` runs it as its job path (``--job-callable``). The child process creates an
SQLite vkdb in a scratch folder, queues the job and runs it through the real job loop, as a
daemon does. The time covers the geo image with overviews, the tiles, the mapfile, the search
document and the database work. The tile pyramid is then moved to ``output_dir`` for the comparison.

Besides the tile folder it returns the job's own duration, timed around
``JobLoop.run_pending()`` only (interpreter start-up, imports, schema set-up, the copy of
the scan and the encoder pool's fork are outside it), and when each step of the job
finished, read from the job's log records.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from georeference.daemon.loop import JobLoop
from georeference.database import create_schema, make_engine
from georeference.models import Job, Metadata, RawMap, Transformation
from georeference.publish.search import open_index
from georeference.settings import build_settings

# Log actions whose first record marks the end of a step of the job, in the order shown.
STEP_ACTIONS = ("residuals", "tiles_done", "warp_done", "mapfile_done", "enabled", "job_done")


class StepRecorder(logging.Handler):
    """Keep the time of the first log record of each job action and the geo image's phases."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.times: dict[str, float] = {}
        self.geo_image_phases: tuple[float, ...] = ()

    def emit(self, record: logging.LogRecord) -> None:
        action = getattr(record, "action", None)
        if action is not None and action not in self.times:
            self.times[action] = record.created
        if record.name == "georeference.geo.warp" and record.msg.startswith("geo image: warp"):
            # warp.write_geo_image logs (warp, overviews, COG copy) seconds at DEBUG.
            self.geo_image_phases = tuple(float(value) for value in record.args)


def _install_recorder() -> StepRecorder:
    """Attach a recorder to the package's loggers without printing their INFO lines."""
    for handler in logging.getLogger().handlers:
        handler.setLevel(max(handler.level, logging.WARNING))
    recorder = StepRecorder()
    package_logger = logging.getLogger("georeference")
    package_logger.setLevel(logging.INFO)
    package_logger.addHandler(recorder)
    logging.getLogger("georeference.geo.warp").setLevel(logging.DEBUG)
    return recorder


def run_transformation_job(scan_path: str, gcps: Sequence[Any], gcp_srs: str, output_dir: str,
                           min_zoom: int | None, max_zoom: int | None) -> dict[str, Any]:
    """Run one transformation_process job on the scan; return its tile folder and timings."""
    recorder = _install_recorder()
    work = tempfile.mkdtemp(prefix="job-", dir=os.path.dirname(output_dir))
    image_root = os.path.join(work, "raw")
    os.makedirs(image_root)
    # A copy, not a link: scan paths must resolve inside the image root.
    scan_name = "scan" + os.path.splitext(scan_path)[1]
    shutil.copyfile(scan_path, os.path.join(image_root, scan_name))
    config = {
        "sqlalchemy.url": f"sqlite:///{work}/vkdb.sqlite",
        "georeference.image_root": image_root,
        "georeference.georef_root": os.path.join(work, "georef"),
        "georeference.tms_root": os.path.join(work, "tms"),
        "georeference.mapfile_root": os.path.join(work, "mapfiles"),
        "georeference.tmp_root": os.path.join(work, "tmp"),
    }
    if min_zoom is not None:
        config["georeference.tms.min_zoom"] = str(min_zoom)
    if max_zoom is not None:
        config["georeference.tms.max_zoom"] = str(max_zoom)
    # bench_pipeline.py --geotiff-compression passes the choice down to this child.
    compression = os.environ.get("BENCH_GEOTIFF_COMPRESSION")
    if compression:
        config["georeference.geotiff.compression"] = compression
    settings = build_settings(config, work)
    engine = make_engine(settings.database_url)
    create_schema(engine)

    params = {"source": "pixel", "target": gcp_srs, "algorithm": "affine",
              "gcps": [{"source": list(pixel), "target": list(lonlat)} for pixel, lonlat in gcps]}
    with Session(engine) as session:
        session.add(RawMap(id=1, file_name="scan", map_type="M", rel_path=scan_name,
                           default_crs=4314, allow_download=True))
        session.flush()
        session.add(Metadata(raw_map_id=1, title="benchmark scan"))
        session.add(Transformation(id=1, params=json.dumps(params), raw_map_id=1))
        session.flush()
        session.add(Job(type="transformation_process", description='{"transformation_id": 1}'))
        session.commit()

    loop = JobLoop(settings, engine, open_index(settings))
    try:
        started_wall = time.time()
        started = time.perf_counter()
        summary = loop.run_pending()
        job_seconds = time.perf_counter() - started
    finally:
        loop.close()
    if summary.completed != [1]:
        raise RuntimeError(f"the benchmark job did not complete: {summary}")

    geo_image = os.path.join(settings.georef_root, "m", "scan.tif")
    tiles = os.path.realpath(os.path.join(settings.tms_root, "m", "scan"))
    shutil.move(tiles, output_dir)
    steps = {action: recorder.times[action] - started_wall
             for action in STEP_ACTIONS if action in recorder.times}
    result = {
        "tile_dir": output_dir,
        "job_seconds": job_seconds,
        "steps": steps,
        "geo_image_phases": list(recorder.geo_image_phases),
        "geo_image_bytes": os.path.getsize(geo_image),
        "mapfile_bytes": sum(entry.stat().st_size for entry in os.scandir(settings.mapfile_root)),
    }
    engine.dispose()
    shutil.rmtree(work, ignore_errors=True)
    return result
