"""Terminal output helpers shared by the command-line tools."""

from __future__ import annotations

import os
import sys


def discard_stdout() -> None:
    """Point stdout at /dev/null after its reader went away (for example ``| head``).

    Python flushes stdout at exit; without this, that flush raises BrokenPipeError again.
    """
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
