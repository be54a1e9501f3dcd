"""CLI commands of the exporter side (``bus``, ``gateway``), registered into ``studyin-analytics``."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this part's subcommands to the ``studyin-analytics`` parser."""
