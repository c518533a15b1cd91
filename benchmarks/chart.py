"""The chart of BENCHMARKS.md: decode and prefill tokens/s per system, median with min..max.

    <bench venv>/bin/python benchmarks/chart.py results.json out.png

Runs in the benchmark's own environment (matplotlib is not a project dependency).
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"edgelm": "#2a7ab0", "executorch": "#d9822b", "llamacpp": "#5a9e4b"}


def main() -> None:
    results = json.load(open(sys.argv[1]))
    summary = results["summary"]
    names = list(summary)
    metrics = [("decode_tok_s", f"decode tok/s ({results['tokens']} tokens after a 32-token prompt)"),
               ("prefill127_tok_s", "prefill tok/s (127-token prompt)")]
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.45 * len(names) + 1.8), sharey=True)
    for ax, (key, title) in zip(axes, metrics, strict=True):
        for i, name in enumerate(names):
            e = summary[name].get(key)
            if not e:
                continue
            color = COLORS.get(summary[name]["system"], "grey")
            ax.barh(i, e["median"], color=color)
            ax.errorbar(e["median"], i, xerr=[[e["median"] - e["min"]], [e["max"] - e["median"]]], color="black",
                        capsize=3, lw=1)
            ax.text(e["max"] * 1.01, i, f"{e['median']:.0f}", va="center", fontsize=8)
        ax.set_title(title)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
    meta = results["meta"]
    fig.suptitle(f"{results['model']} on {meta['cpu']} ({meta['threads']} threads), {len(results['passes'])} passes, "
                 f"{meta['when'][:10]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)


if __name__ == "__main__":
    main()
