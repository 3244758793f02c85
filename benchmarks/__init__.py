"""`tokencomp bench <name>`: benchmarks that print figures (speed targets live here, never in timed tests)."""

from __future__ import annotations

import argparse
import importlib

from tokencomp.cli import add_named

_BENCHMARKS = {"select": "tokencomp.benchmarks.selection", "serve": "tokencomp.benchmarks.serving",
               "soak": "tokencomp.benchmarks.soak"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_named(parser, "benchmark", _BENCHMARKS)


def run(args: argparse.Namespace) -> int:
    return importlib.import_module(_BENCHMARKS[args.benchmark]).run(args)
