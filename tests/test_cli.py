"""The `tokencomp` console script: sub-commands and one-line errors."""

from __future__ import annotations

import subprocess
import sys

CLI = [sys.executable, "-m", "tokencomp.cli"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, check=False)


def test_unknown_method_is_one_clear_line():
    proc = _run("bench", "select", "--methods", "nope")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "tokencomp bench: error: unknown method 'nope'; available: cdpruner, divprune, first, id_pruner, itg, mmr, "
        "none, pool, random, visionzip, vispruner"
    )


def test_unknown_command_exits_non_zero():
    proc = _run("frobnicate")
    assert proc.returncode == 2 and "invalid choice: 'frobnicate'" in proc.stderr
