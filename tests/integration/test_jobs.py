"""The job types end to end on a small synthetic scan, on SQLite and on PostgreSQL."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil

import numpy as np
import pytest
from osgeo import gdal, osr
from sqlalchemy import event, func, select, update

from georeference.daemon.loop import JobLoop
from georeference.models import GeorefMap, Job, Transformation, utcnow
from georeference.publish.search import get_document
from tests.factories import (SYNTHETIC_CORNERS, add_job, add_map, add_transformation,
                             history_row, job_row, run_jobs, synthetic_params)

gdal.UseExceptions()


def _products(settings, map_type="m", file_name="synthetic", map_id=10):
    return {
        "image": os.path.join(settings.georef_root, map_type, f"{file_name}.tif"),
        "tiles": os.path.join(settings.tms_root, map_type, file_name),
        "mapfile": os.path.join(settings.mapfile_root, f"{map_id}.map"),
    }


def _digest(path):
    with open(path, "rb") as product:
        return hashlib.sha256(product.read()).hexdigest()


def _process(session, settings, engine, transformation_id):
    job_id = add_job(session, "transformation_process", {"transformation_id": transformation_id})
    run_jobs(settings, engine)
    return job_row(session, job_id)


def test_process_publishes_every_product(settings, engine, session_factory):
    with session_factory() as session:
        add_map(session, settings)
        transformation_id = add_transformation(session, 10, synthetic_params())
        job = _process(session, settings, engine, transformation_id)

        assert job.state == "completed", job.comment
        assert "GCP residuals RMS" in job.comment
        history = history_row(session, job.id)
        assert history is not None
        assert history.state == "completed"

        products = _products(settings)
        image = gdal.Open(products["image"])
        assert image.RasterCount == 4
        assert image.GetRasterBand(4).GetColorInterpretation() == gdal.GCI_AlphaBand
        srs = osr.SpatialReference(wkt=image.GetProjection())
        assert srs.GetAuthorityCode(None) == "4314"
        assert image.GetRasterBand(1).GetOverviewCount() >= 1
        assert image.GetMetadata("IMAGE_STRUCTURE").get("COMPRESSION") == "DEFLATE"

        origin_x, pixel_x, _, origin_y, _, pixel_y = image.GetGeoTransform()
        assert origin_x == pytest.approx(13.70, abs=abs(pixel_x))
        assert origin_y == pytest.approx(51.10, abs=abs(pixel_y))
        assert origin_x + pixel_x * image.RasterXSize == pytest.approx(13.76, abs=abs(pixel_x))
        assert origin_y + pixel_y * image.RasterYSize == pytest.approx(51.06, abs=abs(pixel_y))

        assert os.path.isfile(os.path.join(products["tiles"], "tilemapresource.xml"))
        with open(products["mapfile"], encoding="utf-8") as mapfile:
            assert products["image"] in mapfile.read()

        georef_map = session.get(GeorefMap, 10)
        assert georef_map.transformation_id == transformation_id
        assert georef_map.rel_path == "m/synthetic.tif"
        assert georef_map.last_processed is not None
        extent = json.loads(georef_map.extent)
        lons = [point[0] for point in extent["coordinates"][0]]
        lats = [point[1] for point in extent["coordinates"][0]]
        # EPSG:4314 -> 4326 near Dresden shifts by about 0.001-0.002 degrees.
        assert min(lons) == pytest.approx(13.70, abs=0.005)
        assert max(lons) == pytest.approx(13.76, abs=0.005)
        assert min(lats) == pytest.approx(51.06, abs=0.005)
        assert max(lats) == pytest.approx(51.10, abs=0.005)

        document = get_document(session, 10)
        assert document["has_georeference"] is True
        assert document["geometry"]["type"] == "Polygon"

    leftovers = os.listdir(settings.tmp_root)
    assert leftovers == []


def test_process_maps_pixels_to_their_place(settings, engine, session_factory):
    with session_factory() as session:
        add_map(session, settings)
        transformation_id = add_transformation(session, 10, synthetic_params())
        job = _process(session, settings, engine, transformation_id)
        assert job.state == "completed", job.comment

    image = gdal.Open(_products(settings)["image"])
    origin_x, pixel_x, _, origin_y, _, pixel_y = image.GetGeoTransform()
    # The scan pixel (450, 100) lies at 3/4 of the width and 1/5 of the height.
    lon = 13.70 + 0.06 * 450 / 600
    lat = 51.10 - 0.04 * 100 / 500
    column = int((lon - origin_x) / pixel_x)
    row = int((lat - origin_y) / pixel_y)
    red, green, blue, alpha = (int(image.GetRasterBand(b).ReadAsArray(column, row, 1, 1)[0, 0])
                               for b in range(1, 5))
    assert red == pytest.approx(450 * 250 / 600, abs=4)
    assert green == pytest.approx(100 * 250 / 500, abs=4)
    assert blue == 200
    assert alpha == 255


def test_clip_makes_outside_transparent(settings, engine, session_factory):
    triangle = {"type": "Polygon", "coordinates": [[
        [13.70, 51.06], [13.76, 51.06], [13.70, 51.10], [13.70, 51.06]]]}
    with session_factory() as session:
        add_map(session, settings)
        transformation_id = add_transformation(session, 10, synthetic_params(),
                                               clip=json.dumps(triangle))
        job = _process(session, settings, engine, transformation_id)
        assert job.state == "completed", job.comment

    image = gdal.Open(_products(settings)["image"])
    alpha = image.GetRasterBand(4).ReadAsArray()
    height, width = alpha.shape
    # The triangle covers the lower left half: lower left corner inside, upper right outside.
    assert alpha[height - 5, 5] == 255
    assert alpha[5, width - 5] == 0
    assert 0.35 < (alpha == 255).mean() < 0.65


@pytest.mark.parametrize("algorithm", ["polynom", "tps"])
def test_other_algorithms_publish(settings, engine, session_factory, algorithm):
    with session_factory() as session:
        add_map(session, settings)
        transformation_id = add_transformation(session, 10, synthetic_params(algorithm))
        job = _process(session, settings, engine, transformation_id)
        assert job.state == "completed", job.comment

    image = gdal.Open(_products(settings)["image"])
    origin_x, pixel_x, _, origin_y, _, _ = image.GetGeoTransform()
    assert origin_x == pytest.approx(13.70, abs=2 * abs(pixel_x))
    alpha = image.GetRasterBand(4).ReadAsArray()
    assert alpha[alpha.shape[0] // 2, alpha.shape[1] // 2] == 255


def test_target_crs_reprojects_the_map(settings, engine, session_factory):
    with session_factory() as session:
        add_map(session, settings)
        transformation_id = add_transformation(session, 10, synthetic_params(), target_crs=25833)
        job = _process(session, settings, engine, transformation_id)
        assert job.state == "completed", job.comment
        extent = json.loads(session.get(GeorefMap, 10).extent)

    image = gdal.Open(_products(settings)["image"])
    srs = osr.SpatialReference(wkt=image.GetProjection())
    assert srs.GetAuthorityCode(None) == "25833"
    origin_x, pixel_x, _, origin_y, _, _ = image.GetGeoTransform()
    # UTM 33N eastings near 13.7 E, 51.1 N are about 409 km, northings about 5662 km.
    assert 400_000 < origin_x < 420_000
    assert 5_650_000 < origin_y < 5_670_000
    lons = [point[0] for point in extent["coordinates"][0]]
    assert min(lons) == pytest.approx(13.70, abs=0.01)


def test_set_valid_enables_unpublished_map(settings, engine, session_factory):
    with session_factory() as session:
        add_map(session, settings)
        transformation_id = add_transformation(session, 10, synthetic_params())
        job_id = add_job(session, "transformation_set_valid",
                         {"transformation_id": transformation_id, "comment": "looks right"})
        run_jobs(settings, engine)

        assert job_row(session, job_id).state == "completed"
        transformation = session.get(Transformation, transformation_id)
        assert transformation.validation == "valid"
        assert transformation.comment == "looks right"
        assert session.get(GeorefMap, 10).transformation_id == transformation_id
    assert os.path.isfile(_products(settings)["image"])


def test_set_invalid_falls_back(settings, engine, session_factory):
    with session_factory() as session:
        add_map(session, settings)
        first = add_transformation(session, 10, synthetic_params(), validation="valid")
        assert _process(session, settings, engine, first).state == "completed"
        first_digest = _digest(_products(settings)["image"])

        shifted = [(pixel, (lon + 0.01, lat)) for pixel, (lon, lat) in SYNTHETIC_CORNERS]
        second = add_transformation(session, 10, synthetic_params(corners=shifted),
                                    overwrites=first)
        assert _process(session, settings, engine, second).state == "completed"
        assert session.get(GeorefMap, 10).transformation_id == second
        assert _digest(_products(settings)["image"]) != first_digest

        job_id = add_job(session, "transformation_set_invalid",
                         {"transformation_id": second, "comment": "shifted east"})
        run_jobs(settings, engine)
        assert job_row(session, job_id).state == "completed"
        session.expire_all()
        assert session.get(Transformation, second).validation == "invalid"
        assert session.get(GeorefMap, 10).transformation_id == first

    image = gdal.Open(_products(settings)["image"])
    assert image.GetGeoTransform()[0] == pytest.approx(13.70, abs=1e-3)


def test_fallback_skips_invalid_in_chain(settings, engine, session_factory):
    with session_factory() as session:
        add_map(session, settings)
        first = add_transformation(session, 10, synthetic_params(), validation="missing")
        middle = add_transformation(session, 10, synthetic_params(), validation="invalid",
                                    overwrites=first)
        last = add_transformation(session, 10, synthetic_params(), overwrites=middle)
        assert _process(session, settings, engine, last).state == "completed"

        add_job(session, "transformation_set_invalid", {"transformation_id": last})
        run_jobs(settings, engine)
        session.expire_all()
        assert session.get(GeorefMap, 10).transformation_id == first


def test_set_invalid_withdraws_last_map(settings, engine, session_factory):
    with session_factory() as session:
        add_map(session, settings)
        only = add_transformation(session, 10, synthetic_params())
        assert _process(session, settings, engine, only).state == "completed"
        products = _products(settings)
        assert all(os.path.lexists(path) for path in products.values())

        job_id = add_job(session, "transformation_set_invalid", {"transformation_id": only})
        run_jobs(settings, engine)
        assert job_row(session, job_id).state == "completed"
        session.expire_all()
        assert session.get(GeorefMap, 10) is None
        document = get_document(session, 10)
        assert document["has_georeference"] is False
        assert document["geometry"] is None

    for path in products.values():
        assert not os.path.lexists(path), path
    tile_folder = os.path.dirname(products["tiles"])
    assert os.listdir(tile_folder) == []


def test_set_invalid_unused_keeps_products(settings, engine, session_factory):
    with session_factory() as session:
        add_map(session, settings)
        used = add_transformation(session, 10, synthetic_params())
        unused = add_transformation(session, 10, synthetic_params())
        assert _process(session, settings, engine, used).state == "completed"
        digest = _digest(_products(settings)["image"])

        add_job(session, "transformation_set_invalid", {"transformation_id": unused})
        run_jobs(settings, engine)
        session.expire_all()
        assert session.get(Transformation, unused).validation == "invalid"
        assert session.get(GeorefMap, 10).transformation_id == used
    assert _digest(_products(settings)["image"]) == digest


def test_initialize_data_makes_missing_products(settings, engine, session_factory, caplog):
    from georeference.logconfig import install_job_prefix

    previous_factory = logging.getLogRecordFactory()
    install_job_prefix()
    caplog.set_level(logging.INFO, logger="georeference")
    try:
        _initialize_missing_products(settings, engine, session_factory, caplog)
    finally:
        logging.setLogRecordFactory(previous_factory)


def _initialize_missing_products(settings, engine, session_factory, caplog):
    with session_factory() as session:
        add_map(session, settings)
        transformation_id = add_transformation(session, 10, synthetic_params())
        assert _process(session, settings, engine, transformation_id).state == "completed"
        products = _products(settings)
        image_mtime = os.stat(products["image"]).st_mtime_ns
        os.unlink(products["tiles"]) if os.path.islink(products["tiles"]) else \
            shutil.rmtree(products["tiles"])
        os.unlink(products["mapfile"])

        job_id = add_job(session, "initialize_data", {})
        caplog.clear()
        run_jobs(settings, engine)
        job = job_row(session, job_id)
        assert job.state == "completed", job.comment
        assert "rebuilt 1 search documents" in job.comment

    # The tile module's lines carry the job and the map initialize_data was working on.
    tile_lines = [record.getMessage() for record in caplog.records
                  if record.name == "georeference.geo.tiles"]
    assert tile_lines
    assert all(line.startswith(f"job={job_id} map=10 ") for line in tile_lines)
    assert os.stat(products["image"]).st_mtime_ns == image_mtime
    assert os.path.isfile(os.path.join(products["tiles"], "tilemapresource.xml"))
    assert os.path.isfile(products["mapfile"])


def test_initialize_data_remakes_geo_image(settings, engine, session_factory):
    with session_factory() as session:
        add_map(session, settings)
        transformation_id = add_transformation(session, 10, synthetic_params())
        assert _process(session, settings, engine, transformation_id).state == "completed"
        products = _products(settings)
        mapfile_mtime = os.stat(products["mapfile"]).st_mtime_ns
        os.unlink(products["image"])

        add_job(session, "initialize_data", {})
        run_jobs(settings, engine)

    image = gdal.Open(products["image"])
    assert image.RasterCount == 4
    assert os.stat(products["mapfile"]).st_mtime_ns == mapfile_mtime


def test_jobs_of_one_run_keep_order(settings, engine, session_factory):
    with session_factory() as session:
        add_map(session, settings)
        transformation_id = add_transformation(session, 10, synthetic_params())
        process_id = add_job(session, "transformation_process",
                             {"transformation_id": transformation_id})
        invalid_id = add_job(session, "transformation_set_invalid",
                             {"transformation_id": transformation_id})
        summary = run_jobs(settings, engine)

        assert summary.completed == [process_id, invalid_id]
        session.expire_all()
        assert session.get(GeorefMap, 10) is None
    assert not os.path.exists(_products(settings)["image"])


def test_finish_claims_next_job(settings, engine, session_factory):
    """Each further job in a pass costs one commit: its claim rides on the previous outcome.

    Failed jobs hand on the claim too. The pass with three jobs commits exactly twice more
    than the pass with one, whatever the pass does before its first claim.
    """
    commits: list[int] = []
    event.listen(engine, "commit", lambda *_: commits.append(1))
    with session_factory() as session:
        add_map(session, settings)
        first = add_transformation(session, 10, synthetic_params())
        second = add_transformation(session, 10, synthetic_params())

        alone = add_job(session, "transformation_set_invalid", {"transformation_id": first})
        commits.clear()
        assert run_jobs(settings, engine).completed == [alone]
        one_job_commits = len(commits)

        jobs = [add_job(session, "transformation_set_invalid", {"transformation_id": first}),
                add_job(session, "transformation_set_invalid", {"transformation_id": 9999}),
                add_job(session, "transformation_set_valid", {"transformation_id": second})]
        commits.clear()
        summary = run_jobs(settings, engine)
        three_job_commits = len(commits)

        assert (summary.completed, summary.failed) == ([jobs[0], jobs[2]], [jobs[1]])
        assert three_job_commits - one_job_commits == 2
        session.expire_all()
        for job_id in jobs:
            row = job_row(session, job_id)
            history = history_row(session, job_id)
            assert history is not None and (history.state, history.started) == (row.state, row.started)
        assert job_row(session, jobs[1]).comment == "transformation 9999 does not exist"
        assert session.get(Transformation, second).validation == "valid"


def test_pass_resolves_whole_queue(settings, engine, session_factory):
    """Jobs beyond the first RESOLVE_BATCH get their map key in the same pass, not the next poll."""
    from georeference.daemon.store import RESOLVE_BATCH

    count = RESOLVE_BATCH + 3
    with session_factory() as session:
        session.add_all(Job(type="transformation_set_invalid", user_id="tester",
                            description=json.dumps({"transformation_id": 100000 + index}))
                        for index in range(count))
        session.commit()

    summary = run_jobs(settings, engine)
    assert len(summary.failed) == count
    assert not summary.completed
    with session_factory() as session:
        states = session.execute(select(Job.state, func.count()).group_by(Job.state)).all()
        assert states == [("failed", count)]


class _StopAfterFollowingClaim(JobLoop):
    """A runner whose stop request arrives just after a finishing commit claimed the next job.

    The window between the last stop check and the commit is a few milliseconds wide, so the
    stop is requested there on purpose. Everything else is the real loop and database.
    """

    def _claim_following(self, session):
        following = super()._claim_following(session)
        self.request_stop()
        return following


def test_stop_returns_claimed_next_job(settings, engine, session_factory):
    with session_factory() as session:
        add_map(session, settings)
        transformation_id = add_transformation(session, 10, synthetic_params())
        first = add_job(session, "transformation_set_invalid", {"transformation_id": transformation_id})
        second = add_job(session, "transformation_set_invalid", {"transformation_id": transformation_id})

    loop = _StopAfterFollowingClaim(settings, engine, None)
    try:
        summary = loop.run_pending()
    finally:
        loop.close()

    assert summary.completed == [first]
    with session_factory() as session:
        queued = job_row(session, second)
        assert queued.state == "not_started"
        assert queued.claimed_by is None
        assert queued.attempts == 0
        assert queued.retries == 0
    # A runner that is not stopping takes it as a first attempt.
    assert run_jobs(settings, engine).completed == [second]
    with session_factory() as session:
        assert job_row(session, second).attempts == 1


def test_unclaim_only_own_running_job(settings, engine, session_factory):
    from georeference.daemon.store import JobStore

    with session_factory() as session:
        add_map(session, settings)
        transformation_id = add_transformation(session, 10, synthetic_params())
        job_id = add_job(session, "transformation_set_valid", {"transformation_id": transformation_id})
    mine = JobStore(engine, "host:1:aaaa", "host", 1, 60.0)
    other = JobStore(engine, "host:2:bbbb", "host", 2, 60.0)
    mine.resolve_map_ids()

    assert mine.claim_next(3).id == job_id
    assert other.unclaim(job_id) is False
    assert mine.unclaim(job_id) is True
    assert mine.unclaim(job_id) is False
    with session_factory() as session:
        row = job_row(session, job_id)
        assert (row.state, row.claimed_by, row.attempts, row.started) == ("not_started", None, 0, None)
    assert other.claim_next(3).attempts == 1


def test_exhausted_job_fails_in_same_pass(settings, engine, session_factory):
    """A job whose runner died max_attempts times is failed at once, not at the next poll."""
    with session_factory() as session:
        add_map(session, settings)
        transformation_id = add_transformation(session, 10, synthetic_params())
        job_id = add_job(session, "transformation_set_valid", {"transformation_id": transformation_id})
        session.execute(update(Job).where(Job.id == job_id).values(
            state="running", claimed_by="dead-host:1:dead", raw_map_id=10,
            attempts=settings.max_attempts, lease_expires=utcnow() - dt.timedelta(seconds=5)))
        session.commit()

    summary = run_jobs(settings, engine)

    assert summary.failed == [job_id]
    with session_factory() as session:
        row = job_row(session, job_id)
        assert row.state == "failed"
        assert row.comment.startswith(f"the runner died {settings.max_attempts} times")
        assert history_row(session, job_id).state == "failed"


def test_initialize_data_runs_alone(settings, engine, session_factory):
    """initialize_data waits for every older job, and every newer job waits for it.

    Without that, it could read a map as enabled while a newer set_invalid job withdraws
    the map, and then install the map's products again at its own commit.
    """
    from georeference.daemon.store import JobStore

    with session_factory() as session:
        add_map(session, settings)
        transformation_id = add_transformation(session, 10, synthetic_params())
        older = add_job(session, "transformation_set_valid", {"transformation_id": transformation_id})
        initialize = add_job(session, "initialize_data", {})
        newer = add_job(session, "transformation_set_invalid", {"transformation_id": transformation_id})
    first = JobStore(engine, "host:1:aaaa", "host", 1, 60.0)
    second = JobStore(engine, "host:2:bbbb", "host", 2, 60.0)
    first.resolve_map_ids()

    assert first.claim_next(3).id == older
    # The older job is still running: initialize_data waits, and the newer job behind it.
    assert second.claim_next(3) is None
    with session_factory.begin() as session:
        assert first.finish(session, older, "completed", None)
    assert second.claim_next(3).id == initialize
    assert first.claim_next(3) is None
    with session_factory.begin() as session:
        assert second.finish(session, initialize, "completed", None)
    assert first.claim_next(3).id == newer


def test_initialize_data_waits_for_job_due_later(settings, engine, session_factory):
    """An older job released for a retry still holds initialize_data back until it is done."""
    from georeference.daemon.store import JobStore

    with session_factory() as session:
        add_map(session, settings)
        transformation_id = add_transformation(session, 10, synthetic_params())
        older = add_job(session, "transformation_set_valid", {"transformation_id": transformation_id})
        initialize = add_job(session, "initialize_data", {})
    store = JobStore(engine, "host:1:aaaa", "host", 1, 60.0)
    store.resolve_map_ids()
    assert store.claim_next(3).id == older
    store.release(older, retry_after=600.0, reason="database unreachable")

    assert store.claim_next(3) is None
    with session_factory() as session:
        assert job_row(session, initialize).state == "not_started"
        assert job_row(session, older).state == "not_started"


def test_start_up_queues_one_initialize_data(settings, engine, session_factory):
    """A restart does not queue a second initialize_data while one is still waiting."""
    from georeference.daemon.runner import queue_initialize

    assert queue_initialize(engine) is True
    assert queue_initialize(engine) is False
    with session_factory() as session:
        waiting = session.scalars(select(Job).where(Job.type == "initialize_data")).all()
        assert [job.state for job in waiting] == ["not_started"]

    run_jobs(settings, engine)
    assert queue_initialize(engine) is True
    with session_factory() as session:
        states = sorted(job.state for job in session.scalars(
            select(Job).where(Job.type == "initialize_data")))
        assert states == ["completed", "not_started"]
