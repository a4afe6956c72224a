"""Logging set-up from the ini file's ``[loggers]``/``[handlers]``/``[formatters]`` sections."""

from __future__ import annotations

import configparser
import logging
import logging.config
import logging.handlers
import os
import sys
from typing import Any, Callable

from georeference.errors import ConfigurationError
from georeference.jobs.context import CURRENT_JOB, job_prefix
from georeference.settings import Settings

CONSOLE_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def _prefix_job_lines(make_record: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    """Wrap a log record factory so that lines written while a job runs carry its prefix.

    The job loop's own lines already start with ``job=``, and are left as they are.
    """
    def make_job_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        current = CURRENT_JOB.get()
        if current is not None and not str(record.msg).startswith("job="):
            # Only the text: ids set as attributes here would clash with a caller's ``extra``.
            record.msg = f"{job_prefix(current.get('job_id'), current.get('map_id'))}{record.msg}"
        return record

    make_job_record.prefixes_job_lines = True  # type: ignore[attr-defined]
    return make_job_record


def install_job_prefix() -> None:
    """Make every log line written during a job start with ``job=<id> map=<id>``."""
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "prefixes_job_lines", False):
        logging.setLogRecordFactory(_prefix_job_lines(factory))


class DailyFileHandler(logging.handlers.TimedRotatingFileHandler):
    """A log file rotated at midnight that creates its folder first."""

    def __init__(self, filename: str, backup_count: int = 14) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(filename)), exist_ok=True)
        super().__init__(filename, when="midnight", backupCount=backup_count, encoding="utf-8")


def configure_logging(settings: Settings, console: bool = False) -> None:
    """Apply the ini's logging sections; add a stderr handler for foreground runs.

    Raises:
        ConfigurationError: the logging sections are broken.
    """
    ini_path = settings.ini_path
    has_sections = False
    if ini_path:
        parser = configparser.ConfigParser()
        parser.read(ini_path)
        has_sections = parser.has_section("loggers")
    if has_sections:
        try:
            logging.config.fileConfig(ini_path, defaults={"here": settings.here},
                                      disable_existing_loggers=False)
        except (KeyError, ValueError, TypeError, OSError, configparser.Error) as exc:
            raise ConfigurationError(
                f"invalid logging configuration in {ini_path}: {type(exc).__name__}: {exc}"
            ) from None
    else:
        logging.basicConfig(level=logging.INFO, format=CONSOLE_FORMAT)

    if console:
        # The package logger may not propagate to the root, so it gets its own copy.
        for target in (logging.getLogger(), logging.getLogger("georeference")):
            if not any(getattr(handler, "stream", None) in (sys.stderr, sys.stdout)
                       for handler in target.handlers):
                handler = logging.StreamHandler(sys.stderr)
                handler.setFormatter(logging.Formatter(CONSOLE_FORMAT))
                target.addHandler(handler)
    logging.captureWarnings(True)
    install_job_prefix()
