"""A pidfile held with an exclusive lock for as long as the runner lives.

The lock, not the pid in the file, shows whether a runner is alive: the kernel releases it
when the process ends, even by ``kill -9``, so a stale pidfile is recognised without
guessing whether a reused pid belongs to another program.
"""

from __future__ import annotations

import fcntl
import os
import time

EXIT_GRACE_SECONDS = 5.0
"""Maximum wait for a killed runner's threads to exit and release the pidfile's lock."""


class AlreadyRunningError(Exception):
    """Raised when another live process holds the pidfile's lock."""

    def __init__(self, path: str, pid: int | None) -> None:
        super().__init__(f"a runner is already running with pid {pid} (pidfile {path})")
        self.path = path
        self.pid = pid


def read_pid(path: str) -> int | None:
    """Return the pid written in a pidfile, or None when there is none or it is unreadable."""
    try:
        with open(path, encoding="ascii") as pid_file:
            return int(pid_file.read().strip() or 0) or None
    except (OSError, ValueError):
        return None


def is_locked(path: str) -> bool:
    """Return True when a live process holds the pidfile's lock."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)
    return False


def process_ended(pid: int) -> bool:
    """Return True when no process has this pid or it has ended and awaits reaping (a zombie).

    After ``kill -9`` the main thread of a runner is a zombie while its other threads still
    exit, and only then does the kernel release the pidfile's lock.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            fields = stat.read().rsplit(")", 1)[-1].split()
    except (FileNotFoundError, ProcessLookupError):
        return True
    except OSError:
        return False
    return bool(fields) and fields[0] in ("Z", "X")


def holds_lock(path: str, grace: float = EXIT_GRACE_SECONDS) -> bool:
    """Return True when a live runner holds the pidfile's lock.

    A holder that has already ended (killed, threads still exiting) is waited for up to
    ``grace`` seconds, so that ``kill -9`` followed at once by ``start`` works.
    """
    deadline = time.monotonic() + grace
    while is_locked(path):
        pid = read_pid(path)
        if pid is None or not process_ended(pid) or time.monotonic() >= deadline:
            return True
        time.sleep(0.02)
    return False


class PidFile:
    """Context manager that takes the pidfile's lock and writes the current pid into it.

    It follows the protocol python-daemon expects of its ``pidfile`` argument.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._descriptor: int | None = None
        self.replaced_stale_pid: int | None = None

    def acquire(self) -> None:
        """Take the lock and write the pid.

        Raises:
            AlreadyRunningError: a live process holds the lock.
        """
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        stale_pid = read_pid(self.path)
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise AlreadyRunningError(self.path, read_pid(self.path)) from None
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode("ascii"))
        os.fsync(descriptor)
        self._descriptor = descriptor
        if stale_pid and stale_pid != os.getpid():
            self.replaced_stale_pid = stale_pid

    def release(self) -> None:
        """Remove the pidfile and drop the lock."""
        if self._descriptor is None:
            return
        try:
            if read_pid(self.path) == os.getpid():
                os.unlink(self.path)
        except OSError:
            pass
        os.close(self._descriptor)
        self._descriptor = None

    def __enter__(self) -> "PidFile":
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
