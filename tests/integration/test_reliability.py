"""Faults the job queue must survive, tested with real runner processes, signals and files.

Each test starts ``georeference-runner`` as a process against a real database (mostly the
throwaway PostgreSQL cluster), breaks something (``kill -9``, a database restart, a full
disk, a time limit) and then checks the job rows, ``jobs_history`` and the published files.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import re
import signal
import subprocess
import time
import uuid
from typing import Iterator

import pytest
from osgeo import gdal
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from georeference.database import make_engine
from georeference.geo.tiles import TileBuildStopped, build_tile_pyramid
from georeference.models import GeorefMap, Job, JobHistory
from georeference.publish import paths
from tests.factories import (SYNTHETIC_CORNERS, SYNTHETIC_HEIGHT, SYNTHETIC_WIDTH, add_job,
                             add_map, add_transformation, run_jobs, synthetic_params)
from tests.integration.test_runner import (RUNNER, pid_alive, run, wait_for, write_ini,
                                           write_large_scan)

POSTGRESQL_ONLY = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)

# The large scan is this many times the synthetic one on a side, so its job takes seconds.
SCALE = 10


def corners(shift_lon: float = 0.0, scale: int = 1) -> tuple:
    """Return GCPs at the synthetic scan's corners, scaled in pixels and shifted east."""
    return tuple(((px * scale, py * scale), (lon + shift_lon, lat))
                 for (px, py), (lon, lat) in SYNTHETIC_CORNERS)


def gcp_bounds(gcps: tuple) -> tuple[float, float, float, float]:
    lons = [target[0] for _, target in gcps]
    lats = [target[1] for _, target in gcps]
    return min(lons), min(lats), max(lons), max(lats)


def tree_digest(folder: str) -> str:
    """Return one digest over every file's relative path and content below ``folder``."""
    digest = hashlib.sha256()
    for root, _dirs, files in sorted(os.walk(folder, followlinks=True)):
        for name in sorted(files):
            path = os.path.join(root, name)
            digest.update(os.path.relpath(path, folder).encode())
            with open(path, "rb") as handle:
                digest.update(hashlib.sha256(handle.read()).digest())
    return digest.hexdigest()


def file_digest(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def products(settings, map_id: int = 10, file_name: str = "synthetic") -> dict[str, str]:
    """Return digests of a map's published GeoTIFF, tiles and mapfile (absent: no key)."""
    found = {}
    image = paths.geo_image_path(settings.georef_root, "M", file_name)
    tiles = paths.tiles_path(settings.tms_root, "M", file_name)
    mapfile = paths.mapfile_path(settings.mapfile_root, map_id)
    if os.path.isfile(image):
        found["image"] = file_digest(image)
    if os.path.isdir(tiles):
        found["tiles"] = tree_digest(tiles)
    if os.path.isfile(mapfile):
        found["mapfile"] = file_digest(mapfile)
    return found


def image_bounds(settings, file_name: str = "synthetic") -> tuple[float, float, float, float]:
    dataset = gdal.Open(paths.geo_image_path(settings.georef_root, "M", file_name))
    x0, dx, _, y0, _, dy = dataset.GetGeoTransform()
    return x0, y0 + dy * dataset.RasterYSize, x0 + dx * dataset.RasterXSize, y0


def tile_bounds(settings, file_name: str = "synthetic") -> tuple[float, ...]:
    folder = paths.tiles_path(settings.tms_root, "M", file_name)
    with open(os.path.join(folder, "tilemapresource.xml"), encoding="utf-8") as handle:
        match = re.search(r'<BoundingBox minx="([^"]+)" miny="([^"]+)" maxx="([^"]+)" '
                          r'maxy="([^"]+)"', handle.read())
    assert match is not None
    return tuple(float(value) for value in match.groups())


def assert_products_from(settings, gcps: tuple) -> None:
    """Check the GeoTIFF and the tiles cover the extent of these GCPs (affine, corners)."""
    expected = gcp_bounds(gcps)
    assert image_bounds(settings) == pytest.approx(expected, abs=1e-3)
    # The tiles are in WGS84, the GCPs in DHDN (EPSG:4314): about 0.002 degrees apart here.
    assert tile_bounds(settings) == pytest.approx(expected, abs=5e-3)


def staged_tiles(settings) -> list[str]:
    return glob.glob(os.path.join(settings.tmp_root, "job-*", "*", "tiles", "*", "*", "*.png"))


def scratch_entries(settings) -> list[str]:
    return os.listdir(settings.tmp_root) if os.path.isdir(settings.tmp_root) else []


def job(engine, job_id: int) -> Job:
    with Session(engine) as session:
        return session.get(Job, job_id)


def history(engine, job_id: int) -> list[JobHistory]:
    with Session(engine) as session:
        return list(session.scalars(select(JobHistory).where(JobHistory.id == job_id)))


def queue(engine, job_type: str, **description) -> int:
    with Session(engine) as session:
        return add_job(session, job_type, description)


def start(ini: str) -> int:
    started = run(RUNNER, "--config", ini, "start")
    assert started.returncode == 0, started.stderr
    return int(started.stdout.split("pid")[-1])


def kill_9(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid))


def read_log(ini: str) -> str:
    with open(os.path.join(os.path.dirname(ini), "log", "runner.log"), encoding="utf-8") as log:
        return log.read()


@pytest.fixture
def runners() -> Iterator[list[int]]:
    """Pids of runners a test started; any still alive at the end are killed."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def publish_a_then_queue_b(engine, settings, ini: str) -> tuple[dict, int, tuple, tuple]:
    """Publish the map with transformation A, then queue a slow job for transformation B.

    A is made from the small synthetic scan; the scan is then replaced by one SCALE times
    larger and B's GCPs are scaled to it and shifted east, so B's job runs for seconds and
    its products differ from A's in extent and content.
    """
    gcps_a = corners()
    gcps_b = corners(shift_lon=0.02, scale=SCALE)
    with Session(engine) as session:
        add_map(session, settings)
        transformation_a = add_transformation(session, 10, synthetic_params(corners=gcps_a))
    queue(engine, "transformation_process", transformation_id=transformation_a)
    done = run(RUNNER, "--config", ini, "run", "--once")
    assert done.returncode == 0, done.stderr
    assert_products_from(settings, gcps_a)
    products_a = products(settings)
    assert set(products_a) == {"image", "tiles", "mapfile"}

    write_large_scan(os.path.join(settings.image_root, "scans", "synthetic.tif"),
                     SYNTHETIC_WIDTH * SCALE, SYNTHETIC_HEIGHT * SCALE)
    with Session(engine) as session:
        transformation_b = add_transformation(session, 10, synthetic_params(corners=gcps_b))
    job_b = queue(engine, "transformation_process", transformation_id=transformation_b)
    return products_a, job_b, gcps_a, gcps_b


def georef_transformation(engine, map_id: int = 10) -> int | None:
    with Session(engine) as session:
        row = session.get(GeorefMap, map_id)
        return row.transformation_id if row is not None else None


def add_large_map(engine, settings) -> int:
    """Add map 10 with a scan scaled up so its job runs for seconds; return its transformation."""
    with Session(engine) as session:
        add_map(session, settings)
    write_large_scan(os.path.join(settings.image_root, "scans", "synthetic.tif"),
                     SYNTHETIC_WIDTH * SCALE, SYNTHETIC_HEIGHT * SCALE)
    with Session(engine) as session:
        return add_transformation(session, 10, synthetic_params(corners=corners(scale=SCALE)))


# -- 1. kill -9 in the middle of a transformation_process -----------------------------------

@POSTGRESQL_ONLY
def test_kill_9_mid_job_keeps_old_products(settings, engine, tmp_path,
                                                               runners):
    ini = write_ini(tmp_path / "runner.ini", settings,
                    **{"georeference.job.lease_seconds": "5"})
    products_a, job_b, gcps_a, gcps_b = publish_a_then_queue_b(engine, settings, ini)
    transformation_a = georef_transformation(engine)

    pid = start(ini)
    runners.append(pid)
    wait_for(lambda: staged_tiles(settings), timeout=120, interval=0.05)
    kill_9(pid)

    # The dead runner left its half-built products in scratch; the published ones are A's.
    assert job(engine, job_b).state == "running"
    assert staged_tiles(settings)
    assert products(settings) == products_a
    assert georef_transformation(engine) == transformation_a
    assert_products_from(settings, gcps_a)

    pid = start(ini)
    runners.append(pid)
    wait_for(lambda: job(engine, job_b).state == "completed", timeout=300)
    finished = job(engine, job_b)
    assert finished.attempts == 2
    assert [row.state for row in history(engine, job_b)] == ["completed"]
    assert georef_transformation(engine) != transformation_a
    assert_products_from(settings, gcps_b)
    products_b = products(settings)
    assert set(products_b) == {"image", "tiles", "mapfile"}
    assert all(products_b[key] != products_a[key] for key in products_a)
    # Scratch is emptied, and no earlier tile version is left beside the published one.
    wait_for(lambda: scratch_entries(settings) == [])
    tms_folder = os.path.dirname(paths.tiles_path(settings.tms_root, "M", "synthetic"))
    assert len(os.listdir(tms_folder)) == 2  # the link and the one version it points to
    assert run(RUNNER, "--config", ini, "stop").returncode == 0


# -- 2 and 3. the database goes away while a job runs; transient vs bad input --------------

@POSTGRESQL_ONLY
@pytest.mark.parametrize("outage", ["restart", "terminate"])
def test_database_outage_mid_job_is_retried(settings, engine, tmp_path, runners, pg_cluster,
                                            outage):
    # A poll interval of 10 minutes: only LISTEN/NOTIFY and the retry timer can wake the
    # runner, so the test also shows both survive the outage.
    ini = write_ini(tmp_path / "runner.ini", settings,
                    **{"georeference.daemon.sleep_time": "600"})
    transformation_id = add_large_map(engine, settings)
    pid = start(ini)
    runners.append(pid)
    job_id = queue(engine, "transformation_process", transformation_id=transformation_id)
    wait_for(lambda: staged_tiles(settings), timeout=120, interval=0.05)

    database = engine.url.database
    engine.dispose()
    if outage == "restart":
        pg_cluster.restart()
    else:
        admin = make_engine(pg_cluster.url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            killed = connection.execute(text(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = :name AND pid <> pg_backend_pid()"), {"name": database}).scalar()
        admin.dispose()
        assert killed >= 1

    # The runner gives the job back with a retry delay instead of failing or completing it.
    released = wait_for(lambda: (row := job(engine, job_id)).state == "not_started" and row,
                        timeout=120, interval=0.05)
    assert released.comment.startswith("transient error, retry in 5 s")
    assert released.claimed_by is None
    assert released.retries == 1
    assert released.attempts == 0
    assert history(engine, job_id) == []

    wait_for(lambda: job(engine, job_id).state == "completed", timeout=300)
    assert pid_alive(pid)
    # The release gave the claim back: only the completing claim counts as an attempt.
    assert job(engine, job_id).attempts == 1
    assert job(engine, job_id).retries == 1
    assert [row.state for row in history(engine, job_id)] == ["completed"]
    assert_products_from(settings, corners(scale=SCALE))
    wait_for(lambda: scratch_entries(settings) == [])

    # Bad input on the same runner fails once, with its message, and is not retried.
    with Session(engine) as session:
        bad = add_transformation(session, 10, synthetic_params(
            corners=((( 90000, 12), (13.70, 51.10)),) + corners(scale=SCALE)[1:]))
    bad_job = queue(engine, "transformation_process", transformation_id=bad)
    wait_for(lambda: job(engine, bad_job).state == "failed", timeout=60)
    failed = job(engine, bad_job)
    assert failed.attempts == 1
    assert "pixel (90000, 12) lies outside the scan of 6000 x 5000 pixels" in failed.comment
    assert [row.state for row in history(engine, bad_job)] == ["failed"]
    assert pid_alive(pid)
    log = read_log(ini)
    assert f"job={job_id} map=10 released after" in log
    assert f"job={job_id} map=10 completed" in log
    assert run(RUNNER, "--config", ini, "stop").returncode == 0


# -- 4. disk full while tiling ---------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path) -> Iterator[str]:
    """A 48 MiB tmpfs; the test is skipped where mounting is not allowed."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield str(folder)
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@POSTGRESQL_ONLY
def test_disk_full_fails_job_keeps_products(settings, engine, tmp_path,
                                                                 small_disk):
    # Every root on the small disk, as in production where they share one file system.
    roots = {key: os.path.join(small_disk, name) for key, name in (
        ("georeference.georef_root", "georef"), ("georeference.tms_root", "tms"),
        ("georeference.mapfile_root", "mapfiles"), ("georeference.tmp_root", "tmp"))}
    settings = dataclasses.replace(
        settings, georef_root=roots["georeference.georef_root"],
        tms_root=roots["georeference.tms_root"], mapfile_root=roots["georeference.mapfile_root"],
        tmp_root=roots["georeference.tmp_root"])
    ini = write_ini(tmp_path / "runner.ini", settings, **roots,
                    **{"georeference.tms.max_zoom": "12"})
    products_a, job_b, gcps_a, _ = publish_a_then_queue_b(engine, settings, ini)

    # Leave 2 MiB free: enough to start B, far too little for its zoom 17 tiles.
    write_ini(tmp_path / "runner.ini", settings, **roots, **{"georeference.tms.max_zoom": "17"})
    stats = os.statvfs(small_disk)
    filler = os.path.join(small_disk, "filler")
    with open(filler, "wb") as handle:
        handle.write(b"\0" * (stats.f_bavail * stats.f_frsize - 2 * 1024 * 1024))

    result = run(RUNNER, "--config", ini, "run", "--once", timeout=300)
    assert result.returncode == 1, result.stderr
    failed = job(engine, job_b)
    assert failed.state == "failed"
    assert failed.attempts == 1
    assert "disk full" in failed.comment
    assert [row.state for row in history(engine, job_b)] == ["failed"]
    assert products(settings) == products_a
    assert_products_from(settings, gcps_a)
    assert scratch_entries(settings) == []
    # The staged tiles were removed, so the space is back.
    assert os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize > 1024 * 1024


# -- 5. a job past its time limit -----------------------------------------------------------

@POSTGRESQL_ONLY
def test_job_past_time_limit_fails(settings, engine, tmp_path):
    ini = write_ini(tmp_path / "runner.ini", settings,
                    **{"georeference.job.time_limit": "1", "georeference.tms.max_zoom": "17"})
    transformation_id = add_large_map(engine, settings)
    job_id = queue(engine, "transformation_process", transformation_id=transformation_id)

    result = run(RUNNER, "--config", ini, "run", "--once", timeout=300)
    assert result.returncode == 1, result.stderr
    failed = job(engine, job_id)
    assert failed.state == "failed"
    assert failed.attempts == 1
    assert failed.comment.startswith(
        "stopped: the job ran past its time limit of 1 s (georeference.job.time_limit)")
    assert products(settings) == {}
    assert georef_transformation(engine) is None
    assert scratch_entries(settings) == []


def test_tile_builder_stops_between_strips(tmp_path):
    """``should_stop`` ends a build after the strip during which it turned True."""
    source = str(tmp_path / "scan.tif")
    write_large_scan(source, 3000, 2500)
    dataset = gdal.Open(source, gdal.GA_Update)
    gcps = [gdal.GCP(lon, lat, 0, px * 5, py * 5) for (px, py), (lon, lat) in SYNTHETIC_CORNERS]
    from osgeo import osr
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4314)
    dataset.SetGCPs(gcps, srs.ExportToWkt())
    dataset = None

    polls = []

    def stop_after_three() -> bool:
        polls.append(time.monotonic())
        return len(polls) > 3

    with pytest.raises(TileBuildStopped, match="stopped at row"):
        build_tile_pyramid(source, str(tmp_path / "tiles"), max_zoom=16, processes=1,
                           should_stop=stop_after_three)
    assert len(polls) == 4
    full = build_tile_pyramid(source, str(tmp_path / "full"), max_zoom=16, processes=1)
    written = glob.glob(str(tmp_path / "tiles" / "16" / "*" / "*.png"))
    assert 0 < len(written) < len(glob.glob(str(tmp_path / "full" / "16" / "*" / "*.png")))
    assert not os.path.exists(tmp_path / "tiles" / "tilemapresource.xml")
    assert full.tile_count > len(written)


# -- 6. several runners on one PostgreSQL ---------------------------------------------------

@POSTGRESQL_ONLY
def test_parallel_runners_once_in_map_order(settings, engine, tmp_path, runners):
    maps = (11, 12, 13, 14)
    jobs_per_map = 3
    transformations: dict[int, list[int]] = {}
    with Session(engine) as session:
        for map_id in maps:
            add_map(session, settings, map_id=map_id, file_name=f"map{map_id}")
            transformations[map_id] = [
                add_transformation(session, map_id,
                                   synthetic_params(corners=corners(shift_lon=0.01 * k)))
                for k in range(jobs_per_map)]
    inis = []
    for index in range(3):
        folder = tmp_path / f"runner{index}"
        folder.mkdir()
        inis.append(write_ini(folder / "runner.ini", settings, **{
            "georeference.daemon.pidfile": str(folder / "runner.pid"),
            "georeference.tms.processes": "1"}))
        runners.append(start(inis[-1]))

    status = wait_for(lambda: (out := run(RUNNER, "--config", inis[0], "status").stdout)
                      and "live runners: 3" in out and out)
    assert status.count(" idle, heartbeat") == 3

    # Submitted round-robin across maps, so each map's jobs interleave with others.
    job_ids: dict[int, list[int]] = {map_id: [] for map_id in maps}
    for k in range(jobs_per_map):
        for map_id in maps:
            job_ids[map_id].append(queue(engine, "transformation_process",
                                         transformation_id=transformations[map_id][k]))
    busy = wait_for(lambda: (out := run(RUNNER, "--config", inis[0], "status").stdout)
                    and re.search(r"pid \d+: job \d+ \(transformation_process, map 1\d\)", out))
    assert busy

    all_ids = [job_id for ids in job_ids.values() for job_id in ids]
    wait_for(lambda: all(job(engine, job_id).state == "completed" for job_id in all_ids),
             timeout=300)
    rows = {job_id: job(engine, job_id) for job_id in all_ids}
    for job_id in all_ids:
        assert rows[job_id].attempts == 1
        assert [row.state for row in history(engine, job_id)] == ["completed"]
    for map_id, ids in job_ids.items():
        runs = [(rows[job_id].started, rows[job_id].finished) for job_id in ids]
        for (_, finished), (started, _) in zip(runs, runs[1:]):
            assert finished <= started, f"map {map_id}: jobs overlap or ran out of order"
        assert georef_transformation(engine, map_id) == transformations[map_id][-1]
    overlapping = sum(
        1 for a in all_ids for b in all_ids
        if rows[a].raw_map_id != rows[b].raw_map_id and a < b
        and rows[a].started < rows[b].finished and rows[b].started < rows[a].finished)
    assert overlapping > 0, "no two maps were processed at the same time"
    assert len({rows[job_id].claimed_by for job_id in all_ids}) >= 2
    for ini in inis:
        assert run(RUNNER, "--config", ini, "stop").returncode == 0
    status = run(RUNNER, "--config", inis[0], "status").stdout
    assert "live runners: 0" in status


# -- 7. a job whose runner keeps dying ------------------------------------------------------

def test_runner_died_max_attempts_fails_job(settings, engine, tmp_path, runners):
    ini = write_ini(tmp_path / "runner.ini", settings,
                    **{"georeference.job.lease_seconds": "5",
                       "georeference.job.max_attempts": "3"})
    transformation_id = add_large_map(engine, settings)
    job_id = queue(engine, "transformation_process", transformation_id=transformation_id)

    for attempt in (1, 2, 3):
        pid = start(ini)
        runners.append(pid)
        wait_for(lambda: job(engine, job_id).attempts == attempt and staged_tiles(settings),
                 timeout=120, interval=0.05)
        kill_9(pid)

    pid = start(ini)
    runners.append(pid)
    wait_for(lambda: job(engine, job_id).state == "failed", timeout=60)
    failed = job(engine, job_id)
    assert failed.attempts == 3
    assert failed.comment == ("the runner died 3 times while running this job (limit 3); "
                              "it is not tried again")
    assert [row.state for row in history(engine, job_id)] == ["failed"]
    assert products(settings) == {}
    wait_for(lambda: scratch_entries(settings) == [])
    assert f"job={job_id} failed: its runner died 3 times" in read_log(ini)
    assert run(RUNNER, "--config", ini, "stop").returncode == 0


# -- a commit whose reply, or the COMMIT itself, is lost -------------------------------------

@POSTGRESQL_ONLY
@pytest.mark.parametrize("lost", ["reply", "commit", "reply and database"])
def test_commit_cut_off_keeps_products_consistent(settings, engine, pg_cluster, lost):
    """The connection breaks at a job's COMMIT: the products must match what the database has.

    If the server committed and only its reply was lost, the new products stay. Restoring
    the old ones, as after a failed commit, would leave them under a georef_maps row that
    the database has already switched. If the COMMIT never arrived, the old ones come back
    and the job is given back to the queue.
    """
    from georeference.daemon.loop import JobLoop
    from georeference.publish.search import open_index
    from tests.commit_reply_dropper import CommitReplyDropper

    with Session(engine) as session:
        add_map(session, settings)
        first = add_transformation(session, 10, synthetic_params(corners=corners()))
    queue(engine, "transformation_process", transformation_id=first)
    assert run_jobs(settings, engine).failed == []
    with Session(engine) as session:
        second = add_transformation(session, 10, synthetic_params(corners=corners(0.02)))
    job_id = queue(engine, "transformation_process", transformation_id=second)

    dropper = CommitReplyDropper(pg_cluster.port)

    class CutAtCommit(JobLoop):
        def _commit(self, ctx, claimed):
            dropper.arm(deliver_commit=lost != "commit", then_close_all=lost == "reply and database")
            return super()._commit(ctx, claimed)

    relayed = make_engine(engine.url.set(port=dropper.port))
    loop = CutAtCommit(settings, relayed, open_index(settings))
    try:
        if lost == "reply and database":
            # The pass ends at its next claim, which finds no database. The daemon's loop
            # logs that and polls again.
            with pytest.raises(OperationalError):
                loop.run_pending()
        else:
            summary = loop.run_pending()
    finally:
        loop.close()
        relayed.dispose()
        dropper.close()

    assert dropper.dropped == 1
    if lost == "reply and database":
        # The runner cannot find out whether the commit went through, so the new products
        # stay. They are right, as it did. Had it not, the job would run again.
        assert job(engine, job_id).state == "completed"
        assert georef_transformation(engine) == second
        assert_products_from(settings, corners(0.02))
    elif lost == "reply":
        assert summary.completed == [job_id]
        assert job(engine, job_id).state == "completed"
        assert [row.state for row in history(engine, job_id)] == ["completed"]
        assert georef_transformation(engine) == second
        assert_products_from(settings, corners(0.02))
    else:
        assert summary.released == [job_id]
        assert job(engine, job_id).state == "not_started"
        assert history(engine, job_id) == []
        assert georef_transformation(engine) == first
        assert_products_from(settings, corners())
    assert scratch_entries(settings) == []
