"""`edgelm console` at a real pseudo-terminal (pexpect), on the host board with the tiny model (its
byte tokenizer: a prompt is BOS and one token per byte, so the status line's prompt count says what
was sent): the arrow keys edit the line, the up arrow recalls it (and, in the next session, the lines
of the last one, from the history file), \"\"\" spans lines, /set is checked as `edgelm run` checks
its options and takes effect from the next reply, /system re-renders the conversation with the system
message first."""

import os
import re
import sys

import pexpect
import pytest

pytestmark = pytest.mark.slow  # two bring-ups of the host board: 20 to 30 s

PROMPT_COUNT = r"(\d+) tokens · [\d.]+ tok/s · TTFT \d+ ms · (\d+)/(\d+) prompt tokens kept · PASS"
LEFT, UP = "\x1b[D", "\x1b[A"


def console(hil_workdir, tmp_path, *args, log):
    env = {**os.environ, "NO_COLOR": "1", "TERM": "xterm", "COLUMNS": "200", "XDG_STATE_HOME": str(tmp_path / "state")}
    argv = ["-m", "toolchain.cli", "console", "--board", "host", "--target", "local", "--model", "tiny",
            "--tokens", "8", "--ignore-eos", "--workdir", str(hil_workdir), *args]
    child = pexpect.spawn(sys.executable, argv, env=env, encoding="utf-8", timeout=300, dimensions=(50, 200),
                          logfile=log)
    child.expect_exact("you> ")
    return child


def reply(child):
    """The next reply's (tokens, prompt tokens); then the next prompt."""
    child.expect(PROMPT_COUNT, timeout=120)
    got = int(child.match.group(1)), int(child.match.group(3))
    child.expect_exact("you> ")
    return got


def test_a_conversation_at_a_terminal_edits_recalls_and_takes_settings(hil_workdir, tmp_path):
    log = open(tmp_path / "console.log", "w")  # noqa: SIM115 (pexpect writes to it until the end)
    child = console(hil_workdir, tmp_path, log=log)
    try:
        child.send("helo" + LEFT + "l\r")  # the left arrow moves back one: "hello", not "helo^[[Dl"
        assert reply(child) == (8, 1 + len("hello"))
        child.send(UP + "\r")  # the up arrow recalls "hello": the second turn is the first, " hello", and its reply
        assert reply(child) == (8, 6 + 8 + len(" hello"))

        child.sendline("/set top_k -1")  # refused in one line by the check `edgelm run` makes; nothing changes
        child.expect_exact("error: /set refused: top_k -1 must be 0 (all) or a positive count; top_k stays 0")
        child.expect_exact("you> ")
        child.sendline("/set tokens 5")
        child.expect_exact("(tokens 5 from the next reply)")
        child.expect_exact("you> ")
        child.sendline("/set temperature 0.7")
        child.expect_exact("you> ")
        child.sendline("/set")
        child.expect_exact("sampling: temperature 0.7, top_k 0, top_p 1.0, tokens 5, seed 0")
        child.expect_exact("you> ")

        child.sendline("/system You are a board.")  # a new conversation, the system message first
        child.expect_exact("(system message set; a new conversation)")
        child.expect_exact("you> ")
        child.sendline("hi")
        assert reply(child) == (5, 1 + len("You are a board.\n\nhi"))  # 5 tokens, sampled, still PASS

        child.sendline("/reset")
        child.expect_exact("you> ")
        child.sendline('"""')  # a message over three lines
        child.sendline("one")
        child.sendline('two"""')
        assert reply(child) == (5, 1 + len("You are a board.\n\none\ntwo"))

        child.sendline("/system -")
        child.expect_exact("(no system message; a new conversation)")
        child.expect_exact("you> ")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, (tmp_path / "console.log").read_text()[-3000:]
    history = tmp_path / "state" / "edgelm" / "console_history"
    assert history.read_text().splitlines()[:2] == ["hello", "/set top_k -1"]  # as edited; a recall is not kept twice
    assert history.stat().st_mode & 0o777 == 0o600

    # The next session (the same file, named with --history) recalls the last one's lines: up, up is "/system -"
    child = console(hil_workdir, tmp_path, "--history", str(history), log=log)
    try:
        child.send(UP + UP + "\r")
        child.expect_exact("(no system message; a new conversation)")
        child.expect_exact("you> ")
        child.send(UP + UP + "\r")  # and up once more past it is "/quit"
        child.expect(pexpect.EOF)
    finally:
        child.close()
    log.close()
    shown = (tmp_path / "console.log").read_text()
    print(shown[-4000:])
    assert child.exitstatus == 0 and "Traceback" not in shown
    assert not re.search(r"\^\[\[[AD]", shown)  # no arrow key reached the model as text
