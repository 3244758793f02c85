"""The reproduction-study recipe at smoke size: it writes its report and plots, and every run spends the passes
its budget says."""

import argparse
import json

from tokencomp.training.recipes import sparse_sam_study


def test_smoke_study_writes_report_with_pass_budgets(tmp_path):
    parser = argparse.ArgumentParser()
    sparse_sam_study.add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path), "--smoke"])
    assert sparse_sam_study.main(args) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "sam_family.png").stat().st_size > 0 and (tmp_path / "mask_updaters.png").stat().st_size > 0
    report = (tmp_path / "report.md").read_text()
    steps_per_epoch = -(-1437 // sparse_sam_study.BATCH)
    for label, value in results.items():
        assert label in report
        run, first = value["run"], value["seeds"][0]
        assert len(value["seeds"]) == 2 and 0.0 <= first["accuracy"] <= 1.0
        per_step = sparse_sam_study.BACKWARDS_PER_STEP[run["step"]]
        steps = 2 * steps_per_epoch // (per_step if run["budget"] == "gradients" else 1)
        assert first["steps"] == steps
        if run["updater"] in ("static", "set"):
            assert first["backwards"] == steps * per_step
        if run["step"] == "zosam":
            assert first["forwards"] == steps * (2 * args.q + 1)


def _seeds(accuracy: float, spread: float) -> list[dict]:
    return [{"accuracy": accuracy + d, "sharpness": 0.1, "hessian": 1.0, "seconds": 1.0, "cosine": 0.05}
            for d in (-spread, 0.0, spread)]


def test_verdicts_call_a_difference_only_beyond_noise():
    results = {sparse_sam_study._label(run): {"run": run.__dict__, "seeds": _seeds(0.5, 0.01)}
               for run in sparse_sam_study.runs(smoke=False)}
    results[sparse_sam_study._label(sparse_sam_study.Run("sam", 1.0))]["seeds"] = _seeds(0.7, 0.01)
    results[sparse_sam_study._label(sparse_sam_study.Run("s2sam", 1.0))]["seeds"] = _seeds(0.3, 0.01)
    results[sparse_sam_study._label(sparse_sam_study.Run("zosam", 1.0))]["seeds"] = _seeds(0.505, 0.05)
    lines = sparse_sam_study.verdicts(results)
    line = {key: next(x for x in lines if x.startswith(f"- {key} vs SGD, dense, equal epochs"))
            for key in ("SAM", "S2-SAM", "ZO-SAM")}
    assert "higher accuracy? yes" in line["SAM"]
    assert "higher accuracy? no, the opposite" in line["S2-SAM"]
    assert "higher accuracy? within noise" in line["ZO-SAM"]
