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
    (["--system", "Be brief."], "--system needs --chat"),
    (["--chat"], "--chat: tiny has no chat template: a preset has none"),  # the default model, a preset
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


class Reached(Exception):
    """The command got past its checks to the work itself."""


@pytest.fixture
def no_work(monkeypatch):
    """Every job the commands call ends at once: a test sees only the refusals made before any work."""
    from toolchain import api
    from toolchain import console as console_mod

    def reached(*args, **kwargs):
        raise Reached("the command went on to the work")

    for name in ("run_job", "prepare_run", "flash", "stop", "power", "trust", "image", "ports", "target_for"):
        monkeypatch.setattr(api, name, reached)
    monkeypatch.setattr(console_mod, "open_chat", reached)


def one_line(result, needle, code=2):
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert result.exit_code == code and len(lines) == 1, result.output
    assert lines[0].startswith("error:") and needle in lines[0], result.output
    return lines[0]


@pytest.mark.parametrize("args,needle", [
    (["--temperature", "-1"], "--temperature -1.0 must be 0 (greedy) or positive"),
    (["--temperature", "nan"], "--temperature nan must be a finite number"),
    (["--top-p", "0"], "--top-p 0.0 must be in (0, 1]"),
    (["--top-p", "nan"], "--top-p nan must be a finite number"),
    (["--top-k", "-1"], "--top-k -1 must be 0 (all) or a positive count"),
    (["--top-k", str(2**32)], "must be 0 (all) or a positive count"),
    (["--threads", "0"], "--threads 0 must be in [1, 256]"),
    (["--seed", "-1"], "--seed -1 must be in [0, 2^64)"),
    (["--tokens", "0"], "--tokens 0 must be at least 1"),
    (["--max-seq-len", "1"], "--max-seq-len 1 must be at least 2"),
])
def test_bad_console_options_are_refused_as_run_refuses_them_before_any_bring_up(tmp_path, no_work, args, needle):
    work = tmp_path / "work"
    result = CliRunner().invoke(main, ["console", "--board", "host", "--workdir", str(work), *args], input="")
    one_line(result, needle)
    assert not work.exists()


def test_a_prompt_that_is_not_utf8_is_refused_before_any_work(tmp_path, no_work):
    # argv bytes that are not UTF-8 reach Python as lone surrogates ("\udcff")
    work = tmp_path / "work"
    result = CliRunner().invoke(main, ["run", "--board", "host", "--workdir", str(work), "--prompt", "a\udcff\udcfe"])
    one_line(result, "--prompt is not UTF-8 text (the byte 0xff at character 1)")
    assert not work.exists()


@pytest.mark.parametrize("args", [
    ["run", "--board", "host"],
    ["console", "--board", "host"],
    ["flash", "BUNDLE"],
    ["stop", "--board", "host"],
    ["power", "status", "--board", "rpi5", "--target", "qemu-system"],
    ["trust", "KEY", "--board", "host"],
    ["image", "--board", "rpi5", "--out", "IMG"],
    ["monitor", "--board", "host"],
    ["ports"],
])
@pytest.mark.parametrize("under", [False, True])
def test_a_workdir_that_is_a_file_is_refused_in_one_line(tmp_path, no_work, args, under):
    afile = tmp_path / "passwd"
    afile.write_text("root:x:0:0::/root:/bin/sh\n")
    workdir = afile / "out" if under else afile
    args = [a.replace("BUNDLE", str(tmp_path / "b")).replace("KEY", str(tmp_path / "k.pub"))
            .replace("IMG", str(tmp_path / "img")) for a in args]
    result = CliRunner().invoke(main, [*args, "--workdir", str(workdir)], input="")
    one_line(result, f"--workdir {workdir}: {afile} is a file, not a folder" if under else
             f"--workdir {workdir} is a file, not a folder")
    assert afile.read_text() == "root:x:0:0::/root:/bin/sh\n"


@pytest.mark.parametrize("args,needle", [
    (["--prompt-ids", "-1"], "--prompt-ids: token id -1 is not in [0, 2^32)"),
    (["--prompt-ids", f"1,{2**32}"], f"--prompt-ids: token id {2**32} is not in [0, 2^32)"),
    (["--prompt-ids", "1,,2"], "--prompt-ids '1,,2' must be comma-separated integers"),
    (["--prompt-ids", "1", "--tokens", "-1"], "--tokens -1 must be in [1, 2^32)"),
    (["--seconds", "nan"], "--seconds nan must be a finite number of seconds, at least 0"),
    (["--seconds", "inf"], "--seconds inf must be a finite number of seconds, at least 0"),
    (["--seconds", "-1"], "--seconds -1.0 must be a finite number of seconds, at least 0"),
    (["--baud", "0"], "--baud 0 must be a positive rate"),
])
def test_bad_monitor_options_are_refused_before_the_port_is_opened(monkeypatch, args, needle):
    from toolchain.link import ports

    def opened(*a, **k):
        raise Reached("the port was opened")

    monkeypatch.setattr(ports, "opener", opened)
    one_line(CliRunner().invoke(main, ["monitor", "--port", "loop://", *args]), needle)


@pytest.mark.parametrize("args,needle", [
    (["run", "--board", "host", "--target", "local", "--port", "/dev/ttyUSB0"],
     "--port does not apply to the local target"),
    (["run", "--board", "host", "--port", "/dev/ttyUSB0"],  # the host board's default target: local
     "--port does not apply to the local target"),
    (["run", "--board", "rpi5", "--target", "qemu", "--port", "usb:0403:6001"],
     "--port does not apply to the qemu target"),
    (["console", "--board", "rpi5", "--target", "qemu", "--port", "/dev/ttyUSB0"],
     "--port does not apply to the qemu target"),
    (["flash", "BUNDLE", "--target", "qemu", "--service"], "--service does not apply to the qemu target"),
    (["flash", "BUNDLE", "--target", "local", "--service"], "--service does not apply to the local target"),
    (["flash", "--rollback", "--board", "host", "--service"], "--service does not apply to the local target"),
    (["stop", "--board", "host", "--target", "local", "--port", "/dev/ttyUSB0"],
     "--port does not apply to the local target"),
    (["run", "--board", "rpi5", "--target", "qemu", "--board-port", "/dev/ttyAMA0"],
     "--board-port does not apply to the qemu target"),
    (["run", "--board", "rpi5", "--target", "qemu", "--accept-new-host-key"],
     "--accept-new-host-key does not apply to the qemu target"),
    (["power", "on", "--board", "rpi5", "--target", "qemu-system", "--accept-new-host-key"],
     "--accept-new-host-key does not apply to the qemu-system target"),
    (["console", "--board", "host", "--target", "local", "--security-counter", "3"],
     "--security-counter needs --sign-key"),
    (["console", "--board", "host", "--target", "local", "--attach", "--sign-key", "k"], "--attach flashes nothing"),
])
def test_target_options_a_target_would_ignore_are_refused(tmp_path, no_work, args, needle):
    args = [a.replace("BUNDLE", str(tmp_path / "b")) for a in args]
    one_line(CliRunner().invoke(main, [*args, "--workdir", str(tmp_path / "work")], input=""), needle)


@pytest.mark.parametrize("args", [
    ["run", "--board", "rpi5", "--target", "ssh://pi@rpi5", "--port", "/dev/ttyUSB0"],
    ["flash", "BUNDLE", "--target", "ssh://pi@rpi5", "--port", "/dev/ttyUSB0", "--service"],
    ["console", "--board", "rpi5", "--target", "qemu", "--attach", "--port", "/dev/ttyUSB0"],  # talks to that port
])
def test_target_options_a_target_uses_are_passed_on(tmp_path, no_work, args):
    args = [a.replace("BUNDLE", str(tmp_path / "b")) for a in args]
    result = CliRunner().invoke(main, [*args, "--workdir", str(tmp_path / "work")], input="")
    assert result.exit_code == 70 and "the command went on to the work" in result.output, result.output


def test_console_help_names_the_exit_status_of_a_reply_that_does_not_validate():
    from click.testing import CliRunner

    from toolchain.cli import main
    from toolchain.errors import ValidationFailed

    out = CliRunner().invoke(main, ["console", "--help"], terminal_width=200).output
    assert f"or {ValidationFailed.exit_code} if a reply did not validate" in " ".join(out.split())
