"""The job loop: wait for jobs, claim one, run its handler, record the outcome in one place.

Outcomes:
- completed: the handler returned. Products are installed, and the job's database changes
  commit together with its ``completed`` state and history row.
- failed: bad input or a failed step. The job's own changes are rolled back, staged products
  are dropped, and the message becomes the job's comment. The job is not retried.
- released: a transient error (database or index unreachable). The job goes back to the
  queue and is claimed again after a growing delay.

A completed or failed job's commit also claims the next job, unless the runner is stopping.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import select
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from osgeo import gdal
from sqlalchemy import Engine, func, select as sql_select
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError

from georeference.database import is_postgresql
from georeference.daemon.store import RESOLVE_BATCH, ClaimedJob, JobStore, runner_identity
from georeference.errors import (GeoreferenceError, JobInputError, ProcessingError,
                                 StorageError)
from georeference.geo.tiles import make_encoder_pool
from georeference.jobs import get_handler
from georeference.jobs.context import CURRENT_JOB, JobContext, JobLogger, parse_description
from georeference.models import Job
from georeference.publish.products import StagedProducts
from georeference.settings import Settings

logger = logging.getLogger(__name__)

NOTIFY_CHANNEL = "georeference_jobs"

# First delay, in seconds, before a job that hit a transient error is tried again. The
# delay doubles with every further retry up to the configured maximum.
RETRY_BACKOFF_START = 5.0

_STAGING_NAME = re.compile(r"^job-(\d+)-([0-9a-f]+)-")

# Maximum pause, in seconds, between two renewals of a job's lease.
HEARTBEAT_MAX_INTERVAL = 10.0

# Seconds a stopping runner waits for its lease thread to end.
CLOSE_TIMEOUT_SECONDS = 5.0


class JobTimeoutError(ProcessingError):
    """Raised when a job runs past the configured time limit."""


class LeaseLostError(StorageError):
    """Raised when another runner took a job over because this runner's lease ran out."""


@dataclass
class _Lease:
    """Lease renewal of one running job: ``done`` ends it, ``lost`` is set when it was lost."""

    done: threading.Event = field(default_factory=threading.Event)
    lost: threading.Event = field(default_factory=threading.Event)


class _LeaseKeeper:
    """One thread per runner that renews the lease of the job the runner is running.

    Its first renewal comes at most one interval after a job starts. A thread that lives
    as long as the runner costs nothing per job, where a thread per job cost about 4 % of
    a quick job's time.
    """

    def __init__(self, store: JobStore, interval: float) -> None:
        self._store = store
        self._interval = interval
        self._lock = threading.Lock()
        self._current: tuple[int, _Lease] | None = None
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, job_id: int) -> _Lease:
        """Renew ``job_id``'s lease from now until ``finished`` is called with the result."""
        lease = _Lease()
        with self._lock:
            self._current = (job_id, lease)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
            self._thread.start()
        return lease

    def finished(self, lease: _Lease) -> None:
        """Stop renewing the lease: its job's outcome is decided."""
        lease.done.set()
        with self._lock:
            if self._current is not None and self._current[1] is lease:
                self._current = None

    def close(self) -> None:
        """Stop the thread; a renewal stuck on a dead connection is not waited for long."""
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=CLOSE_TIMEOUT_SECONDS)
            self._thread = None

    def _run(self) -> None:
        while not self._closed.wait(self._interval):
            with self._lock:
                current = self._current
            if current is None:
                continue
            try:
                self._renew(*current)
            except Exception:  # noqa: BLE001 - the one renewal thread must outlive any error
                logger.exception("job=%d lease renewal failed", current[0],
                                 extra={"action": "lease_renewal_failed", "job_id": current[0]})

    def _renew(self, job_id: int, lease: _Lease) -> None:
        try:
            renewed = self._store.renew_lease(job_id)
            if renewed:
                self._store.heartbeat(job_id)
        except SQLAlchemyError as exc:
            logger.warning("job=%d lease renewal failed: %s", job_id, _first_line(exc),
                           extra={"action": "lease_renewal_failed", "job_id": job_id})
            return
        if not renewed and not lease.done.is_set():
            # A job that finished while this renewal ran is no longer running: not lost.
            logger.error("job=%d lease lost to another runner; stopping the job", job_id,
                         extra={"action": "lease_lost", "job_id": job_id})
            lease.lost.set()


@dataclass
class RunSummary:
    """Job ids per outcome of one pass over the queue."""

    completed: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    released: list[int] = field(default_factory=list)


class _Wakeup:
    """A pipe that signal handlers and notifications write to, to end a wait early."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)

    def wake(self) -> None:
        try:
            os.write(self.write_fd, b"x")
        except BlockingIOError:
            pass

    def drain(self) -> None:
        try:
            while os.read(self.read_fd, 512):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


class JobLoop:
    """Polls the jobs table and runs each job through its handler."""

    def __init__(self, settings: Settings, engine: Engine, search_index: Any = None) -> None:
        self.settings = settings
        self.engine = engine
        self.runner_id, host, pid = runner_identity()
        self.store = JobStore(engine, self.runner_id, host, pid, settings.lease_seconds)
        self.search_index = search_index
        self.stopping = False
        self.current_job: int | None = None
        self._token = self.runner_id.rsplit(":", 1)[-1]
        gdal.SetCacheMax(settings.gdal_cache_mb * 1024 * 1024)
        # PNG encoder threads, kept for the runner's lifetime.
        self.tile_pool = make_encoder_pool(settings.tms_processes) \
            if settings.tms_processes > 1 else None
        self._wakeup = _Wakeup()
        self._listen_connection: Any = None
        # SQLite runs one runner at a time, and its job transaction holds the write lock, so
        # leases are not renewed there. A stopped runner's jobs are recovered at start-up.
        self._leases = _LeaseKeeper(self.store, self._heartbeat_interval()) \
            if is_postgresql(engine) else None
        # The lease of a job claimed in the previous job's commit, renewed from that commit on.
        self._handed_over: tuple[int, _Lease] | None = None

    # -- stopping ---------------------------------------------------------------------------

    def request_stop(self, *_args: object) -> None:
        """Let the current job finish, then leave the loop (the SIGTERM handler)."""
        self.stopping = True
        self._wakeup.wake()

    def install_signal_handlers(self) -> None:
        """Stop after the current job on SIGTERM and SIGINT."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    # -- the loop ---------------------------------------------------------------------------

    def run_forever(self) -> None:
        """Process jobs until asked to stop; database outages are logged and waited out."""
        logger.info("runner %s started, polling every %.1f s", self.runner_id,
                    self.settings.sleep_time, extra={"action": "runner_start"})
        failures = 0
        registered = False
        while not self.stopping:
            try:
                if not registered:
                    self.store.register()
                    self._recover_on_sqlite()
                    registered = True
                # Listen before looking at the queue, so a job inserted between the look
                # and the wait still wakes this runner.
                self._listener()
                self.run_pending()
                failures = 0
                delay = self.settings.sleep_time
            except (SQLAlchemyError, StorageError) as exc:
                failures += 1
                delay = min(self.settings.sleep_time * 2 ** min(failures, 6),
                            self.settings.retry_backoff_max)
                logger.warning("database unreachable (%s); next try in %.0f s",
                               _first_line(exc), delay, extra={"action": "poll_failed"})
                self._close_listener()
            if not self.stopping:
                self._idle(delay)
        self._shutdown()

    def run_pending(self) -> RunSummary:
        """Claim and run jobs until none is claimable or a stop is requested."""
        summary = RunSummary()
        # In batches, so a large queue is ordered in full before the first claim instead
        # of leaving all but the first batch to the next poll.
        while self.store.resolve_map_ids() == RESOLVE_BATCH and not self.stopping:
            pass
        for job_id in self.store.fail_exhausted(self.settings.max_attempts):
            logger.error("job=%d failed: its runner died %d times", job_id,
                         self.settings.max_attempts, extra={"action": "job_exhausted",
                                                            "job_id": job_id})
            summary.failed.append(job_id)
        self._flush_search_outbox()
        self._clean_scratch()
        self.store.heartbeat(None)

        claimed = None if self.stopping else self.store.claim_next(self.settings.max_attempts)
        while claimed is not None:
            outcome, following = self.process(claimed)
            getattr(summary, outcome).append(claimed.id)
            if following is not None and self.stopping:
                # The stop came after the finishing commit had claimed the next job.
                self._give_back(following)
                following = None
            if following is None and not self.stopping:
                following = self.store.claim_next(self.settings.max_attempts)
            claimed = following
        return summary

    def _give_back(self, claimed: ClaimedJob) -> None:
        """Return a job that this runner claimed but will not start, because it is stopping."""
        self._lease_for(claimed.id, keep=False)
        try:
            returned = self.store.unclaim(claimed.id)
        except SQLAlchemyError as exc:
            logger.warning("job=%d cannot be returned to the queue (%s); it is retried when its "
                           "lease expires", claimed.id, _first_line(exc),
                           extra={"action": "unclaim_failed", "job_id": claimed.id})
            return
        if returned:
            logger.info("job=%d returned to the queue: the runner is stopping", claimed.id,
                        extra={"action": "unclaimed", "job_id": claimed.id})

    def _recover_on_sqlite(self) -> None:
        if is_postgresql(self.engine):
            return
        count = self.store.recover_all_running()
        if count:
            logger.warning("%d job(s) left running by a stopped runner return to the queue",
                           count, extra={"action": "recover"})

    def _clean_scratch(self) -> None:
        """Delete staging folders left by runners that died, so scratch space is freed.

        A folder is named ``job-<job id>-<runner token>-…``; it is kept only while that job
        is running under that runner.
        """
        try:
            entries = os.listdir(self.settings.tmp_root)
        except FileNotFoundError:
            return
        for entry in entries:
            match = _STAGING_NAME.match(entry)
            if match is None:
                continue
            job_id, token = int(match.group(1)), match.group(2)
            if token == self._token and self.current_job == job_id:
                continue
            if self.store.is_running_under(job_id, token):
                continue
            shutil.rmtree(os.path.join(self.settings.tmp_root, entry), ignore_errors=True)
            logger.info("job=%d removed scratch folder %s left by a stopped runner", job_id,
                        entry, extra={"action": "scratch_cleaned", "job_id": job_id})

    # -- one job ----------------------------------------------------------------------------

    def process(self, claimed: ClaimedJob) -> tuple[str, ClaimedJob | None]:
        """Run one claimed job and record its outcome.

        Returns completed, failed or released, and the next job when it was claimed in the
        same commit as this job's outcome.
        """
        job_logger = JobLogger(logger, {"job_id": claimed.id, "map_id": claimed.raw_map_id or None})
        job_logger.info("started %s (attempt %d)", claimed.type, claimed.attempts,
                        extra={"action": "job_start"})
        started = time.monotonic()
        self.current_job = claimed.id
        lease = self._lease_for(claimed.id)
        job_token = CURRENT_JOB.set(job_logger.extra)
        try:
            outcome, message, following = self._run_handler(claimed, job_logger, started, lease)
        finally:
            CURRENT_JOB.reset(job_token)
            if self._leases is not None:
                self._leases.finished(lease)
            else:
                lease.done.set()
            self.current_job = None

        seconds = time.monotonic() - started
        if outcome == "completed":
            job_logger.info("completed in %.1f s", seconds, extra={"action": "job_done"})
        elif outcome == "failed":
            job_logger.error("failed after %.1f s: %s", seconds, message,
                             extra={"action": "job_failed"})
        else:
            job_logger.warning("released after %.1f s: %s", seconds, message,
                               extra={"action": "job_released"})
        return outcome, following

    def _lease_for(self, job_id: int, keep: bool = True) -> _Lease:
        """Return the lease of a job about to run, continuing the renewal of a handed-over one.

        With ``keep`` False, the renewal of a handed-over lease ends instead.
        """
        handed_over, self._handed_over = self._handed_over, None
        if handed_over is not None and handed_over[0] == job_id:
            lease = handed_over[1]
        elif self._leases is not None:
            lease = self._leases.watch(job_id)
        else:
            lease = _Lease()
        if not keep and self._leases is not None:
            self._leases.finished(lease)
        return lease

    def _hand_over(self, following: ClaimedJob | None) -> None:
        """Renew the lease of a job claimed in a commit that just succeeded, from now on.

        The clean-up after that commit can take a while (deleting an old tile pyramid), and
        the job must not look abandoned meanwhile.
        """
        if following is not None and self._leases is not None:
            self._handed_over = (following.id, self._leases.watch(following.id))

    def _new_context(self, claimed: ClaimedJob, job_logger: JobLogger, session: Any,
                     started: float, lease: _Lease) -> JobContext:
        products = StagedProducts(self.settings.tmp_root,
                                  prefix=f"job-{claimed.id}-{self._token}-")
        limit = self.settings.time_limit

        def should_stop() -> bool:
            # Long steps (warp, tiles) poll this. Past the time limit, or once another
            # runner has claimed the job, going on would only waste the machine.
            return time.monotonic() - started > limit or lease.lost.is_set()

        return JobContext(
            job_id=claimed.id, job_type=claimed.type, description={}, session=session,
            settings=self.settings, logger=job_logger, products=products,
            search_index=self.search_index, tile_pool=self.tile_pool,
            should_stop=should_stop, started=started)

    def _run_handler(self, claimed: ClaimedJob, job_logger: JobLogger, started: float,
                     lease: _Lease) -> tuple[str, str | None, ClaimedJob | None]:
        session = self.store.sessions()
        ctx = self._new_context(claimed, job_logger, session, started, lease)
        timed_out = lambda: time.monotonic() - started > self.settings.time_limit  # noqa: E731
        try:
            ctx.description = parse_description(claimed.description)
            handler = get_handler(claimed.type)
            handler(ctx)
            if lease.lost.is_set():
                raise LeaseLostError(f"job {claimed.id} was taken over by another runner")
            if timed_out():
                raise JobTimeoutError("job", self._time_limit_message())
            following = self._commit(ctx, claimed)
            return "completed", None, following
        except Exception as exc:  # noqa: BLE001 - a handler bug must not kill the loop
            self._rollback(ctx)
            if lease.lost.is_set() or isinstance(exc, LeaseLostError):
                # The job belongs to another runner now: leave its row alone.
                return "released", "lease lost: another runner has taken the job over", None
            if _is_transient(exc):
                return "released", self._release(claimed, exc), None
            if timed_out():
                message = self._time_limit_message()
            elif _is_disk_full(exc):
                message = f"disk full: {exc}" if "disk full" not in str(exc) else str(exc)
            elif isinstance(exc, GeoreferenceError):
                message = str(exc)
            else:
                job_logger.exception("unexpected error", extra={"action": "job_error"})
                message = f"unexpected error: {type(exc).__name__}: {exc}"
            return "failed", message, self._fail(claimed, message, ctx)
        finally:
            session.close()

    def _rollback(self, ctx: JobContext) -> None:
        """Drop the job's staged products and roll its transaction back.

        The products go first: a rollback on a connection the server dropped can raise,
        and the scratch space must be freed either way.
        """
        ctx.products.discard()
        try:
            ctx.session.rollback()
        except SQLAlchemyError as exc:
            ctx.logger.warning("rollback failed: %s", _first_line(exc),
                               extra={"action": "rollback_failed"})

    def _time_limit_message(self) -> str:
        return (f"stopped: the job ran past its time limit of {self.settings.time_limit:g} s "
                "(georeference.job.time_limit)")

    def _claim_following(self, session: Any) -> ClaimedJob | None:
        """Claim the next job in a finishing job's transaction: one commit serves both."""
        if self.stopping:
            return None
        return self.store.claim_next(self.settings.max_attempts, session)

    def _commit(self, ctx: JobContext, claimed: ClaimedJob) -> ClaimedJob | None:
        comment = "; ".join(ctx.notes) or None
        ctx.session.flush()
        if not self.store.finish(ctx.session, claimed.id, "completed", comment):
            raise LeaseLostError(f"job {claimed.id} was taken over by another runner")
        following = self._claim_following(ctx.session)
        ctx.products.install()
        try:
            ctx.session.commit()
        except Exception as exc:
            self._check_commit_went_through(ctx, claimed, exc)
        except BaseException:
            ctx.products.restore()
            raise
        self._hand_over(following)
        self._after_commit(ctx)
        return following

    def _check_commit_went_through(self, ctx: JobContext, claimed: ClaimedJob,
                                   exc: Exception) -> None:
        """Return when a commit that raised ``exc`` went through after all, else raise it.

        A commit whose reply was lost has still been made. Restoring the old products then
        would leave them under a job the database has as completed, for good.
        """
        committed = self.store.finished_by_me(claimed.id)
        if committed is False:
            ctx.products.restore()
            raise exc
        if committed is None:
            # The new products stay. They are right if the commit went through. If it did
            # not, the job is claimed again when its lease runs out and installs them anew.
            ctx.logger.warning(
                "commit failed (%s), and whether it went through cannot be read yet: "
                "the new products stay in place", _first_line(exc),
                extra={"action": "commit_unknown"})
            ctx.products.finish()
            raise exc
        ctx.logger.warning("commit reported %s, but the database has the job as completed: only "
                           "its acknowledgement was lost", _first_line(exc),
                           extra={"action": "commit_acknowledgement_lost"})

    def _after_commit(self, ctx: JobContext) -> None:
        """Clean up after a job's commit.

        A failure here is logged and does not change the job's outcome.
        """
        try:
            ctx.products.finish()
        except OSError as exc:
            ctx.logger.warning("old product versions could not be deleted and stay on disk: %s",
                               exc, extra={"action": "cleanup_failed"})
        if ctx.search_updates_queued:
            # Deliver the job's queued search updates now rather than at the next poll.
            try:
                self._flush_search_outbox()
            except Exception as exc:  # noqa: BLE001 - the updates stay queued for the next poll
                ctx.logger.warning("search updates stay queued: %s", _first_line(exc),
                                   extra={"action": "outbox"})

    def _fail(self, claimed: ClaimedJob, message: str, ctx: JobContext) -> ClaimedJob | None:
        comment = "; ".join([message] + ctx.notes)
        with self.store.sessions.begin() as session:
            self.store.finish(session, claimed.id, "failed", comment)
            following = self._claim_following(session)
        self._hand_over(following)
        return following

    def _release(self, claimed: ClaimedJob, exc: BaseException) -> str:
        delay = min(RETRY_BACKOFF_START * 2 ** claimed.retries,
                    self.settings.retry_backoff_max)
        reason = f"transient error, retry in {delay:.0f} s: {_first_line(exc)}"
        try:
            self.store.release(claimed.id, delay, reason)
        except SQLAlchemyError as release_exc:
            logger.warning("job=%d cannot be released (%s); it is retried when its lease "
                           "expires", claimed.id, _first_line(release_exc),
                           extra={"action": "release_failed", "job_id": claimed.id})
        return reason

    def _heartbeat_interval(self) -> float:
        return min(self.settings.lease_seconds / 4, HEARTBEAT_MAX_INTERVAL)

    def _beat(self, job_id: int | None) -> None:
        """Record in ``runners`` what this runner does now, for ``georeference-runner status``."""
        try:
            self.store.heartbeat(job_id)
        except SQLAlchemyError as exc:
            logger.warning("job=%s cannot update the runner heartbeat: %s", job_id or "-",
                           _first_line(exc), extra={"action": "heartbeat_failed"})

    # -- search index outbox ----------------------------------------------------------------

    def _flush_search_outbox(self) -> None:
        if self.search_index is None:
            return
        from georeference.publish.search import flush_outbox

        with self.store.sessions.begin() as session:
            sent, waiting = flush_outbox(session, self.settings, self.search_index)
        if sent or waiting:
            logger.info("search index outbox: %d sent, %d still waiting", sent, waiting,
                        extra={"action": "outbox"})

    # -- waiting ----------------------------------------------------------------------------

    def _idle(self, delay: float) -> None:
        """Wait up to ``delay`` seconds for work, keeping this runner's heartbeat fresh.

        The wait ends early on a new job (PostgreSQL NOTIFY), a stop request, or when a job
        that waits on a time (a retry delay, a dead runner's lease) becomes due, so a long
        ``sleep_time`` delays neither. Meanwhile the heartbeat is renewed often enough for
        ``status`` to list an idle runner as live.
        """
        deadline = time.monotonic() + delay
        try:
            due = self.store.seconds_until_due()
        except SQLAlchemyError:
            due = None
        if due is not None:
            deadline = min(deadline, time.monotonic() + due + 0.05)
        while not self.stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self._wait(min(remaining, self._heartbeat_interval())):
                return
            if deadline - time.monotonic() > 0:
                self._beat(None)

    def _wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds; a new job (PostgreSQL NOTIFY) or a stop ends it.

        Returns True when woken before the timeout.
        """
        watched = [self._wakeup.read_fd]
        listener = self._listener()
        if listener is not None:
            watched.append(listener)
        try:
            readable, _, _ = select.select(watched, [], [], timeout)
        except InterruptedError:
            readable = []
        if listener is not None and listener in readable:
            try:
                listener.poll()
                listener.notifies.clear()
            except Exception as exc:  # noqa: BLE001 - any driver error: reconnect next time
                logger.warning("lost the job notification connection: %s", _first_line(exc),
                               extra={"action": "listen_failed"})
                self._close_listener()
        self._wakeup.drain()
        return bool(readable)

    def _listener(self) -> Any:
        if not is_postgresql(self.engine):
            return None
        if self._listen_connection is not None:
            return self._listen_connection
        import psycopg2

        try:
            arguments = self.engine.url.translate_connect_args(
                username="user", database="dbname")
            connection = psycopg2.connect(connect_timeout=10, **arguments)
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f"LISTEN {NOTIFY_CHANNEL}")
        except psycopg2.Error as exc:
            logger.warning("cannot listen for new jobs (%s); polling only", _first_line(exc),
                           extra={"action": "listen_failed"})
            return None
        self._listen_connection = connection
        return connection

    def _close_listener(self) -> None:
        if self._listen_connection is not None:
            try:
                self._listen_connection.close()
            except Exception:  # noqa: BLE001 - closing a broken connection may fail too
                pass
            self._listen_connection = None

    def close(self) -> None:
        """Stop the tile encoder threads and the lease keeper."""
        if self.tile_pool is not None:
            self.tile_pool.shutdown(wait=True)
            self.tile_pool = None
        if self._leases is not None:
            self._leases.close()

    def _shutdown(self) -> None:
        self.close()
        self._close_listener()
        try:
            self._clean_scratch()
        except SQLAlchemyError as exc:
            logger.warning("cannot check scratch folders at stop: %s", _first_line(exc))
        try:
            self.store.unregister()
        except SQLAlchemyError as exc:
            logger.warning("cannot unregister runner: %s", _first_line(exc))
        logger.info("runner %s stopped", self.runner_id, extra={"action": "runner_stop"})


def count_jobs(engine: Engine) -> dict[str, int]:
    """Return the number of jobs per state."""
    with engine.connect() as connection:
        rows = connection.execute(
            sql_select(Job.state, func.count()).group_by(Job.state)).all()
    return {state: count for state, count in rows}


def _is_transient(exc: BaseException) -> bool:
    """Return True for errors worth retrying: the database or the search index unreachable.

    Only a lost or refused connection counts. Other driver errors (a constraint violation,
    a value out of range, an SQL error) would fail again on every retry, so they fail the job.
    """
    if isinstance(exc, StorageError):
        return True
    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def _is_disk_full(exc: BaseException) -> bool:
    """Return True when the error, or one it was raised from, is ENOSPC (disk full)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if getattr(current, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(current) or "disk full" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
