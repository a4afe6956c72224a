"""Replace published products so that readers never see a half-written one.

Products are built in a staging folder. ``install`` moves each one into place in one
rename (a tile folder is reached through a symbolic link, which is swapped in one rename),
keeping the old version aside. After the database commit, ``finish`` deletes the old
versions; if the commit fails, ``restore`` puts them back.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass
class _Change:
    final: str
    staged: str | None            # None: remove the product
    backup: str | None = None     # where the old version went, if any
    installed: str | None = None  # what now sits at ``final`` (a file, or a link target)
    old_target: str | None = None # previous target of a tile folder link


@dataclass
class StagedProducts:
    """The product changes of one job, applied together.

    The staging folder is made on first use, in ``scratch_root`` with ``prefix``, so jobs
    that only change the database do not touch the disk.
    """

    scratch_root: str
    prefix: str = "job-"
    changes: list[_Change] = field(default_factory=list)
    _staging_dir: str | None = None

    @property
    def staging_dir(self) -> str:
        """Return the job's staging folder, creating it on first use."""
        if self._staging_dir is None:
            os.makedirs(self.scratch_root, exist_ok=True)
            self._staging_dir = tempfile.mkdtemp(prefix=self.prefix, dir=self.scratch_root)
        return self._staging_dir

    def _remove_staging(self) -> None:
        if self._staging_dir is not None:
            shutil.rmtree(self._staging_dir, ignore_errors=True)

    def replace(self, staged: str, final: str) -> None:
        """Put ``staged`` at ``final`` on install, replacing what is there."""
        self.changes.append(_Change(final=final, staged=staged))

    def remove(self, final: str) -> None:
        """Remove ``final`` on install (kept until ``finish`` so ``restore`` can undo it)."""
        self.changes.append(_Change(final=final, staged=None))

    def install(self) -> None:
        """Move every staged product into place; on an error, undo what was done and raise.

        NOTE: each product is replaced in one rename, but products in different roots are
        replaced one after another. A runner killed within those few milliseconds leaves
        a mix of old and new products until the job, claimed again, installs them anew.
        """
        done: list[_Change] = []
        try:
            for change in self.changes:
                self._install_one(change)
                done.append(change)
        except OSError:
            for change in reversed(done):
                self._restore_one(change)
            raise

    def finish(self) -> None:
        """Delete the old versions and the staging folder once the database has committed."""
        for change in self.changes:
            for leftover in (change.backup, change.old_target):
                if leftover:
                    _remove_path(leftover)
        self._remove_staging()

    def restore(self) -> None:
        """Put the old versions back after a failed commit."""
        for change in reversed(self.changes):
            self._restore_one(change)
        self._remove_staging()

    def discard(self) -> None:
        """Drop everything staged without touching published products."""
        self._remove_staging()

    def _install_one(self, change: _Change) -> None:
        final = change.final
        os.makedirs(os.path.dirname(final), exist_ok=True)
        token = uuid.uuid4().hex[:12]

        if change.staged is None:
            if os.path.lexists(final):
                change.backup = f"{_hidden(final)}.removed-{token}"
                os.rename(final, change.backup)
            return

        if os.path.isdir(change.staged):
            self._install_folder(change, token)
            return

        incoming = f"{_hidden(final)}.incoming-{token}"
        shutil.move(change.staged, incoming)
        if os.path.isfile(final):
            # A hard link keeps the old version while os.replace swaps the name atomically.
            change.backup = f"{_hidden(final)}.old-{token}"
            os.link(final, change.backup)
        os.replace(incoming, final)
        change.installed = final

    def _install_folder(self, change: _Change, token: str) -> None:
        final = change.final
        version = f"{_hidden(final)}.v-{token}"
        shutil.move(change.staged, version)
        link = f"{_hidden(final)}.link-{token}"
        os.symlink(os.path.basename(version), link)

        if os.path.islink(final):
            change.old_target = os.path.join(os.path.dirname(final), os.readlink(final))
        elif os.path.exists(final):
            change.backup = f"{_hidden(final)}.old-{token}"
            os.rename(final, change.backup)
        os.replace(link, final)
        change.installed = version

    def _restore_one(self, change: _Change) -> None:
        final = change.final
        if change.staged is None:
            if change.backup and os.path.lexists(change.backup):
                os.rename(change.backup, final)
            change.backup = None
            return

        if change.old_target:
            link = f"{final}.restore-{uuid.uuid4().hex[:8]}"
            os.symlink(os.path.basename(change.old_target), link)
            os.replace(link, final)
            change.old_target = None
        elif change.backup and os.path.lexists(change.backup):
            if os.path.isdir(change.backup) and os.path.islink(final):
                os.unlink(final)
            os.replace(change.backup, final)
            change.backup = None
        elif os.path.lexists(final):
            _remove_path(final)
        if change.installed and change.installed != final:
            _remove_path(change.installed)
        change.installed = None


def _hidden(path: str) -> str:
    return os.path.join(os.path.dirname(path), "." + os.path.basename(path))


def _remove_path(path: str) -> None:
    """Delete a file or folder; for a link to a tile folder version, delete both."""
    if os.path.islink(path):
        target = os.path.realpath(path)
        os.unlink(path)
        if os.path.isdir(target):
            shutil.rmtree(target, ignore_errors=True)
    elif os.path.isfile(path):
        os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
