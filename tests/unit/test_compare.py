"""The verdict: every token and the stream's shape, each rule with the lie that must not slip through."""

import math

import numpy as np
import pytest

from toolchain.validate import sampler as twin
from toolchain.validate.compare import STOP_CANCELLED, STOP_EOS, STOP_LIMIT, Asked, Stream, check_stream, compare

EOS = 9


def logits(best, second=None, gap=1.0, v=10):
    x = np.zeros(v, dtype=np.float32)
    x[best] = 5.0
    if second is not None:
        x[second] = 5.0 - gap
    return x  # std about 1.5-2


def stream(tokens, stop=STOP_LIMIT, board=None):
    return Stream(tuple(tokens), tuple(board) if board is not None else (None,) * len(tokens), stop)


def greedy(n, **kw):
    return Asked(max_new_tokens=n, stop_ids=(EOS,), report_logits=False, **kw)


def test_exact_near_tie_and_mismatch_without_board_logits():
    ref = [logits(1), logits(2, 3, gap=0.01), logits(4, 5, gap=2.0)]
    v = compare(greedy(3), stream([1, 3, 4]), ref, tolerance=0.05)
    assert v.passed and v.exact_matches == 2 and v.near_ties == [1] and v.first_divergence == 1
    v = compare(greedy(3), stream([1, 2, 5]), ref, tolerance=0.05)
    assert not v.passed and "token 2" in v.reason and v.first_divergence == 2


def test_with_board_logits_a_flip_must_be_explained_by_the_measured_drift():
    ref = [logits(2, 3, gap=0.02)]
    asked = Asked(max_new_tokens=1)
    # the board saw token 3 slightly above token 2: differences of 0.015 each explain a 0.02 gap
    board = [(4.995, [(3, 4.995), (2, 4.995 - 0.01)])]
    v = compare(asked, stream([3], board=board), ref, tolerance=0.1)
    assert v.passed and v.near_ties == [0] and abs(v.drift_max - 0.015) < 1e-6
    # the board's numbers match the reference for all it reported, yet it skipped the best token
    board = [(4.98, [(3, 4.98), (0, 0.0)])]
    v = compare(asked, stream([3], board=board), ref, tolerance=0.1)
    assert not v.passed and "measured rounding" in v.reason


def test_with_board_logits_drift_beyond_tolerance_fails():
    board = [(9.0, [(2, 9.0), (0, 0.0)])]  # right token, numbers far off
    v = compare(Asked(max_new_tokens=1), stream([2], board=board), [logits(2)], tolerance=0.5)
    assert not v.passed and "differ from the reference by 4" in v.reason


def test_a_greedy_board_must_send_its_own_argmax():
    board = [(4.5, [(2, 5.0), (3, 4.5)])]
    v = compare(Asked(max_new_tokens=1), stream([3], board=board), [logits(2, 3, gap=0.001)], tolerance=1.0)
    assert not v.passed and "own argmax 2" in v.reason


# The stream's shape ------------------------------------------------------------------------------------

@pytest.mark.parametrize("tokens,stop,asked,why", [
    ([], STOP_LIMIT, greedy(4), "no tokens"),
    ([5, 6, 7, 8, 9], STOP_LIMIT, greedy(4), "more than the 4 asked"),
    ([5, 6, 7], STOP_EOS, greedy(16), "last token 7 is not a stop id"),  # ends early claiming EOS
    ([5, 6, 7], STOP_LIMIT, greedy(16), "claims the token limit after 3"),
    ([5, EOS, 7, 8], STOP_LIMIT, greedy(4), "went on"),
    ([5, 6, EOS], STOP_LIMIT, greedy(3), "is a stop id, but"),
    ([5, 6, EOS], STOP_EOS, greedy(3, ignore_eos=True), "stop ids were to be ignored"),
    ([5, 6], None, greedy(2), "without STATS"),
    ([5, 6], 7, greedy(2), "unknown stop reason"),
    ([5, 6], STOP_CANCELLED, greedy(8), "the host sent no CANCEL"),  # a board that stops early, blaming the host
    ([5, 6, EOS], STOP_CANCELLED, greedy(8, cancelled=True), "it had reached a stop id"),
    ([5, 6, 7], STOP_CANCELLED, greedy(3, cancelled=True), "it had reached the token limit"),
])
def test_a_stream_whose_shape_lies_fails(tokens, stop, asked, why):
    reason = check_stream(asked, stream(tokens, stop))
    assert reason is not None and why in reason
    v = compare(asked, stream(tokens, stop), [], tolerance=0.1)
    assert not v.passed and why in v.reason


def test_honest_shapes_pass():
    assert check_stream(greedy(4), stream([5, 6, 7, 8])) is None
    assert check_stream(greedy(16), stream([5, 6, EOS], STOP_EOS)) is None
    assert check_stream(greedy(3, ignore_eos=True), stream([EOS, EOS, EOS])) is None
    assert check_stream(greedy(8, cancelled=True), stream([5, 6], STOP_CANCELLED)) is None
    assert check_stream(greedy(8, cancelled=True), stream([5, 6, 7, 8, 1, 2, 3, 4])) is None  # CANCEL came late


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_board_logits_fail(bad):
    asked = Asked(max_new_tokens=2)
    good = (5.0, [(2, 5.0)])
    for board in ([good, (bad, [(2, 5.0)])], [good, (5.0, [(2, bad)])]):
        v = compare(asked, stream([2, 2], board=board), [logits(2), logits(2)], tolerance=0.5)
        assert not v.passed and "non-finite" in v.reason


def test_missing_logits_fail_when_asked_for():
    asked = Asked(max_new_tokens=2, report_logits=True)
    v = compare(asked, stream([2, 2], board=[(5.0, [(2, 5.0)]), None]), [logits(2), logits(2)], tolerance=0.5)
    assert not v.passed and "token 1 came without the logits" in v.reason


def test_near_ties_are_bounded():
    n = 12
    ref = [logits(2, 3, gap=0.01) for _ in range(n)]
    v = compare(greedy(n), stream([3] * n), ref, tolerance=0.05)  # every one a near-tie
    assert not v.passed and "exceed the budget" in v.reason and v.near_tie_budget == 6
    v = compare(greedy(n), stream([3] * n), ref, tolerance=0.05, near_tie_fraction=1.0)
    assert v.passed and len(v.near_ties) == n


# Sampled: the host replays the board's sampler --------------------------------------------------------

def _peaked(rng, v=50):
    return (rng.standard_normal(v) * 3).astype(np.float32)


def _honest(ref, asked):
    r = twin.Rng(asked.seed)
    return [twin.sample(x, asked.temperature, asked.top_k, asked.top_p, r) for x in ref]


def _report(ref, tokens):
    return [(float(x[t]), [(int(i), float(x[i])) for i in np.argsort(-x, kind="stable")[:4]])
            for x, t in zip(ref, tokens)]


def test_an_honest_sampled_stream_passes_exactly():
    rng = np.random.default_rng(1)
    asked = Asked(max_new_tokens=40, temperature=0.8, top_k=20, top_p=0.95, seed=7)
    ref = [_peaked(rng) for _ in range(40)]
    toks = _honest(ref, asked)
    v = compare(asked, stream(toks, board=_report(ref, toks)), ref, tolerance=0.01)
    assert v.passed and v.exact_matches == 40 and v.sampled


def test_a_uniform_sampler_fails():
    """The board's sampler draws uniformly: plausible tokens one by one, but not the run's draws."""
    rng = np.random.default_rng(2)
    asked = Asked(max_new_tokens=40, temperature=0.8, seed=7)
    ref = [_peaked(rng) for _ in range(40)]
    r = twin.Rng(asked.seed)
    toks = [int(r.next_float() * 50) for _ in ref]
    v = compare(asked, stream(toks, board=_report(ref, toks)), ref, tolerance=0.01)
    assert not v.passed and "replay of the sampler" in v.reason


def test_a_sampled_flip_counts_only_when_the_measured_drift_explains_it():
    """Two tokens; the draw lands just inside token 0's share. A board whose logits differ by a little
    more than that (and say so) may draw token 1; one that reports the reference's numbers may not."""
    seed = next(s for s in range(1, 100) if twin.uniforms(s, 1)[0] > 0.6)
    u = twin.uniforms(seed, 1)[0]
    a = math.log(u / (1 - u)) + 1e-4  # sigmoid(a) = p(token 0) just above u; token 0 comes first
    ref = np.array([a, 0.0], dtype=np.float32)
    asked = Asked(max_new_tokens=1, temperature=1.0, seed=seed)
    assert twin.draw(ref, 1.0, 0, 1.0, u).token == 0
    shifted = np.array([a - 3e-4, 0.0], dtype=np.float32)
    assert twin.draw(shifted, 1.0, 0, 1.0, u).token == 1
    board = [(0.0, [(0, float(shifted[0])), (1, 0.0)])]
    v = compare(asked, stream([1], board=board), [ref], tolerance=0.5)
    assert v.passed and v.near_ties == [0]
    liar = [(0.0, [(0, float(ref[0])), (1, 0.0)])]
    v = compare(asked, stream([1], board=liar), [ref], tolerance=0.5)
    assert not v.passed and "replay of the sampler draws 0" in v.reason
