"""`edgelm run --report FILE.html` on the host board, opened in headless Chromium (Debian's
chromium): the screenshot shows the speed plot, the drift plot and the validation table. The same
check on the page with its plots, or its tables, cut out finds them missing."""

import math
import re
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from toolchain.validate import html

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def screenshot(page, png):
    if CHROMIUM is None:
        pytest.fail("chromium is not installed (make setup installs Debian's chromium)")
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--no-first-run", "--window-size=1100,2600", f"--screenshot={png}", page.as_uri()],
                          capture_output=True, timeout=180)
    assert png.is_file(), proc.stderr.decode(errors="replace")[-2000:]
    return Image.open(png).convert("RGB")


def pixels_like(image, color, slack=6):
    r0, g0, b0 = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    return sum(count for count, (r, g, b) in image.getcolors(maxcolors=1 << 24)
               if abs(r - r0) <= slack and abs(g - g0) <= slack and abs(b - b0) <= slack)


def seen(image):
    return {name: pixels_like(image, color) for name, color in
            (("speed", html.SPEED_COLOR), ("drift", html.DRIFT_COLOR), ("table", html.HEADER_BG))}


def test_the_report_shows_its_plots_and_table(tmp_path, hil_workdir):
    page = tmp_path / "run.html"
    proc = subprocess.run([sys.executable, "-m", "toolchain.cli", "run", "--board", "host", "--target", "local",
                           "--model", "tiny", "--prompt", "Twinkle", "--tokens", "48", "--ignore-eos",
                           "--no-fidelity", "--workdir", str(hil_workdir), "--report", str(page)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    text = page.read_text()
    assert text.count("<svg") == 2 and "Validation" in text and '<span class="PASS">PASS</span>' in text
    assert text.count('<span class="tok') >= 40  # the text token by token (a token inside a character joins the next)
    for svg in re.findall(r"<svg.*?</svg>", text, flags=re.S):  # round ticks on every axis
        ticks = [float(x.replace(",", "")) for x in re.findall(r'font-size="11" text-anchor="end">([^<]+)</text>', svg)]
        step = ticks[1] - ticks[0]
        assert round(step / 10 ** math.floor(math.log10(step)), 9) in (1, 2, 5), ticks
        assert all(math.isclose(t / step, round(t / step), abs_tol=1e-9) for t in ticks), ticks
    got = seen(screenshot(page, tmp_path / "run.png"))
    print("\npixels of each color in the screenshot:", got)
    assert got["speed"] > 1500 and got["drift"] > 1500 and got["table"] > 3000, got

    # The check finds what is missing: the same page without its plots, and without its tables
    no_plots = tmp_path / "no-plots.html"
    no_plots.write_text(re.sub(r"<svg.*?</svg>", "", text, flags=re.S))
    cut = seen(screenshot(no_plots, tmp_path / "no-plots.png"))
    assert cut["speed"] < 50 and cut["drift"] < 50 and cut["table"] > 3000, cut
    no_tables = tmp_path / "no-tables.html"
    no_tables.write_text(re.sub(r"<table>.*?</table>", "", text, flags=re.S))
    assert seen(screenshot(no_tables, tmp_path / "no-tables.png"))["table"] < 50


def test_an_unwritable_report_is_one_line_before_any_work(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "toolchain.cli", "run", "--board", "host", "--model", "tiny",
                           "--report", str(tmp_path / "nowhere" / "r.html")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: --report {tmp_path / 'nowhere' / 'r.html'}: the folder "
                                                f"{tmp_path / 'nowhere'} does not exist"]


def _synthetic_report():
    """A passing run of 40 tokens: drift between 0.04 and 0.25 std (the tolerance is 0.75), near-ties at
    tokens 0 and 17, each token's text."""
    import random

    random.seed(1)
    words = ("Once upon a time there was a little board that could run a language model all by itself , and "
             "every token it sent was checked against the host ' s own run of the same program . The end").split()
    pieces = [(" " if i else "") + w for i, w in enumerate(words)][:40]
    return {
        "board": "rpi5", "target": "qemu", "emulated": True, "model": "tiny", "quant": "8da4w", "release": "r-1",
        "firmware_version": "edgelm-runner 0.1", "model_sha256": "ab" * 32, "threads": 4, "prompt": "Tell me",
        "prompt_token_ids": [1, 2, 3], "generated_token_ids": list(range(100, 140)), "text": "".join(pieces),
        "token_texts": pieces, "stop_reason": "max tokens", "sampling": {"temperature": 0.0},
        "board_stats": {"load_ms": 10.0, "ttft_ms": 52.0, "prefill_tok_s": 60.0, "decode_tok_s": 126.0,
                        "peak_rss_kb": 2048, "decode_calls": 40, "draft_calls": 0, "drafted": 0, "accepted": 0},
        "validation": {"verdict": "PASS", "generated": 40, "exact_matches": 38, "near_ties": [0, 17],
                       "near_tie_budget": 2, "first_divergence": 0, "mismatches": [], "tolerance": 0.75,
                       "reason": "", "drift_max": 0.3, "drift_mean": 0.1, "sampled": False,
                       "drift_by_position": [round(0.04 + 0.1 * random.random() + (0.12 if i in (0, 17) else 0), 4)
                                             for i in range(40)]},
        "attempts": 1, "bundle": "out/b", "pte": "out/model.pte", "boot": None, "fidelity": None,
        "token_times_us": [52_300 + 7_900 * i + random.randint(0, 2000) for i in range(40)]}


def test_near_ties_drift_and_the_coloured_text_as_chromium_shows_them(tmp_path):
    text = html.render([("run", _synthetic_report())], title="edgelm run", versions={"edgelm": "0.1"})
    page = tmp_path / "run.html"
    page.write_text(text)
    image = screenshot(page, tmp_path / "run.png")
    # near-ties: violet diamonds on the drift plot and violet underlines in the text
    assert pixels_like(image, html.NEAR_TIE_COLOR) > 150
    # the drift axis is fitted to the data: the drift line spans most of the plot's height (with the
    # axis up to the tolerance it was squeezed into its bottom third)
    rows = [y for y in range(image.height) for x in range(0, image.width, 2)
            if _near(image.getpixel((x, y)), html.DRIFT_COLOR)]
    assert max(rows) - min(rows) > 110, (min(rows), max(rows))
    # the text is coloured token by token: the same page with the tokens' backgrounds taken away
    # differs in thousands of pixels
    plain = tmp_path / "plain.html"
    plain.write_text(re.sub(r' style="background:rgba\([^"]*\)"', "", text))
    other = screenshot(plain, tmp_path / "plain.png")
    changed = sum(1 for a, b in zip(image.getdata(), other.getdata(), strict=True) if a != b)
    assert changed > 3000, changed


def _near(pixel, color, slack=6):
    return all(abs(p - int(color[i:i + 2], 16)) <= slack for p, i in zip(pixel, (1, 3, 5), strict=True))
