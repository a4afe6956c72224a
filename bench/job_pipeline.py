"""The whole ``transformation_process`` job on a scan, as a NEW path for ``bench_pipeline.py``.

Run with ``--new-callable bench.job_pipeline:run_transformation_job``: the child process
creates an SQLite vkdb in a scratch folder, queues the job and runs it through the job loop,
so the time covers the geo image with overviews, the tiles, the mapfile, the search document
and the database work. The tile pyramid is then moved to ``output_dir`` for the comparison.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from sqlalchemy.orm import Session

from georeference.daemon.loop import JobLoop
from georeference.database import create_schema, make_engine
from georeference.models import Job, Metadata, RawMap, Transformation
from georeference.publish.search import open_index
from georeference.settings import build_settings


def run_transformation_job(scan_path: str, gcps: list, gcp_srs: str, output_dir: str,
                           min_zoom: int | None, max_zoom: int | None) -> str:
    """Run one transformation_process job on the scan; return the tile folder."""
    work = tempfile.mkdtemp(prefix="job-", dir=os.path.dirname(output_dir))
    image_root = os.path.join(work, "raw")
    os.makedirs(image_root)
    # A copy, not a link: scan paths must resolve inside the image root.
    shutil.copyfile(scan_path, os.path.join(image_root, "scan.tif"))
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
    settings = build_settings(config, work)
    engine = make_engine(settings.database_url)
    create_schema(engine)

    params = {"source": "pixel", "target": gcp_srs, "algorithm": "affine",
              "gcps": [{"source": list(pixel), "target": list(lonlat)} for pixel, lonlat in gcps]}
    with Session(engine) as session:
        session.add(RawMap(id=1, file_name="scan", map_type="M", rel_path="scan.tif",
                           default_crs=4314, allow_download=True))
        session.flush()
        session.add(Metadata(raw_map_id=1, title="benchmark scan"))
        session.add(Transformation(id=1, params=json.dumps(params), raw_map_id=1))
        session.flush()
        session.add(Job(type="transformation_process", description='{"transformation_id": 1}'))
        session.commit()

    loop = JobLoop(settings, engine, open_index(settings))
    try:
        summary = loop.run_pending()
    finally:
        loop.close()
    if summary.completed != [1]:
        raise RuntimeError(f"the benchmark job did not complete: {summary}")
    tiles = os.path.realpath(os.path.join(settings.tms_root, "m", "scan"))
    shutil.move(tiles, output_dir)
    return output_dir
