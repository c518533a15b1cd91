"""A run's report as one self-contained HTML file, readable offline: the settings and versions, the
streamed text coloured token by token (drift, near-ties, mismatches), decode speed over time from the
board's token timestamps, the per-token drift of the board's logits from the host reference (its axis
fitted to the data, the tolerance drawn or noted, near-ties marked), and the validation table. Axes
have round ticks (1, 2 or 5 times a power of ten). No script, no external file: plots are inline
SVG. Every string from the board or the model is escaped.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from toolchain.validate.report import divergence, summary_rows

SPEED_COLOR = "#2a7ab0"
DRIFT_COLOR = "#d9822b"
LIMIT_COLOR = "#c0392b"
NEAR_TIE_COLOR = "#8e44ad"  # near-ties: a diamond on the drift plot, a violet underline in the text
HEAT_RGB = (250, 176, 80)  # a token's background in the text, its alpha the token's drift / tolerance
MISMATCH_BG = "#f4a6a0"  # a token that did not validate
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
.tok.near-tie {{ border-bottom: 3px solid {NEAR_TIE_COLOR}; }}
.swatch {{ padding: 0 6px; border: 1px solid #ccd; }}
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


def nice_ticks(lo: float, hi: float, count: int = 5, *, whole: bool = False) -> list[float]:
    """Round ticks covering [lo, hi]: 1, 2 or 5 times a power of ten apart (``whole``: at least 1),
    the first at or below ``lo`` and the last at or above ``hi``; of those steps, the one whose number of
    ticks is nearest ``count``, then the one that overshoots the data least."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = 0.0, 1.0
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    power = 10.0 ** math.floor(math.log10((hi - lo) / max(count - 1, 1)))
    best: tuple[tuple[int, float], list[float]] | None = None
    for step in (m * power * scale for scale in (0.1, 1, 10) for m in (1, 2, 5)):
        if whole and step < 1:
            continue
        first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
        ticks = [round(k * step, 12) for k in range(first, last + 1)]
        score = (abs(len(ticks) - count), (ticks[-1] - ticks[0]) - (hi - lo))
        if best is None or score < best[0]:
            best = (score, ticks)
    return best[1] if best is not None else [float(math.floor(lo)), float(math.ceil(hi))]


def tick_label(v: float, ticks: Sequence[float]) -> str:
    """``v`` with as many decimals as the ticks' step needs (0.25, 0.5; 100, 1,000)."""
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else 1.0
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0
    return f"{v:,.{decimals}f}"


def _svg_plot(points: Sequence[tuple[float, float]], *, color: str, x_label: str, y_label: str,
              limit: float | None = None, marks: Sequence[tuple[float, float]] = (),
              near_ties: Sequence[tuple[float, float]] = (), title: str, whole_x: bool = False,
              limit_label: str = "", key: str = "") -> str:
    """A line plot with round ticks. ``limit``: a dashed line (the tolerance) when it is within twice the
    data's top, else a note above the plot saying where it is (the axis stays fitted to the data).
    ``marks``: red rings (mismatches); ``near_ties``: violet diamonds. ``key``: a line under the title
    saying what the marks are."""
    w, h, left, right, top, bottom = 900, 270, 84, 16, 44, 40
    if not points:
        return f'<p class="note">{_e(title)}: nothing to plot.</p>'
    xs, ys = [p[0] for p in points], [p[1] for p in points if math.isfinite(p[1])] or [0.0]
    xt = nice_ticks(min(xs), max(xs), 6, whole=whole_x)
    x0, x1 = xt[0], xt[-1]
    data_top = max(ys)
    # the tolerance's line when it is near the data (or the data are all 0: nothing else to fit)
    shown_limit = limit is not None and math.isfinite(limit) and (data_top <= 0 or limit <= 2 * data_top)
    yt = nice_ticks(0.0, max(data_top, limit if shown_limit and limit is not None else 0.0) or 1.0, 5)
    y1 = yt[-1]

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (w - left - right)

    def sy(y: float) -> float:
        y = min(max(y, 0.0), y1) if math.isfinite(y) else y1
        return h - bottom - y / y1 * (h - top - bottom)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" '
             f'aria-label="{_e(title)}"><title>{_e(title)}</title>',
             f'<text x="{left}" y="16" font-size="13" font-weight="bold">{_e(title)}</text>']
    notes = [key] if key else []
    for y in yt:  # grid and y ticks
        parts.append(f'<line x1="{left}" x2="{w - right}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#e3e7ec"/>'
                     f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" font-size="11" text-anchor="end">'
                     f'{tick_label(y, yt)}</text>')
    for x in xt:
        parts.append(f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{h - bottom}" y2="{h - bottom + 4}" '
                     f'stroke="#556"/><text x="{sx(x):.1f}" y="{h - bottom + 16}" font-size="11" '
                     f'text-anchor="middle">{tick_label(x, xt)}</text>')
    parts.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{h - bottom}" stroke="#556"/>'
                 f'<line x1="{left}" x2="{w - right}" y1="{h - bottom}" y2="{h - bottom}" stroke="#556"/>')
    parts.append(f'<text x="{(left + w - right) / 2}" y="{h - 6}" font-size="12" text-anchor="middle">'
                 f'{_e(x_label)}</text><text x="14" y="{(top + h - bottom) / 2}" font-size="12" '
                 f'text-anchor="middle" transform="rotate(-90 14 {(top + h - bottom) / 2})">{_e(y_label)}</text>')
    if limit is not None and shown_limit:
        parts.append(f'<line x1="{left}" x2="{w - right}" y1="{sy(limit):.1f}" y2="{sy(limit):.1f}" '
                     f'stroke="{LIMIT_COLOR}" stroke-dasharray="6 4" stroke-width="1.5"/>'
                     f'<text x="{w - right - 4}" y="{sy(limit) - 4:.1f}" font-size="11" text-anchor="end" '
                     f'fill="{LIMIT_COLOR}">{_e(limit_label)}</text>')
        notes.append(f"dashed: {limit_label}")
    elif limit is not None:
        notes.append(f"{limit_label}: above this axis, fitted to the data (the top value is {data_top / limit:.0%} "
                     "of it)")
    if notes:
        parts.append(f'<text class="key" x="{left}" y="32" font-size="12" fill="#556">{_e(" · ".join(notes))}</text>')
    path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
    parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="3" points="{path}"/>')
    for x, y in points if len(points) <= 256 else ():
        parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{color}"/>')
    for x, y in near_ties:
        cx, cy = sx(x), sy(y)
        parts.append(f'<path class="near-tie" d="M{cx:.1f},{cy - 7:.1f} L{cx + 7:.1f},{cy:.1f} L{cx:.1f},'
                     f'{cy + 7:.1f} L{cx - 7:.1f},{cy:.1f} Z" fill="{NEAR_TIE_COLOR}" fill-opacity="0.85"/>')
    for x, y in marks:
        parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="6" fill="none" stroke="{LIMIT_COLOR}" '
                     'stroke-width="2"/>')
    parts.append("</svg>")
    return "".join(parts)


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
            ("tokens that differ", divergence(v)),
            ("drift max / mean (logit units)", f"{num(v.get('drift_max'))} / {num(v.get('drift_mean'))}"),
            ("tolerance (std of the reference logits)", v.get("tolerance")),
            ("sampler replayed on the host", "yes" if v.get("sampled") else "no")]


def _positions(v: dict[str, Any]) -> tuple[set[int], set[int]]:
    """The generated tokens that did not validate, and the near-ties."""
    bad = {m.get("position") for m in v.get("mismatches", []) if isinstance(m, dict)}
    return ({p for p in bad if isinstance(p, int)},
            {p for p in v.get("near_ties") or [] if isinstance(p, int)})


def _heat(drift: float, tolerance: float) -> str:
    """A token's background: transparent at no drift, HEAT_RGB at the tolerance (a square-root scale,
    so that a drift of a tenth of the tolerance still shows)."""
    alpha = math.sqrt(min(max(drift / tolerance, 0.0), 1.0)) if tolerance > 0 and math.isfinite(drift) else 1.0
    r, g, b = HEAT_RGB
    return f"rgba({r},{g},{b},{alpha:.2f})"


def _coloured_text(report: dict[str, Any]) -> str:
    """The generated text token by token (``token_texts``): each token's background is its drift, a
    near-tie is underlined in violet, a token that did not validate is red; its tooltip says which token
    it is. A token that printed nothing (it ends inside a character) goes with the token that completed
    the character. Without per-token texts (an older report): the text, uncoloured."""
    text = str(report.get("text", ""))
    pieces = [str(p) for p in report.get("token_texts") or []]
    if not pieces or "".join(pieces) != text:
        return _e(text)
    v = report["validation"]
    drift = [float(d) for d in v.get("drift_by_position") or []]
    tolerance = float(v.get("tolerance") or 0.0)
    bad, near = _positions(v)
    ids = list(report.get("generated_token_ids") or [])
    out, group = [], []
    for i, piece in enumerate(pieces):
        group.append(i)
        if not piece:
            continue
        d = max((drift[j] for j in group if j < len(drift)), default=None)
        classes = ["tok"] + (["near-tie"] if near & set(group) else []) + (["mismatch"] if bad & set(group) else [])
        style = (f"background:{MISMATCH_BG}" if bad & set(group) else
                 f"background:{_heat(d, tolerance)}" if d is not None and tolerance > 0 else "")
        what = ", ".join(f"token {j}" + (f" (id {ids[j]})" if j < len(ids) else "") for j in group)
        what += f": drift {d:.3g} std" if d is not None else ": no drift reported"
        what += (f" ({d / tolerance:.0%} of the tolerance)" if d is not None and tolerance > 0 else "")
        what += ", a near-tie" if near & set(group) else ""
        what += ", did not validate" if bad & set(group) else ""
        out.append(f'<span class="{" ".join(classes)}"' + (f' style="{style}"' if style else "")
                   + f' title="{_e(what)}">{_e(piece)}</span>')
        group = []
    return "".join(out)


def _text_legend(v: dict[str, Any]) -> str:
    tolerance = float(v.get("tolerance") or 0.0)
    if tolerance <= 0:
        return ""
    swatches = "".join(f'<span class="swatch" style="background:{_heat(f * tolerance, tolerance)}">'
                       f"{f:.0%}</span>" for f in (0.0, 0.1, 0.25, 0.5, 1.0))
    return (f'<p class="note legend">Each token\'s background is its drift as a share of the tolerance '
            f"({tolerance:g} std): {swatches}; "
            f'<span class="tok near-tie">underlined</span>: a near-tie; '
            f'<span class="swatch" style="background:{MISMATCH_BG}">red</span>: did not validate. '
            "Hover a token for its id and drift.</p>")


def run_section(report: dict[str, Any], heading: str) -> str:
    v, s = report["validation"], report.get("board_stats", {})
    verdict = _e(v["verdict"])
    out = [f'<section><h2>{_e(heading)}: <span class="{verdict}">{verdict}</span></h2>']
    out.append("<h3>Streamed text</h3>"
               f'<pre class="text"><span class="prompt">{_e(report.get("prompt", ""))}</span>'
               f'{_coloured_text(report)}</pre>')
    if report.get("token_texts"):
        out.append(_text_legend(v))
    times = list(report.get("token_times_us") or [])
    ttft = s.get("ttft_ms")
    out.append(_svg_plot([(t * 1e3, r) for t, r in speed_series(times)], color=SPEED_COLOR,
                         x_label="milliseconds since the request (board clock)",
                         y_label="tokens/s", title=f"Decode speed over time (last {WINDOW} tokens; first token at "
                         + (f"{ttft:.0f} ms)" if ttft is not None else "? ms)")))
    drift = [float(d) for d in v.get("drift_by_position") or []]
    bad, near = _positions(v)
    tolerance = float(v["tolerance"]) if v.get("tolerance") else None
    out.append(_svg_plot([(float(i), d) for i, d in enumerate(drift)], color=DRIFT_COLOR,
                         x_label="generated token", y_label="drift (std of the reference logits)",
                         limit=tolerance, limit_label=f"tolerance {tolerance:g} std" if tolerance else "",
                         marks=[(float(i), drift[i]) for i in sorted(bad) if 0 <= i < len(drift)],
                         near_ties=[(float(i), drift[i]) for i in sorted(near) if 0 <= i < len(drift)],
                         whole_x=True,
                         title="Per-token drift of the board's logits from the host reference",
                         key="\u25c6 near-tie, \u25cb did not validate"))
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


def outcome_section(outcomes: Mapping[str, tuple[str, str]], runs: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """The tests' own outcomes first (a test fails though its streams validate, or is skipped with no
    stream at all), each beside the verdicts of the streams it generated."""
    verdicts: dict[str, list[str]] = {}
    for heading, r in runs:
        verdicts.setdefault(heading, []).append(str(r["validation"]["verdict"]))
    counts = {k: sum(o == k for o, _ in outcomes.values()) for k in ("passed", "failed", "error", "skipped")}
    line = ", ".join(f"{n} {k}" for k, n in counts.items() if n) or "no test ran"
    rows = []
    for test, (outcome, reason) in outcomes.items():
        mark = {"passed": "PASS", "failed": "FAIL", "error": "FAIL"}.get(outcome, "")
        streams = verdicts.get(test, [])
        shown = (f"{streams.count('PASS')} of {len(streams)} validated" if streams else "no stream")
        rows.append(f'<tr><td>{_e(test)}</td><td class="{mark}">{_e(outcome)}</td><td>{_e(shown)}</td>'
                    f"<td>{_e(reason)}</td></tr>")
    return (f"<h2>Tests: {_e(line)}</h2><table><tr><th>test</th><th>outcome</th><th>its streams</th>"
            f"<th>why</th></tr>{''.join(rows)}</table>")


def render(runs: Sequence[tuple[str, dict[str, Any]]], *, title: str, versions: dict[str, str],
           outcomes: Mapping[str, tuple[str, str]] | None = None) -> str:
    """The page: ``runs`` are (heading, ``RunReport.to_dict()``) pairs, in order; ``outcomes`` (the pytest
    plugin's): test id -> (passed|failed|error|skipped, why), shown first."""
    passed = sum(r["validation"]["verdict"] == "PASS" for _, r in runs)
    body = [f"<h1>{_e(title)}</h1>"]
    if outcomes is not None:
        body.append(outcome_section(outcomes, runs))
    body.append(f'<p>{passed} of {len(runs)} generation(s) validated. Versions: '
                + ", ".join(f"{_e(k)} {_e(x)}" for k, x in versions.items()) + ".</p>")
    body += [run_section(r, heading) for heading, r in runs]
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<style>{CSS}</style></head><body>{"".join(body)}</body></html>\n')


def write(path: Path, runs: Sequence[tuple[str, dict[str, Any]]], *, title: str, versions: dict[str, str],
          outcomes: Mapping[str, tuple[str, str]] | None = None) -> None:
    """Write the page whole or not at all (a temporary file renamed into place)."""
    text = render(runs, title=title, versions=versions, outcomes=outcomes)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
