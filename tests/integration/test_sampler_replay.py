"""The host runner's sampled tokens replayed by toolchain/validate/sampler.py, and a runner built
with the test-only sampler fault (EDGELM_TEST_SAMPLER_BUG) caught by the same replay.

With ``top_k`` <= TOKEN_MAX_TOP (4) the kept ids are the TOKEN frame's reported best (id, logit),
so those exact f32 logits are all the replay needs: every other id is -inf to the sampler."""

import numpy as np
import pytest
import runner_io

from toolchain import api, boards
from toolchain.deploy import local
from toolchain.deploy.bringup import bring_up
from toolchain.link import protocol as P
from toolchain.link.session import Timeouts
from toolchain.validate import sampler as S

pytestmark = pytest.mark.slow

REQUEST = P.Request((1, 82, 114), 32, temperature=1.5, top_k=4, top_p=0.95, seed=2**64 - 1, ignore_eos=True,
                    report_logits=True)


@pytest.fixture(scope="module")
def tiny_pte(hil_workdir):
    result, _ = api.cached_export("tiny", hil_workdir, quant="8da4w")
    return result.pte


def _tokens(bundle, state) -> tuple[int, list[P.Token]]:
    target = local.create("local", boards.get("host"), state)
    with bring_up(target, bundle, timeouts=Timeouts(hello_s=60, first_token_s=60, token_s=30)) as up:
        return up.hello.vocab_size, [m for m in up.session.generate(REQUEST) if isinstance(m, P.Token)]


def _replay(vocab: int, tokens: list[P.Token]) -> list[int]:
    rng = S.Rng(REQUEST.seed)
    out = []
    for t in tokens:
        logits = np.full(vocab, -np.inf, np.float32)
        for i, x in t.top:
            logits[i] = x
        out.append(S.sample(logits, REQUEST.temperature, REQUEST.top_k, REQUEST.top_p, rng))
    return out


def test_every_sampled_token_replays_on_the_host(tiny_pte, hil_workdir, tmp_path):
    bundle, _ = api.cached_build("host", tiny_pte, hil_workdir)
    vocab, tokens = _tokens(bundle, tmp_path / "targets")
    assert len(tokens) == REQUEST.max_new_tokens and all(len(t.top) == 4 for t in tokens)
    assert [t.token for t in tokens] == _replay(vocab, tokens)
    assert len({t.token for t in tokens}) > 1  # it did sample


@pytest.fixture(scope="module")
def faulty_bundle(tiny_pte, tmp_path_factory):
    """A host runner built with the test-only sampler fault: uniform draws over the vocabulary."""
    return runner_io.faulty_bundle(tiny_pte, tmp_path_factory.mktemp("sampler-bug"), "EDGELM_TEST_SAMPLER_BUG")


def test_a_runner_with_the_sampler_fault_is_caught(faulty_bundle, tmp_path):
    bundle = faulty_bundle
    vocab, tokens = _tokens(bundle, tmp_path / "targets")
    board_tokens = [t.token for t in tokens]
    us = S.uniforms(REQUEST.seed, len(tokens))
    assert board_tokens == [min(int(u * vocab), vocab - 1) for u in us]  # uniform, one draw per token
    replayed = _replay(vocab, tokens)
    assert sum(b != r for b, r in zip(board_tokens, replayed)) >= len(tokens) // 2


@pytest.mark.parametrize("rule", ["twin", "reference"])
def test_the_verdict_fails_a_runner_with_the_sampler_fault_end_to_end(faulty_bundle, tiny_pte, hil_workdir, tmp_path,
                                                                      rule):
    """The faulty runner behind the fault injector (no fault armed: the lie is the board's own), judged
    by the same routine `edgelm run` uses, by its twin and by the host reference alone: every sampled
    request FAILs, greedy ones still PASS."""
    from judges import reference_judge, twin_judge

    from toolchain.link import faults

    board, bundle = boards.get("host"), faulty_bundle
    link = faults.RelayedLink(tmp_path, seed=1)
    judge = twin_judge(tiny_pte, hil_workdir) if rule == "twin" else reference_judge(tiny_pte)
    target = local.create("local", board, tmp_path / "targets")
    try:
        with judge, bring_up(target, bundle, open_transport=link) as up:
            for seed, (temperature, top_k, top_p) in enumerate([(0.8, 0, 1.0), (1.0, 40, 0.95), (0.5, 8, 0.9)]):
                req = P.Request((1, 82, 114, 103), 24, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                                ignore_eos=True, report_logits=True)
                served = api.serve_and_validate(up, req, judge)
                why = "its twin" if rule == "twin" else "replay of the sampler"
                assert not served.verdict.passed and why in served.verdict.reason, served.verdict.reason
            greedy = P.Request((1, 82, 114, 103), 24, ignore_eos=True, report_logits=True)
            assert api.serve_and_validate(up, greedy, judge).verdict.passed
    finally:
        link.close()
