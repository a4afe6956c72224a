"""The runner as operators use it: real processes started, queried and stopped from a shell."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy.orm import Session

from georeference.models import Job
from tests.conftest import PROJECT
from tests.factories import (add_job, add_map, add_transformation, job_row, synthetic_params,
                             write_synthetic_scan)

BIN = os.path.dirname(sys.executable)
RUNNER = os.path.join(BIN, "georeference-runner")
JOBS = os.path.join(BIN, "georeference-jobs")


def write_ini(path, settings, **overrides) -> str:
    values = {
        "sqlalchemy.url": settings.database_url,
        "georeference.image_root": settings.image_root,
        "georeference.georef_root": settings.georef_root,
        "georeference.tms_root": settings.tms_root,
        "georeference.mapfile_root": settings.mapfile_root,
        "georeference.tmp_root": settings.tmp_root,
        "georeference.daemon.sleep_time": "0.5",
        "georeference.daemon.pidfile": settings.pidfile,
        "georeference.daemon.initialize_on_start": "false",
        "georeference.tms.max_zoom": "14",
    }
    values.update(overrides)
    lines = ["[app:main]", "use = call:georeference.settings:app_factory"]
    lines += [f"{key} = {value}" for key, value in values.items()]
    lines += ["", "[loggers]", "keys = root", "", "[handlers]", "keys = logfile", "",
              "[formatters]", "keys = plain", "", "[logger_root]", "level = INFO",
              "handlers = logfile", "", "[handler_logfile]",
              "class = georeference.logconfig.DailyFileHandler",
              "args = ('%(here)s/log/runner.log',)", "formatter = plain", "",
              "[formatter_plain]", "format = %(asctime)s %(levelname)s %(name)s %(message)s", ""]
    with open(path, "w", encoding="utf-8") as ini:
        ini.write("\n".join(lines))
    return str(path)


def run(*args, timeout=120):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                          cwd=PROJECT)


def wait_for(condition, timeout=60.0, interval=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def job_state(engine, job_id):
    with Session(engine) as session:
        return session.get(Job, job_id).state


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        return stat.read().split()[2] != "Z"


@pytest.fixture
def ini(settings, tmp_path):
    path = write_ini(tmp_path / "runner.ini", settings)
    yield path
    pid = None
    if os.path.exists(settings.pidfile):
        with open(settings.pidfile, encoding="ascii") as pid_file:
            pid = int(pid_file.read().strip() or 0)
    if pid and pid_alive(pid):
        os.kill(pid, signal.SIGKILL)


def queue_process_job(engine, settings, size=(600, 500)) -> int:
    with Session(engine) as session:
        add_map(session, settings)
        if size != (600, 500):
            write_large_scan(os.path.join(settings.image_root, "scans", "synthetic.tif"), *size)
        transformation_id = add_transformation(session, 10, synthetic_params())
    with Session(engine) as session:
        job = Job(type="transformation_process",
                  description=json.dumps({"transformation_id": transformation_id}))
        session.add(job)
        session.commit()
        return job.id


def write_large_scan(path, width, height):
    """Scale the synthetic scan up, so its job runs long enough to be interrupted."""
    from osgeo import gdal

    small = path + ".small.tif"
    write_synthetic_scan(small)
    gdal.Translate(path, small, width=width, height=height, creationOptions=["COMPRESS=DEFLATE"])
    os.unlink(small)


def test_daemon_lifecycle(ini, settings, engine):
    script = os.path.join(PROJECT, "georeference", "daemon", "runner.py")
    started = run(sys.executable, script, "--config", ini)
    assert started.returncode == 0, started.stderr
    assert "started with pid" in started.stdout
    pid = int(started.stdout.split("pid")[-1])
    assert pid_alive(pid)
    found = run("pgrep", "-f", "python_env")
    assert str(pid) in found.stdout.split()

    second = run(RUNNER, "--config", ini, "start")
    assert second.returncode == 2
    assert f"already running with pid {pid}" in second.stderr

    # The option is accepted after the subcommand as well.
    status = run(RUNNER, "status", "--config", ini)
    assert status.returncode == 0
    assert f"runner: running (pid {pid})" in status.stdout
    assert "live runners: 1" in status.stdout

    job_id = queue_process_job(engine, settings)
    wait_for(lambda: job_state(engine, job_id) == "completed")
    assert os.path.isfile(os.path.join(settings.georef_root, "m", "synthetic.tif"))
    # Lines of library modules written during the job carry its prefix too.
    with open(os.path.join(os.path.dirname(ini), "log", "runner.log"), encoding="utf-8") as log:
        text = log.read()
    assert f"georeference.geo.tiles job={job_id} map=10 Building tiles of" in text
    assert f"georeference.geo.tiles job={job_id} map=10 Wrote " in text

    stopped = run(RUNNER, "--config", ini, "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert not pid_alive(pid)
    status = run(RUNNER, "--config", ini, "status")
    assert status.returncode == 3
    assert "runner: not running" in status.stdout
    assert "jobs: 0 pending, 0 running, 0 failed, 1 completed" in status.stdout


def test_sigterm_waits_for_current_job(ini, settings, engine):
    job_id = queue_process_job(engine, settings, size=(6000, 5000))
    with Session(engine) as session:
        description = job_row(session, job_id).description
        queued_id = add_job(session, "transformation_set_valid", description)
    started = run(RUNNER, "--config", ini, "start")
    assert started.returncode == 0, started.stderr
    pid = int(started.stdout.split("pid")[-1])

    wait_for(lambda: job_state(engine, job_id) == "running")
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not pid_alive(pid), timeout=300)
    assert job_state(engine, job_id) == "completed"
    # The finishing job's commit claims the next job only while the runner goes on.
    with Session(engine) as session:
        queued = job_row(session, queued_id)
        assert (queued.state, queued.claimed_by, queued.attempts) == ("not_started", None, 0)
    with open(os.path.join(os.path.dirname(ini), "log", "runner.log"), encoding="utf-8") as log:
        text = log.read()
    assert f"job={job_id} map=10 completed" in text
    assert "stopped" in text.splitlines()[-1]


def test_restart_after_kill_9(ini, settings, engine):
    job_id = queue_process_job(engine, settings, size=(6000, 5000))
    started = run(RUNNER, "--config", ini, "start")
    pid = int(started.stdout.split("pid")[-1])
    wait_for(lambda: job_state(engine, job_id) == "running")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid))

    status = run(RUNNER, "--config", ini, "status")
    assert status.returncode == 3
    assert f"stale pidfile of pid {pid}" in status.stdout

    # On PostgreSQL the dead runner's lease must run out first; shorten it for the test.
    write_ini(ini, settings, **{"georeference.job.lease_seconds": "5"})
    restarted = run(RUNNER, "--config", ini, "start")
    assert restarted.returncode == 0, restarted.stderr
    new_pid = int(restarted.stdout.split("pid")[-1])
    assert new_pid != pid
    wait_for(lambda: job_state(engine, job_id) == "completed", timeout=300)
    with Session(engine) as session:
        assert session.get(Job, job_id).attempts == 2
    assert run(RUNNER, "--config", ini, "stop").returncode == 0
    with open(os.path.join(os.path.dirname(ini), "log", "runner.log"), encoding="utf-8") as log:
        assert f"replaced the stale pidfile of pid {pid}" in log.read()
    assert os.listdir(settings.tmp_root) == []


def test_run_once_exit_codes(ini, settings, engine):
    job_id = queue_process_job(engine, settings)
    done = run(RUNNER, "--config", ini, "run", "--once")
    assert done.returncode == 0, done.stderr
    assert job_state(engine, job_id) == "completed"

    with Session(engine) as session:
        unknown = Job(type="transformation_process", description='{"transformation_id": 404}')
        session.add(unknown)
        session.commit()
        unknown_id = unknown.id
    failed = run(RUNNER, "--config", ini, "run", "--once")
    assert failed.returncode == 1
    assert "transformation 404 does not exist" in failed.stderr
    # The queue keys a job without a map as 0; show prints "-" for it, as the log does.
    show_output = run(JOBS, "--config", ini, "show", str(unknown_id)).stdout
    assert "raw_map_id: -" in show_output
    assert "state: failed" in show_output


def test_jobs_cli_add_list_show(ini, settings, engine):
    with Session(engine) as session:
        add_map(session, settings)
        transformation_id = add_transformation(session, 10, synthetic_params())

    added = run(JOBS, "--config", ini, "add", "transformation_set_valid",
                "--transformation-id", str(transformation_id), "--comment", "fits well",
                "--user", "alice")
    assert added.returncode == 0, added.stderr
    job_id = int(added.stdout.split()[2].rstrip(":"))

    listed = run(JOBS, "--config", ini, "list", "--state", "not_started")
    assert "transformation_set_valid" in listed.stdout
    assert str(job_id) in listed.stdout

    shown = run(JOBS, "--config", ini, "show", str(job_id))
    assert "state: not_started" in shown.stdout
    assert '"comment": "fits well"' in shown.stdout
    assert "user_id: alice" in shown.stdout

    unknown = run(JOBS, "--config", ini, "add", "transformation_explode")
    assert unknown.returncode == 2
    assert "unknown job type 'transformation_explode'" in unknown.stderr
    missing = run(JOBS, "--config", ini, "add", "transformation_process",
                  "--transformation-id", "999")
    assert missing.returncode == 2
    assert "transformation 999 does not exist" in missing.stderr


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("content, expected", [
    (None, "configuration file not found"),
    ("this is [not an ini", "cannot read configuration file"),
    ("[app:main]\nuse = call:georeference.settings:app_factory\n"
     "georeference.search.backend = solr\n",
     "invalid value for georeference.search.backend: 'solr'"),
    ("[app:main]\nuse = call:georeference.settings:app_factory\n"
     "georeference.daemon.sleep_tme = 5\n", "unknown key(s)"),
    ("[app:main]\nuse = call:georeference.settings:app_factory\n"
     "georeference.daemon.sleep_time = soon\n", "invalid value for georeference.daemon.sleep_time"),
    ("[app:main]\nuse = call:georeference.settings:app_factory\n"
     "sqlalchemy.url = postgresql+psycopg2://nobody@127.0.0.1:1/vkdb\n",
     "cannot connect to database postgresql+psycopg2://nobody@127.0.0.1:1/vkdb"),
    ("[app:main]\nuse = call:georeference.settings:app_factory\nsqlalchemy.url = not a url\n",
     "invalid sqlalchemy.url 'not a url'"),
    ("[app:main]\nuse = call:georeference.settings:app_factory\n"
     "sqlalchemy.url = mysql://x@localhost/vkdb\n", "unsupported database"),
])
def test_bad_configuration_message(tmp_path, db_url, content, expected):
    path = tmp_path / "bad.ini"
    if content is not None:
        path.write_text(content)
    for command in ("start", "run"):
        result = run(RUNNER, "--config", str(path), command)
        assert result.returncode == 2, result.stdout
        assert expected in result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        if "invalid value" in expected or "unknown key" in expected:
            assert str(path) in result.stderr  # the operator sees which file to edit


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_second_runner_on_sqlite_rejected(ini, settings, engine, tmp_path):
    first = run(RUNNER, "--config", ini, "start")
    assert first.returncode == 0, first.stderr
    try:
        other_ini = write_ini(tmp_path / "other.ini", settings,
                              **{"georeference.daemon.pidfile": str(tmp_path / "other.pid")})
        second = run(RUNNER, "--config", other_ini, "run", "--once")
        assert second.returncode == 2
        assert "SQLite supports one runner at a time" in second.stderr

        # In the background too: start prints the error itself, rather than a daemon dying after it.
        background = run(RUNNER, "start", "--config", other_ini)
        assert background.returncode == 2, background.stdout
        assert "SQLite supports one runner at a time" in background.stderr
        assert len(background.stderr.strip().splitlines()) == 1
        assert not os.path.exists(tmp_path / "other.pid")
    finally:
        assert run(RUNNER, "--config", ini, "stop").returncode == 0


def test_init_db_unreachable_one_line(tmp_path):
    path = tmp_path / "unreachable.ini"
    path.write_text("[app:main]\nuse = call:georeference.settings:app_factory\n"
                    "sqlalchemy.url = postgresql+psycopg2://nobody:secret@127.0.0.1:1/vkdb\n")
    result = run(RUNNER, "--config", str(path), "init-db")
    assert result.returncode == 2
    assert result.stderr.startswith("georeference-runner: cannot create the schema in "
                                    "postgresql+psycopg2://nobody:***@127.0.0.1:1/vkdb")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "secret" not in result.stderr


def test_missing_sqlite_file_not_created(tmp_path):
    database = tmp_path / "absent" / "vkdb.sqlite"
    path = tmp_path / "absent.ini"
    path.write_text("[app:main]\nuse = call:georeference.settings:app_factory\n"
                    f"sqlalchemy.url = sqlite:///{database}\n")
    for command in (["start"], ["run", "--once"]):
        result = run(RUNNER, "--config", str(path), *command)
        assert result.returncode == 2
        assert f"SQLite database {database} not found" in result.stderr
    status = run(RUNNER, "--config", str(path), "status")
    assert f"database: SQLite database {database} not found" in status.stdout
    assert not database.parent.exists()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_broken_logging_fails_start(ini, tmp_path):
    text = open(ini, encoding="utf-8").read().replace("keys = logfile", "keys = logfil")
    with open(ini, "w", encoding="utf-8") as config:
        config.write(text)
    started = time.monotonic()
    result = run(RUNNER, "--config", ini, "start")
    assert result.returncode == 2
    assert "invalid logging configuration" in result.stderr
    assert "handler_logfil" in result.stderr
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_output_into_closed_pipe(ini, settings, engine):
    for program, arguments in ((RUNNER, ["status"]), (JOBS, ["list"])):
        reader = subprocess.Popen(["head", "-c", "1"], stdin=subprocess.PIPE,
                                  stdout=subprocess.DEVNULL)
        writer = subprocess.run([program, "--config", ini, *arguments], stdout=reader.stdin,
                                stderr=subprocess.PIPE, text=True, timeout=60, cwd=PROJECT)
        reader.stdin.close()
        reader.wait()
        assert "Traceback" not in writer.stderr
        assert "BrokenPipeError" not in writer.stderr


@pytest.mark.parametrize("command", ["status", "start"])
def test_command_right_after_kill_9(ini, settings, command):
    """A runner whose main thread has ended while another thread still holds the lock.

    That is how a killed runner looks for a moment. status must not count it as running,
    and start must wait for it instead of reporting it as already running.
    """
    holder = subprocess.Popen([sys.executable, "-c", LINGERING_HOLDER, settings.pidfile, "3"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        wait_for(lambda: not pid_alive(holder.pid), timeout=10, interval=0.02)

        result = run(RUNNER, command, "--config", ini)

        if command == "status":
            assert result.returncode == 3, result.stdout
            assert f"stale pidfile of pid {holder.pid}" in result.stdout
        else:
            assert result.returncode == 0, result.stderr
            assert "started with pid" in result.stdout
    finally:
        holder.kill()
        holder.wait()
        run(RUNNER, "--config", ini, "stop")


# Takes the pidfile's lock, keeps a second thread alive for argv[2] seconds, and ends its
# main thread at once: the main thread is a zombie while the lock is still held.
LINGERING_HOLDER = """
import ctypes, os, sys, threading, time
from georeference.daemon.pidfile import PidFile
PidFile(sys.argv[1]).acquire()
threading.Thread(target=lambda: (time.sleep(float(sys.argv[2])), os._exit(0))).start()
print("locked", flush=True)
ctypes.CDLL(None).pthread_exit(None)
"""
