"""Speculative decoding: a draft verified in one forward call and rolled back where it was wrong gives,
token for token, what plain decoding gives (the model, the program, the real runner), and a runner that
sends its drafts unverified is caught by the unchanged validation."""

import pytest
import torch
from judges import reference_judge, twin_judge
from runner_io import TIMEOUTS, lying_bundle, serve

from toolchain import api, boards
from toolchain.deploy import local
from toolchain.deploy.bringup import bring_up
from toolchain.export import lower
from toolchain.link import protocol as P
from toolchain.model import checkpoint
from toolchain.model.tokenizer import ByteTokenizer
from toolchain.validate.reference import ProgramRunner

pytestmark = pytest.mark.slow

# The tiny preset has learned its corpus: with a sentence of it in the prompt, the continuation
# repeats text the prompt already holds, so drafts from the context are often right (and sometimes not).
REPEATING = [1, *ByteTokenizer().encode("The quick brown fox jumps over the lazy dog. One, two, three. The quick")]


def _plain(step, prompt: list[int], n: int) -> tuple[list[int], list[torch.Tensor]]:
    logits = [step(prompt, 0)]
    tokens = [int(logits[-1].argmax())]
    for i in range(n - 1):
        logits.append(step([tokens[-1]], len(prompt) + i))
        tokens.append(int(logits[-1].argmax()))
    return tokens, logits


def _check_rollback(rows, step, prompt, plain_tokens, plain_logits, atol):
    """Walk plain_tokens in chunks of a token + a draft of k, with a wrong draft token at varying offsets,
    and compare every emitted row with plain decoding's logits at that position."""
    pos, emitted = len(prompt), 1  # plain_tokens[0] came from the prefill
    rounds = 0
    while emitted < len(plain_tokens):
        k = min(1 + rounds % 7, len(plain_tokens) - emitted)
        draft = list(plain_tokens[emitted:emitted + k])
        bad = rounds % (k + 1)  # offset of the wrong draft token; k: the whole draft is right
        if bad < k:
            draft[bad] = (draft[bad] + 1) % 256
        out = rows([plain_tokens[emitted - 1], *draft], pos)
        used = 0
        while True:
            assert torch.allclose(out[used], plain_logits[emitted], atol=atol), (rounds, used)
            tok = int(out[used].argmax())
            assert tok == plain_tokens[emitted]
            emitted += 1
            used += 1
            if used > k or tok != draft[used - 1] or emitted == len(plain_tokens):
                break
        pos += used
        rounds += 1
    return rounds


def test_a_rejected_draft_rolls_back_in_the_model():
    net, _ = checkpoint.load("tiny", max_seq_len=160)
    with torch.no_grad():
        def step(tokens, pos):
            return net(torch.tensor([tokens]), torch.tensor([pos]), logit_rows=torch.tensor([len(tokens) - 1]))[0, 0]

        def rows(tokens, pos):
            return net(torch.tensor([tokens]), torch.tensor([pos]), logit_rows=torch.arange(len(tokens)))[0]

        tokens, logits = _plain(step, REPEATING, 40)
        net.reset()
        step(REPEATING, 0)
        assert _check_rollback(rows, step, REPEATING, tokens, logits, atol=1e-4) > 10


def test_a_rejected_draft_rolls_back_in_the_program():
    net, _ = checkpoint.load("tiny", max_seq_len=160)
    program = lower.to_program_bytes(lower.lower(lower.export(net)))
    plain = ProgramRunner(program)
    assert plain.max_rows == 8
    tokens, logits = _plain(plain.step, REPEATING, 40)
    spec = ProgramRunner(program)
    spec.step(REPEATING, 0)
    assert _check_rollback(spec.rows, spec.step, REPEATING, tokens, logits, atol=1e-4) > 10
    with pytest.raises(ValueError, match="at most 8"):
        spec.rows(list(range(9)), 0)


@pytest.mark.parametrize("sampling", [{}, {"temperature": 0.9, "top_k": 4, "seed": 5}], ids=["greedy", "sampled"])
def test_the_runner_gives_the_same_tokens_with_and_without_drafts(host_bundle, sampling):
    req = P.Request(tuple(REPEATING), max_new_tokens=48, ignore_eos=True, report_logits=True, **sampling)
    plain, plain_stats = serve(host_bundle, P.Request(**{**req.__dict__, "draft": False}))
    spec, spec_stats = serve(host_bundle, req)
    assert [t.token for t in spec] == [t.token for t in plain]
    assert [t.index for t in spec] == list(range(48))
    assert max(abs(a.logit - b.logit) for a, b in zip(spec, plain, strict=True)) < 1e-3
    assert plain_stats.drafted == 0 and plain_stats.decode_calls == 47
    assert spec_stats.accepted > 10  # the drafts did save calls ...
    assert 0 < spec_stats.draft_calls <= spec_stats.decode_calls and plain_stats.draft_calls == 0
    assert spec_stats.decode_calls == 47 - spec_stats.accepted < 47
    assert spec_stats.accepted < spec_stats.drafted  # ... and some were wrong and rolled back
    # --draft 0 on the runner's command line turns drafting off as well
    off, off_stats = serve(host_bundle, req, "--draft", "0")
    assert [t.token for t in off] == [t.token for t in plain] and off_stats.drafted == 0


@pytest.fixture(scope="module")
def lying(hil_workdir, tmp_path_factory):
    """A host runner built to send its draft tokens without checking them against the model."""
    exported, _ = api.cached_export("tiny", hil_workdir, quant="8da4w")
    return lying_bundle(exported.pte, tmp_path_factory.mktemp("draft-bug")), exported.pte


@pytest.mark.parametrize("rule", ["twin", "reference"])
def test_the_verdict_fails_a_runner_that_sends_unverified_drafts(lying, hil_workdir, tmp_path, rule):
    bundle, pte = lying
    judge = twin_judge(pte, hil_workdir) if rule == "twin" else reference_judge(pte)
    target = local.create("local", boards.get("host"), tmp_path / "targets")
    prompts = [REPEATING, [1, *ByteTokenizer().encode("Once upon a time, a small board")]]
    with judge, bring_up(target, bundle, timeouts=TIMEOUTS) as up:
        for prompt in prompts:
            req = P.Request(tuple(prompt), 48, ignore_eos=True, report_logits=True)
            served = api.serve_and_validate(up, req, judge)
            assert not served.verdict.passed and served.verdict.rule == rule, prompt
            assert served.collected.stats.drafted > 0
            # the same lying runner, asked for no drafts, decodes honestly and passes
            honest = api.serve_and_validate(up, P.Request(**{**req.__dict__, "draft": False}), judge)
            assert honest.verdict.passed, honest.verdict.reason
