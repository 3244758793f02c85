"""`bench serve`'s report: per setting, ratios within a round (to vanilla vLLM; for methods also to the zero-cost
oracle at the same budget), summarised over rounds by the median and a 95 % interval, a verdict on the
`none` vs vanilla sanity row, and a PNG per model of the throughput ratio against the budget."""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics

# two-sided 95 % quantiles of Student's t for 1 ... 30 degrees of freedom (no scipy in the engine's venv)
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045,
         2.042]
SANITY_BAND = 0.02  # none and vanilla do the same work: their ratio should be within ±2 %


def ratio_summary(ratios: list[float]) -> dict:
    """Median and 95 % interval of per-round ratios (t interval on their logarithms, back-transformed)."""
    logs = [math.log(r) for r in ratios]
    half = _T975[min(len(logs) - 1, len(_T975)) - 1] * statistics.stdev(logs) / math.sqrt(len(logs))
    centre = statistics.mean(logs)
    return {"median": statistics.median(ratios), "low": math.exp(centre - half), "high": math.exp(centre + half),
            "rounds": len(ratios)}


def paired(runs: dict[str, list[dict]], key: str, base: str, field: str) -> dict:
    return ratio_summary([a[field] / b[field] for a, b in zip(runs[key], runs[base])])


def _fmt(s: dict) -> str:
    return f"{s['median']:.2f} [{s['low']:.2f}, {s['high']:.2f}]"


def sanity_verdict(summary: dict, what: str) -> str:
    """What the none-vs-vanilla interval says about `what` (ratio > 1 means none is larger)."""
    if 1 - SANITY_BAND <= summary["low"] and summary["high"] <= 1 + SANITY_BAND:
        return f"{what}: within ±2 % of vanilla ({_fmt(summary)})"
    if summary["low"] > 1 or summary["high"] < 1:
        side = "higher" if summary["low"] > 1 else "lower"
        return f"{what}: `none` is {side} than vanilla beyond noise ({_fmt(summary)})"
    return f"{what}: no difference shown, but the interval is wider than ±2 % ({_fmt(summary)}): more rounds needed"


def model_section(name: str, runs: dict[str, list[dict]], args: argparse.Namespace) -> tuple[list[str], dict]:
    lines = [f"### {name}", "",
             ("| setting | answer | prompt tokens | req/s (median) | × vanilla [95 %] | TTFT p50 × vanilla [95 %] | "
              "× oracle first@K [95 %] |"), "|---|---|---:|---:|---:|---:|---:|"]
    summary = {}
    for key, rounds in runs.items():
        label, variant = key.split("/")
        base = f"vanilla/{variant}"
        throughput = paired(runs, key, base, "throughput_rps")
        ttft = paired(runs, key, base, "ttft_p50_s")
        oracle = ""
        if "@" in label and not label.startswith("first@"):
            oracle_key = f"first@{label.split('@')[1]}/{variant}"
            summary[f"{key} vs oracle"] = paired(runs, key, oracle_key, "throughput_rps")
            oracle = _fmt(summary[f"{key} vs oracle"])
        summary[key] = {"throughput": throughput, "ttft": ttft}
        lines.append(f"| {label} | {variant} | {rounds[0]['prompt_tokens']:.0f} | "
                     f"{statistics.median(r['throughput_rps'] for r in rounds):.2f} | {_fmt(throughput)} | "
                     f"{_fmt(ttft)} | {oracle} |")
    lines += ["", "Sanity (`none` and vanilla do the same work):", ""]
    for variant in sorted({key.split("/")[1] for key in runs}):
        lines.append(f"- {variant} answers, " + sanity_verdict(summary[f"none/{variant}"]["throughput"], "throughput")
                     + "; " + sanity_verdict(summary[f"none/{variant}"]["ttft"], "TTFT p50"))
    return [*lines, "", f"![{name}](serve_{name}.png)", ""], summary


def plot(name: str, runs: dict[str, list[dict]], args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for field, ax, title in [("throughput_rps", axes[0], "throughput × vanilla"),
                             ("ttft_p50_s", axes[1], "TTFT p50 × vanilla")]:
        for m in ("first", *args.methods):
            stats = [paired(runs, f"{m}@{k}/short", "vanilla/short", field) for k in args.budgets]
            ax.errorbar(args.budgets, [s["median"] for s in stats], fmt="o-" if m != "first" else "s--",
                        yerr=[[s["median"] - s["low"] for s in stats], [s["high"] - s["median"] for s in stats]],
                        capsize=3, label="oracle: first K (zero-cost)" if m == "first" else m)
        none = paired(runs, "none/short", "vanilla/short", field)
        ax.axhspan(none["low"], none["high"], color="grey", alpha=0.25, label="tokencomp none (576), 95 %")
        ax.axhline(1.0, color="black", linestyle=":", label="vanilla vLLM (576)")
        ax.set_xlabel("budget K (visual tokens per image)")
        ax.set_title(f"{name}: {title}, short answers, {args.rounds} rounds")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / f"serve_{name}.png", dpi=110)
    plt.close(fig)


def write_report(report: dict, args: argparse.Namespace) -> str:
    command = (f"`tokencomp bench serve --rounds {args.rounds} --requests {args.requests} --concurrency "
               f"{args.concurrency} --methods {' '.join(args.methods)} --budgets {' '.join(map(str, args.budgets))} "
               f"--long-tokens {args.long_tokens}{' --scaled' if args.scaled else ''}` on {platform.machine()}, "
               f"{os.cpu_count()} CPUs; vLLM CPU backend, float32, prefix caching off; settings interleaved in "
               f"rotated order each round; ratios are per round, then median [95 % interval] over rounds.")
    lines = ["# Serving benchmark: TokenComp vs vanilla vLLM", "", command, ""]
    for name, result in report.items():
        section, summary = model_section(name, result["runs"], args)
        result["summary"] = summary
        lines += section
        plot(name, result["runs"], args)
    text = "\n".join(lines)
    (args.out / "serve.md").write_text(text)
    return text
