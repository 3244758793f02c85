"""The `tokencomp` console script: sub-commands, one-line errors, and the selection benchmark's output."""

from __future__ import annotations

import re
import subprocess
import sys

CLI = [sys.executable, "-m", "tokencomp.cli"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, check=False)


def test_bench_select_prints_a_well_formed_table(tmp_path):
    out = tmp_path / "select.md"
    proc = _run("bench", "select", "--n", "64", "--d", "16", "--k", "8", "16", "--repeats", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "method" not in line]
    assert len(rows) == 10  # every method but none
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert all(re.fullmatch(r"\d+\.\d", c) for c in cells[1:]), row
    assert out.read_text().strip() == proc.stdout.strip()


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
