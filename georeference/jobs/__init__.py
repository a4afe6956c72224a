"""Job handlers, one module per job type, and the registry the loop dispatches through.

A handler is a function that takes a ``JobContext`` and returns when the job is done. It
raises ``JobInputError`` for bad input and ``ProcessingError`` when a step fails; the loop
turns either into a failed job with the message as its comment.
"""

from __future__ import annotations

from typing import Callable

from georeference.errors import JobInputError
from georeference.jobs.context import JobContext

Handler = Callable[[JobContext], None]


def _registry() -> dict[str, Handler]:
    from georeference.jobs import initialize_data, process_transformation, set_validation

    return {
        "transformation_process": process_transformation.run,
        "transformation_set_valid": set_validation.run_set_valid,
        "transformation_set_invalid": set_validation.run_set_invalid,
        "initialize_data": initialize_data.run,
    }


JOB_TYPES = ("transformation_process", "transformation_set_valid",
             "transformation_set_invalid", "initialize_data")


def get_handler(job_type: str) -> Handler:
    """Return the handler for a job type.

    Raises:
        JobInputError: no handler exists for the type.
    """
    handlers = _registry()
    if job_type not in handlers:
        raise JobInputError(
            f"unknown job type {job_type!r}; expected one of {', '.join(JOB_TYPES)}")
    return handlers[job_type]
