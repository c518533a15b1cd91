"""`edgelm run --report FILE.html` on the host board, opened in headless Chromium (Debian's
chromium): the screenshot shows the speed plot, the drift plot and the validation table. The same
check on the page with its plots, or its tables, cut out finds them missing."""

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
