"""Measure the job loop's own cost per job: 1000 ``transformation_set_valid`` jobs on PostgreSQL.

Each job marks a transformation valid for a map that already has a ``georef_maps`` row, so
the handler does no GDAL work. What is timed is the queue (resolve, claim, lease, finish,
history row), the session and staging set-up per job, and the handler's two lookups. That is
the fixed cost every job pays before and after its real work.

A throwaway PostgreSQL + PostGIS cluster (``tests/pgcluster.py``) is started on 127.0.0.1,
a database with the vkdb schema is filled with 1000 raw maps, transformations, georef_maps
rows (all pointing to one small GeoTIFF) and 1000 queued jobs, and ONE real
``JobLoop.run_pending()`` runner processes them. Every repetition gets a fresh database
cloned from a filled template, so runs do not see each other's rows.

Usage (from the repository root):
    python_env/bin/python bench/bench_job_overhead.py --repeat 3 --write-readme

By default the cluster runs with PostgreSQL's own durability settings (fsync on,
synchronous_commit on), as a production vkdb does; ``--fast-commit`` uses the test suite's
settings (fsync, synchronous_commit and full_page_writes off), which show the runner's CPU
cost without the disk's flush latency.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from osgeo import gdal  # noqa: E402
from sqlalchemy import event, func, insert, select, text  # noqa: E402

from georeference.daemon.loop import JobLoop  # noqa: E402
from georeference.database import create_schema, make_engine  # noqa: E402
from georeference.models import GeorefMap, Job, JobHistory, RawMap, Transformation  # noqa: E402
from georeference.publish.search import open_index  # noqa: E402
from georeference.sample import sample_params  # noqa: E402
from georeference.settings import Settings, build_settings  # noqa: E402
from tests.pgcluster import PostgresCluster  # noqa: E402
from bench.bench_pipeline import source_state  # noqa: E402

gdal.UseExceptions()

TEMPLATE = "overhead_template"
FAKE_PRODUCT = "m/fake.tif"
"""The one small GeoTIFF every georef_maps row points to, relative to the georef root."""
README_START = "<!-- overhead:start -->"
README_END = "<!-- overhead:end -->"
TARGET_JOBS_PER_SECOND = 300.0


class BenchCluster(PostgresCluster):
    """The test suite's throwaway cluster, optionally with PostgreSQL's default durability."""

    def __init__(self, fast_commit: bool) -> None:
        super().__init__()
        self.fast_commit = fast_commit

    def start(self) -> None:
        """Start the server; without ``fast_commit`` every commit is flushed to disk."""
        if self.fast_commit:
            super().start()
            return
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   "-c max_connections=200")
        self._run(os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-o", options,
                  "-l", os.path.join(self.root, "server.log"), "-w", "-t", "60", "start")


@dataclass
class OverheadRun:
    """One pass of the runner over the queued jobs."""

    loop_start_seconds: float
    """Seconds to construct the JobLoop, mostly forking the encoder pool."""
    run_seconds: float
    """From the first run_pending() call until the last returned with nothing left."""
    passes: int
    """run_pending() calls that processed at least one job."""
    completed: int
    history_rows: int
    db_span_seconds: float
    """From the first job's ``started`` to the last job's ``finished``, as the database recorded it."""
    statements: int
    """SQL statements the runner sent during the run, plus its pool checkouts."""
    commits: int

    @property
    def jobs_per_second(self) -> float:
        return self.completed / self.run_seconds


def write_fake_product(georef_root: str) -> None:
    """Write a 64 x 64 RGBA GeoTIFF that the georef_maps rows name as their product."""
    path = os.path.join(georef_root, FAKE_PRODUCT)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    dataset = gdal.GetDriverByName("GTiff").Create(path, 64, 64, 4, gdal.GDT_Byte)
    dataset.SetGeoTransform((10.0, 0.001, 0.0, 48.9, 0.0, -0.001))
    dataset.SetProjection('GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],'
                          'PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433],AUTHORITY["EPSG","4326"]]')
    dataset = None


def fill_template(url: str, jobs: int) -> None:
    """Create the schema and insert ``jobs`` enabled maps, each with one queued set_valid job."""
    engine = make_engine(url)
    create_schema(engine)
    params = json.dumps(sample_params())
    extent = json.dumps({"type": "Polygon", "coordinates": [
        [[10.0, 48.8], [10.2, 48.8], [10.2, 48.9], [10.0, 48.9], [10.0, 48.8]]]})
    with engine.begin() as connection:
        connection.execute(insert(RawMap), [
            {"id": i, "file_name": f"map-{i}", "map_type": "M", "rel_path": f"m/map-{i}.tif",
             "default_crs": 4314, "allow_download": False, "enabled": True}
            for i in range(1, jobs + 1)])
        connection.execute(insert(Transformation), [
            {"id": i, "params": params, "raw_map_id": i, "validation": "missing", "overwrites": 0}
            for i in range(1, jobs + 1)])
        connection.execute(insert(GeorefMap), [
            {"raw_map_id": i, "transformation_id": i, "rel_path": FAKE_PRODUCT, "extent": extent}
            for i in range(1, jobs + 1)])
        connection.execute(insert(Job), [
            {"type": "transformation_set_valid",
             "description": json.dumps({"transformation_id": i, "comment": "fits"})}
            for i in range(1, jobs + 1)])
    engine.dispose()


def clone_database(admin_url: str, name: str) -> None:
    """Create database ``name`` from the filled template (dropping an older one)."""
    engine = make_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        connection.execute(text(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}"))
    engine.dispose()


def make_settings(url: str, root: str) -> Settings:
    """Settings whose product roots lie in the scratch folder."""
    return build_settings({
        "sqlalchemy.url": url,
        "georeference.image_root": os.path.join(root, "raw"),
        "georeference.georef_root": os.path.join(root, "georef"),
        "georeference.tms_root": os.path.join(root, "tms"),
        "georeference.mapfile_root": os.path.join(root, "mapfiles"),
        "georeference.tmp_root": os.path.join(root, "tmp"),
        "georeference.daemon.initialize_on_start": "false",
    }, root)


def run_once(url: str, root: str, jobs: int) -> OverheadRun:
    """Process the queue with one JobLoop and check that every job completed."""
    settings = make_settings(url, root)
    engine = make_engine(settings.database_url)
    counts = {"statements": 0, "commits": 0}

    def count_statement(*_args: object) -> None:
        counts["statements"] += 1

    def count_commit(*_args: object) -> None:
        counts["commits"] += 1

    constructed = time.perf_counter()
    loop = JobLoop(settings, engine, open_index(settings))
    # Counted from here, so schema checks at construction are left out. Pool checkouts
    # are counted too: with pool_pre_ping on, each would cost a round trip.
    event.listen(engine, "before_cursor_execute", count_statement)
    event.listen(engine, "commit", count_commit)
    event.listen(engine.pool, "checkout", count_statement)
    started = time.perf_counter()
    passes = 0
    try:
        while True:
            summary = loop.run_pending()
            done = len(summary.completed) + len(summary.failed) + len(summary.released)
            if done == 0:
                break
            passes += 1
            if summary.failed or summary.released:
                raise RuntimeError(f"jobs did not complete: failed {summary.failed[:5]}, "
                                   f"released {summary.released[:5]}")
        # The last, empty pass (a few queries that find nothing) is included, as a
        # daemon pays it too before it goes to sleep.
        run_seconds = time.perf_counter() - started
    finally:
        loop.close()
        event.remove(engine, "before_cursor_execute", count_statement)
        event.remove(engine, "commit", count_commit)
        event.remove(engine.pool, "checkout", count_statement)

    with engine.connect() as connection:
        completed = connection.scalar(
            select(func.count()).select_from(Job).where(Job.state == "completed"))
        history = connection.scalar(
            select(func.count()).select_from(JobHistory).where(JobHistory.state == "completed"))
        first_start, last_finish = connection.execute(
            select(func.min(Job.started), func.max(Job.finished))).one()
    engine.dispose()
    if completed != jobs or history != jobs:
        raise RuntimeError(f"expected {jobs} completed jobs, found {completed} "
                           f"({history} history rows)")
    return OverheadRun(started - constructed, run_seconds, passes, completed, history,
                       (last_finish - first_start).total_seconds(), counts["statements"],
                       counts["commits"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000, help="queued jobs (default 1000)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions on fresh databases (default 3)")
    parser.add_argument("--fast-commit", action="store_true",
                        help="fsync, synchronous_commit and full_page_writes off, as in the tests")
    parser.add_argument("--write-readme", action="store_true", help="write the results into bench/README.md")
    args = parser.parse_args(argv)

    root = tempfile.mkdtemp(prefix="bench-overhead-")
    cluster = BenchCluster(args.fast_commit)
    cluster.init()
    cluster.start()
    try:
        write_fake_product(os.path.join(root, "georef"))
        admin = make_engine(cluster.url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f"CREATE DATABASE {TEMPLATE}"))
            server_version = connection.scalar(text("SHOW server_version"))
            fsync = connection.scalar(text("SHOW fsync"))
            synchronous = connection.scalar(text("SHOW synchronous_commit"))
        admin.dispose()
        fill_template(cluster.url_for(TEMPLATE), args.jobs)

        runs = []
        for repetition in range(args.repeat):
            name = f"overhead_{repetition}"
            clone_database(cluster.url, name)
            run = run_once(cluster.url_for(name), root, args.jobs)
            runs.append(run)
            print(f"run {repetition + 1}: {run.completed} jobs in {run.run_seconds:.2f} s "
                  f"= {run.jobs_per_second:.0f} jobs/s over {run.passes} run_pending() passes; "
                  f"database span {run.db_span_seconds:.2f} s; JobLoop start {run.loop_start_seconds:.2f} s")
    finally:
        cluster.remove()
        shutil.rmtree(root, ignore_errors=True)

    median_seconds = statistics.median(run.run_seconds for run in runs)
    rate = args.jobs / median_seconds
    report = "\n".join([
        f"Machine: {platform.machine()}, {os.cpu_count()} cores; date {datetime.date.today().isoformat()}; "
        f"PostgreSQL {server_version} on 127.0.0.1 (fsync={fsync}, synchronous_commit={synchronous}); "
        f"{args.jobs} transformation_set_valid jobs, {args.repeat} repetitions on fresh databases; "
        f"{source_state()}.",
        "",
        "| figure | median | runs |",
        "|---|---|---|",
        f"| seconds from first run_pending() to the queue empty | {median_seconds:.2f} | "
        + ", ".join(f"{run.run_seconds:.2f}" for run in runs) + " |",
        f"| jobs per second (target >= {TARGET_JOBS_PER_SECOND:.0f}) | {rate:.0f} | "
        + ", ".join(f"{run.jobs_per_second:.0f}" for run in runs) + " |",
        f"| first started to last finished in the jobs table, s | "
        f"{statistics.median(run.db_span_seconds for run in runs):.2f} | "
        + ", ".join(f"{run.db_span_seconds:.2f}" for run in runs) + " |",
        f"| run_pending() passes that did work | {statistics.median(run.passes for run in runs):.0f} | "
        + ", ".join(str(run.passes) for run in runs) + " |",
        f"| round trips per job (statements + pool checkouts) | "
        f"{statistics.median(run.statements for run in runs) / args.jobs:.1f} | "
        + ", ".join(f"{run.statements / args.jobs:.1f}" for run in runs) + " |",
        f"| commits per job | {statistics.median(run.commits for run in runs) / args.jobs:.1f} | "
        + ", ".join(f"{run.commits / args.jobs:.1f}" for run in runs) + " |",
        f"| JobLoop construction, s (not in the rate) | "
        f"{statistics.median(run.loop_start_seconds for run in runs):.2f} | "
        + ", ".join(f"{run.loop_start_seconds:.2f}" for run in runs) + " |",
        "",
        f"All {args.jobs} jobs completed with a jobs_history row in every run. "
        f"Target {'met' if rate >= TARGET_JOBS_PER_SECOND else 'NOT met'}.",
    ])
    print()
    print(report)
    if args.write_readme:
        readme = Path(__file__).with_name("README.md")
        content = readme.read_text(encoding="utf-8")
        start = content.index(README_START) + len(README_START)
        end = content.index(README_END)
        readme.write_text(content[:start] + "\n" + report + "\n" + content[end:], encoding="utf-8")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
