"""Soak test: three runner processes on one PostgreSQL, killed with SIGKILL while they work.

Queues mixed jobs (process, set valid, set invalid) over many maps with small synthetic
scans, runs three ``georeference-runner run`` processes, kills a random one every few
seconds and starts it again, and stops when every job is final or the time is up. Then it
audits:

- every job ended ``completed`` or ``failed``, with one ``jobs_history`` row (lost jobs);
- from the runner logs (one per runner, with pids and timestamps), no job ended twice and
  no two runs of one job, or of two jobs of one map, overlapped (duplicates), and each
  map's jobs ran in submission order; a run cut by a kill ends at the kill;
- each map's published products match ``georef_maps.transformation_id``: the GeoTIFF's
  and the tiles' extent equal the extent of that transformation's GCPs, the mapfile names
  the GeoTIFF; a map without a row has no products.

    python_env/bin/python bench/bench_soak.py [--jobs 500] [--maps 50] [--minutes 15]
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from osgeo import gdal  # noqa: E402
from sqlalchemy import select  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from bench.bench_pickup import bench_settings, start_cluster  # noqa: E402
from georeference.database import make_engine  # noqa: E402
from georeference.models import GeorefMap, Job, JobHistory, Transformation  # noqa: E402
from georeference.publish import paths  # noqa: E402
from tests.factories import SYNTHETIC_CORNERS, add_map, synthetic_params  # noqa: E402
from tests.integration.test_runner import RUNNER, write_ini  # noqa: E402

RUNNERS = 3
LOG_LINE = re.compile(r"^(\d+\.\d+) (\d+) .*?job=(\d+) map=\S+ "
                      r"(started|completed in|failed after|released after)")
SHIFTS = (0.0, 0.01, 0.02)


@dataclass
class Run:
    """One run of a job in one runner process, from its log."""

    job_id: int
    pid: int
    start: float
    end: float | None = None
    outcome: str | None = None


def make_ini(workdir: str, settings, index: int) -> str:
    folder = os.path.join(workdir, f"runner{index}")
    os.makedirs(folder, exist_ok=True)
    path = write_ini(os.path.join(folder, "runner.ini"), settings, **{
        "georeference.daemon.pidfile": os.path.join(folder, "runner.pid"),
        "georeference.daemon.sleep_time": "2",
        "georeference.job.lease_seconds": "5",
        "georeference.tms.max_zoom": "13",
        "georeference.tms.processes": "1"})
    with open(path, encoding="utf-8") as ini:
        content = ini.read()
    # Epoch seconds and the pid on each line, so runs can be placed on one time line.
    content = content.replace("format = %(asctime)s %(levelname)s",
                              "format = %(created).3f %(process)d %(levelname)s")
    with open(path, "w", encoding="utf-8") as ini:
        ini.write(content)
    return path


def queue_jobs(engine, settings, maps: int, jobs: int, rng: random.Random,
               initialize_every: int = 0) -> dict[int, list[int]]:
    """Create the maps and their transformations, queue the jobs; return transformations.

    With ``initialize_every``, an ``initialize_data`` job follows every that many jobs.
    """
    transformations: dict[int, list[int]] = {}
    with Session(engine) as session:
        for map_id in range(1, maps + 1):
            add_map(session, settings, map_id=map_id, file_name=f"map{map_id}")
            rows = []
            for shift in SHIFTS:
                gcps = tuple(((px, py), (lon + shift, lat))
                             for (px, py), (lon, lat) in SYNTHETIC_CORNERS)
                rows.append(Transformation(params=synthetic_params(corners=gcps),
                                           raw_map_id=map_id, validation="missing",
                                           overwrites=0, user_id="soak"))
            session.add_all(rows)
            session.flush()
            transformations[map_id] = [row.id for row in rows]
        session.commit()
    with Session(engine) as session:
        for number in range(1, jobs + 1):
            map_id = rng.randint(1, maps)
            transformation_id = rng.choice(transformations[map_id])
            kind = rng.random()
            if kind < 0.7:
                job_type, description = "transformation_process", {
                    "transformation_id": transformation_id}
            elif kind < 0.85:
                job_type, description = "transformation_set_valid", {
                    "transformation_id": transformation_id, "comment": "soak"}
            else:
                job_type, description = "transformation_set_invalid", {
                    "transformation_id": transformation_id, "comment": "soak"}
            session.add(Job(type=job_type, description=json.dumps(description), user_id="soak"))
            session.commit()
            if initialize_every and number % initialize_every == 0:
                session.add(Job(type="initialize_data", description="{}", user_id="soak"))
                session.commit()
    return transformations


def read_runs(workdir: str, kills: dict[int, float], stopped_at: float) -> list[Run]:
    """Rebuild every job run from the runner logs; an unfinished run ends at its kill."""
    runs: list[Run] = []
    open_runs: dict[int, Run] = {}
    lines = []
    for index in range(RUNNERS):
        log = os.path.join(workdir, f"runner{index}", "log", "runner.log")
        if os.path.exists(log):
            with open(log, encoding="utf-8") as handle:
                lines.extend(handle)
    for line in sorted(lines, key=lambda value: float(value.split(" ", 1)[0])):
        match = LOG_LINE.match(line)
        if match is None:
            continue
        stamp, pid, job_id, event = float(match[1]), int(match[2]), int(match[3]), match[4]
        if event == "started":
            run = Run(job_id, pid, stamp)
            open_runs[pid] = run
            runs.append(run)
        elif pid in open_runs:
            run = open_runs.pop(pid)
            run.end, run.outcome = stamp, event.split()[0]
    for pid, run in open_runs.items():
        run.end = kills.get(pid, stopped_at)
        run.outcome = "killed" if pid in kills else "unfinished"
    return runs


def overlaps(a: Run, b: Run) -> bool:
    return a.start < (b.end or 0) and b.start < (a.end or 0)


def audit_products(engine, settings, transformations: dict[int, list[int]]) -> list[str]:
    """Return one line per map whose published products disagree with georef_maps."""
    problems = []
    with Session(engine) as session:
        rows = {row.raw_map_id: row.transformation_id for row in session.scalars(select(GeorefMap))}
        params = {t.id: json.loads(t.params) for t in session.scalars(select(Transformation))}
    for map_id in transformations:
        name = f"map{map_id}"
        image = paths.geo_image_path(settings.georef_root, "M", name)
        tiles = paths.tiles_path(settings.tms_root, "M", name)
        mapfile = paths.mapfile_path(settings.mapfile_root, map_id)
        present = [os.path.exists(path) for path in (image, tiles, mapfile)]
        if map_id not in rows:
            if any(present):
                problems.append(f"map {map_id}: withdrawn but products remain")
            continue
        if not all(present):
            problems.append(f"map {map_id}: products missing {present}")
            continue
        gcps = params[rows[map_id]]["gcps"]
        lons = [gcp["target"][0] for gcp in gcps]
        lats = [gcp["target"][1] for gcp in gcps]
        expected = (min(lons), min(lats), max(lons), max(lats))
        dataset = gdal.Open(image)
        x0, dx, _, y0, _, dy = dataset.GetGeoTransform()
        found = (x0, y0 + dy * dataset.RasterYSize, x0 + dx * dataset.RasterXSize, y0)
        if any(abs(a - b) > 1e-3 for a, b in zip(found, expected)):
            problems.append(f"map {map_id}: GeoTIFF extent {found} is not transformation "
                            f"{rows[map_id]}'s {expected}")
        with open(os.path.join(tiles, "tilemapresource.xml"), encoding="utf-8") as handle:
            box = re.search(r'<BoundingBox minx="([^"]+)" miny="([^"]+)" maxx="([^"]+)" '
                            r'maxy="([^"]+)"', handle.read())
        tile_box = tuple(float(value) for value in box.groups()) if box else ()
        if len(tile_box) != 4 or any(abs(a - b) > 5e-3 for a, b in zip(tile_box, expected)):
            problems.append(f"map {map_id}: tile extent {tile_box} is not transformation "
                            f"{rows[map_id]}'s {expected}")
        with open(mapfile, encoding="utf-8") as handle:
            if image not in handle.read():
                problems.append(f"map {map_id}: mapfile does not name {image}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--maps", type=int, default=50)
    parser.add_argument("--minutes", type=float, default=15.0,
                        help="stop after this long even if jobs remain (default: %(default)s)")
    parser.add_argument("--kill-every", type=float, default=2.0,
                        help="mean seconds between kills (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--initialize-every", type=int, default=0,
                        help="queue an initialize_data job after every N jobs (default: none)")
    args = parser.parse_args()
    rng = random.Random(args.seed)

    cluster, url = start_cluster()
    workdir = tempfile.mkdtemp(prefix="bench-soak-")
    settings = bench_settings(url, workdir)
    engine = make_engine(url)
    inis = [make_ini(workdir, settings, index) for index in range(RUNNERS)]
    processes: list[subprocess.Popen | None] = [None] * RUNNERS
    kills: dict[int, float] = {}
    try:
        transformations = queue_jobs(engine, settings, args.maps, args.jobs, rng,
                                     args.initialize_every)
        began = time.monotonic()
        for index in range(RUNNERS):
            processes[index] = subprocess.Popen([RUNNER, "--config", inis[index], "run"],
                                                stderr=subprocess.DEVNULL)
        deadline = began + args.minutes * 60
        next_kill = time.monotonic() + rng.expovariate(1 / args.kill_every)
        while time.monotonic() < deadline:
            with Session(engine) as session:
                pending = session.query(Job).filter(
                    Job.state.in_(("not_started", "running"))).count()
            if pending == 0:
                break
            if time.monotonic() >= next_kill:
                index = rng.randrange(RUNNERS)
                victim = processes[index]
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                kills[victim.pid] = time.time()
                processes[index] = subprocess.Popen(
                    [RUNNER, "--config", inis[index], "run"], stderr=subprocess.DEVNULL)
                next_kill = time.monotonic() + rng.expovariate(1 / args.kill_every)
            time.sleep(0.2)
        wall = time.monotonic() - began
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=600)
        stopped_at = time.time()

        with Session(engine) as session:
            jobs = list(session.scalars(select(Job).order_by(Job.id)))
            history = collections.Counter(
                session.scalars(select(JobHistory.id)).all())
        states = collections.Counter(job.state for job in jobs)
        lost = [job.id for job in jobs
                if job.state not in ("completed", "failed") or history[job.id] != 1]

        runs = read_runs(workdir, kills, stopped_at)
        # A run's outcome is logged after its commit, so another runner may start the
        # map's next job before that line; the final run ends at jobs.finished instead,
        # which is set before the commit.
        finished = {job.id: job.finished.replace(tzinfo=dt.timezone.utc).timestamp()
                    for job in jobs if job.finished is not None}
        for run in runs:
            if run.outcome in ("completed", "failed") and run.job_id in finished:
                run.end = min(run.end or finished[run.job_id], finished[run.job_id])
        by_job: dict[int, list[Run]] = collections.defaultdict(list)
        for run in runs:
            by_job[run.job_id].append(run)
        double_end = [job_id for job_id, items in by_job.items()
                      if sum(run.outcome in ("completed", "failed") for run in items) > 1]
        concurrent = [job_id for job_id, items in by_job.items()
                      if any(overlaps(a, b) for i, a in enumerate(items) for b in items[i + 1:])]
        map_of = {job.id: job.raw_map_id for job in jobs}
        order_errors = []
        by_map: dict[int, list[Run]] = collections.defaultdict(list)
        for run in runs:
            by_map[map_of.get(run.job_id) or 0].append(run)
        for map_id, items in by_map.items():
            if map_id == 0:
                continue
            items.sort(key=lambda run: run.start)
            for a, b in zip(items, items[1:]):
                if a.job_id != b.job_id and overlaps(a, b):
                    order_errors.append(f"map {map_id}: jobs {a.job_id} and {b.job_id} overlap")
                if b.job_id < a.job_id:
                    order_errors.append(f"map {map_id}: job {b.job_id} ran after {a.job_id}")
        # initialize_data runs alone: no run of another job may overlap one of its runs.
        initialize_ids = {job.id for job in jobs if job.type == "initialize_data"}
        barrier_errors = [f"initialize_data job {a.job_id} overlaps job {b.job_id}"
                          for a in runs if a.job_id in initialize_ids
                          for b in runs if b.job_id != a.job_id and overlaps(a, b)]
        died = sum(1 for job in jobs if job.comment and "the runner died" in job.comment)
        product_problems = audit_products(engine, settings, transformations)
        leftover = os.listdir(settings.tmp_root) if os.path.isdir(settings.tmp_root) else []

        print(f"soak: {len(jobs)} jobs over {args.maps} maps, {RUNNERS} runners, "
              f"wall time {wall:.0f} s")
        print(f"  final states: {dict(states)}; failed because the runner died 3 times: {died}")
        reasons = collections.Counter(
            re.sub(r"\d+", "N", job.comment.split(";")[0]) for job in jobs if job.state == "failed")
        for reason, count in reasons.most_common(5):
            print(f"    failed {count}x: {reason[:100]}")
        print(f"  kills: {len(kills)}; runs: {len(runs)} "
              f"({sum(run.outcome == 'killed' for run in runs)} cut by a kill, "
              f"{sum(run.outcome == 'released' for run in runs)} released)")
        print(f"  duplicates: {len(double_end)} jobs finished twice, "
              f"{len(concurrent)} jobs ran twice at once")
        print(f"  per-map order violations: {len(order_errors)}")
        print(f"  initialize_data jobs: {len(initialize_ids)}; runs overlapping one: "
              f"{len(barrier_errors)}")
        print(f"  lost jobs (not final or history rows != 1): {len(lost)}")
        print(f"  maps whose products disagree with georef_maps: {len(product_problems)}")
        print(f"  scratch entries left: {len(leftover)}")
        for line in (order_errors + barrier_errors + product_problems)[:10]:
            print(f"    {line}")
        ok = not (lost or double_end or concurrent or order_errors or barrier_errors
                  or product_problems)
        return 0 if ok else 1
    finally:
        for process in processes:
            if process is not None and process.poll() is None:
                process.kill()
        engine.dispose()
        cluster.remove()


if __name__ == "__main__":
    sys.exit(main())
