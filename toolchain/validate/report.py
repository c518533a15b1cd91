"""The report of a run: one dict (the JSON), and its rendering for a terminal."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def divergence(v: dict[str, Any]) -> str:
    """Where the board's tokens first differ from what judged them, worded so that a PASS never reads
    as a failure: a passing stream differs at near-ties only (allowed), or nowhere."""
    first = v.get("first_divergence")
    if first is None:
        return "no token differs"
    if v["verdict"] == "PASS":
        return f"differs at near-ties only (allowed; the first at token {first})"
    return f"first divergence at token {first}"


def _check(v: dict[str, Any]) -> str:
    """How the stream was judged, and what came of it."""
    if v.get("rule") == "twin":
        return (f"{v['exact_matches']}/{v['generated']} bit for bit as its twin ({v.get('judge', '')}), "
                f"{'sampled, ' if v.get('sampled') else ''}{divergence(v)}")
    return (f"{v['exact_matches']}/{v['generated']} exact vs host reference ({v.get('judge') or 'reference'}), "
            f"{len(v['near_ties'])} near-ties (budget {v.get('near_tie_budget', '-')}), "
            f"{'sampler replayed, ' if v.get('sampled') else ''}{divergence(v)}")


def _drafts(s: dict[str, Any]) -> str:
    """', 40 calls for 63 tokens: 23 of 30 draft tokens accepted' (speculative decoding), or ''."""
    if s.get("decode_calls") is None:
        return ""
    if not s.get("drafted"):
        return f", {s['decode_calls']} calls (no drafts)"
    return (f", {s['decode_calls']} calls ({s.get('draft_calls')} with a draft): {s['accepted']} of {s['drafted']} "
            "draft tokens accepted "
            f"({100 * s['accepted'] / s['drafted']:.0f}%)"
            + (f", {s['draft_model_calls']} draft-model calls" if s.get("draft_model_calls") else ""))


def summary_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, plain text) rows saying what the run found: the terminal's table and the HTML report's."""
    s, v = report["board_stats"], report["validation"]
    rows = [
        ("board", f"{report['board']} via {report['target']} (firmware {report['firmware_version']})"),
        ("model", f"{report['model']} {report['quant']}, program sha256 {report['model_sha256'][:16]}..."),
        ("tokens", f"{len(report['prompt_token_ids'])} prompt, {len(report['generated_token_ids'])} generated "
                   f"(stop: {report['stop_reason']})"),
        ("load", f"{s['load_ms']:.0f} ms"),
        ("TTFT", f"{s['ttft_ms']:.1f} ms"),
        ("prefill", f"{s['prefill_tok_s']:.1f} tok/s"),
        ("decode", f"{s['decode_tok_s']:.1f} tok/s" + _drafts(s)),
        ("peak RSS", f"{s['peak_rss_kb'] / 1024:.1f} MiB"
                     + (" (of the emulator process)" if report["emulated"] else "")),
        ("check", _check(v)),
    ]
    if v.get("drift_max") is not None or v.get("rule") != "twin":
        rows.append(("drift", "not reported by the board" if v.get("drift_max") is None else
                              f"board vs this machine's run: max {v['drift_max']:.3g}, mean {v['drift_mean']:.3g} "
                              f"(max {max(v['drift_by_position'] or [0]):.2f} std; tolerance {v['tolerance']} std"
                              + (", not judged: the twin was" if v.get("rule") == "twin" else "") + ")"))
    fid = report.get("fidelity")
    if fid:
        rows.append(("fidelity", f"vs the eager fp32 model (teacher-forced on the board's tokens): top-1 "
                                 f"{fid['top1_agreement'] * 100:.1f}% of {fid['tokens']}, KL mean "
                                 f"{fid['mean_kl']:.4f} max {fid['max_kl']:.4f} nats/token"
                                 + (f"; --min-agreement {fid['min_agreement']}: {fid['check']}"
                                    if fid.get("check") else "")))
    boot = report.get("boot")
    if boot and boot.get("boot_s") is not None:
        hello = boot.get("boot_to_hello_s")
        rows.insert(3, ("boot", f"powered on for this run: SSH up {boot['boot_s']:.1f} s after power on"
                                + (f", the served release's HELLO at {hello:.1f} s" if hello is not None else
                                   " (no release was serving at boot)")))
    if report.get("attempts", 1) > 1:
        rows.append(("link", f"the stream was damaged and asked for again: {report['attempts']} attempts, "
                             "the last one judged"))
    return rows


def render(report: dict[str, Any], console: Console) -> None:
    v, fid = report["validation"], report.get("fidelity")
    table = Table(show_header=False, box=None, pad_edge=False)
    for key, value in summary_rows(report):
        table.add_row(f"[bold]{key}[/]", value)
    console.print(table)
    if v["verdict"] == "PASS" and fid and fid.get("check") == "FAIL":
        console.print(f"[bold red]FAIL[/]: top-1 agreement with the fp32 model below {fid['min_agreement']}")
    elif v["verdict"] == "PASS":
        console.print("[bold green]PASS[/]")
    else:
        console.print(f"[bold red]FAIL[/]: {v['reason']}")
