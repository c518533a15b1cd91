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


def test_a_flip_is_excused_by_the_hosts_own_gap_never_by_the_boards_numbers():
    # the host's own top two are 0.02 apart (0.01 std): a flip there may be rounding
    ref = [logits(2, 3, gap=0.02)]
    asked = Asked(max_new_tokens=1)
    board = [(4.995, [(3, 4.995), (2, 4.995 - 0.01)])]
    v = compare(asked, stream([3], board=board), ref, tolerance=0.1)
    assert v.passed and v.near_ties == [0] and v.rule == "reference"
    # the host prefers 2 by 0.5 (0.24 std); the board reports numbers that would "explain" the flip,
    # each within the drift tolerance: it is still a FAIL (the probe's consistent top-two swap)
    ref = [logits(2, 3, gap=0.5)]
    swapped = [(4.76, [(3, 4.76), (2, 4.74)])]
    v = compare(asked, stream([3], board=swapped), ref, tolerance=0.75)
    assert not v.passed and "near-tie gap" in v.reason
    assert compare(asked, stream([3], board=swapped), ref, tolerance=0.75, near_tie=0.3).passed  # a wider target


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
    assert not v.passed and "exceed the budget" in v.reason and v.near_tie_budget == 1
    one = compare(greedy(n), stream([3] + [2] * (n - 1)), ref, tolerance=0.05)
    assert one.passed and one.near_ties == [0]
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


def test_a_sampled_flip_counts_only_when_the_hosts_draw_lies_at_the_boundary():
    """Two tokens; the host's draw lands just inside token 0's share. A flip to token 1 is a near-tie
    only while the target's near-tie gap moves the boundary past the draw; what the board reports
    plays no part."""
    seed = next(s for s in range(1, 100) if twin.uniforms(s, 1)[0] > 0.6)
    u = twin.uniforms(seed, 1)[0]
    a = math.log(u / (1 - u)) + 1e-4  # sigmoid(a) = p(token 0) just above u; token 0 comes first
    ref = np.array([a, 0.0], dtype=np.float32)
    asked = Asked(max_new_tokens=1, temperature=1.0, seed=seed)
    assert twin.draw(ref, 1.0, 0, 1.0, u).token == 0
    board = [(0.0, [(0, float(a - 3e-4)), (1, 0.0)])]
    v = compare(asked, stream([1], board=board), [ref], tolerance=0.5)
    assert v.passed and v.near_ties == [0]
    v = compare(asked, stream([1], board=board), [ref], tolerance=0.5, near_tie=0.0)
    assert not v.passed and "replay of the sampler draws 0" in v.reason
    far = np.array([a + 2.0, 0.0], dtype=np.float32)  # the draw is far inside token 0's share
    v = compare(asked, stream([1], board=[(0.0, [(0, float(far[0]) - 2.1), (1, 0.0)])]), [far], tolerance=5.0)
    assert not v.passed and "replay of the sampler draws 0" in v.reason


# The twin rule: bit for bit ----------------------------------------------------------------------------

def _twin_stream(n=6, stop=STOP_LIMIT):
    rng = np.random.default_rng(3)
    ref = [_peaked(rng) for _ in range(n)]
    for x in ref:
        x[EOS] = -99.0  # the twin's own run never stops early
    toks = [int(np.argmax(x)) for x in ref]
    return stream(toks, stop=stop, board=_report(ref, toks))


def _stats(**kw):
    from toolchain.link import protocol

    base = dict(prompt_tokens=3, generated=6, stop=STOP_LIMIT, load_ms=1.0, ttft_ms=1.0, prefill_tok_s=1.0,
                decode_tok_s=1.0, peak_rss_kb=1, decode_calls=5, draft_calls=0, drafted=0, accepted=0,
                draft_model_calls=0, kept=0)
    return protocol.Stats(**{**base, **kw})


def test_an_honest_board_equals_its_twin():
    from toolchain.validate.compare import compare_twin

    t = _twin_stream()
    v = compare_twin(greedy(6), t, t, stats=_stats(ttft_ms=9.0), twin_stats=_stats())  # timings are its own
    assert v.passed and v.exact_matches == 6 and v.rule == "twin"


def _altered(t, pos, logit=None, top=None, token=None):
    toks, lg = list(t.tokens), list(t.logits)
    if token is not None:
        toks[pos] = token
    sent, best = lg[pos]
    lg[pos] = (sent if logit is None else logit, best if top is None else top)
    return Stream(tuple(toks), tuple(lg), t.stop)


@pytest.mark.parametrize("lie", ["token", "last bit of a logit", "a reported id", "one top entry fewer"])
def test_any_difference_from_the_twin_fails(lie):
    from toolchain.validate.compare import compare_twin

    t = _twin_stream()
    sent, best = t.logits[3]
    board = {
        "token": lambda: _altered(t, 3, token=(t.tokens[3] + 1) % 50),
        "last bit of a logit": lambda: _altered(t, 3, logit=float(np.nextafter(np.float32(sent), np.float32(99)))),
        "a reported id": lambda: _altered(t, 3, top=((best[0][0], best[0][1]), (best[2][0], best[1][1]), *best[2:])),
        "one top entry fewer": lambda: _altered(t, 3, top=tuple(best[:-1])),
    }[lie]()
    v = compare_twin(greedy(6), board, t)
    assert not v.passed and v.reason.startswith("token 3:") and v.first_divergence == 3


@pytest.mark.parametrize("field,value", [("decode_calls", 4), ("accepted", 1), ("kept", 2), ("draft_model_calls", 3),
                                         ("prompt_tokens", 4)])
def test_counters_that_differ_from_the_twins_fail(field, value):
    from toolchain.validate.compare import compare_twin

    t = _twin_stream()
    v = compare_twin(greedy(6), t, t, stats=_stats(**{field: value}), twin_stats=_stats())
    assert not v.passed and f"STATS {field}" in v.reason


def test_a_stream_that_stops_where_its_twin_goes_on_fails():
    from toolchain.validate.compare import compare_twin

    t = _twin_stream(6)
    early = Stream(t.tokens[:4] + (EOS,), t.logits[:5], STOP_EOS)  # a well-formed early stop
    v = compare_twin(greedy(6), early, t)
    assert not v.passed and v.reason.startswith("token 4: board sent 9")
    v = compare_twin(greedy(6), t, Stream(t.tokens + (EOS,), t.logits + (t.logits[0],), STOP_EOS))
    assert not v.passed and "its twin after 7" in v.reason


def test_a_cancelled_stream_is_a_prefix_of_its_twins():
    from toolchain.validate.compare import compare_twin

    t = _twin_stream(6)
    asked = greedy(6, cancelled=True)
    cut = Stream(t.tokens[:3], t.logits[:3], STOP_CANCELLED)
    assert compare_twin(asked, cut, t, stats=_stats(generated=3, decode_calls=2), twin_stats=_stats()).passed
    wrong = Stream(t.tokens[:2] + ((t.tokens[2] + 1) % 50,), t.logits[:3], STOP_CANCELLED)
    assert not compare_twin(asked, wrong, t).passed
