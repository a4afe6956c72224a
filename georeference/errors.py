"""Error classes of the runner.

The job loop treats these three families differently. Bad input fails a job once and is
never retried. A processing error fails the job with the step that broke. A storage error
(database or search index unreachable) releases the job, which is retried after a delay.
"""

from __future__ import annotations


class GeoreferenceError(Exception):
    """Base class of every error the runner raises on purpose."""


class ConfigurationError(GeoreferenceError):
    """Raised when the ini file, one of its keys or a configured resource is unusable."""


class JobInputError(GeoreferenceError):
    """Raised when a job, its transformation or its raw map contains bad data.

    The message names what is wrong in words an operator can act on. The loop marks the job
    failed with this message and does not retry it.
    """


class ProcessingError(GeoreferenceError):
    """Raised when a processing step (warp, tiling, writing a product) fails.

    Attributes:
        step: the name of the step that failed, for example ``"warp"``.
    """

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"{step} failed: {message}")
        self.step = step


class StorageError(GeoreferenceError):
    """Raised when the database or the search index cannot be reached or written."""


class PathOutsideRootError(JobInputError):
    """Raised when a path built from database values would leave its configured root."""
