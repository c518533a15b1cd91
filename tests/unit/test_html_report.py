"""The HTML report as text: self-contained, every board string escaped, the plots' data right."""

import copy
import html as html_mod
import math
import re

import pytest

from toolchain.validate import html

REPORT = {
    "board": "rpi5", "target": "qemu", "emulated": True, "model": "tiny", "quant": "8da4w", "release": "r-1",
    "firmware_version": "edgelm-runner 0.1", "model_sha256": "ab" * 32, "threads": 4, "prompt": "Once",
    "prompt_token_ids": [1, 79, 110], "generated_token_ids": [5, 6, 7, 8], "text": " upon a time",
    "stop_reason": "max tokens", "sampling": {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0},
    "board_stats": {"load_ms": 10.0, "ttft_ms": 50.0, "prefill_tok_s": 60.0, "decode_tok_s": 20.0,
                    "peak_rss_kb": 2048, "decode_calls": 3, "draft_calls": 0, "drafted": 0, "accepted": 0,
                    "draft_model_calls": 0},
    "validation": {"verdict": "PASS", "generated": 4, "exact_matches": 4, "near_ties": [], "near_tie_budget": 2,
                   "first_divergence": None, "mismatches": [], "tolerance": 0.75, "reason": "",
                   "drift_max": 0.01, "drift_mean": 0.005, "drift_by_position": [0.1, 0.2, 0.15, 0.05],
                   "sampled": False},
    "attempts": 1, "reused": {"export": True, "build": True}, "bundle": "out/b", "pte": "out/model.pte",
    "boot": None, "fidelity": None, "token_times_us": [50_000, 100_000, 150_000, 200_000],
}


def page(report):
    return html.render([("run", report)], title="t", versions={"edgelm": "0.1"})


def test_the_page_is_self_contained():
    text = page(REPORT)
    assert text.startswith("<!DOCTYPE html>") and "<svg" in text and "<table>" in text
    for outside in ("<script", " src=", "<link", "@import", "url("):
        assert outside not in text
    assert text.count("http") == text.count('xmlns="http://www.w3.org/2000/svg"')  # only the SVG namespace


def test_text_from_the_board_is_escaped():
    hostile = copy.deepcopy(REPORT)
    hostile["text"] = '</pre><script>alert(1)</script><img src=x onerror="alert(2)">'
    hostile["firmware_version"] = "<b onmouseover=alert(3)>"
    hostile["validation"]["reason"] = "<iframe>"
    text = page(hostile)
    assert "<script" not in text and "<img" not in text and "<iframe" not in text and "<b " not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_speed_is_tokens_over_the_boards_clock():
    # 10 ms per token, then a 100 ms stall: the window of 2 tokens shows it
    times = [0, 10_000, 20_000, 30_000, 130_000]
    assert html.speed_series(times, window=2) == [(0.01, 100.0), (0.02, 100.0), (0.03, 100.0), (0.13, 2 / 0.11)]
    assert html.speed_series([5, 5, 5]) == []  # a clock that does not advance gives no points
    assert html.speed_series([]) == []


def test_a_failed_run_shows_the_verdict_its_reason_and_marks_the_mismatch():
    bad = copy.deepcopy(REPORT)
    bad["validation"].update(verdict="FAIL", reason="token 2: board sent 7, reference 9", first_divergence=2,
                             mismatches=[{"position": 2, "board": 7, "reference": 9, "drift": 3.0}],
                             drift_by_position=[0.1, 0.2, 3.0, 0.1])
    text = page(bad)
    assert '<span class="FAIL">FAIL</span>' in text and "token 2: board sent 7, reference 9" in text
    assert text.count(f'stroke="{html.LIMIT_COLOR}" stroke-width="2"') == 1  # one ring: the mismatch
    assert "0 of 1 generation(s) validated" in text
    assert '<span class="PASS">PASS</span>' in page(REPORT)


def test_a_run_without_timestamps_says_there_is_nothing_to_plot():
    old = copy.deepcopy(REPORT)
    old["token_times_us"] = []
    assert "nothing to plot" in page(old)


def _tick_labels(svg):
    """The tick labels of one plot: its y ticks (anchored at the end) and x ticks (in the middle)."""
    return ([float(x.replace(",", "")) for x in re.findall(r'font-size="11" text-anchor="end">([^<]+)</text>', svg)],
            [float(x.replace(",", "")) for x in re.findall(r'font-size="11"\s+text-anchor="middle">([^<]+)</text>',
                                                           svg)])


def _round(ticks):
    """Evenly spaced by 1, 2 or 5 times a power of ten, each a multiple of the step."""
    step = ticks[1] - ticks[0]
    mantissa = step / 10 ** math.floor(math.log10(step))
    return (any(math.isclose(mantissa, m) for m in (1, 2, 5))
            and all(math.isclose(b - a, step) for a, b in zip(ticks, ticks[1:]))
            and all(math.isclose(t / step, round(t / step), abs_tol=1e-9) for t in ticks))


def _plots(text):
    return re.findall(r"<svg.*?</svg>", text, flags=re.S)


@pytest.mark.parametrize("lo, hi, ticks", [(0, 14.6, [0, 5, 10, 15]), (0, 0.23, [0, 0.05, 0.1, 0.15, 0.2, 0.25]),
                                           (52.3, 361.8, [0, 100, 200, 300, 400]), (0, 3, [0, 1, 2, 3]),
                                           (0, 1, [0, 0.2, 0.4, 0.6, 0.8, 1]), (0, 7, [0, 2, 4, 6, 8])])
def test_ticks_are_round(lo, hi, ticks):
    assert html.nice_ticks(lo, hi) == pytest.approx(ticks)


def test_every_axis_has_round_ticks():
    odd = copy.deepcopy(REPORT)
    odd["token_times_us"] = [52_300 + 7_317 * i for i in range(30)]  # 136.7 tokens/s, from 59.6 ms
    odd["validation"]["drift_by_position"] = [0.0731 * (i % 5) for i in range(30)]
    for svg in _plots(page(odd)):
        ys, xs = _tick_labels(svg)
        assert len(ys) >= 3 and len(xs) >= 3, svg
        assert _round(ys) and _round(xs), (ys, xs)
        assert ys[0] == 0


def test_the_drift_axis_is_fitted_to_the_data_and_says_where_the_tolerance_is():
    text = page(REPORT)  # drift at most 0.2 std, tolerance 0.75 std
    drift_plot = _plots(text)[1]
    ys, _ = _tick_labels(drift_plot)
    assert max(ys) == pytest.approx(0.2)  # not 0.825: the tolerance does not flatten the data
    assert "tolerance 0.75 std: above this axis" in drift_plot and "stroke-dasharray" not in drift_plot
    near = copy.deepcopy(REPORT)  # a drift near the tolerance: the dashed line is drawn, labelled
    near["validation"]["drift_by_position"] = [0.1, 0.6, 0.15, 0.05]
    drift_plot = _plots(page(near))[1]
    assert "stroke-dasharray" in drift_plot and "dashed: tolerance 0.75 std" in drift_plot
    assert max(_tick_labels(drift_plot)[0]) == pytest.approx(0.8)
    flat = copy.deepcopy(REPORT)  # no drift at all (the host board): nothing to fit, the tolerance is drawn
    flat["validation"]["drift_by_position"] = [0.0] * 4
    drift_plot = _plots(page(flat))[1]
    assert "stroke-dasharray" in drift_plot and "above this axis" not in drift_plot


def test_near_ties_are_marked_on_the_drift_plot_and_in_the_text():
    tie = copy.deepcopy(REPORT)
    tie["token_texts"] = [" upon", " a", " ti", "me"]
    tie["validation"].update(near_ties=[0, 2], first_divergence=0, exact_matches=2)
    text = page(tie)
    assert _plots(text)[1].count('class="near-tie"') == 2
    spans = re.findall(r'<span class="(tok[^"]*)"[^>]*title="([^"]*)">([^<]*)</span>', text)
    assert [(c, t) for c, _, t in spans] == [("tok near-tie", " upon"), ("tok", " a"), ("tok near-tie", " ti"),
                                             ("tok", "me")]
    assert spans[0][1] == "token 0 (id 5): drift 0.1 std (13% of the tolerance), a near-tie"


def test_the_text_is_coloured_token_by_token_by_drift():
    coloured = copy.deepcopy(REPORT)
    coloured["text"] = " up<on a\u00e9"
    coloured["token_texts"] = [" up<on", " a", "", "\u00e9"]  # token 2 ends inside a character: it goes with 3
    coloured["validation"].update(drift_by_position=[0.0, 0.1875, 0.75, 0.3], verdict="FAIL",
                                  mismatches=[{"position": 1, "board": 6, "reference": 9}])
    text = page(coloured)
    spans = re.findall(r'<span class="(tok[^"]*)"( style="[^"]*")? title="([^"]*)">([^<]*)</span>', text)
    assert "".join(html_mod.unescape(s[3]) for s in spans) == coloured["text"]
    assert [s[1] for s in spans] == [' style="background:rgba(250,176,80,0.00)"',
                                     f' style="background:{html.MISMATCH_BG}"',
                                     ' style="background:rgba(250,176,80,1.00)"']
    assert spans[1][0] == "tok mismatch" and spans[1][2].endswith("did not validate")
    assert spans[2][2].startswith("token 2 (id 7), token 3 (id 8): drift 0.75 std (100% of the tolerance)")
    assert "&lt;on" in text  # the board's text, escaped
    old = copy.deepcopy(REPORT)  # a report without per-token texts: the text as it is
    assert '<span class="tok' not in page(old) and " upon a time" in page(old)


def test_a_pass_never_reads_as_a_failure():
    from toolchain.validate.report import summary_rows

    tie = copy.deepcopy(REPORT)
    tie["validation"].update(near_ties=[0], first_divergence=0, exact_matches=3)
    check = dict(summary_rows(tie))["check"]
    assert "first divergence" not in check and "differs at near-ties only" in check
    shown = page(tie)
    assert "first divergence" not in shown and "differs at near-ties only (allowed; the first at token 0)" in shown
    assert "no token differs" in dict(summary_rows(REPORT))["check"]
    bad = copy.deepcopy(REPORT)
    bad["validation"].update(verdict="FAIL", first_divergence=2, reason="token 2: ...")
    assert "first divergence at token 2" in dict(summary_rows(bad))["check"]


def test_the_plugins_report_leads_with_each_tests_outcome_not_its_streams_verdict():
    from toolchain.validate import html as html_mod

    page = html_mod.render([], title="t", versions={}, outcomes={
        "t.py::test_floor[host:local]": ("failed", "AssertionError: decode 2000 tok/s, below the floor 1e+09"),
        "t.py::test_needs_a_board": ("skipped", "no board configured"),
        "t.py::test_ok[host:local]": ("passed", "")})
    head = page.split("<table>")[0]
    assert "Tests: 1 passed, 1 failed, 1 skipped" in head
    assert '<td class="FAIL">failed</td><td>no stream</td><td>AssertionError: decode 2000 tok/s' in page
    assert "<td>skipped</td><td>no stream</td><td>no board configured</td>" in page.replace(' class=""', "")
