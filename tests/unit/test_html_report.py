"""The HTML report as text: self-contained, every board string escaped, the plots' data right."""

import copy

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
