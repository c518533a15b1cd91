"""The real runner serving on its stdin/stdout (`--serial -`): what an SSH channel carries."""

import subprocess

import pytest

from toolchain.errors import DeviceError
from toolchain.link import protocol as P
from toolchain.link.session import BoardSession, Timeouts
from toolchain.link.transport import Deadline, PipeTransport

pytestmark = pytest.mark.slow

TIMEOUTS = Timeouts(hello_s=60, first_token_s=60, token_s=30)


def _start(bundle, *extra):
    root = bundle.root
    return subprocess.Popen([str(root / "runner"), "--model", str(root / "model.pte"), "--serial", "-", *extra],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_the_runner_serves_on_stdio_and_nothing_else_reaches_stdout(host_bundle):
    proc = _start(host_bundle, "--verbose")  # ExecuTorch's debug and info logs too: they must go to stderr
    link = PipeTransport.of(proc, "runner stdio")
    try:
        s = BoardSession(link, TIMEOUTS)
        hello = s.wait_hello()
        assert hello.model_sha256 == host_bundle.info["model_sha256"] and hello.board == "host"
        req = P.Request((1, 82, 114, 103), max_new_tokens=12, ignore_eos=True, report_logits=True)
        first = [m for m in s.generate(req)]
        tokens = [m.token for m in first if isinstance(m, P.Token)]
        assert len(tokens) == 12 and isinstance(first[-1], P.Stats) and first[-1].generated == 12
        assert [m.token for m in s.generate(req) if isinstance(m, P.Token)] == tokens  # greedy: the same again
        s.quit()
        assert proc.wait(30) == 0
        # every byte on stdout was a frame the session read: anything else would have garbled one
        with pytest.raises(DeviceError, match="end of file"):
            link.read(Deadline(5))
    finally:
        link.close()
    log = proc.stderr.read().decode()
    assert "HELLO sent on stdin/stdout" in log and "[executorch I" in log and "QUIT received" in log


def test_end_of_file_on_stdin_is_a_lost_link(host_bundle):
    proc = _start(host_bundle)
    link = PipeTransport.of(proc, "runner stdio")
    BoardSession(link, TIMEOUTS).wait_hello()
    proc.stdin.close()
    assert proc.wait(30) == 6
    assert "link lost: end of file on stdin/stdout" in proc.stderr.read().decode()
    link.close()


def test_a_vanished_reader_is_a_lost_link_too(host_bundle):
    proc = _start(host_bundle)
    link = PipeTransport.of(proc, "runner stdio")
    s = BoardSession(link, TIMEOUTS)
    s.wait_hello()
    proc.stdout.close()  # nobody reads the frames any more: the next write fails (EPIPE)
    s.send(P.REQUEST, P.Request((1, 82), max_new_tokens=4).pack())
    assert proc.wait(30) == 6
    assert "link lost: write: Broken pipe on stdin/stdout" in proc.stderr.read().decode()
    link.close()
