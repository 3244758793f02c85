"""What a sweep writes: `results.json` (lmms-eval's shape plus details), `table.md` and the plots.

Per task and budget: each setting's score with its 95 % cluster-bootstrap interval (clusters: questions about
the same image), a paired comparison of ours (id_pruner, itg) with the best peer at that budget over the
questions both answered, and a "best" row that names a winner only where the paired interval excludes zero.
The paired cluster bootstrap is the primary test (it respects scenes and works for every metric); McNemar's
exact test (questions independent) and Durkalski's clustered McNemar are reported beside it for right/wrong
scores.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from tokencomp.eval import mcnemar, metrics
from tokencomp.eval.cluster_bootstrap import (
    LEVEL,
    Interval,
    PairedDifference,
    mean_interval,
    paired_mean_difference,
    paired_result,
    statistic_interval,
)
from tokencomp.eval.runner import Setting, summarise
from tokencomp.eval.sample import Task

OURS = ("id_pruner", "itg")


@dataclass
class TaskRun:
    """One task's records: per setting, the log's record of each sample (in sample order)."""

    label: str  # the task as results name it (`synthetic`, `synthetic_val`)
    task: Task
    records: dict[Setting, list[dict]]


@dataclass(frozen=True)
class Paired:
    budget: int
    ours: str  # setting labels
    peer: str
    test: PairedDifference
    mcnemar_b: int | None  # questions only ours / only the peer answered right (None: scores not right/wrong)
    mcnemar_c: int | None
    mcnemar_exact_p: float | None
    mcnemar_clustered_p: float | None
    families: dict[str, PairedDifference]  # per question family (group), for tasks scored by a mean

    @property
    def verdict(self) -> str:
        d = self.test.difference
        return "win" if d.low > 0 else "loss" if d.high < 0 else "tie"


def _ok(records: list[dict]) -> list[dict]:
    return [r for r in records if r["status"] == "ok"]


def score_interval(task: Task, records: list[dict], replicates: int) -> Interval:
    """The task's headline score over answered records, with its cluster-bootstrap interval."""
    ok = _ok(records)
    if not ok:
        return Interval(math.nan, math.nan, math.nan, math.nan)
    clusters = [r["cluster"] for r in ok]
    if task.aggregate is metrics.mean_aggregate:
        return mean_interval([r["score"] for r in ok], clusters, replicates=replicates)
    interval, _ = statistic_interval(lambda idx: task.aggregate([ok[i] for i in idx])["score"], clusters,
                                     replicates=replicates)
    return interval


def paired(task: Task, budget: int, ours: Setting, peer: Setting, records: dict[Setting, list[dict]],
           replicates: int) -> Paired | None:
    """Ours against the peer over the samples both answered (None when they share none)."""
    theirs = {r["sample"]: r for r in _ok(records[peer])}
    pairs = [(r, theirs[r["sample"]]) for r in _ok(records[ours]) if r["sample"] in theirs]
    if not pairs:
        return None
    clusters = [a["cluster"] for a, _ in pairs]
    a, b = [x["score"] for x, _ in pairs], [y["score"] for _, y in pairs]
    families = {}
    if task.aggregate is metrics.mean_aggregate:
        test = paired_mean_difference(a, b, clusters, replicates=replicates)
        for group in sorted({x["group"] for x, _ in pairs}):
            idx = [i for i, (x, _) in enumerate(pairs) if x["group"] == group]
            families[group] = paired_mean_difference([a[i] for i in idx], [b[i] for i in idx],
                                                     [clusters[i] for i in idx], replicates=replicates)
    else:
        def difference(idx: np.ndarray) -> float:
            return (task.aggregate([pairs[i][0] for i in idx])["score"]
                    - task.aggregate([pairs[i][1] for i in idx])["score"])

        estimate, replicated = statistic_interval(difference, clusters, replicates=replicates)
        test = paired_result(estimate.estimate, replicated, len(pairs), len(set(clusters)))
    binary = all(s in (0, 1) for s in a + b)
    b_, c_ = mcnemar.discordant(a, b) if binary else (None, None)
    return Paired(budget, ours.label, peer.label, test, b_, c_,
                  mcnemar.exact_p(b_, c_) if binary else None,
                  mcnemar.clustered_p(a, b, clusters) if binary else None, families)


def write_results(runs: list[TaskRun], budgets: list[int], out, replicates: int) -> None:
    """results.json, table.md and one PNG per task in `out`."""
    results, details, comparisons, lines, relative = {}, {}, {}, [], {}
    for run in runs:
        summary = {s: summarise(run.task, recs) | {"interval": score_interval(run.task, recs, replicates)}
                   for s, recs in run.records.items()}
        tests = _comparisons(run, summary, budgets, replicates)
        results[run.label] = {k: v for s, row in summary.items() for k, v in (
            (f"{s.label},none", row["score"]), (f"{s.label}_stderr,none", row["interval"].stderr))}
        details[run.label] = {s.label: {k: v for k, v in row.items() if k != "interval"}
                              | {"ci95": [row["interval"].low, row["interval"].high]} for s, row in summary.items()}
        comparisons[run.label] = [_paired_json(p) for p in tests]
        lines += _task_tables(run, summary, tests, budgets, relative, replicates)
        _plot(run, summary, budgets, out)
    if len(runs) > 1:  # relative performance as pruning papers report it: mean over tasks of score / none
        lines += ["### all tasks: mean % of none", "", "| method | " + " | ".join(f"K={k}" for k in budgets) + " |",
                  "|---|" + "---:|" * len(budgets)]
        for variant, per_task in relative.items():
            cols = [sum(r[i] for r in per_task) / len(per_task) for i in range(len(budgets))]
            lines.append(f"| {variant} | " + " | ".join(f"{c:.1f}" for c in cols) + " |")
        lines.append("")
    config = {"level": LEVEL, "replicates": replicates, "interval": "cluster bootstrap, percentile; clusters are "
              "questions about the same image (scene)", "primary_test": "paired cluster bootstrap of the difference",
              "ours": list(OURS)}
    (out / "results.json").write_text(json.dumps({"results": results, "details": details, "paired": comparisons,
                                                  "config": config}, indent=1))
    (out / "table.md").write_text("\n".join(lines))


def _at(run: TaskRun, budget: int) -> list[Setting]:
    return [s for s in run.records if s.budget == budget]


def _comparisons(run: TaskRun, summary: dict, budgets: list[int], replicates: int) -> list[Paired]:
    """Per budget, every setting of ours against the best-scoring peer (settings with no answer skipped)."""
    tests = []
    for k in budgets:
        score = {s: summary[s]["score"] for s in _at(run, k)}
        peers = [s for s in score if s.method not in OURS and not math.isnan(score[s])]
        if not peers:
            continue
        best_peer = max(peers, key=score.get)
        tests += [t for s in score if s.method in OURS
                  if (t := paired(run.task, k, s, best_peer, run.records, replicates)) is not None]
    return tests


def _paired_json(p: Paired) -> dict:
    d = p.test.difference
    return {"budget": p.budget, "ours": p.ours, "peer": p.peer, "difference": d.estimate, "ci95": [d.low, d.high],
            "stderr": d.stderr, "p_bootstrap": p.test.p_value, "samples": p.test.samples,
            "clusters": p.test.clusters, "mcnemar": {"only_ours_right": p.mcnemar_b, "only_peer_right": p.mcnemar_c,
                                                     "exact_p": p.mcnemar_exact_p,
                                                     "clustered_p": p.mcnemar_clustered_p},
            "verdict": p.verdict,
            "families": {g: {"difference": f.difference.estimate, "ci95": [f.difference.low, f.difference.high],
                             "p_bootstrap": f.p_value, "samples": f.samples, "clusters": f.clusters}
                         for g, f in p.families.items()}}


def _task_tables(run: TaskRun, summary: dict, tests: list[Paired], budgets: list[int], relative: dict,
                 replicates: int) -> list[str]:
    scale = 1.0 if run.task.unit == "points" else 100.0

    def show(x: float) -> str:
        return f"{scale * x:.1f}"

    def with_interval(row: dict) -> str:
        i = row["interval"]
        return f"{show(row['score'])} [{show(i.low)}, {show(i.high)}]"

    by_label = {s.label: s for s in summary}
    full = summary[by_label["none"]] if "none" in by_label else None
    variants = list(dict.fromkeys(s.variant for s in summary if s.method != "none"))
    n = full["answered"] if full else max(r["answered"] for r in summary.values())
    clusters = len({r["cluster"] for recs in run.records.values() for r in _ok(recs)})
    head = f"none: {with_interval(full)}, {full['prompt_tokens']:.0f} prompt tokens; " if full else ""
    lines = [f"### {run.label} ({head}{n} questions about {clusters} images)", "",
             "| method | " + " | ".join(f"K={k}" for k in budgets) + " | mean % of none |",
             "|---|" + "---:|" * (len(budgets) + 1)]
    for variant in variants:
        cells, rel = [], []
        for k in budgets:
            row = summary[by_label[f"{variant}@{k}"]]
            rel.append(100 * row["score"] / full["score"] if full and full["score"] else math.nan)
            failed = f" ({row['failed']} failed)" if row["failed"] else ""
            cells.append(f"{with_interval(row)} ({rel[-1]:.0f}%){failed}")
        relative.setdefault(variant, []).append(rel)
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {sum(rel) / len(rel):.1f} |")
    lines += ["| best | " + " | ".join(_best_cell(run, summary, tests, k, show) for k in budgets) + " | |", "",
              (f"Scores with their {LEVEL:.0%} interval (cluster bootstrap over images). \"best\": ours against the "
              "best peer, paired over the same questions; a name only where the paired interval of the difference "
              "excludes 0, \"tie\" otherwise."), ""]
    if tests:
        lines += _paired_table(tests, show) + _paired_family_table(tests, show)
    if run.task.aggregate is metrics.mean_aggregate:
        for k in budgets:
            lines += _family_table(run, k, scale, replicates)
    return lines


def _best_cell(run: TaskRun, summary: dict, tests: list[Paired], budget: int, show) -> str:
    at = [s for s in _at(run, budget) if not math.isnan(summary[s]["score"])]
    if not at:
        return "-"
    top = max(at, key=lambda s: summary[s]["score"])
    mine = [t for t in tests if t.budget == budget]
    if not mine:
        return f"{top.variant} (untested)"
    best = max(mine, key=lambda t: t.test.difference.estimate)  # ours closest to beating the peer
    d = best.test.difference
    ours, peer = best.ours.rsplit("@", 1)[0], best.peer.rsplit("@", 1)[0]
    gap = f"{show(d.estimate)} [{show(d.low)}, {show(d.high)}]"
    if best.verdict == "win":
        return f"**{ours}** (+{gap} over {peer})"
    if best.verdict == "loss":
        return f"**{peer}** ({ours} {gap})"
    return f"tie ({ours} − {peer}: {gap})"


def _paired_table(tests: list[Paired], show) -> list[str]:
    def p(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    lines = [("Paired: ours − best peer over the same questions (primary: paired cluster bootstrap; McNemar exact "
             "assumes independent questions, clustered McNemar does not)."), "",
             ("| K | ours | best peer | difference [95% CI] | p (bootstrap) | only ours / only peer right | "
             "p (McNemar exact) | p (clustered McNemar) | questions / images | verdict |"),
             "|---:|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for t in tests:
        d = t.test.difference
        counts = "-" if t.mcnemar_b is None else f"{t.mcnemar_b} / {t.mcnemar_c}"
        lines.append(f"| {t.budget} | {t.ours} | {t.peer} | {show(d.estimate)} [{show(d.low)}, {show(d.high)}] | "
                     f"{p(t.test.p_value)} | {counts} | {p(t.mcnemar_exact_p)} | {p(t.mcnemar_clustered_p)} | "
                     f"{t.test.samples} / {t.test.clusters} | {t.verdict} |")
    return lines + [""]


def _paired_family_table(tests: list[Paired], show) -> list[str]:
    groups = sorted({g for t in tests for g in t.families})
    if len(groups) < 2:
        return []

    def cell(t: Paired, g: str) -> str:
        if g not in t.families:
            return "-"
        d = t.families[g].difference
        mark = "**" if d.low > 0 or d.high < 0 else ""  # the family's paired interval excludes 0
        return f"{mark}{show(d.estimate)} [{show(d.low)}, {show(d.high)}]{mark}"

    lines = ["Paired per family: ours − best peer on each family's questions (bold: the interval excludes 0).", "",
             "| K | ours − best peer | " + " | ".join(groups) + " |", "|---:|---|" + "---:|" * len(groups)]
    for t in tests:
        lines.append(f"| {t.budget} | {t.ours} − {t.peer} | " + " | ".join(cell(t, g) for g in groups) + " |")
    return lines + [""]


def _family_table(run: TaskRun, budget: int, scale: float, replicates: int) -> list[str]:
    """Each setting's score per question family at `budget` (with `none` first), with 95 % cluster intervals."""
    rows = [s for s in run.records if s.method == "none"] + _at(run, budget)
    groups = sorted({r["group"] for s in rows for r in _ok(run.records[s])})
    if len(groups) < 2:
        return []
    none = next((s for s in rows if s.method == "none"), None)
    sizes = ({g: sum(r["group"] == g for r in _ok(run.records[none])) for g in groups} if none else {})
    head = [f"{g} ({sizes[g]})" if g in sizes else g for g in groups]
    lines = [(f"#### {run.label} per family at K={budget} (questions per family in brackets; "
             f"{LEVEL:.0%} intervals)"), "", "| method | " + " | ".join(head) + " |", "|---|" + "---:|" * len(groups)]
    for s in rows:
        cells = []
        for g in groups:
            family = [r for r in _ok(run.records[s]) if r["group"] == g]
            if not family:
                cells.append("-")
                continue
            i = mean_interval([r["score"] for r in family], [r["cluster"] for r in family], replicates=replicates)
            cells.append(f"{scale * i.estimate:.1f} [{scale * i.low:.0f}, {scale * i.high:.0f}]")
        lines.append(f"| {s.label} | " + " | ".join(cells) + " |")
    return lines + [""]


def _plot(run: TaskRun, summary: dict, budgets: list[int], out) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_label = {s.label: s for s in summary}
    variants = list(dict.fromkeys(s.variant for s in summary if s.method != "none"))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for key, ax, title in [("score", axes[0], f"accuracy ({LEVEL:.0%} interval)"),
                           ("prompt_tokens", axes[1], "prompt tokens"), ("latency_s", axes[2], "latency (s)")]:
        for i, variant in enumerate(variants):
            rows = [summary[by_label[f"{variant}@{k}"]] for k in budgets]
            values = [r[key] for r in rows]
            if key == "score":  # intervals side by side, not on top of each other
                shifted = [k * (1 + 0.02 * (i - (len(variants) - 1) / 2)) for k in budgets]
                spread = [[r[key] - r["interval"].low for r in rows], [r["interval"].high - r[key] for r in rows]]
                ax.errorbar(shifted, values, yerr=spread, marker="o", capsize=3, label=variant)
            else:
                ax.plot(budgets, values, marker="o", label=variant)
        if "none" in by_label:
            ax.axhline(summary[by_label["none"]][key], color="black", linestyle="--", label="none (all tokens)")
        ax.set_xlabel("budget K (visual tokens per image)")
        ax.set_title(f"{run.label}: {title}")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"{run.label}_vs_budget.png", dpi=110)
    plt.close(fig)
