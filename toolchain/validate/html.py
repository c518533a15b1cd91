"""A run's report as one self-contained HTML file, readable offline: the settings and versions, the
streamed text, decode speed over time from the board's token timestamps, the per-token drift of the
board's logits from the host reference, and the validation table. No script, no external file:
plots are inline SVG. Every string from the board or the model is escaped.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from toolchain.validate.report import summary_rows

SPEED_COLOR = "#2a7ab0"
DRIFT_COLOR = "#d9822b"
LIMIT_COLOR = "#c0392b"
HEADER_BG = "#fbe7b5"  # a colour nothing else on the page has: the screenshot test finds the tables by it
WINDOW = 8  # tokens per point of the speed plot (a sliding window over the board's timestamps)

CSS = f"""
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1000px; color: #1d2733; }}
h1 {{ font-size: 22px; }} h2 {{ font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ccd; }}
table {{ border-collapse: collapse; margin: 8px 0; }}
th, td {{ border: 1px solid #c5cfda; padding: 3px 8px; text-align: left; vertical-align: top; }}
th {{ background: {HEADER_BG}; }}
pre.text {{ white-space: pre-wrap; background: #f6f7f9; padding: 10px; border: 1px solid #dde; }}
.prompt {{ font-weight: bold; }} .PASS {{ color: #1e7d32; font-weight: bold; }}
.FAIL {{ color: {LIMIT_COLOR}; font-weight: bold; }}
svg {{ background: #fff; border: 1px solid #dde; }} .note {{ color: #556; }}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def speed_series(times_us: Sequence[int], window: int = WINDOW) -> list[tuple[float, float]]:
    """(seconds since the request, tokens/s over the last ``window`` tokens) per token after the
    first; a window shrinks at the start. Points whose clock did not advance are left out."""
    out = []
    for i in range(1, len(times_us)):
        j = max(0, i - window)
        dt = (times_us[i] - times_us[j]) / 1e6
        if dt > 0:
            out.append((times_us[i] / 1e6, (i - j) / dt))
    return out


def _svg_plot(points: Sequence[tuple[float, float]], *, color: str, x_label: str, y_label: str,
              limit: float | None = None, marks: Sequence[tuple[float, float]] = (), title: str) -> str:
    w, h, left, right, top, bottom = 900, 260, 84, 16, 26, 40
    if not points:
        return f'<p class="note">{_e(title)}: nothing to plot.</p>'
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    if x1 <= x0:
        x1 = x0 + 1
    y1 = max([*ys, limit or 0.0]) * 1.1 or 1.0
    if not math.isfinite(y1):
        y1 = 1.0

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (w - left - right)

    def sy(y: float) -> float:
        y = min(max(y, 0.0), y1) if math.isfinite(y) else y1
        return h - bottom - y / y1 * (h - top - bottom)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" '
             f'aria-label="{_e(title)}"><title>{_e(title)}</title>',
             f'<text x="{left}" y="16" font-size="13" font-weight="bold">{_e(title)}</text>']
    for k in range(5):  # grid and y ticks
        y = y1 * k / 4
        parts.append(f'<line x1="{left}" x2="{w - right}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#e3e7ec"/>'
                     f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" font-size="11" text-anchor="end">{_tick(y)}</text>')
    for k in range(5):
        x = x0 + (x1 - x0) * k / 4
        parts.append(f'<text x="{sx(x):.1f}" y="{h - bottom + 16}" font-size="11" text-anchor="middle">'
                     f'{_tick(x)}</text>')
    parts.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{h - bottom}" stroke="#556"/>'
                 f'<line x1="{left}" x2="{w - right}" y1="{h - bottom}" y2="{h - bottom}" stroke="#556"/>')
    parts.append(f'<text x="{(left + w - right) / 2}" y="{h - 6}" font-size="12" text-anchor="middle">'
                 f'{_e(x_label)}</text><text x="14" y="{(top + h - bottom) / 2}" font-size="12" '
                 f'text-anchor="middle" transform="rotate(-90 14 {(top + h - bottom) / 2})">{_e(y_label)}</text>')
    if limit is not None:
        parts.append(f'<line x1="{left}" x2="{w - right}" y1="{sy(limit):.1f}" y2="{sy(limit):.1f}" '
                     f'stroke="{LIMIT_COLOR}" stroke-dasharray="6 4" stroke-width="1.5"/>')
    path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
    parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="3" points="{path}"/>')
    for x, y in points if len(points) <= 256 else ():
        parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{color}"/>')
    for x, y in marks:
        parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="6" fill="none" stroke="{LIMIT_COLOR}" '
                     'stroke-width="2"/>')
    parts.append("</svg>")
    return "".join(parts)


def _tick(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None) -> str:
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        out.append("<tr>" + "".join(f"<th>{_e(c)}</th>" if i == 0 and not header else f"<td>{_e(c)}</td>"
                                    for i, c in enumerate(row)) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _validation_rows(v: dict[str, Any]) -> list[tuple[str, Any]]:
    def num(x: Any) -> str:
        return "-" if x is None else f"{x:.4g}"

    return [("verdict", v["verdict"]), ("reason", v.get("reason") or "-"),
            ("judged by", v.get("judge") or v.get("rule") or "reference"),
            ("tokens judged", v["generated"]), ("exact matches", v["exact_matches"]),
            ("near-ties", f"{len(v.get('near_ties', []))} (budget {v.get('near_tie_budget', '-')})"),
            ("first divergence", "none" if v.get("first_divergence") is None else v["first_divergence"]),
            ("drift max / mean (logit units)", f"{num(v.get('drift_max'))} / {num(v.get('drift_mean'))}"),
            ("tolerance (std of the reference logits)", v.get("tolerance")),
            ("sampler replayed on the host", "yes" if v.get("sampled") else "no")]


def run_section(report: dict[str, Any], heading: str) -> str:
    v, s = report["validation"], report.get("board_stats", {})
    verdict = _e(v["verdict"])
    out = [f'<section><h2>{_e(heading)}: <span class="{verdict}">{verdict}</span></h2>']
    out.append("<h3>Streamed text</h3>"
               f'<pre class="text"><span class="prompt">{_e(report.get("prompt", ""))}</span>'
               f'{_e(report.get("text", ""))}</pre>')
    times = list(report.get("token_times_us") or [])
    ttft = s.get("ttft_ms")
    out.append(_svg_plot([(t * 1e3, r) for t, r in speed_series(times)], color=SPEED_COLOR,
                         x_label="milliseconds since the request (board clock)",
                         y_label="tokens/s", title=f"Decode speed over time (last {WINDOW} tokens; first token at "
                         + (f"{ttft:.0f} ms)" if ttft is not None else "? ms)")))
    drift = list(v.get("drift_by_position") or [])
    bad = {m.get("position") for m in v.get("mismatches", []) if isinstance(m, dict)}
    out.append(_svg_plot([(float(i), float(d)) for i, d in enumerate(drift)], color=DRIFT_COLOR,
                         x_label="generated token", y_label="drift (std of the reference logits)",
                         limit=float(v["tolerance"]) if v.get("tolerance") else None,
                         marks=[(float(i), float(drift[i])) for i in sorted(p for p in bad if isinstance(p, int))
                                if 0 <= i < len(drift)],
                         title="Per-token drift of the board's logits from the host reference (dashed: tolerance)"))
    out.append("<h3>Validation</h3>" + _table(_validation_rows(v)))
    if v.get("mismatches"):
        keys = sorted({k for m in v["mismatches"] for k in m})
        out.append("<h3>Mismatches</h3>" + _table([[m.get(k, "") for k in keys] for m in v["mismatches"]], keys))
    out.append("<h3>What the run found</h3>" + _table(summary_rows(report)))
    settings = [("board", report.get("board")), ("target", report.get("target")),
                ("emulated", report.get("emulated")), ("model", report.get("model")), ("quant", report.get("quant")),
                ("release", report.get("release")), ("firmware", report.get("firmware_version")),
                ("program sha256", report.get("model_sha256")), ("threads", report.get("threads")),
                ("sampling", ", ".join(f"{k} {x}" for k, x in (report.get("sampling") or {}).items())),
                ("prompt token ids", len(report.get("prompt_token_ids", []))),
                ("bundle", report.get("bundle")), ("program", report.get("pte"))]
    out.append("<h3>Settings</h3>" + _table(settings))
    out.append("</section>")
    return "".join(out)


def render(runs: Sequence[tuple[str, dict[str, Any]]], *, title: str, versions: dict[str, str]) -> str:
    """The page: ``runs`` are (heading, ``RunReport.to_dict()``) pairs, in order."""
    passed = sum(r["validation"]["verdict"] == "PASS" for _, r in runs)
    body = [f"<h1>{_e(title)}</h1>",
            f'<p>{passed} of {len(runs)} generation(s) validated. Versions: '
            + ", ".join(f"{_e(k)} {_e(x)}" for k, x in versions.items()) + ".</p>"]
    body += [run_section(r, heading) for heading, r in runs]
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<style>{CSS}</style></head><body>{"".join(body)}</body></html>\n')


def write(path: Path, runs: Sequence[tuple[str, dict[str, Any]]], *, title: str, versions: dict[str, str]) -> None:
    """Write the page whole or not at all (a temporary file renamed into place)."""
    text = render(runs, title=title, versions=versions)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
