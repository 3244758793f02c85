"""Per-sample logs belong to one model, task and setting; failed or changed samples are asked again; and
`tokencomp eval --from-logs` rewrites the tables from logs alone (never from another model's answers). Real
files and the real CLI; no engine is needed because nothing is asked."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from tokencomp import cli
from tokencomp.eval import tasks
from tokencomp.eval.cli import parse_options, settings
from tokencomp.eval.fingerprint import model_identity
from tokencomp.eval.runner import Log, Setting, answered, logged, pending
from tokencomp.training.scenes import write_split

SYNTHETIC = tasks.get("synthetic")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_split("test", 4, tmp_path_factory.mktemp("synthetic")).parent  # the folder of questions.json


@pytest.fixture(scope="module")
def samples(data_dir):
    return tasks.load(SYNTHETIC, data_dir, None, None)


def _model(root, weights: bytes):
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text('{"model_type": "llava"}')
    (root / "model.safetensors").write_bytes(weights)
    return root


def _write(log: Log, records: list[dict]) -> None:
    with log.open() as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def _answer(log: Log, sample, right: bool) -> dict:
    return answered(SYNTHETIC, sample, sample.answers[0] if right else "no idea", 10, 0.01, log.key)


def test_every_part_of_the_key_gets_its_own_log(tmp_path):
    base = ("model-a", "synthetic", SYNTHETIC, Setting("itg", 64))
    variants = [("model-b", "synthetic", SYNTHETIC, Setting("itg", 64)),
                ("model-a", "synthetic_val", SYNTHETIC, Setting("itg", 64)),
                ("model-a", "synthetic", SYNTHETIC, Setting("itg", 32)),
                ("model-a", "synthetic", SYNTHETIC, Setting("id_pruner", 64)),
                ("model-a", "synthetic", SYNTHETIC, Setting("itg", 64, question_aware=True)),
                ("model-a", "synthetic", SYNTHETIC, Setting("itg", 64, seed=3)),
                ("model-a", "synthetic", SYNTHETIC, Setting("itg", 64, options=(("tau", 0.1),)))]
    paths = {Log.of(tmp_path, *base).path} | {Log.of(tmp_path, *v).path for v in variants}
    assert len(paths) == 1 + len(variants)
    assert Log.of(tmp_path, *base) == Log.of(tmp_path, *base)  # the same key finds the same log again


def test_another_models_answers_are_never_reused(tmp_path, samples):
    setting = Setting("id_pruner", 32)
    mine, theirs = (Log.of(tmp_path, m, "synthetic", SYNTHETIC, setting) for m in ("model-a", "model-b"))
    _write(mine, [_answer(mine, s, True) for s in samples])
    assert pending(samples, mine) == [] and len(logged(samples, mine)) == len(samples)
    assert pending(samples, theirs) == samples
    shutil.copy(mine.path, theirs.path)  # even a log copied under the other key: its records carry their key
    assert pending(samples, theirs) == samples and logged(samples, theirs) == []


def test_failed_requests_are_asked_again_and_answers_win_over_failures(tmp_path, samples):
    log = Log.of(tmp_path, "model-a", "synthetic", SYNTHETIC, Setting("pool", 36))
    failed = lambda s: _answer(log, s, True) | {"status": "failed", "error": "500: engine died"}
    _write(log, [_answer(log, samples[0], True), failed(samples[1])])
    assert pending(samples[:2], log) == [samples[1]]
    assert [r["status"] for r in logged(samples[:2], log)] == ["ok", "failed"]
    _write(log, [_answer(log, samples[1], False), failed(samples[0])])  # the retry answers; a late failure
    assert pending(samples[:2], log) == []
    assert [r["status"] for r in logged(samples[:2], log)] == ["ok", "ok"]
    assert logged(samples[:2], log)[1]["prediction"] == "no idea"


def test_a_changed_question_or_image_is_asked_again(tmp_path, samples, data_dir):
    log = Log.of(tmp_path, "model-a", "synthetic", SYNTHETIC, Setting("mmr", 16))
    _write(log, [_answer(log, s, True) for s in samples[:2]])
    reworded = dataclasses.replace(samples[0], question=samples[0].question + " Answer in one word.")
    assert pending([reworded, samples[1]], log) == [reworded]
    image = tmp_path / "other.png"
    shutil.copy(samples[1].image, image)
    assert pending([dataclasses.replace(samples[1], image=image)], log) == []  # same bytes: same sample
    elsewhere = next(s for s in samples if s.image != samples[1].image)
    image.write_bytes(elsewhere.image.read_bytes())  # another scene's picture under the same question
    assert pending([dataclasses.replace(samples[1], image=image)], log) != []


def test_model_identity_follows_the_weights_not_the_scorecard(tmp_path):
    model = _model(tmp_path / "m", b"weights-1")
    first = model_identity(str(model))
    (model / "eval.json").write_text('{"accuracy": 0.9}')  # re-scoring a model does not change its answers
    assert model_identity(str(model)) == first
    (model / "model.safetensors").write_bytes(b"weights-2")  # retrained into the same folder
    assert model_identity(str(model)) != first
    assert model_identity("served-name") == "served-name"


def _eval(*args: str) -> int:
    return cli.main(["eval", *args])


def test_from_logs_recomputes_tables_and_refuses_another_models_logs(tmp_path, samples, data_dir, capsys):
    model, other = _model(tmp_path / "a", b"a"), _model(tmp_path / "b", b"b")
    out = tmp_path / "out"
    identity = model_identity(str(model))
    # vispruner is wrong on every other question at K=8 and right everywhere at K=16; the rest always right
    right = {"none": lambda i, k: True, "id_pruner": lambda i, k: True, "divprune": lambda i, k: True,
             "vispruner": lambda i, k: k == 16 or i % 2 == 0}
    for method, is_right in right.items():
        for k in ([None] if method == "none" else [8, 16]):
            log = Log.of(out, identity, "synthetic", SYNTHETIC, Setting(method, k))
            _write(log, [_answer(log, s, is_right(i, k)) for i, s in enumerate(samples)])
    args = ["--data-dir", str(data_dir), "--methods", "id_pruner", "vispruner", "divprune", "--budgets", "8", "16",
            "--no-baselines", "--out", str(out), "--from-logs", "--replicates", "500"]
    assert _eval(*args, "--model", str(model)) == 0
    results = json.loads((out / "results.json").read_text())
    n = len(samples)
    assert results["results"]["synthetic"]["vispruner@8,none"] == pytest.approx(sum(i % 2 == 0 for i in range(n)) / n)
    assert results["results"]["synthetic"]["id_pruner@8,none"] == 1.0
    assert results["results"]["synthetic"]["id_pruner@8_stderr,none"] == 0.0  # right everywhere: no spread
    paired = {p["budget"]: p for p in results["paired"]["synthetic"]}
    assert paired[8]["peer"] == "divprune@8" and paired[8]["verdict"] == "tie"  # divprune is as good at K=8
    assert paired[8]["difference"] == 0.0 and paired[8]["p_bootstrap"] == 1.0
    table = (out / "table.md").read_text()
    assert "| best | tie (id_pruner − divprune: 0.0 [0.0, 0.0]) | tie (id_pruner − " in table
    assert "#### synthetic per family at K=8" in table and (out / "synthetic_vs_budget.png").stat().st_size > 10_000

    assert _eval(*args) == 0  # the logs hold one model: no --model needed
    capsys.readouterr()
    assert _eval(*args, "--model", str(other)) == 2  # another model's logs do not exist: nothing is reused
    assert "have no answer" in capsys.readouterr().err


@pytest.mark.parametrize("ours_better", [True, False])
def test_a_winner_is_named_only_where_the_paired_interval_excludes_zero(tmp_path, samples, data_dir, ours_better):
    out = tmp_path / "out"
    some = lambda i: i % 3 != 0  # wrong on every third question: on some in every scene (4-7 in a row)
    right = {"none": lambda i: True, "itg": (lambda i: True) if ours_better else some,
             "mmr": some if ours_better else (lambda i: True)}
    for method, is_right in right.items():
        for k in [None] if method == "none" else [8]:
            log = Log.of(out, "served-model", "synthetic", SYNTHETIC, Setting(method, k))
            _write(log, [_answer(log, s, is_right(i)) for i, s in enumerate(samples)])
    assert _eval("--data-dir", str(data_dir), "--methods", "itg", "mmr", "--budgets", "8", "--no-baselines",
                 "--out", str(out), "--from-logs", "--replicates", "500") == 0
    (test,) = json.loads((out / "results.json").read_text())["paired"]["synthetic"]
    wrong = sum(i % 3 == 0 for i in range(len(samples)))
    sign = 1 if ours_better else -1
    assert test["difference"] == pytest.approx(sign * wrong / len(samples))
    assert test["verdict"] == ("win" if ours_better else "loss")
    counts = (wrong, 0) if ours_better else (0, wrong)
    assert (test["mcnemar"]["only_ours_right"], test["mcnemar"]["only_peer_right"]) == counts
    assert test["mcnemar"]["exact_p"] == pytest.approx(2 / 2**wrong)
    for family, result in test["families"].items():  # the same comparison on each family's questions alone
        members = [i for i, s in enumerate(samples) if s.group == family]
        assert result["difference"] == pytest.approx(sign * sum(i % 3 == 0 for i in members) / len(members))
    assert test["families"].keys() == {s.group for s in samples}
    table = (out / "table.md").read_text()
    assert ("| best | **itg** (+" if ours_better else "| best | **mmr** (itg -") in table
    assert "| 8 | itg@8 − mmr@8 | " in table  # the per-family paired table


def test_split_is_checked_against_the_data(tmp_path, data_dir, capsys):
    assert _eval("--data-dir", str(data_dir), "--split", "val", "--out", str(tmp_path), "--from-logs") == 2
    assert "not of the 'val' split" in capsys.readouterr().err
    assert _eval("--tasks", "pope", "--split", "val", "--data-dir", str(data_dir), "--out", str(tmp_path)) == 2
    assert "'pope' has none" in capsys.readouterr().err


def test_sweep_settings_carry_options_only_where_they_change_answers():
    sweep = settings(["itg", "vispruner", "random"], [32], False, question_aware=True, seed=3,
                     options=parse_options(["itg.tau=0.1", "itg.restore_norm=false"]))
    by_method = {s.method: s for s in sweep}
    assert by_method["itg"] == Setting("itg", 32, question_aware=True, options=(("restore_norm", False),
                                                                                  ("tau", 0.1)))
    assert by_method["vispruner"] == Setting("vispruner", 32)  # reads no question: question_aware changes nothing
    assert by_method["random"] == Setting("random", 32, seed=3)
    assert by_method["itg"].label == "itg[qa,restore_norm=False,tau=0.1]@32"
    assert by_method["itg"].body()["mm_processor_kwargs"]["tokencomp"] == {
        "method": "itg", "budget": 32, "question_aware": True, "options": {"restore_norm": False, "tau": 0.1}}


@pytest.mark.parametrize("options, message", [
    (["itg.tau=-1"], "options.tau"),
    (["itg.nope=1"], "is not an option of 'itg'"),
    (["mmr.alpha=0.3"], "not in --methods"),
    (["tau=0.1"], "METHOD.NAME=VALUE"),
])
def test_bad_options_are_refused_by_name(options, message):
    with pytest.raises(ValueError, match=message):
        settings(["itg"], [32], False, options=parse_options(options))
