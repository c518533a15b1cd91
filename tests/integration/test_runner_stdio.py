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


def _tokens_and_logits(bundle, pte, prompt, n):
    proc = subprocess.Popen([str(bundle.root / "runner"), "--model", str(pte), "--serial", "-"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    link = PipeTransport.of(proc, "runner stdio")
    try:
        s = BoardSession(link, TIMEOUTS)
        s.wait_hello()
        got = [m for m in s.generate(P.Request(prompt, max_new_tokens=n, ignore_eos=True, report_logits=True))
               if isinstance(m, P.Token)]
        s.quit()
        assert proc.wait(30) == 0
    finally:
        link.close()
    return [m.token for m in got], [m.logit for m in got]


def test_attention_over_the_filled_slots_gives_the_tokens_of_attention_over_all_and_old_programs_still_run(
        host_bundle, tmp_path):
    """key_positions bounds the attention to the slots written so far. The same fp32 weights exported
    without it (the two-input program of earlier releases: every slot attended, the rest masked) must
    give the same tokens and logits on the same runner, and that older program must still be served."""
    import torch

    from toolchain.export import lower
    from toolchain.model import checkpoint
    from toolchain.validate.reference import ProgramRunner

    net, _ = checkpoint.load("tiny", max_seq_len=64)
    seq = torch.export.Dim("seq", min=1, max=64)
    with torch.no_grad():
        old = torch.export.export(net, lower.example_inputs()[:2], dynamic_shapes=({1: seq}, None), strict=False)
    programs = {"bounded": lower.to_program_bytes(lower.lower(lower.export(net))),
                "all-slots": lower.to_program_bytes(lower.lower(old))}
    assert ProgramRunner(programs["bounded"])._key_input and not ProgramRunner(programs["all-slots"])._key_input
    prompt = (1, 82, 114, 103, 35, 104)
    runs = {}
    for name, program in programs.items():
        pte = tmp_path / f"{name}.pte"
        pte.write_bytes(program)
        runs[name] = _tokens_and_logits(host_bundle, pte, prompt, 40)
    assert runs["bounded"][0] == runs["all-slots"][0]
    assert max(abs(a - b) for a, b in zip(runs["bounded"][1], runs["all-slots"][1], strict=True)) < 1e-4
    assert len(set(runs["bounded"][0])) > 3  # a real continuation, not one token repeated
