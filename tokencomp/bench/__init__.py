"""`tokencomp bench <name>`: benchmarks that print figures (speed targets live here, never in timed tests)."""

from __future__ import annotations

import argparse
import importlib

# benchmark name -> module with `add_arguments(parser)` and `run(args)`
_BENCHMARKS = {"select": "tokencomp.bench.selection"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, module in _BENCHMARKS.items():
        mod = importlib.import_module(module)
        mod.add_arguments(sub.add_parser(name, help=mod.__doc__.splitlines()[0]))


def run(args: argparse.Namespace) -> int:
    return importlib.import_module(_BENCHMARKS[args.benchmark]).run(args)
