"""The board's STATS and token times against what the host knows: each lie a board could tell, caught."""

import math

import pytest

from toolchain.link import protocol as P
from toolchain.validate.stats import check_stats

REQ = P.Request((1, 2, 3, 4), 8, draft=True)


def honest(n=8, kept=0, prompt=4, **kw):
    """A board's STATS for n tokens, 2 ms prefill and 1 ms a token, consistent with its own token times."""
    times = [2000 + 1000 * i for i in range(n)]
    st = dict(prompt_tokens=prompt, generated=n, stop=P.STOP_LIMIT, load_ms=3.0, ttft_ms=2.0,
              prefill_tok_s=(prompt - kept) / 0.002, decode_tok_s=(n - 1) / ((times[-1] - times[0]) / 1e6),
              peak_rss_kb=1024, decode_calls=n - 1, draft_calls=0, drafted=0, accepted=0, draft_model_calls=0,
              kept=kept)
    st.update(kw)
    return P.Stats(**st), times


def arrivals(times, late=0.001):
    return [t / 1e6 + late for t in times]


def test_an_honest_board_passes():
    st, times = honest()
    assert check_stats(REQ, st, list(range(8)), times, 0, arrivals(times)) is None
    # speculative: 3 calls verified drafts, 4 of 5 draft tokens accepted, so 7 - 4 = 3 calls
    st, times = honest(decode_calls=3, draft_calls=2, drafted=5, accepted=4)
    assert check_stats(REQ, st, list(range(8)), times, 0, arrivals(times)) is None
    # the last call stopped on an accepted draft token (a stop id): one call more than n - 1 - accepted
    st, times = honest(decode_calls=4, draft_calls=2, drafted=5, accepted=4, stop=P.STOP_EOS)
    assert check_stats(REQ, st, list(range(8)), times, 0, arrivals(times)) is None
    # ... which cannot happen at the limit: a board that adds a call there lies
    st, times = honest(decode_calls=4, draft_calls=2, drafted=5, accepted=4)
    assert "cannot make 8 tokens" in check_stats(REQ, st, list(range(8)), times, 0, arrivals(times))


@pytest.mark.parametrize("field", ["ttft_ms", "decode_tok_s", "prefill_tok_s", "load_ms"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0])
def test_figures_that_are_not_finite_fail(field, bad):
    st, times = honest(**{field: bad})
    why = check_stats(REQ, st, list(range(8)), times, 0)
    assert why is not None and field in why


def test_kept_state_is_checked_against_the_hosts_count():
    keep = P.Request((1, 2, 3, 4, 5, 6), 8, keep_state=True)
    st, times = honest(kept=4, prompt=6)
    assert check_stats(keep, st, list(range(8)), times, 4) is None  # what it held
    st0, times0 = honest(kept=0, prompt=6)
    assert check_stats(keep, st0, list(range(8)), times0, 4) is None  # fed everything again: slow, not wrong
    why = check_stats(keep, st, list(range(8)), times, 0)  # after /reset: it kept another conversation's state
    assert why is not None and "holds nothing" in why
    st3, times3 = honest(kept=3, prompt=6)
    assert "holds 4" in check_stats(keep, st3, list(range(8)), times3, 4)
    st, times = honest(kept=4, prompt=4 + 2)
    assert "did not ask" in check_stats(P.Request((1, 2, 3, 4, 5, 6), 8), st, list(range(8)), times, 0)


@pytest.mark.parametrize("lie,why", [
    (dict(prompt_tokens=5), "prompt tokens"),
    (dict(decode_calls=8), "cannot make 8 tokens"),
    (dict(decode_calls=6), "cannot make 8 tokens"),
    (dict(accepted=2, drafted=1, draft_calls=1), "accepted"),
    (dict(decode_calls=6, draft_calls=0, drafted=0, accepted=1), "accepted"),
])
def test_impossible_counters_fail(lie, why):
    st, times = honest(**lie)
    got = check_stats(REQ, st, list(range(8)), times, 0)
    assert got is not None and why in got


def test_drafts_where_none_were_allowed_fail():
    st, times = honest(decode_calls=3, draft_calls=2, drafted=5, accepted=4)
    got = check_stats(P.Request((1, 2, 3, 4), 8, draft=False), st, list(range(8)), times, 0)
    assert got is not None and "allowed no drafts" in got


def test_rates_must_be_the_boards_own_token_times():
    st, times = honest()
    fast = P.Stats(**{**st.__dict__, "decode_tok_s": st.decode_tok_s * 10})
    assert "decode_tok_s" in check_stats(REQ, fast, list(range(8)), times, 0)
    st2 = P.Stats(**{**st.__dict__, "ttft_ms": 0.5})
    assert "ttft" in check_stats(REQ, st2, list(range(8)), times, 0)
    back = list(times)
    back[5] = back[3]
    assert "backwards" in check_stats(REQ, st, list(range(8)), back, 0)


def test_a_board_clock_that_disagrees_with_the_hosts_fails():
    """Times scaled down tenfold (and rates computed from them, all consistent): the host saw the tokens
    come over far longer. Times scaled up: the board claims a token after it had arrived."""
    n = 64
    times = [int((20_000 + 10_000 * i) / 10) for i in range(n)]  # 100 ms a token claimed as 1 ms... over 0.63 s
    st = P.Stats(4, n, P.STOP_LIMIT, 3.0, times[0] / 1e3, 4 / (times[0] / 1e6),
                 (n - 1) / ((times[-1] - times[0]) / 1e6), 1024, n - 1, 0, 0, 0, 0, 0)
    real = [(20_000 + 10_000 * i) / 1e6 for i in range(n)]
    got = check_stats(REQ, st, list(range(n)), times, 0, real)
    assert got is not None and "came over" in got
    assert check_stats(REQ, st, list(range(n)), times, 0, [t / 1e6 + 0.002 for t in times]) is None
    slow = [t * 3 for t in times]
    st3 = P.Stats(4, n, P.STOP_LIMIT, 3.0, slow[0] / 1e3, 4 / (slow[0] / 1e6),
                  (n - 1) / ((slow[-1] - slow[0]) / 1e6), 1024, n - 1, 0, 0, 0, 0, 0)
    got = check_stats(REQ, st3, list(range(n)), slow, 0, [t / 1e6 + 0.002 for t in times])
    assert got is not None and "arrived" in got
