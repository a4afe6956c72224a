"""The job context handed to handlers: the job, its database session, settings and logger."""

from __future__ import annotations

import json
import logging
import os
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable

from sqlalchemy.orm import Session

from georeference.errors import JobInputError
from georeference.publish.products import StagedProducts
from georeference.settings import Settings


CURRENT_JOB: ContextVar[dict[str, Any] | None] = ContextVar("current_job", default=None)
"""The ``extra`` mapping (job id, map id) of the job logger of the job running in this
thread, set by the job loop. Log lines of library modules (tiles, mapfile, search) written
meanwhile get the job's prefix as well, with the map the job works on at that moment."""


def job_prefix(job_id: int, map_id: int | None) -> str:
    """Return the ``job=<id> map=<id>`` prefix of a job's log lines."""
    return f"job={job_id} map={map_id if map_id is not None else '-'} "


class JobLogger(logging.LoggerAdapter):
    """Prefix every line with ``job=<id> map=<id>`` and pass the ids as record attributes."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        job_id = self.extra.get("job_id")
        map_id = self.extra.get("map_id")
        extra = dict(kwargs.get("extra") or {})
        extra.setdefault("job_id", job_id)
        extra.setdefault("map_id", map_id)
        kwargs["extra"] = extra
        return f"{job_prefix(job_id, map_id)}{msg}", kwargs


@dataclass
class JobContext:
    """The state of one job while a handler runs it.

    Attributes:
        job_id: ``jobs.id``.
        job_type: ``jobs.type``.
        description: ``jobs.description`` parsed from JSON.
        session: the job's own transaction; the loop commits it when the handler returns
            and rolls it back when the handler raises.
        settings: the runner's configuration.
        notes: lines the handler wants stored in the job's comment (for example GCP residuals).
        products: products built in the job's staging folder, moved into place by the loop
            just before the commit.
        search_index: the configured search backend, shared by the jobs of one runner.
        tile_pool: PNG encoder processes shared by the jobs of one runner, or None.
        should_stop: returns True when the job ran past its time limit; long steps poll it.
    """

    job_id: int
    job_type: str
    description: dict[str, Any]
    session: Session
    settings: Settings
    logger: JobLogger
    products: StagedProducts
    search_index: Any = None
    tile_pool: Any = None
    search_updates_queued: bool = False
    notes: list[str] = field(default_factory=list)
    should_stop: Callable[[], bool] = lambda: False
    started: float = field(default_factory=time.monotonic)

    def map_staging_dir(self, map_id: int) -> str:
        """Return (and create) the folder where products of one map are built."""
        path = os.path.join(self.products.staging_dir, str(int(map_id)))
        os.makedirs(path, exist_ok=True)
        return path

    def set_map(self, map_id: int) -> None:
        """Name the raw map this job works on, so later log lines carry it."""
        self.logger.extra["map_id"] = map_id

    @property
    def map_id(self) -> int | None:
        return self.logger.extra.get("map_id")

    def transformation_id(self) -> int:
        """Return ``description.transformation_id``, checked to be a positive whole number.

        Raises:
            JobInputError: the id is missing or not a positive whole number.
        """
        value = self.description.get("transformation_id")
        if value is None:
            raise JobInputError("job description lacks 'transformation_id'")
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise JobInputError(
                f"job description has an invalid transformation_id {value!r}; "
                "expected a positive whole number")
        return value


def parse_description(text: str | None) -> dict[str, Any]:
    """Parse ``jobs.description``; an empty description is an empty object.

    Raises:
        JobInputError: the text is not a JSON object.
    """
    if text is None or text.strip() == "":
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise JobInputError(f"job description is not valid JSON ({exc}): {text[:80]!r}") from None
    if not isinstance(value, dict):
        raise JobInputError(f"job description must be a JSON object, got {text[:80]!r}")
    return value
