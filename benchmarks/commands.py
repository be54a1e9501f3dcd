"""CLI command ``bench``, registered into ``studyin-analytics``."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``bench`` subcommand to the ``studyin-analytics`` parser."""
