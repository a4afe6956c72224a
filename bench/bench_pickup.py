"""Pickup latency on PostgreSQL: from a job's INSERT commit to the runner starting it.

One runner process polls only every 600 s, so a pickup faster than that comes from the
LISTEN/NOTIFY wake-up. Each round inserts one cheap job (``transformation_set_valid``),
waits until it is finished, and takes ``jobs.started`` minus the moment the INSERT committed
(same host, same clock). Prints median, p95 and max.

    python_env/bin/python bench/bench_pickup.py [--jobs 50]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sqlalchemy.orm import Session  # noqa: E402

from georeference.database import make_engine  # noqa: E402
from georeference.models import Job  # noqa: E402
from georeference.settings import Settings, build_settings  # noqa: E402
from tests.conftest import TEMPLATE_DATABASE  # noqa: E402
from tests.factories import add_map, add_transformation, synthetic_params  # noqa: E402
from tests.integration.test_runner import RUNNER, write_ini  # noqa: E402
from tests.pgcluster import PostgresCluster  # noqa: E402


def bench_settings(url: str, workdir: str, **extra: str) -> Settings:
    """Return runner settings for ``url`` with every product root inside ``workdir``."""
    values = {
        "sqlalchemy.url": url,
        "georeference.image_root": os.path.join(workdir, "raw"),
        "georeference.georef_root": os.path.join(workdir, "georef"),
        "georeference.tms_root": os.path.join(workdir, "tms"),
        "georeference.mapfile_root": os.path.join(workdir, "mapfiles"),
        "georeference.tmp_root": os.path.join(workdir, "tmp"),
    }
    return build_settings({**values, **extra}, workdir)


def start_cluster() -> tuple[PostgresCluster, str]:
    """Start a throwaway cluster and return it with the URL of a database with the schema."""
    from sqlalchemy import text

    from georeference.database import create_schema

    cluster = PostgresCluster()
    cluster.init()
    cluster.start()
    admin = make_engine(cluster.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {TEMPLATE_DATABASE}"))
    admin.dispose()
    url = cluster.url_for(TEMPLATE_DATABASE)
    engine = make_engine(url)
    create_schema(engine)
    engine.dispose()
    return cluster, url


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50)
    args = parser.parse_args()

    cluster, url = start_cluster()
    workdir = tempfile.mkdtemp(prefix="bench-pickup-")
    settings = bench_settings(url, workdir, **{
        "georeference.daemon.pidfile": os.path.join(workdir, "runner.pid")})
    ini = write_ini(os.path.join(workdir, "runner.ini"), settings,
                    **{"georeference.daemon.sleep_time": "600"})
    engine = make_engine(url)
    runner = None
    try:
        with Session(engine) as session:
            add_map(session, settings)
            transformation_id = add_transformation(session, 10, synthetic_params())
        runner = subprocess.Popen([RUNNER, "--config", ini, "run"], stderr=subprocess.DEVNULL)
        time.sleep(2.0)  # let it register and reach its first wait

        latencies: list[float] = []
        for _ in range(args.jobs):
            with Session(engine) as session:
                job = Job(type="transformation_set_valid", user_id="bench",
                          description=f'{{"transformation_id": {transformation_id}, '
                                      '"comment": "bench"}')
                session.add(job)
                session.flush()
                job_id = job.id
                session.commit()
                committed = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
            deadline = time.monotonic() + 60
            while True:
                with Session(engine) as session:
                    row = session.get(Job, job_id)
                    if row.state in ("completed", "failed"):
                        break
                if time.monotonic() > deadline:
                    raise SystemExit(f"job {job_id} not finished within 60 s: pickup is broken")
                time.sleep(0.01)
            latencies.append(max((row.started - committed).total_seconds(), 0.0) * 1000)
            time.sleep(0.05)

        print(f"pickup latency over {len(latencies)} jobs, poll interval 600 s "
              f"(LISTEN/NOTIFY wake-up):")
        print(f"  median {statistics.median(latencies):.1f} ms, "
              f"p95 {percentile(latencies, 0.95):.1f} ms, max {max(latencies):.1f} ms")
        return 0
    finally:
        if runner is not None:
            runner.send_signal(signal.SIGTERM)
            runner.wait(timeout=60)
        engine.dispose()
        cluster.remove()


if __name__ == "__main__":
    sys.exit(main())
