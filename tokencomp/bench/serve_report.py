"""`bench serve`'s report: markdown tables (ratios to vanilla, the cost model's ideal and achieved / ideal) and
a PNG per model of throughput and TTFT against the budget, with the ideal curve."""

from __future__ import annotations

import argparse
import os
import platform


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "n/a"


def model_section(name: str, result: dict, args: argparse.Namespace) -> list[str]:
    runs, cost = result["runs"], result["cost_model"]
    header = ("| setting | answer | prompt tokens | req/s | × vanilla | TTFT p50 (s) | × vanilla | "
              "e2e p50 / p90 / p99 (s) | peak server MiB |")
    lines = [f"### {name}", "", header, "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for key, r in runs.items():
        label, variant = key.split("/")
        base = runs[f"vanilla/{variant}"]
        lines.append(f"| {label} | {variant} | {r['prompt_tokens']:.0f} | {r['throughput_rps']:.2f} | "
                     f"{_ratio(r['throughput_rps'], base['throughput_rps'])} | {r['ttft_p50_s']:.3f} | "
                     f"{_ratio(r['ttft_p50_s'], base['ttft_p50_s'])} | {r['e2e_p50_s']:.3f} / {r['e2e_p90_s']:.3f} / "
                     f"{r['e2e_p99_s']:.3f} | {r['peak_memory_mib']:.0f} |")
    a, b, c = cost["prefill_fit"]
    model_line = (f"Cost model (server time per request at concurrency {args.concurrency}): prefill P(L) = "
                  f"{a * 1e3:.1f} ms + {b * 1e3:.4f} ms·L + {c * 1e6:.5f} µs·L² (fit on "
                  f"{len(cost['prefill_points'])} text-only prompt lengths); vision (decode, preprocess, tower) "
                  f"{cost['t_vision_s'] * 1e3:.1f} ms; short-answer decode {cost['t_decode_s'] * 1e3:.1f} ms.")
    header = ("| setting | selection (ms) | selection / e2e p50 | ideal speed-up | achieved (req/s ÷ none) | "
              "achieved / ideal |")
    lines += ["", model_line, "", header, "|---|---:|---:|---:|---:|---:|"]
    base = runs["none/short"]["throughput_rps"]  # the cost model's full-token reference: same server, K = 576
    for key, ideal in cost["ideal_speedup"].items():
        r = runs[f"{key}/short"]
        achieved = r["throughput_rps"] / base
        sel = cost["t_select_s"][key]
        lines.append(f"| {key} | {sel * 1e3:.1f} | {100 * sel / r['e2e_p50_s']:.1f} % | {ideal:.2f} | "
                     f"{achieved:.2f} | {achieved / ideal:.2f} |")
    return [*lines, "", f"![{name}](serve_{name}.png)", ""]


def plot(name: str, result: dict, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, ideal = result["runs"], result["cost_model"]["ideal_speedup"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for key, ax, title in [("throughput_rps", axes[0], "throughput (req/s)"), ("ttft_p50_s", axes[1], "TTFT p50 (s)")]:
        for m in args.methods:
            ax.plot(args.budgets, [runs[f"{m}@{k}/short"][key] for k in args.budgets], marker="o", label=m)
        ax.axhline(runs["vanilla/short"][key], color="black", linestyle="--", label="vanilla vLLM (576)")
        ax.axhline(runs["none/short"][key], color="grey", linestyle=":", label="tokencomp none (576)")
        for m in args.methods[:1]:
            scale = [ideal[f"{m}@{k}"] for k in args.budgets]
            base = runs["vanilla/short"][key]
            curve = [base * s for s in scale] if key == "throughput_rps" else [base / s for s in scale]
            ax.plot(args.budgets, curve, color="tab:red", linestyle="-.", label=f"ideal (cost model, {m})")
        ax.set_xlabel("budget K (visual tokens per image)")
        ax.set_title(f"{name}: {title}, short answers, concurrency {args.concurrency}")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / f"serve_{name}.png", dpi=110)
    plt.close(fig)


def write_report(report: dict, args: argparse.Namespace) -> str:
    command = (f"`tokencomp bench serve --requests {args.requests} --concurrency {args.concurrency} --methods "
               f"{' '.join(args.methods)} --budgets {' '.join(map(str, args.budgets))} --long-tokens "
               f"{args.long_tokens}{' --scaled' if args.scaled else ''}` on {platform.machine()}, "
               f"{os.cpu_count()} CPUs; vLLM CPU backend, float32, prefix caching off.")
    lines = ["# Serving benchmark: TokenComp vs vanilla vLLM", "", command, ""]
    for name, result in report.items():
        lines += model_section(name, result, args)
        plot(name, result, args)
    text = "\n".join(lines)
    (args.out / "serve.md").write_text(text)
    return text
