"""The runner's database operations on the job queue: resolve, claim, renew, finish.

A job is claimed and marked ``running`` with the runner's identity and a lease, in a short
transaction of its own or in the commit that records the previous job's outcome, so that a
quick job costs one commit. On PostgreSQL the claim takes the row with ``FOR UPDATE SKIP
LOCKED``, so several runners never take the same job. Jobs of one raw map run one at a time
and in submission order: a job is only claimable when no older unfinished job of its map
exists. An ``initialize_data`` job runs alone, after every older job and before every newer one.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import uuid
from dataclasses import dataclass

from sqlalchemy import (Connection, Engine, Row, TextClause, bindparam, delete, func, select,
                        text, update)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from georeference.database import is_postgresql
from georeference.models import Job, JobHistory, Runner, Transformation, utcnow

logger = logging.getLogger(__name__)

# Jobs whose map is resolved per statement batch; run_pending repeats until fewer come back.
RESOLVE_BATCH = 500

# Map key for jobs that concern no single map (initialize_data, unreadable descriptions).
NO_MAP = 0

# No older unfinished job of the same map may exist (map key 0: no such ordering).
_NO_OLDER_JOB_OF_MAP = """
  AND NOT EXISTS (
      SELECT 1 FROM jobs o
      WHERE j.raw_map_id <> 0 AND o.raw_map_id = j.raw_map_id
        AND o.state IN ('not_started', 'running')
        AND (o.submitted < j.submitted OR (o.submitted = j.submitted AND o.id < j.id)))"""

# initialize_data is a barrier in submission order. It starts only when no older job is
# unfinished, and no newer job starts while it is unfinished. Otherwise it could read a map
# as enabled, a newer set_invalid job withdraw that map, and initialize_data then install
# the map's products again at its commit. initialize_data's map key is 0, so
# jobs_claim_idx, on (state, raw_map_id), can find the barrier rows for the first test.
_NO_BARRIER_CROSSED = """
  AND NOT EXISTS (
      SELECT 1 FROM jobs b
      WHERE b.raw_map_id = 0 AND b.type = 'initialize_data' AND b.id <> j.id
        AND b.state IN ('not_started', 'running')
        AND (b.submitted < j.submitted OR (b.submitted = j.submitted AND b.id < j.id)))
  AND (j.type <> 'initialize_data' OR NOT EXISTS (
      SELECT 1 FROM jobs o
      WHERE o.id <> j.id AND o.state IN ('not_started', 'running')
        AND (o.submitted < j.submitted OR (o.submitted = j.submitted AND o.id < j.id))))"""

# A running job whose lease ran out is taken over only while its attempts are below the
# limit. At the limit ``fail_exhausted`` fails it instead, and no runner may retake it in
# between.
_ABANDONED_CANDIDATE = """
SELECT j.id FROM jobs j
WHERE j.state = 'running' AND j.lease_expires < :now AND j.attempts < :max_attempts
""" + _NO_OLDER_JOB_OF_MAP + _NO_BARRIER_CROSSED + """
ORDER BY j.submitted, j.id
LIMIT 1"""

# The partial index jobs_pending_idx yields these rows in order, so the first one that
# passes the map check ends the scan instead of sorting the whole queue.
_PENDING_CANDIDATE = """
SELECT j.id FROM jobs j
WHERE j.state = 'not_started' AND j.raw_map_id IS NOT NULL
  AND (j.lease_expires IS NULL OR j.lease_expires <= :now)
""" + _NO_OLDER_JOB_OF_MAP + _NO_BARRIER_CROSSED + """
ORDER BY j.submitted, j.id
LIMIT 1"""


_PREPARED_CLAIM = "georeference_claim_job"
"""Name of the claim statement prepared on each PostgreSQL connection."""

_CLAIM_PARAMETERS = ("now", "max_attempts", "runner", "expires")


@dataclass(frozen=True)
class ClaimedJob:
    """A job this runner holds a lease on."""

    id: int
    type: str
    description: str | None
    raw_map_id: int | None
    attempts: int
    retries: int


def runner_identity() -> tuple[str, str, int]:
    """Return (runner id, host name, pid); the id is unique even when a pid is reused."""
    host = socket.gethostname()
    pid = os.getpid()
    return f"{host}:{pid}:{uuid.uuid4().hex[:8]}", host, pid


def _transformation_id(description: str | None) -> int | None:
    """Return the description's transformation id, or None when it has no usable one."""
    try:
        value = json.loads(description) if description else {}
    except ValueError:
        return None
    transformation_id = value.get("transformation_id") if isinstance(value, dict) else None
    if isinstance(transformation_id, bool) or not isinstance(transformation_id, int):
        return None
    return transformation_id


def _history_upsert(engine: Engine) -> TextClause:
    """Return the INSERT ... ON CONFLICT that copies a finished job into jobs_history.

    Written out as text once: SQLAlchemy 2.0 compiled the dialect's upsert construct again
    for every job (its PostgreSQL ``Insert`` sets ``inherit_cache = False``).
    """
    history = JobHistory.__table__
    names = _quoted_history_columns(engine)
    statement = (f"INSERT INTO jobs_history ({', '.join(names)}) "
                 f"VALUES ({', '.join(':' + column.name for column in history.c)}) "
                 + _on_history_conflict(names))
    return text(statement).bindparams(
        *[bindparam(column.name, type_=column.type) for column in history.c])


def _finish_with_history(engine: Engine) -> TextClause:
    """Return one PostgreSQL statement that finishes a job and copies it into jobs_history.

    A data-modifying WITH saves the round trip and the Python work of passing the row
    from the UPDATE to the INSERT. It returns the job's id, or no row when the job is no
    longer claimed by this runner (then nothing changes).
    """
    names = ", ".join(_quoted_history_columns(engine))
    statement = (
        "WITH finished AS ("
        "UPDATE jobs SET state = :state, comment = :comment, finished = :finished, "
        "lease_expires = NULL WHERE id = :job_id AND claimed_by = :runner "
        f"RETURNING {names}) "
        f"INSERT INTO jobs_history ({names}) SELECT {names} FROM finished "
        + _on_history_conflict(_quoted_history_columns(engine)) + " RETURNING id")
    return text(statement).bindparams(bindparam("finished", type_=Job.__table__.c.finished.type))


def _quoted_history_columns(engine: Engine) -> list[str]:
    quote = engine.dialect.identifier_preparer.quote
    return [quote(column.name) for column in JobHistory.__table__.c]


def _on_history_conflict(names: list[str]) -> str:
    return "ON CONFLICT (id) DO UPDATE SET " + ", ".join(
        f"{name} = excluded.{name}" for name in names if name != "id")


class JobStore:
    """The job queue operations of one runner."""

    def __init__(self, engine: Engine, runner_id: str, host: str, pid: int,
                 lease_seconds: float) -> None:
        self.engine = engine
        self.sessions = sessionmaker(bind=engine, expire_on_commit=False)
        self.runner_id = runner_id
        self.host = host
        self.pid = pid
        self.lease = dt.timedelta(seconds=lease_seconds)
        self.postgresql = is_postgresql(engine)
        # One statement picks and marks the job, so a claim costs one round trip and a
        # commit. On PostgreSQL, SKIP LOCKED lets concurrent claims pass each other.
        lock = " FOR UPDATE OF j SKIP LOCKED" if self.postgresql else ""
        claim = ("UPDATE jobs SET state = 'running', claimed_by = :runner, started = :now, "
                 "lease_expires = :expires, attempts = attempts + 1 "
                 f"WHERE id = COALESCE(({_ABANDONED_CANDIDATE}{lock}), "
                 f"({_PENDING_CANDIDATE}{lock})) "
                 "RETURNING id, type, description, raw_map_id, attempts, retries")
        self._claim_statement = text(claim)
        # PostgreSQL planned the claim in 0.7 ms and ran it in 0.1 ms (EXPLAIN ANALYZE, 1000
        # queued jobs), so each connection prepares it once and then only executes it.
        numbered = claim
        for number, name in enumerate(_CLAIM_PARAMETERS, start=1):
            numbered = numbered.replace(f":{name}", f"${number}")
        self._prepare_claim = f"PREPARE {_PREPARED_CLAIM} AS {numbered}"
        placeholders = ", ".join(f"%({name})s" for name in _CLAIM_PARAMETERS)
        self._execute_claim_sql = f"EXECUTE {_PREPARED_CLAIM}({placeholders})"
        self._history_statement = _history_upsert(engine)
        self._finish_statement = _finish_with_history(engine) if self.postgresql else None

    def resolve_map_ids(self) -> int:
        """Fill ``jobs.raw_map_id`` for new jobs, so the claim can order jobs per map."""
        with self.sessions.begin() as session:
            rows = session.execute(
                select(Job.id, Job.description)
                .where(Job.state == "not_started", Job.raw_map_id.is_(None))
                .order_by(Job.submitted, Job.id).limit(RESOLVE_BATCH)).all()
            if not rows:
                return 0
            wanted = {job_id: _transformation_id(description) for job_id, description in rows}
            known = dict(session.execute(
                select(Transformation.id, Transformation.raw_map_id)
                .where(Transformation.id.in_({t for t in wanted.values() if t is not None})))
                .all())
            keys = [{"job_id": job_id, "map_key": known.get(transformation_id, NO_MAP)}
                    for job_id, transformation_id in wanted.items()]
            # One executemany: psycopg2 batches it into a few round trips.
            session.connection().execute(
                update(Job.__table__)
                .where(Job.__table__.c.id == bindparam("job_id"),
                       Job.__table__.c.raw_map_id.is_(None))
                .values(raw_map_id=bindparam("map_key")), keys)
        return len(rows)

    def claim_next(self, max_attempts: int, session: Session | None = None) -> ClaimedJob | None:
        """Claim the oldest claimable job, or return None when there is none.

        A job abandoned by a dead runner is retaken only below ``max_attempts``. Without a
        session the claim commits at once. With one, it commits with that session, so a
        finishing job hands its runner the next job in the same commit.
        """
        now = utcnow()
        parameters = {"now": now, "max_attempts": max_attempts, "runner": self.runner_id,
                      "expires": now + self.lease}
        if session is not None:
            claimed = self._execute_claim(session.connection(), parameters)
        else:
            with self.engine.connect() as connection:
                claimed = self._execute_claim(connection, parameters)
                connection.commit()
        return ClaimedJob(*claimed) if claimed is not None else None

    def _execute_claim(self, connection: Connection, parameters: dict) -> Row | None:
        """Run the claim statement, on PostgreSQL as a statement prepared once per connection.

        A prepared statement lasts as long as its database session, whatever becomes of the
        transaction that prepared it. The pool's record of the connection is cleared when
        the connection is replaced, so a new session prepares the statement again.
        """
        if not self.postgresql:
            return connection.execute(self._claim_statement, parameters).first()
        connection_info = connection.connection.info
        if not connection_info.get(_PREPARED_CLAIM):
            connection.exec_driver_sql(self._prepare_claim)
            connection_info[_PREPARED_CLAIM] = True
        return connection.exec_driver_sql(self._execute_claim_sql, parameters).first()

    def unclaim(self, job_id: int) -> bool:
        """Return a job this runner claimed but did not start to the queue, its attempt undone.

        Returns False, changing nothing, when the job is not running under this runner.
        """
        with self.sessions.begin() as session:
            result = session.execute(
                update(Job).where(Job.id == job_id, Job.claimed_by == self.runner_id,
                                  Job.state == "running")
                .values(state="not_started", claimed_by=None, started=None, lease_expires=None,
                        attempts=Job.attempts - 1))
        return result.rowcount == 1

    def seconds_until_due(self) -> float | None:
        """Return the seconds until a job waiting on a time becomes claimable, or None.

        Two kinds of job wait on a time rather than on a notification: one released after a
        transient error (claimable when its retry delay ends) and one whose runner may have
        died (claimable, or failed, when its lease runs out). The loop sleeps no longer than
        this, so a long poll interval does not delay them.
        """
        now = utcnow()
        with self.sessions() as session:
            due = session.scalar(
                select(func.min(Job.lease_expires))
                .where(Job.state.in_(("not_started", "running")), Job.lease_expires > now))
        if due is None:
            return None
        return max((due - now).total_seconds(), 0.0)

    def renew_lease(self, job_id: int) -> bool:
        """Extend the lease on a job; return False when another runner took it over."""
        with self.sessions.begin() as session:
            result = session.execute(
                update(Job).where(Job.id == job_id, Job.claimed_by == self.runner_id,
                                  Job.state == "running")
                .values(lease_expires=utcnow() + self.lease))
        return result.rowcount == 1

    def is_running_under(self, job_id: int, runner_token: str) -> bool:
        """Return True when a job runs under a live lease of the runner with this id token."""
        with self.sessions() as session:
            job = session.get(Job, job_id)
        return (job is not None and job.state == "running" and job.claimed_by is not None
                and job.claimed_by.endswith(f":{runner_token}")
                and job.lease_expires is not None and job.lease_expires > utcnow())

    def release(self, job_id: int, retry_after: float, reason: str) -> None:
        """Give a job back to the queue, claimable again after ``retry_after`` seconds.

        The claim is taken back from ``attempts`` and counted in ``retries`` instead, so a
        job released after a database outage is not counted as a runner death. A release
        that cannot be written (the database is still down) leaves the claim counted. A job
        that is no longer running (its commit went through although the driver reported an
        error) is left as it is.
        """
        with self.sessions.begin() as session:
            session.execute(
                update(Job).where(Job.id == job_id, Job.claimed_by == self.runner_id,
                                  Job.state == "running")
                .values(state="not_started", claimed_by=None,
                        lease_expires=utcnow() + dt.timedelta(seconds=retry_after),
                        comment=reason, attempts=Job.attempts - 1,
                        retries=Job.retries + 1))

    def finish(self, session: Session, job_id: int, state: str, comment: str | None) -> bool:
        """Record a job's final state and copy it to jobs_history, in the given session.

        Returns False, changing nothing, when the job is no longer claimed by this runner.
        """
        if self._finish_statement is not None:
            finished = session.connection().execute(self._finish_statement, {
                "state": state, "comment": comment, "finished": utcnow(), "job_id": job_id,
                "runner": self.runner_id}).first()
            return finished is not None
        jobs = Job.__table__
        row = session.execute(
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.claimed_by == self.runner_id)
            .values(state=state, comment=comment, finished=utcnow(), lease_expires=None)
            .returning(*jobs.c)).mappings().first()
        if row is None:
            return False
        session.execute(self._history_statement,
                        {column.name: row[column.name] for column in JobHistory.__table__.c})
        return True

    def finished_by_me(self, job_id: int) -> bool | None:
        """Return whether this runner's outcome of a job is committed, or None if unknown.

        Asked after a commit raised: the server may have committed and only its reply been
        lost. Unknown means the database could not be read on a new connection.
        """
        try:
            with self.engine.connect() as connection:
                row = connection.execute(
                    select(Job.state, Job.claimed_by).where(Job.id == job_id)).first()
        except SQLAlchemyError:
            return None
        return (row is not None and row.claimed_by == self.runner_id
                and row.state in ("completed", "failed"))

    def fail_exhausted(self, max_attempts: int) -> list[int]:
        """Fail jobs whose runners died ``max_attempts`` times while running them."""
        now = utcnow()
        with self.sessions.begin() as session:
            jobs = session.scalars(
                select(Job).where(Job.state == "running", Job.lease_expires < now,
                                  Job.attempts >= max_attempts)
                .with_for_update(skip_locked=True) if self.postgresql else
                select(Job).where(Job.state == "running", Job.lease_expires < now,
                                  Job.attempts >= max_attempts)).all()
            for job in jobs:
                job.claimed_by = self.runner_id
                # finish() matches claimed_by in SQL, so the new value must be flushed first.
                session.flush()
                self.finish(session, job.id, "failed",
                            f"the runner died {job.attempts} times while running this job "
                            f"(limit {max_attempts}); it is not tried again")
        return [job.id for job in jobs]

    def recover_all_running(self) -> int:
        """Return every running job to the queue; for a single runner starting up on SQLite."""
        with self.sessions.begin() as session:
            result = session.execute(
                update(Job).where(Job.state == "running")
                .values(lease_expires=utcnow() - dt.timedelta(seconds=1)))
        return result.rowcount

    def register(self) -> None:
        """Record this runner in the runners table, dropping rows of long-dead runners.

        A runner killed with SIGKILL never removes its row; rows without a heartbeat for
        ten leases are deleted here so the table does not grow with every crash.
        """
        with self.sessions.begin() as session:
            session.execute(delete(Runner).where(Runner.heartbeat < utcnow() - 10 * self.lease))
            session.merge(Runner(id=self.runner_id, host=self.host, pid=self.pid,
                                 started=utcnow(), heartbeat=utcnow()))

    def heartbeat(self, current_job_id: int | None) -> None:
        """Update this runner's heartbeat and current job."""
        with self.sessions.begin() as session:
            session.execute(update(Runner).where(Runner.id == self.runner_id)
                            .values(heartbeat=utcnow(), current_job_id=current_job_id))

    def unregister(self) -> None:
        """Remove this runner from the runners table on a clean stop."""
        with self.sessions.begin() as session:
            runner = session.get(Runner, self.runner_id)
            if runner is not None:
                session.delete(runner)

    def live_runners(self, exclude_self: bool = True) -> list[Runner]:
        """Return the runners whose heartbeat is more recent than two leases."""
        cutoff = utcnow() - 2 * self.lease
        with self.sessions() as session:
            query = select(Runner).where(Runner.heartbeat >= cutoff).order_by(Runner.started)
            runners = list(session.scalars(query))
        return [r for r in runners if not (exclude_self and r.id == self.runner_id)]
