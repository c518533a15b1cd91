"""The board's STATS and token times, checked against what the host knows. Pure: values in, a reason out.

Nothing here is taken on the board's word:

- **kept**: the host counts what the board's state must hold (``link.session``: nothing after a
  fresh start or a request without KEEP_STATE, exactly the last prompt and all but the last token
  of its reply otherwise). A board may keep that (or nothing, feeding everything again); one that
  claims any other number kept state it should not have.
- **counters**: the prompt it was sent, the calls against the tokens and the accepted drafts
  (each call yields its accepted drafts and one token more; only the last call may end on an
  accepted draft), no drafts when none were allowed.
- **times**: every figure finite and not negative; the rates are the board's own token times
  computed as ``proto_fill_rates`` does; its clock never runs backwards, never past the host's
  (a token cannot be made after it arrived), and not much slower than the host saw the tokens come.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from toolchain.link import protocol

RATE_RTOL = 1e-4  # the f32 rates against the same computation in double
TTFT_ATOL_US = 2.0  # ttft_ms is an f32 of the first token's t_us / 1000
CLOCK_SKEW = 0.01  # the board's clock may run this much faster than the host's
LINK_DELAY_S = 0.1  # the most the link (and a busy host) may delay one token's arrival beyond another's ...
LINK_DELAY_SHARE = 0.1  # ... plus this share of the span


def check_stats(request: protocol.Request, stats: protocol.Stats, tokens: Sequence[int], times_us: Sequence[int],
                expected_kept: int, arrivals_s: Sequence[float] = ()) -> str | None:
    """Why ``stats`` (and the tokens' board times) cannot be true of the stream the host received, or None."""
    n = len(tokens)
    for name in ("load_ms", "ttft_ms", "prefill_tok_s", "decode_tok_s"):
        x = getattr(stats, name)
        if not math.isfinite(x) or x < 0:
            return f"STATS {name} is {x:g}: not a finite, non-negative figure"
    if stats.prompt_tokens != len(request.prompt):
        return f"STATS counts {stats.prompt_tokens} prompt tokens, the host sent {len(request.prompt)}"
    kept = stats.kept or 0
    if kept and not request.keep_state:
        return f"STATS says {kept} prompt tokens were kept, but the request did not ask to keep the state"
    if kept not in (0, expected_kept):
        held = f"holds {expected_kept} that this prompt extends" if expected_kept else "holds nothing it extends"
        return f"STATS says {kept} prompt tokens were kept, but by the host's count the board's state {held}"
    why = _counters(request, stats, n)
    return why or _times(stats, n, kept, times_us, arrivals_s)


def _counters(request: protocol.Request, stats: protocol.Stats, n: int) -> str | None:
    if stats.decode_calls is None:  # a board from before the counters
        return None
    calls, accepted, drafted = stats.decode_calls, stats.accepted or 0, stats.drafted or 0
    draft_calls = stats.draft_calls or 0
    if not request.draft and (drafted or draft_calls or stats.draft_model_calls):
        return (f"STATS counts {drafted} draft tokens in {draft_calls} calls ({stats.draft_model_calls} of the draft "
                "model), but the request allowed no drafts")
    if accepted > drafted or draft_calls > calls or draft_calls > drafted or (drafted and not draft_calls):
        return f"STATS counts {accepted} of {drafted} draft tokens accepted in {draft_calls} of {calls} calls"
    # Each call yields its accepted draft tokens and one more, except a last call that stopped on an
    # accepted one: a stop id or a CANCEL (a draft never runs into the limit: the runner drafts at most
    # up to it). So n - 1 - accepted is calls, or calls - 1 when the stream did not end at the limit.
    fed = n - 1 - accepted
    if not (fed == calls or (fed == calls - 1 and accepted > 0 and stats.stop != protocol.STOP_LIMIT)):
        return (f"STATS counts {calls} decode calls and {accepted} accepted draft tokens, which cannot make "
                f"{n} tokens")
    return None


def _times(stats: protocol.Stats, n: int, kept: int, times_us: Sequence[int],
           arrivals_s: Sequence[float]) -> str | None:
    if len(times_us) != n or n == 0:
        return None
    back = next((i for i in range(1, n) if times_us[i] < times_us[i - 1]), None)
    if back is not None:
        return (f"the board's clock runs backwards: token {back} at {times_us[back]} us, token {back - 1} at "
                f"{times_us[back - 1]} us")
    t_first, t_last = times_us[0], times_us[-1]
    if abs(stats.ttft_ms * 1e3 - t_first) > max(TTFT_ATOL_US, 1e-6 * t_first):
        return f"STATS ttft {stats.ttft_ms:g} ms, but the first token came {t_first / 1e3:g} ms after the request"
    ttft_s, decode_s = t_first / 1e6, (t_last - t_first) / 1e6
    prefill = (stats.prompt_tokens - kept) / ttft_s if ttft_s > 0 else 0.0
    decode = (n - 1) / decode_s if n > 1 and decode_s > 0 else 0.0
    for name, claimed, true in (("prefill_tok_s", stats.prefill_tok_s, prefill), ("decode_tok_s", stats.decode_tok_s,
                                                                                  decode)):
        if abs(claimed - true) > RATE_RTOL * max(abs(true), 1e-9):
            return f"STATS {name} {claimed:g}, but the board's own token times give {true:g}"
    if len(arrivals_s) == n:
        host_last, host_span = arrivals_s[-1], arrivals_s[-1] - arrivals_s[0]
        if t_last / 1e6 > host_last * (1 + CLOCK_SKEW) + 0.005:
            return (f"the board says its last token came {t_last / 1e6:.4f} s after the request, but it arrived "
                    f"{host_last:.4f} s after the host sent it")
        slack = LINK_DELAY_S + LINK_DELAY_SHARE * host_span
        if host_span - decode_s * (1 + CLOCK_SKEW) > slack:
            return (f"the board says its tokens took {decode_s:.4f} s from first to last, but they came over "
                    f"{host_span:.4f} s: more than the link's delay ({slack:.3f} s) explains")
    return None
