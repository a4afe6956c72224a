"""The runner's status report: job counts, live runners and the search index backlog."""

from __future__ import annotations

from sqlalchemy import select

from georeference.database import make_engine
from georeference.daemon.loop import count_jobs
from georeference.daemon.store import JobStore
from georeference.models import Job, SearchOutbox
from georeference.settings import Settings


def collect_status(settings: Settings) -> list[str]:
    """Return the status lines; the database being unreachable is one of them, not an error."""
    engine = make_engine(settings.database_url)
    try:
        return _status_lines(settings, engine)
    except Exception as exc:  # noqa: BLE001 - status must report, not crash
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        return [f"database: unreachable ({reason})"]
    finally:
        engine.dispose()


def _status_lines(settings: Settings, engine) -> list[str]:
    counts = count_jobs(engine)
    lines = [f"jobs: {counts.get('not_started', 0)} pending, {counts.get('running', 0)} running, "
             f"{counts.get('failed', 0)} failed, {counts.get('completed', 0)} completed"]

    store = JobStore(engine, "status", "", 0, settings.lease_seconds)
    runners = store.live_runners(exclude_self=False)
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
