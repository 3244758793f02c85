"""`tokencomp train --list` prints every registered recipe with its description; `tokencomp train` without a
recipe exits non-zero with one line pointing at --list."""

from __future__ import annotations

import importlib
import subprocess
import sys

from tokencomp.training.cli import RECIPES

TRAIN = [sys.executable, "-m", "tokencomp.cli", "train"]


def test_list_prints_every_recipe_with_its_docstring_first_line():
    proc = subprocess.run([*TRAIN, "--list"], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == len(RECIPES)
    for line, (name, module) in zip(lines, RECIPES.items(), strict=True):
        first = importlib.import_module(module).__doc__.splitlines()[0]
        assert line.split()[0] == name and line.endswith(first), line


def test_train_without_a_recipe_points_at_list():
    proc = subprocess.run(TRAIN, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("tokencomp train: error: ") and "--list" in line


def test_every_recipe_is_one_runnable_module():
    """A registered recipe exposes add_arguments and main, and a docstring whose first line describes it."""
    for name, module_name in RECIPES.items():
        module = importlib.import_module(module_name)
        assert callable(module.add_arguments) and callable(module.main), name
        assert module.__doc__ and module.__doc__.splitlines()[0].strip(), name
