"""Smoke versions of `make bench`: real servers (vanilla vLLM and TokenComp) on a small random LLaVA; only that
well-formed figures come out is checked here; the figures themselves are the benchmark's business."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tests.llava_fixture import make_llava

CLI = [sys.executable, "-m", "tokencomp.cli", "bench"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_llava(tmp_path_factory.mktemp("bench-model") / "model")


def _numbers(tree) -> list[float]:
    if isinstance(tree, dict):
        return [x for v in tree.values() for x in _numbers(v)]
    if isinstance(tree, list | tuple):
        return [x for v in tree for x in _numbers(v)]
    return [float(tree)] if isinstance(tree, int | float) else []


def test_bench_serve_smoke(model_dir, tmp_path):
    proc = subprocess.run([*CLI, "serve", "--model", str(model_dir), "--requests", "3", "--concurrency", "2",
                           "--methods", "itg", "--budgets", "16", "64", "--long-tokens", "3", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "serve.json").read_text())["model"]
    assert set(report["runs"]) == {f"{s}/{v}" for s in ("vanilla", "none", "itg@16", "itg@64") for v in ("short", "long")}
    for run in report["runs"].values():
        assert run["requests"] == 3 and run["throughput_rps"] > 0 and run["peak_memory_mib"] > 100
        assert 0 < run["ttft_p50_s"] <= run["e2e_p50_s"] <= run["e2e_p99_s"]
    runs = report["runs"]
    assert runs["vanilla/short"]["prompt_tokens"] == runs["none/short"]["prompt_tokens"]  # same model, same prompt
    assert runs["none/short"]["prompt_tokens"] - runs["itg@64/short"]["prompt_tokens"] == 576 - 64
    assert runs["itg@64/long"]["completion_tokens"] == 3  # EOS ignored: the long variant answers in full
    cost = report["cost_model"]
    assert set(cost["ideal_speedup"]) == {"itg@16", "itg@64"} and all(v > 0 for v in cost["ideal_speedup"].values())
    assert all(math.isfinite(x) for x in _numbers(report))
    table = (tmp_path / "serve.md").read_text()
    assert "| itg@64 | short |" in table and "achieved / ideal" in table
    assert (tmp_path / "serve_model.png").stat().st_size > 10_000


def test_bench_soak_smoke(model_dir, tmp_path):
    proc = subprocess.run([*CLI, "soak", "--model", str(model_dir), "--clients", "4", "--seconds", "10",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "soak.json").read_text())
    assert result["valid ok"] > 0 and result["valid 4xx"] == result["valid other error"] == 0, result["examples"]
    assert result["invalid 4xx"] > 0 and result["invalid ok"] == result["invalid other error"] == 0
    assert result["server_alive_at_end"] and result["memory_start_mib"] > 100
    assert result["counted"]["tokencomp_images_total"] == sum(result["served"].values()) == result["valid ok"]
    assert result["counted"]["tokencomp_visual_tokens_out_total"] == result["served tokens out"]
    assert "| valid requests failed | 0 | 0 |" in (tmp_path / "soak.md").read_text()


@pytest.mark.parametrize(("args", "message"), [
    (["serve", "--methods", "nope"], "unknown method 'nope'"),
    (["serve", "--budgets", "0"], "--budgets must be in [1, 576]"),
    (["serve", "--model", "/nonexistent"], "not one"),
    (["soak", "--clients", "0"], "--clients must be >= 1"),
])
def test_bench_bad_arguments_are_one_line(args, message):
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert message in line


def test_scaled_model_keeps_the_tower_and_has_a_0_3b_llm(model_dir, tmp_path):
    from safetensors import safe_open

    from tokencomp.bench.scaled_model import build_scaled, parameter_count

    scaled = build_scaled(model_dir, tmp_path / "scaled")
    counts = parameter_count(scaled)
    assert counts["language_model"] >= 0.3e9
    assert counts["vision_tower"] == parameter_count(model_dir)["vision_tower"]
    with safe_open(model_dir / "model.safetensors", "pt") as small, safe_open(scaled / "model.safetensors", "pt") as big:
        key = "vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight"
        assert (small.get_tensor(key) == big.get_tensor(key)).all()
