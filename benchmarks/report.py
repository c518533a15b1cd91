"""BENCHMARKS.md from one results file of `make bench` (pure: results dict in, markdown out)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

# Measured CPU read bandwidth of each board (what its cores read from DRAM, not the memory's
# nominal peak), with where the figure comes from. See BOARD_SOURCES in the rendered file.
BOARDS: dict[str, dict[str, Any]] = {
    "Raspberry Pi 5 (Cortex-A76, LPDDR4X)": {
        "read_gb_s": 13.2, "source": "read-only kernel over 240 MB, 2 threads (9.3 at 1, 11.6 at 4): "
        "[ggml-org/llama.cpp#26484](https://github.com/ggml-org/llama.cpp/issues/26484); 13.6-14.9 GB/s 1-thread "
        "tinymembench NEON LDP load in ThomasKaiser/sbc-bench results/4HDw.txt, 8-NK.txt"},
    "Jetson Orin Nano (Cortex-A78AE, LPDDR5)": {
        "read_gb_s": 9.8, "source": "tinymembench NEON LDP load, 1 thread, 1510 MHz (before the Super "
        "firmware): ThomasKaiser/sbc-bench results/4vy7.txt"},
    "Raspberry Pi 4 (Cortex-A72, LPDDR4)": {
        "read_gb_s": 4.3, "source": "tinymembench NEON read, 1 thread, 32-bit userland: ThomasKaiser/sbc-bench "
        "results/4pzj.txt, 3EgS.txt (no multi-thread read figure found)"},
    "Raspberry Pi 3B (Cortex-A53)": {
        "read_gb_s": 2.1, "source": "no Pi 3B read figure found; the Pi 3B+ (1.4 GHz): tinymembench NEON read, "
        "1 thread, ThomasKaiser/sbc-bench results/1isD.txt"},
}
PUBLISHED_PI5 = ("For comparison, a published Raspberry Pi 5 figure for LFM2.5-350M: 30 tok/s decode with Cactus, "
                 "INT8, one core (cactus-compute/cactus, blog/lfm2.5_350m.md, 2026-03-31); not measured here.")


def _fmt(x: float | None, nd: int = 1) -> str:
    return "–" if x is None else f"{x:,.{nd}f}"


def _mmm(entry: dict[str, Any], key: str, nd: int = 1) -> str:
    v = entry.get(key)
    if not v:
        return "–"
    return f"{_fmt(v['median'], nd)} [{_fmt(v['min'], nd)}..{_fmt(v['max'], nd)}]"


def _minutes(s: float | None) -> str:
    if s is None:
        return "–"
    return f"{int(s // 60)}:{int(round(s % 60)):02d}"


def _median(vals: list[float]) -> float | None:
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def targets(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for the targets of issue 9 that one run can check."""
    s, arts, passes = results["summary"], results["artifacts"], results["passes"]
    out: list[tuple[str, str, str]] = []

    def per_pass_ratio(a: str, b: str, metric: str) -> float | None:
        vals = []
        for p in passes:
            ra, rb = p["results"].get(a, {}), p["results"].get(b, {})
            if ra.get("ok") and rb.get("ok") and rb.get(metric):
                vals.append(ra[metric] / rb[metric])
        return _median(vals)

    same = "edgelm 8da4w g128 emb-int8"
    et = next((n for n, a in arts.items() if a["system"] == "executorch"), None)
    if same in s and et:
        r = per_pass_ratio(same, et, "decode_tok_s")
        out.append((f"decode ≥ 1.0× ExecuTorch at the same scheme ({same} vs {et})", f"{_fmt(r, 2)}×",
                    "met" if r is not None and r >= 1.0 else "not met"))
        r = per_pass_ratio(same, et, "prefill127_tok_s")
        out.append(("prefill-127 ≥ 1.5× ExecuTorch", f"{_fmt(r, 2)}×",
                    "met" if r is not None and r >= 1.5 else "not met"))
    shares = {n: e.get("share_of_ceiling") for n, e in s.items() if e["system"] == "edgelm" and "drafts" not in e}
    if shares:
        best = max(shares, key=lambda n: shares[n] or 0)
        out.append(("decode ≥ 85% of the bandwidth ceiling", f"{_fmt((shares[best] or 0) * 100, 0)}% ({best})",
                    "met" if (shares[best] or 0) >= 0.85 else "not met"))
    ratios = [r["decode_tok_s"]["ratio_best_peer"] for r in results["ratios"] if r["decode_tok_s"]["ratio_best_peer"]]
    if ratios:
        m = statistics.median(ratios)
        out.append(("decode ≥ 1.3× the best peer (output tok/s)", f"{m:.2f}× (median of passes"
                    + ("; drafts included)" if any("drafts" in e for e in s.values()) else ")"),
                    "met" if m >= 1.3 else "not met"))
    default = "edgelm 8da4w g32 emb-int8"
    if default in arts:
        ex = arts[default]["export"]
        out.append(("`edgelm export --model lfm2-350m --quant 8da4w`: ≤ 3 min wall", _minutes(ex.get("wall_s")),
                    "met" if ex.get("wall_s", 1e9) <= 180 else "not met"))
        if "rss_method" in results.get("meta", {}):
            out.append(("… ≤ 2.5 GB peak RSS", f"{ex.get('peak_rss_mb', 0) / 1024:.2f} GB",
                        "met" if ex.get("peak_rss_mb", 1e9) <= 2.5 * 1024 else "not met"))
        else:
            out.append(("… ≤ 2.5 GB peak RSS", "n/m (see Results)", "not measured"))
        mb = arts[default]["file_bytes"] / 1e6
        out.append(("… `.pte` ≤ 220 MB", f"{mb:.0f} MB", "met" if mb <= 220 else "not met"))
    small = min((n for n, a in arts.items() if a["system"] == "edgelm"), key=lambda n: arts[n]["file_bytes"],
                default=None)
    if small:
        mb = arts[small]["file_bytes"] / 1e6
        out.append((f"smallest edgelm `.pte` ({small})", f"{mb:.0f} MB", "met" if mb <= 220 else "not met"))
    ctx = next((n for n in s if n.endswith("ctx1024")), None)
    if ctx and s[ctx].get("peak_rss_mb"):
        v = s[ctx]["peak_rss_mb"]["max"]
        out.append(("runner peak RSS ≤ 350 MB with a 1,024-token context", f"{v:.0f} MB ({ctx})",
                    "met" if v <= 350 else "not met"))
    return out


def render(results: dict[str, Any], results_path: Path, chart_path: Path) -> str:
    meta, s, arts = results["meta"], results["summary"], results["artifacts"]
    bw = [p["bandwidth"]["read_gb_s"] for p in results["passes"]]
    n = len(results["passes"])
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`benchmarks/bench.py`); do not edit by hand. Latest run:",
        "",
        f"- {meta['when']} on `{meta['host']}`: {meta['cpu']}, {meta['cores']} cores, {meta['threads']} threads for "
        f"every engine; commit `{meta['commit']}`; executorch {meta['executorch']}, torch {meta['torch']}, "
        f"torchao {meta['torchao']}, llama-cpp-python {meta['llama_cpp_python']} (built from its sdist).",
        f"- Model `{results['model']}` (seeded random weights, the same tensors for every engine), context "
        f"{results['context']}, prompts of 32 and 127 tokens, {results['tokens']} greedy decode steps.",
        f"- {n} interleaved passes (every system once per pass, the order rotating); figures are median "
        f"[min..max] over the passes. Raw data: [`{results_path}`]({results_path}).",
        f"- Read bandwidth of this machine, measured in the same run: {statistics.median(bw):.1f} GB/s "
        f"(median of {n}; `benchmarks/bandwidth.py`, best of 7 sums over 1 GiB, {meta['threads']} threads).",
        "",
        f"![decode and prefill]({chart_path.name if chart_path.parent == results_path.parent else chart_path})",
        "",
        "## Results",
        "",
        "| system | decode tok/s | prefill-32 tok/s | prefill-127 tok/s | TTFT ms | load ms | peak RSS MB | file MB "
        "| export (wall, peak RSS) | MB read / token | ceiling tok/s | share of ceiling |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    # Runs before the harness read VmHWM took export peak RSS from wait4's ru_maxrss, which
    # carries the bench process's own high-water mark into a child started with vfork.
    export_rss_ok = "rss_method" in meta
    for name, e in s.items():
        a = arts[name]
        ex = a["export"]
        bpt = a["bytes_per_token"]["bytes_per_token"]
        ok = "" if e["ok_passes"] == e["passes"] else f" ({e['ok_passes']}/{e['passes']} passes ok)"
        ex_rss = f"{ex.get('peak_rss_mb', 0) / 1024:.1f} GB" if export_rss_ok else "n/m"
        lines.append(
            f"| {name}{ok} | {_mmm(e, 'decode_tok_s')} | {_mmm(e, 'prefill32_tok_s', 0)} | "
            f"{_mmm(e, 'prefill127_tok_s', 0)} | {_mmm(e, 'ttft_ms')} | {_mmm(e, 'load_ms', 0)} | "
            f"{_mmm(e, 'peak_rss_mb', 0)} | {a['file_bytes'] / 1e6:.0f} | {_minutes(ex.get('wall_s'))}, "
            f"{ex_rss} | "
            f"{bpt / 1e6:.0f} | {_fmt(e['ceiling_tok_s'], 0)} | "
            f"{_fmt((e.get('share_of_ceiling') or 0) * 100, 0)}% |")
    lines += [
        "",
        "Peak RSS is the kernel's high-water mark of the process that runs the model: the edgelm runner "
        "(its own STATS, a C++ process), the Python process of ExecuTorch's TextLLMRunner binding (it "
        "includes the interpreter and torch, imported to load ExecuTorch's kernels) and of llama-cpp-python. "
        "The Python processes' resident size before the model was loaded is in the results file "
        "(`base_rss_mb`)." + ("" if export_rss_ok else
                              " Export peak RSS: n/m (not measured) in this run: the harness then read "
                              "`ru_maxrss`, which carries the benchmark process's own size into a child "
                              "started by vfork; it reads each process's VmHWM since."),
        "",
        "## Ratios per pass (best edgelm over the best peer in the same pass)",
        "",
        "| pass | decode: edgelm / best peer | ×ExecuTorch | ×llama.cpp | prefill-127: edgelm / best peer "
        "| ×ExecuTorch | ×llama.cpp |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["ratios"]:
        d, p = r["decode_tok_s"], r["prefill127_tok_s"]
        lines.append(f"| {r['pass']} | {_fmt(d['ratio_best_peer'], 2)} ({d['edgelm'][0]} vs {d['best_peer'][0]}) | "
                     f"{_fmt(d['ratio_executorch'], 2)} | {_fmt(d['ratio_llamacpp'], 2)} | "
                     f"{_fmt(p['ratio_best_peer'], 2)} ({p['edgelm'][0]} vs {p['best_peer'][0]}) | "
                     f"{_fmt(p['ratio_executorch'], 2)} | {_fmt(p['ratio_llamacpp'], 2)} |")
    spec = {n: e for n, e in s.items() if "drafts" in e}
    if spec:
        lines += ["", "## Speculative decoding (drafts from the context)", "",
                  "The runner drafts from the prompt and its own output (the tokens that followed the last "
                  "occurrence of the current 3- or 2-token suffix) and verifies a token and its draft in "
                  "one forward call; every stream still PASSes the unchanged validation. **This model has random "
                  "weights: its output is not text and rarely repeats the context, so there is little to draft "
                  "here.** Acceptance on real text: the quality section below (the trained `fortune` model).", "",
                  "| system | output tok/s | draft tokens accepted | forward calls for 128 tokens |",
                  "|---|---|---|---|"]
        for name, e in spec.items():
            d = e["drafts"]
            rate = "no draft found" if d["acceptance"] is None else f"{d['acceptance'] * 100:.0f}%"
            lines.append(f"| {name} | {_mmm(e, 'decode_tok_s')} | {d['accepted']}/{d['drafted']} ({rate}) | "
                         f"{d['calls'] / max(1, e['ok_passes']):.0f} |")
    lines += ["", "## Targets of issue 9 (from this run)", "", "| target | measured | |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {v} |" for t, m, v in targets(results)]
    lines += ["", "## Bytes read per decoded token", "",
              "Decode is memory-bound: each step reads every weight it multiplies by once. The ceiling is the "
              "measured read bandwidth over the bytes read per token: file size, less the embedding table "
              "where only one row of it is gathered, plus the KV cache read at the mean decode position.", "",
              "| system | file MB | table not read MB | KV MB / token | MB / token | how |",
              "|---|---|---|---|---|---|"]
    for name, a in arts.items():
        b = a["bytes_per_token"]
        lines.append(f"| {name} | {b['file_bytes'] / 1e6:.1f} | {b['table_not_read'] / 1e6:.1f} | "
                     f"{b['kv_bytes'] / 1e6:.1f} | {b['bytes_per_token'] / 1e6:.1f} | {b['policy']} |")
    lines += ["", "## Board projection", "",
              "**A projection, not a measurement:** the decode ceiling of each board is its measured CPU read "
              "bandwidth over the bytes one step reads; the expected figure applies the share of the ceiling "
              "edgelm reached on this machine. Emulated boards (QEMU) say nothing about speed.", ""]
    best = max((n for n, e in s.items() if e["system"] == "edgelm" and e.get("share_of_ceiling")
                and "drafts" not in e),
               key=lambda n: s[n]["decode_tok_s"]["median"], default=None)
    if best and BOARDS:
        bpt = arts[best]["bytes_per_token"]["bytes_per_token"]
        share = s[best]["share_of_ceiling"]
        lines += [f"Artifact: {best}, {bpt / 1e6:.0f} MB per token, {share * 100:.0f}% of the ceiling here.", "",
                  "| board | CPU read GB/s (measured) | source | decode ceiling tok/s | expected tok/s |",
                  "|---|---|---|---|---|"]
        for board, info in BOARDS.items():
            ceil = info["read_gb_s"] * 1e9 / bpt
            lines.append(f"| {board} | {info['read_gb_s']} | {info['source']} | {ceil:.0f} | {ceil * share:.0f} |")
        lines += ["", PUBLISHED_PI5]
    lines += ["", "## How each figure is taken", ""]
    for name, a in arts.items():
        lines.append(f"- **{name}**: export `{a['export'].get('command', '?')}`; measured by `{a['probe']}`.")
    lines += [
        "",
        "Each probe is a fresh process: load, a warm-up (8 tokens), the 32-token prompt and "
        f"{results['tokens']} greedy steps, then the 127-token prompt and one step. edgelm's figures are the "
        "runner's own STATS, and every edgelm stream is validated against the host reference (a run that does "
        "not PASS is not counted). ExecuTorch's are its runner's Stats (whole milliseconds); llama.cpp's are "
        "its `llama_perf_context` timings. Before each probe the machine must be idle (under 0.1 core busy "
        "for a second), and a probe during which other processes used more than 0.1 core on average is run "
        "again (`benchmarks/harness.py`; the attempts are in the results file).",
        ""]
    return "\n".join(lines)


# What a call that verifies a draft (2 to 8 tokens) costs, in one-token decode steps: lfm2-350m 8da4w
# g128, ExecuTorch runtime, 2 threads on the 2-core x86 benchmark machine (2026-11-30): 15.6 ms for one
# token, 18.8-20.3 ms for 2 to 8, 29.6 ms for 9.
VERIFY_COST = 1.27


# The quantization-quality section (benchmarks/quality.py): its own block of BENCHMARKS.md, kept when
# `make bench` rewrites the rest and replaced when `make bench-quality` runs again.
QUALITY_BEGIN = "<!-- quality: written by `make bench-quality` (benchmarks/quality.py) -->"
QUALITY_END = "<!-- /quality -->"


def quality_block(text: str) -> str | None:
    start, end = text.find(QUALITY_BEGIN), text.find(QUALITY_END)
    if start < 0 or end < start:
        return None
    return text[start:end + len(QUALITY_END)]


def with_quality(text: str, block: str | None) -> str:
    """``text`` with its quality block replaced by ``block`` (appended where it has none)."""
    if block is None:
        return text
    old = quality_block(text)
    if old is not None:
        return text.replace(old, block)
    return text.rstrip("\n") + "\n\n" + block + "\n"


def render_quality(results: dict[str, Any], results_path: Path) -> str:
    t = results["training"]
    lines = [
        QUALITY_BEGIN,
        "## Quantization quality on real weights",
        "",
        f"Model `{results['model']}` (models/fortune: {t['parameters'] / 1e6:.1f}M parameters trained by "
        f"`make demo-model` in {t['train_seconds'] / 60:.1f} min, held-out perplexity {t['heldout_perplexity']}). "
        f"Each program is teacher-forced through ExecuTorch's runtime over the {results['heldout_docs']} held-out "
        f"fortunes ({results['heldout_tokens']} tokens); agreement and KL are against the eager fp32 model at "
        f"every position. {results['when']} on `{results['host']}`; raw data: [`{results_path}`]({results_path}).",
        "",
        "| scheme | held-out perplexity | top-1 agreement with fp32 | mean KL (nats/token) | .pte KB | command |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results["schemes"].items():
        size = f"{r['pte_bytes'] / 1024:.0f}" if "pte_bytes" in r else "-"
        cmd = f"`{r['command']}`" if "command" in r else "eager model, no export"
        lines.append(f"| {name} | {r['perplexity']:.3f} | {r['top1_agreement'] * 100:.2f}% | {r['mean_kl']:.5f} | "
                     f"{size} | {cmd} |")
    spec = results.get("speculative") or []
    spec = [spec] if isinstance(spec, dict) else spec  # results files from before draft models
    if spec:
        first = spec[0]
        lines += [
            "", "### Speculative decoding on real text", "",
            f"The host runner ({first['scheme']}) on {first['prompts']} prompts (the first 6 tokens of held-out "
            f"fortunes), {first['tokens']} greedy tokens each, once with drafts and once without; every stream "
            f"validated ({'all PASS' if all(sp['all_pass'] for sp in spec) else 'NOT all PASS'}; tokens with and "
            f"without drafts {'identical' if all(sp['all_same_tokens'] for sp in spec) else 'DIFFERENT'}).", "",
            "| drafts from | draft tokens accepted | calls with a draft | forward calls (without drafts) "
            "| tokens per call | draft-model calls | output tok/s without / with drafts (median) "
            "| projected speed-up, bandwidth-bound | program |",
            "|---|---|---|---|---|---|---|---|---|"]
        for sp in spec:
            source = "the context" + (f", then {sp['draft_model']}" if sp.get("draft_model") else "")
            lines.append(
                f"| {source} | {sp['accepted']}/{sp['drafted']} ({sp['acceptance'] * 100:.0f}%) | "
                f"{sp['draft_calls']} | {sp['calls']} ({sp['plain_calls']}) | {sp['tokens_per_call']:.2f} | "
                f"{sp.get('draft_model_calls', 0)} | "
                f"{sp['decode_tok_s_plain']:.0f} / {sp['decode_tok_s_drafts']:.0f} | "
                f"{sp['projected_speedup']:.2f}x | " + (f"`{sp['command']}`" if "command" in sp else "-") + " |")
        costs = [sp for sp in spec if sp.get("draft_model")]
        lines += [
            "",
            "This model is small enough that a step costs its fixed overheads, not its weight reads, so its "
            "tok/s say little (a draft-model call costs nearly what a model call does here). What carries over "
            "to a bandwidth-bound model is the calls saved and the calls widened: on lfm2-350m 8da4w (x86, 2 "
            f"threads) a call of 2 to 8 tokens costs {VERIFY_COST}x a one-token step (toolchain/model/lfm2.py, "
            "DEFAULT_MAX_DRAFT), so the projection is plain calls / (calls + "
            f"{VERIFY_COST - 1:.2f} x calls with a draft"
            + (f" + {costs[0]['draft_cost']:.3f} x draft-model calls, a draft-model call reading its parameters "
               "against the model's" if costs else "")
            + "). A projection, not a measurement. Drafts from the context pay on text that repeats it; free "
              "generation from a short prompt rarely does, which is where a draft model drafts."]
    lines += ["", QUALITY_END]
    return "\n".join(lines)
