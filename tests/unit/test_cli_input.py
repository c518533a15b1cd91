"""Bad options end in one line and exit 2 before any work; text from a board cannot drive the terminal."""

import pytest
from click.testing import CliRunner

from toolchain.cli import main, printable
from toolchain.model.tokenizer import ByteTokenizer, TextAssembler


@pytest.mark.parametrize("args,needle", [
    (["--temperature", "-1"], "--temperature -1.0 must be 0 (greedy) or positive"),
    (["--temperature", "nan"], "--temperature nan must be a finite number"),
    (["--temperature", "inf"], "--temperature inf must be a finite number"),
    (["--top-p", "2"], "--top-p 2.0 must be in (0, 1]"),
    (["--top-p", "0"], "--top-p 0.0 must be in (0, 1]"),
    (["--top-p", "nan"], "--top-p nan must be a finite number"),
    (["--top-k", "-1"], "--top-k -1 must be 0 (all) or a positive count"),
    (["--threads", "-3"], "--threads -3 must be in [1, 256]"),
    (["--threads", "0"], "--threads 0 must be in [1, 256]"),
    (["--seed", "-1"], "--seed -1 must be in [0, 2^64)"),
    (["--seed", str(2**64)], "must be in [0, 2^64)"),
    (["--tokens", "0"], "--tokens 0 must be at least 1"),
    (["--tolerance", "-0.5"], "--tolerance -0.5 must be positive"),
    (["--retries", "-1"], "--retries -1 must be in [0, 100]"),
    (["--near-tie-budget", "1.5"], "--near-tie-budget 1.5 must be a fraction in [0, 1]"),
    (["--min-agreement", "1.2"], "--min-agreement 1.2 must be a fraction in [0, 1]"),
    (["--min-agreement", "nan"], "--min-agreement nan must be a finite number"),
    (["--min-agreement", "0.9", "--no-fidelity"], "--min-agreement needs the fidelity measurement"),
])
def test_bad_run_options_fail_before_any_work(tmp_path, args, needle):
    work = tmp_path / "work"
    result = CliRunner().invoke(main, ["run", "--board", "host", "--workdir", str(work), *args])
    assert result.exit_code == 2, result.output
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], result.output
    assert not work.exists()  # nothing was exported, built or flashed


def test_board_text_is_printed_with_control_characters_escaped():
    hostile = "ok\x1b[2J\x1b]0;pwned\x07 \u202egnp.exe\r\nline\tx"
    shown = printable(hostile)
    assert "\x1b" not in shown and "\x07" not in shown and "\u202e" not in shown and "\r" not in shown
    assert shown == "ok\\x1b[2J\\x1b]0;pwned\\x07 \\u202egnp.exe\\x0d\nline\tx"
    assert printable("héllo wörld ✓") == "héllo wörld ✓"


def test_ids_the_tokenizer_has_no_text_for_are_shown():
    tok = ByteTokenizer()
    asm = TextAssembler(tok)
    text = "".join(asm.push(t) for t in [3 + ord("a"), 31670, 2, 3 + ord("b")]) + asm.finish()
    assert text == "a<id 31670>b"  # the unknown id is visible; EOS (2) is control, not text


def test_board_text_in_a_progress_line_is_shown_as_it_is(monkeypatch):
    """A release id read from the board's pid file, or a card's path, is text, not rich markup."""
    import io

    from rich.console import Console

    from toolchain import cli

    screen = Console(file=io.StringIO(), force_terminal=True, width=200)
    monkeypatch.setattr(cli, "err", screen)
    with cli.StepProgress() as progress:
        progress("stop", "the runner of [/]\x1b[2Jr-0 on ssh://pi@rpi5:rpi5")
        progress("flash", "dir:/media/[bold]card:rpi5")
    shown = screen.file.getvalue()
    assert "[/]\\x1b[2Jr-0" in shown and "dir:/media/[bold]card" in shown
