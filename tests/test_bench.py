"""Smoke versions of `make bench`: real servers (vanilla vLLM and TokenComp) on a small random LLaVA; only that
well-formed figures come out is checked here; the figures themselves are the benchmark's business."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest
import torch

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
    proc = subprocess.run([*CLI, "serve", "--model", str(model_dir), "--rounds", "2", "--requests", "3",
                           "--concurrency", "2", "--methods", "itg", "--budgets", "16", "64", "--long-tokens", "3",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "serve.json").read_text())["model"]
    labels = ("vanilla", "none", "first@16", "itg@16", "first@64", "itg@64")
    assert set(report["runs"]) == {f"{s}/{v}" for s in labels for v in ("short", "long")}
    for rounds in report["runs"].values():
        assert len(rounds) == 2  # one run per round
        for run in rounds:
            assert run["requests"] == 3 and run["throughput_rps"] > 0 and run["peak_memory_mib"] > 100
            assert 0 < run["ttft_p50_s"] <= run["e2e_p50_s"] <= run["e2e_p99_s"]
    runs = {key: rounds[0] for key, rounds in report["runs"].items()}
    assert runs["vanilla/short"]["prompt_tokens"] == runs["none/short"]["prompt_tokens"]  # same model, same prompt
    assert runs["none/short"]["prompt_tokens"] - runs["itg@64/short"]["prompt_tokens"] == 576 - 64
    assert runs["first@64/short"]["prompt_tokens"] == runs["itg@64/short"]["prompt_tokens"]
    assert runs["itg@64/long"]["completion_tokens"] == 3  # EOS ignored: the long variant answers in full
    summary = report["summary"]
    assert {"itg@16/short vs oracle", "itg@64/long vs oracle"} <= set(summary)
    for s in [summary["itg@64/short vs oracle"], summary["none/short"]["throughput"]]:
        assert 0 < s["low"] <= s["high"] and s["rounds"] == 2
    assert all(math.isfinite(x) for x in _numbers(report))
    table = (tmp_path / "serve.md").read_text()
    assert "| itg@64 | short |" in table and "Sanity" in table and "× oracle first@K" in table
    assert (tmp_path / "serve_model.png").stat().st_size > 10_000


def test_ratio_summary_by_hand():
    from tokencomp.benchmarks.serve_report import ratio_summary, sanity_verdict

    same = ratio_summary([1.0, 1.0, 1.0])
    assert same == {"median": 1.0, "low": 1.0, "high": 1.0, "rounds": 3}
    assert "within ±2 %" in sanity_verdict(same, "throughput")
    # logs of 2 and 8: mean log 4, sd = ln 4 / sqrt 2, half-width 12.706 * sd / sqrt 2 = 12.706 * ln 2
    wide = ratio_summary([2.0, 8.0])
    assert math.isclose(wide["low"], 4 * 2 ** -12.706) and math.isclose(wide["high"], 4 * 2 ** 12.706)
    assert "more rounds needed" in sanity_verdict(wide, "TTFT p50")
    assert "lower than vanilla" in sanity_verdict(ratio_summary([0.90, 0.91, 0.92]), "throughput")


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

    from tokencomp.benchmarks.scaled_model import build_scaled, parameter_count

    scaled = build_scaled(model_dir, tmp_path / "scaled")
    counts = parameter_count(scaled)
    assert counts["language_model"] >= 0.3e9
    assert counts["vision_tower"] == parameter_count(model_dir)["vision_tower"]
    with safe_open(model_dir / "model.safetensors", "pt") as small, safe_open(scaled / "model.safetensors", "pt") as big:
        key = "vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight"
        assert (small.get_tensor(key) == big.get_tensor(key)).all()


def test_bench_select_reports_median_spread_and_ratio_to_the_floor(tmp_path):
    out = tmp_path / "select.md"
    proc = subprocess.run([*CLI, "select", "--n", "64", "--d", "16", "--k", "8", "16", "--repeats", "3", "--out",
                           str(out)], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text().strip() == proc.stdout.strip()
    number = r"(\d+\.\d+)"
    spread = rf"{number} \({number}–{number}\)"
    (floor_line,) = [line for line in proc.stdout.splitlines() if line.startswith("N = 64, D = 16: floor")]
    floor, low, high = (float(x) for x in re.search(spread, floor_line).groups())
    assert low <= floor <= high and floor >= 0.001  # one matmul and its normalisation take microseconds
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "method" not in line]
    assert len(rows) == 10  # every method but none
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        for ms, ratio in zip(cells[1::2], cells[2::2]):  # K = 8, then K = 16
            median, low, high = (float(x) for x in re.fullmatch(spread, ms).groups())
            assert low <= median <= high, row
            # the printed ratio (2 decimals) is this median over the floor's (both printed to 3 decimals)
            lowest, highest = (median - 5e-4) / (floor + 5e-4), (median + 5e-4) / (floor - 5e-4)
            assert lowest - 5e-3 <= float(ratio) <= highest + 5e-3, row


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a machine with CUDA, --device cuda is valid: no refusal to check")
def test_bench_select_on_a_missing_device_is_one_clear_line():
    proc = subprocess.run([*CLI, "select", "--device", "cuda"], capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "tokencomp bench: error: --device cuda: CUDA is not available on this machine"
