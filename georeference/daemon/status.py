"""The runner's status report: job counts, live runners and the search index backlog."""

from __future__ import annotations

import socket

from sqlalchemy import select

from sqlalchemy.exc import SQLAlchemyError

from georeference.database import check_database, make_engine, safe_url
from georeference.errors import StorageError
from georeference.daemon.loop import count_jobs
from georeference.daemon.pidfile import process_ended
from georeference.daemon.store import JobStore
from georeference.models import Job, SearchOutbox
from georeference.settings import Settings


def collect_status(settings: Settings) -> list[str]:
    """Return the status lines; the database being unreachable is one of them, not an error."""
    engine = make_engine(settings.database_url)
    try:
        check_database(engine)
        return _status_lines(settings, engine)
    except StorageError as exc:
        return [f"database: {exc}"]
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        return [f"database: query failed on {safe_url(settings.database_url)}: {reason}"]
    finally:
        engine.dispose()


def _status_lines(settings: Settings, engine) -> list[str]:
    counts = count_jobs(engine)
    lines = [f"jobs: {counts.get('not_started', 0)} pending, {counts.get('running', 0)} running, "
             f"{counts.get('failed', 0)} failed, {counts.get('completed', 0)} completed"]

    store = JobStore(engine, "status", "", 0, settings.lease_seconds)
    here = socket.gethostname()
    # A runner on this host whose process has ended died without unregistering (kill -9).
    # Its heartbeat is still recent, but it is not live.
    runners = [runner for runner in store.live_runners(exclude_self=False)
               if runner.host != here or not process_ended(runner.pid)]
    lines.append(f"live runners: {len(runners)}")
    with store.sessions() as session:
        for runner in runners:
            # The jobs table shows at once which job a runner runs; its heartbeat row may lag.
            running = session.scalars(
                select(Job).where(Job.state == "running", Job.claimed_by == runner.id)
                .order_by(Job.id)).all()
            doing = ", ".join(f"job {job.id} ({job.type}, map {job.raw_map_id})"
                              for job in running) or "idle"
            lines.append(f"  {runner.host} pid {runner.pid}: {doing}, heartbeat "
                         f"{runner.heartbeat:%Y-%m-%d %H:%M:%S} UTC")
        waiting = session.scalars(select(SearchOutbox).order_by(SearchOutbox.queued)).all()
    lines.append(f"search index updates waiting: {len(waiting)}")
    for item in waiting:
        lines.append(f"  map {item.raw_map_id}: {item.attempts} attempt(s), last error: "
                     f"{item.last_error or '-'}")
    return lines
