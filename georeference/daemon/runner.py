"""Entry point of the runner: ``georeference-runner [--config INI] start|stop|status|run|init-db``.

Run as a script without arguments (``python_env/bin/python georeference/daemon/runner.py``)
it starts the daemon in the background with the project's ``production.ini``.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import signal
import sys
import time
from typing import Sequence

if __package__ in (None, ""):
    # Started as a script: import the package from the project folder instead of this
    # script's folder, whose module names must not shadow others.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from georeference.cli.options import add_config_option
from georeference.cli.output import discard_stdout
from georeference.daemon.pidfile import (AlreadyRunningError, PidFile, holds_lock, is_locked,
                                         read_pid)
from georeference.errors import ConfigurationError, StorageError
from georeference.settings import Settings, load_settings

logger = logging.getLogger("georeference.runner")

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Seconds ``start`` waits for the daemon to take its pidfile, and ``stop`` for it to end.
START_TIMEOUT = 30.0
DEFAULT_STOP_TIMEOUT = 600.0

EXIT_OK = 0
EXIT_JOBS_FAILED = 1
EXIT_ERROR = 2
EXIT_NOT_RUNNING = 3


def default_config_path() -> str:
    """Return ./production.ini when it exists, else the project's production.ini."""
    local = os.path.abspath("production.ini")
    return local if os.path.isfile(local) else os.path.join(PROJECT_ROOT, "production.ini")


def _connect(settings: Settings):
    from georeference.database import check_database, make_engine

    engine = make_engine(settings.database_url)
    check_database(engine)
    return engine


def _open_search_index(settings: Settings):
    from georeference.publish.search import open_index

    index = open_index(settings)
    try:
        index.ensure_index()
    except StorageError as exc:
        logger.warning("search index not reachable at start (%s); updates are queued", exc)
    return index


class SingleRunnerLock:
    """An exclusive lock beside an SQLite database: SQLite supports one runner at a time."""

    def __init__(self, settings: Settings) -> None:
        from sqlalchemy.engine import make_url

        database = make_url(settings.database_url).database or ""
        self.path = f"{os.path.abspath(database)}.runner.lock" if database else None
        self._descriptor: int | None = None

    def acquire(self) -> None:
        if self.path is None:
            return
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise StorageError(
                f"another runner already uses the SQLite database ({self.path} is locked); "
                "SQLite supports one runner at a time, use PostgreSQL for several") from None
        self._descriptor = descriptor

    def release(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None


def serve(settings: Settings, once: bool = False) -> int:
    """Run the job loop in this process until stopped, or one pass with ``once``."""
    from georeference.daemon.loop import JobLoop

    engine = _connect(settings)
    lock = None
    if engine.dialect.name == "sqlite":
        lock = SingleRunnerLock(settings)
        lock.acquire()
    try:
        loop = JobLoop(settings, engine, _open_search_index(settings))
        loop.install_signal_handlers()
        if settings.initialize_on_start and not once:
            queue_initialize(engine)
        if once:
            loop.store.register()
            loop._recover_on_sqlite()
            try:
                summary = loop.run_pending()
            finally:
                loop.close()
            loop.store.unregister()
            logger.info("processed %d job(s): %d completed, %d failed, %d released",
                        len(summary.completed) + len(summary.failed) + len(summary.released),
                        len(summary.completed), len(summary.failed), len(summary.released))
            return EXIT_JOBS_FAILED if summary.failed else EXIT_OK
        loop.run_forever()
        return EXIT_OK
    finally:
        if lock is not None:
            lock.release()
        engine.dispose()


def queue_initialize(engine) -> bool:
    """Queue an ``initialize_data`` job unless one is already waiting, and return True if queued.

    Each such job runs alone, so a second one waiting behind the first (after restarts, or
    several runners starting) would only repeat its work.
    """
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from georeference.models import Job

    with Session(engine) as session, session.begin():
        waiting = session.scalar(
            select(Job.id).where(Job.type == "initialize_data", Job.state == "not_started")
            .limit(1))
        if waiting is not None:
            logger.info("initialize_data job %d is already waiting, so none is queued at start-up",
                        waiting)
            return False
        session.add(Job(type="initialize_data", description="{}", user_id="georeference-runner",
                        comment="queued at runner start-up"))
    return True


def command_run(settings: Settings, once: bool) -> int:
    """Run in the foreground, logging to the ini's handlers and to stderr."""
    from georeference.logconfig import configure_logging

    configure_logging(settings, console=True)
    pidfile = None
    if not once:
        pidfile = PidFile(settings.pidfile)
        pidfile.acquire()
    try:
        return serve(settings, once=once)
    finally:
        if pidfile is not None:
            pidfile.release()


def _daemon_main(settings: Settings) -> None:
    """Body of the detached daemon process."""
    import daemon

    from georeference.logconfig import configure_logging

    pidfile = PidFile(settings.pidfile)
    context = daemon.DaemonContext(working_directory=settings.here, umask=0o022,
                                   pidfile=pidfile, detach_process=False)
    with context:
        configure_logging(settings)
        if pidfile.replaced_stale_pid:
            logger.warning("replaced the stale pidfile of pid %d, which is no longer running",
                           pidfile.replaced_stale_pid)
        try:
            serve(settings)
        except Exception:  # noqa: BLE001 - the daemon has no terminal: log why it ends
            logger.exception("runner stopped by an error")
            raise


def command_start(settings: Settings) -> int:
    """Start the daemon in the background and wait until it has locked its pidfile."""
    if holds_lock(settings.pidfile):
        print(f"georeference-runner: already running with pid {read_pid(settings.pidfile)} "
              f"(pidfile {settings.pidfile})", file=sys.stderr)
        return EXIT_ERROR
    engine = _connect(settings)
    sqlite = engine.dialect.name == "sqlite"
    engine.dispose()
    if sqlite:
        # The daemon would take this lock only after detaching, and end with the reason
        # in its log alone. So it is checked here, where the operator sees the message.
        lock = SingleRunnerLock(settings)
        lock.acquire()
        lock.release()
    # A broken logging section fails here, with its message, not silently in the daemon.
    from georeference.logconfig import configure_logging
    configure_logging(settings)
    logging.shutdown()

    child = os.fork()
    if child == 0:
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        try:
            _daemon_main(settings)
        finally:
            os._exit(0)
    os.waitpid(child, 0)

    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if is_locked(settings.pidfile) and read_pid(settings.pidfile):
            print(f"georeference-runner: started with pid {read_pid(settings.pidfile)}")
            return EXIT_OK
        time.sleep(0.1)
    print(f"georeference-runner: the daemon did not start within {START_TIMEOUT:.0f} s; "
          "see the log file configured in the ini", file=sys.stderr)
    return EXIT_ERROR


def command_stop(settings: Settings, timeout: float) -> int:
    """Send SIGTERM and wait until the runner has finished its current job and ended."""
    pid = read_pid(settings.pidfile)
    if not holds_lock(settings.pidfile) or pid is None:
        print("georeference-runner: not running")
        return EXIT_OK
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_locked(settings.pidfile):
            print(f"georeference-runner: stopped (pid {pid})")
            return EXIT_OK
        time.sleep(0.2)
    print(f"georeference-runner: pid {pid} is still finishing its current job after "
          f"{timeout:.0f} s; it stops when the job ends", file=sys.stderr)
    return EXIT_JOBS_FAILED


def command_status(settings: Settings) -> int:
    """Print whether the runner is running, the job counts, live runners and index backlog."""
    from georeference.daemon.status import collect_status

    running = holds_lock(settings.pidfile)
    pid = read_pid(settings.pidfile)
    if running:
        print(f"runner: running (pid {pid})")
    elif pid:
        print(f"runner: not running (stale pidfile of pid {pid})")
    else:
        print("runner: not running")
    for line in collect_status(settings):
        print(line)
    return EXIT_OK if running else EXIT_NOT_RUNNING


def command_init_db(settings: Settings) -> int:
    """Create the vkdb tables that are missing and apply the runner's migrations."""
    from georeference.database import create_schema, make_engine, safe_url

    from sqlalchemy.engine import make_url

    database = make_url(settings.database_url).database
    if settings.database_url.startswith("sqlite") and database and database != ":memory:":
        os.makedirs(os.path.dirname(os.path.abspath(database)), exist_ok=True)
    engine = make_engine(settings.database_url)
    try:
        create_schema(engine)
    finally:
        engine.dispose()
    print(f"georeference-runner: schema ready in {safe_url(settings.database_url)}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="georeference-runner",
        description="Georeference jobs runner: polls the vkdb jobs table and publishes maps.")
    config = add_config_option(parser)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("start", parents=[config], help="start the daemon in the background")
    stop = commands.add_parser("stop", parents=[config], help="stop the daemon after its current job")
    stop.add_argument("--timeout", type=float, default=DEFAULT_STOP_TIMEOUT,
                      help="seconds to wait for the daemon to end (default: %(default)s)")
    commands.add_parser("status", parents=[config], help="show whether the daemon runs and the job counts")
    run = commands.add_parser("run", parents=[config], help="run in the foreground")
    run.add_argument("--once", action="store_true",
                     help="process the pending jobs, then exit: 0, or 1 if a job failed")
    commands.add_parser("init-db", parents=[config], help="create missing vkdb tables and run migrations")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command or "start"
    config_path = args.config or default_config_path()
    try:
        settings = load_settings(config_path)
        if command == "start":
            return command_start(settings)
        if command == "stop":
            return command_stop(settings, args.timeout)
        if command == "status":
            return command_status(settings)
        if command == "run":
            return command_run(settings, args.once)
        return command_init_db(settings)
    except (ConfigurationError, StorageError, AlreadyRunningError) as exc:
        print(f"georeference-runner: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        discard_stdout()
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
