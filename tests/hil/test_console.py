"""`edgelm console` as a person uses it, through a pseudo-terminal (pexpect), on the emulated Pi 5
with the shipped fortune model: two prompts with streamed replies and status lines, a reply
stopped with Ctrl-C (CANCEL) and the conversation going on, /stats, /reset, /quit."""

import os
import re
import sys

import pexpect
import pytest

pytestmark = [pytest.mark.hil, pytest.mark.slow]

STATUS = r"(\d+) tokens · [\d.]+ tok/s · TTFT \d+ ms · (\d+)/(\d+) prompt tokens kept · "


def test_a_conversation_through_a_terminal(hil_workdir, tmp_path):
    env = {**os.environ, "NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200"}
    argv = ["-m", "toolchain.cli", "console", "--board", "rpi5", "--target", "qemu", "--model", "fortune",
            "--quant", "8da8w", "--tokens", "300", "--ignore-eos", "--max-seq-len", "1024",
            "--workdir", str(hil_workdir)]
    child = pexpect.spawn(sys.executable, argv, env=env, encoding="utf-8", timeout=900, dimensions=(50, 200),
                          logfile=open(tmp_path / "console.log", "w"))
    try:
        child.expect("connected: fortune on rpi5")
        child.expect_exact("you> ")
        # 1: a reply streams, then its status line
        child.sendline("Tell me a fortune.")
        child.expect(STATUS + "PASS", timeout=600)
        first = child.match
        assert first.group(1) == "300" and first.group(2) == "0"  # nothing to keep on the first turn
        child.expect_exact("you> ")
        # 2: the next turn: the board keeps the first one in its state, feeds only the new turn
        child.sendline("Another one.")
        child.expect_exact("Another one.")  # the terminal's echo
        child.expect(r"[A-Za-z]{3}", timeout=300)  # the reply has begun to stream ...
        child.sendintr()  # ... Ctrl-C stops it on the board
        child.expect(STATUS + "cancelled · PASS", timeout=120)
        cut = child.match
        assert 0 < int(cut.group(1)) < 300
        kept, prompt = int(cut.group(2)), int(cut.group(3))
        assert kept > 300 and prompt > kept  # turn 1's prompt and reply were not fed again
        child.expect_exact("you> ")
        # 3: the conversation goes on after the cancelled reply, fed whole: the twin that judges it ran
        # the cancelled request to its end, so the board's state and the twin's part there
        child.sendline("Thank you.")
        child.expect(STATUS + "PASS", timeout=600)
        assert int(child.match.group(2)) == 0 and int(child.match.group(3)) > prompt
        child.expect_exact("you> ")
        child.sendline("/stats")
        child.expect(r"session: \d+ tokens in 3 replies, 3 of 3 validated, 1 cancelled")
        child.expect_exact("you> ")
        child.sendline("/bogus")
        child.expect("unknown command '/bogus'")
        child.expect_exact("you> ")
        child.sendline("/reset")
        child.expect_exact("(a new conversation)")
        child.expect_exact("you> ")
        child.sendline("/quit")
        child.expect(pexpect.EOF, timeout=120)
    finally:
        child.close()
    log = (tmp_path / "console.log").read_text()
    print(log[-3000:])
    assert child.exitstatus == 0, log[-2000:]
    assert "Traceback" not in log
    assert len(re.findall(STATUS, log)) == 3
