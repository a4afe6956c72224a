"""Command-line options shared by ``georeference-runner`` and ``georeference-jobs``."""

from __future__ import annotations

import argparse

CONFIG_HELP = "PasteDeploy ini file (default: ./production.ini, else the project's production.ini)"


def add_config_option(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--config`` to the command and return a parent parser that adds it to subcommands.

    Operators write the option before or after the subcommand. The subcommands' copy has
    no default, so that it does not overwrite a value given before the subcommand.
    """
    parser.add_argument("--config", default=None, help=CONFIG_HELP)
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--config", default=argparse.SUPPRESS, help=CONFIG_HELP)
    return parent
