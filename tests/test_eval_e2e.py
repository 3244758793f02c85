"""`tokencomp eval` against a real `tokencomp serve`: a sweep, resume without re-asking, failures kept apart,
tables recomputed from the logs alone."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest

from tests.llava_fixture import make_llava
from tokencomp.serving.launcher import free_port, running
from tokencomp.serving.server import ServerConfig
from tokencomp.training.scenes import write_split

CLI = [sys.executable, "-m", "tokencomp.cli", "eval"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    write_split("test", 3, root)
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_llava(tmp_path_factory.mktemp("eval-model") / "model")


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_dir):
    root = tmp_path_factory.mktemp("eval-server")
    config = ServerConfig(model=str(model_dir), port=free_port())
    with running(config, log=root / "server.log") as url:
        yield url


def images_processed(server: str) -> float:
    text = urllib.request.urlopen(server.removesuffix("/v1") + "/metrics", timeout=10).read().decode()
    return sum(float(line.split(" ")[1]) for line in text.splitlines() if line.startswith("tokencomp_images_total"))


def _log(out, stem: str):
    """The one log of `stem` (`itg@32`, `none`) in the run folder: logs are named `<stem>-<key digest>.jsonl`."""
    (path,) = (out / "synthetic").glob(f"{stem}-*.jsonl")
    return path


def _eval(server, data_dir, out, *extra):
    return subprocess.run([*CLI, "--endpoint", server, "--data-dir", str(data_dir), "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=600, check=False)


def test_sweep_writes_scores_tables_and_plots(server, data_dir, tmp_path):
    proc = _eval(server, data_dir, tmp_path, "--methods", "id_pruner", "itg", "visionzip", "divprune",
                 "--budgets", "16", "64", "--limit", "4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "adding baselines random, pool" in proc.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    labels = {k.split(",")[0] for k in results["results"]["synthetic"] if "_stderr," not in k}
    assert labels == {"none"} | {f"{m}@{k}" for m in ("id_pruner", "itg", "visionzip", "divprune", "random", "pool")
                                 for k in (16, 64)}
    for k in (16, 64):
        records = [json.loads(x) for x in _log(tmp_path, f"itg@{k}").read_text().splitlines()]
        none = [json.loads(x) for x in _log(tmp_path, "none").read_text().splitlines()]
        assert len(records) == 4 and all(r["status"] == "ok" for r in records)
        by_id = {r["id"]: r["prompt_tokens"] for r in none}
        assert all(r["prompt_tokens"] == by_id[r["id"]] - (576 - k) for r in records)
    table = (tmp_path / "table.md").read_text()
    assert all(f"| {m} |" in table for m in ("id_pruner", "itg", "visionzip", "divprune", "random", "pool"))
    assert (tmp_path / "synthetic_vs_budget.png").stat().st_size > 10_000
    before = images_processed(server)
    again = subprocess.run([*CLI, "--from-logs", "--data-dir", str(data_dir), "--out", str(tmp_path), "--methods",
                            "id_pruner", "itg", "visionzip", "divprune", "--budgets", "16", "64", "--limit", "4"],
                           capture_output=True, text=True, timeout=600, check=False)
    assert again.returncode == 0, again.stderr[-2000:]
    assert images_processed(server) == before  # nothing asked
    assert json.loads((tmp_path / "results.json").read_text()) == results


def test_rerun_resumes_without_asking_again(server, data_dir, tmp_path):
    args = ("--methods", "itg", "--budgets", "32", "--no-baselines")
    assert _eval(server, data_dir, tmp_path, *args, "--limit", "3").returncode == 0
    log = _log(tmp_path, "itg@32")
    first = log.read_text().splitlines()
    log.write_text("\n".join(first[:2]) + "\n" + first[2][: len(first[2]) // 2])  # killed while writing line 3
    before = images_processed(server)
    assert _eval(server, data_dir, tmp_path, *args, "--limit", "5").returncode == 0
    # none: 2 new samples; itg@32: the cut sample + 2 new ones
    assert images_processed(server) - before == 2 + 3
    ids = [json.loads(x)["id"] for x in log.read_text().splitlines() if x.startswith("{") and x.endswith("}")]
    assert len(ids) == len(set(ids)) == 5


def test_failed_requests_are_counted_apart_not_scored(server, data_dir, tmp_path):
    broken = tmp_path / "data"
    broken.mkdir()
    rows = list({r["image"]: r for r in json.loads((data_dir / "questions.json").read_text())}.values())[:3]
    for r in rows:
        (broken / r["image"]).parent.mkdir(parents=True, exist_ok=True)
        (broken / r["image"]).write_bytes((data_dir / r["image"]).read_bytes())
    (broken / rows[0]["image"]).write_bytes(b"not a png")
    (broken / "questions.json").write_text(json.dumps(rows))
    proc = _eval(server, broken, tmp_path / "out", "--methods", "pool", "--budgets", "36", "--no-baselines")
    assert proc.returncode == 0, proc.stderr[-2000:]
    details = json.loads((tmp_path / "out" / "results.json").read_text())["details"]["synthetic"]
    assert details["pool@36"]["failed"] == 1 and details["pool@36"]["answered"] == len(rows) - 1
    assert "(1 failed)" in (tmp_path / "out" / "table.md").read_text()
    again = _eval(server, broken, tmp_path / "out", "--methods", "pool", "--budgets", "36", "--no-baselines")
    assert again.returncode == 0, again.stderr[-2000:]
    asked = [json.loads(x)["id"] for x in _log(tmp_path / "out", "pool@36").read_text().splitlines()]
    assert asked.count(str(rows[0]["question_id"])) == 2 and len(asked) == len(rows) + 1  # only the failure again


def test_in_process_engine_answers_like_the_server_and_resumes(server, model_dir, data_dir, tmp_path):
    args = ("--data-dir", str(data_dir), "--methods", "id_pruner", "--budgets", "32", "--no-baselines", "--limit", "4")
    served = subprocess.run([*CLI, "--endpoint", server, "--out", str(tmp_path / "served"), *args],
                            capture_output=True, text=True, timeout=600, check=False)
    assert served.returncode == 0, served.stderr[-2000:]
    offline_out = tmp_path / "offline"
    served_log = _log(tmp_path / "served", "id_pruner@32")
    log = offline_out / "synthetic" / served_log.name  # the same model (by its weights), the same key
    log.parent.mkdir(parents=True)
    first = json.loads(served_log.read_text().splitlines()[0])
    log.write_text(json.dumps(first | {"prediction": "kept from before"}) + "\n")  # a finished sample
    proc = subprocess.run([*CLI, "--model", str(model_dir), "--in-process", "--out", str(offline_out), *args],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    read = lambda path: {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}
    served_rows, offline_rows = read(served_log), read(log)
    assert offline_rows.keys() == served_rows.keys() and len(offline_rows) == 4
    assert offline_rows[first["id"]]["prediction"] == "kept from before"  # resumed, not asked again
    for rid, row in offline_rows.items():
        assert row["prompt_tokens"] == served_rows[rid]["prompt_tokens"]
        if rid != first["id"]:
            assert row["prediction"] == served_rows[rid]["prediction"]
    assert json.loads((offline_out / "results.json").read_text())["results"]["synthetic"].keys() == {
        "none,none", "none_stderr,none", "id_pruner@32,none", "id_pruner@32_stderr,none"}


@pytest.mark.parametrize("args, message", [
    (["--tasks", "vqa9"], "unknown task 'vqa9'"),
    (["--tasks", "vqav2"], "pass --data-dir"),
    (["--limit", "0"], "--limit must be a positive integer"),
    (["--methods", "nope"], "unknown method 'nope'"),
    (["--data-dir", "/nonexistent/dir"], "does not exist"),
    (["--budgets", "0"], "--budgets must be positive"),
])
def test_bad_input_is_one_line_and_non_zero(tmp_path, args, message):
    proc = subprocess.run([*CLI, "--endpoint", "http://127.0.0.1:9/v1", "--out", str(tmp_path), *args],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert message in line


def test_malformed_questions_file_is_one_line(tmp_path):
    (tmp_path / "questions.json").write_text('[{"question": "no id"}]')
    proc = subprocess.run([*CLI, "--endpoint", "http://127.0.0.1:9/v1", "--data-dir", str(tmp_path), "--out",
                           str(tmp_path / "o")], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "is malformed" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
