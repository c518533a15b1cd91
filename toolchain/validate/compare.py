"""Judge the board's stream against the host reference. Pure: what was asked, what came back and the
reference logits in, a verdict out.

Every token is checked, and so is the shape of the stream:

- **the stream**: at least one token, no more than ``max_new_tokens``; the stop reason agrees with
  the tokens (EOS: the last token, and only the last, is a stop id; LIMIT: exactly
  ``max_new_tokens`` and no stop id was passed over); when the host asked for logits, every token
  carries finite ones.
- **greedy** (temperature 0): the token is the reference's argmax (exact), or a *near-tie*: the
  board's own reported logits for the two tokens explain the flip (ref[best] - ref[token] <=
  |d best| + |d token|); and a greedy board must have sent its own argmax.
- **sampled** (temperature > 0): the host replays the board's sampler (``validate/sampler.py``, the
  byte-for-byte twin of ``firmware/sampler.c``) on the reference logits with the run's seed, one
  draw per token. A token other than the replayed one is a near-tie only when the measured drift
  explains it: the same draw on the reference logits with the board's reported numbers put in
  gives the board's token, or the draw falls within the drift of the boundary of the board's
  token in the cumulative distribution.
- **drift**: at each step the largest difference between the board's logits and the reference's
  (for the ids the board reported) must stay within ``tolerance`` (in std of the reference logits).
- **near-ties are bounded**: at most ``near_tie_budget`` of the tokens (a fraction), reported.

Without board logits (a library caller that did not ask for them) the drift allowance is the
tolerance itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from toolchain.validate import sampler as twin

PASS, FAIL = "PASS", "FAIL"
STOP_EOS, STOP_LIMIT, STOP_CANCELLED = 0, 1, 2  # STATS.stop (docs/protocol.md)
# Fraction of the generated tokens that may be near-ties (each one explained by the measured drift).
# Measured: lfm2-350m 8da4w with random (flat) weights on an emulated Cortex-A76 against x86 had 20
# near-ties in 64 tokens (31%), all explained; a board with no drift (the host) can have none.
DEFAULT_NEAR_TIE_BUDGET = 0.5
MIN_NEAR_TIE_BUDGET = 2  # a short run still gets this many

BoardLogits = tuple[float, Sequence[tuple[int, float]]]  # (logit of the sent token, [(id, logit)] best first)


@dataclass(frozen=True)
class Asked:
    """What the host asked the board for (the REQUEST)."""

    max_new_tokens: int
    stop_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    report_logits: bool = True
    cancelled: bool = False  # the host sent CANCEL during the stream


@dataclass(frozen=True)
class Stream:
    """What the board sent for one request: tokens, their logits (None where absent) and STATS.stop."""

    tokens: tuple[int, ...]
    logits: tuple[BoardLogits | None, ...]
    stop: int | None  # STOP_EOS, STOP_LIMIT, or None when no STATS arrived


@dataclass
class Verdict:
    verdict: str
    generated: int
    exact_matches: int
    near_ties: list[int] = field(default_factory=list)  # positions
    near_tie_budget: int = 0
    first_divergence: int | None = None  # first position where board != reference pick
    mismatches: list[dict] = field(default_factory=list)
    tolerance: float = 0.0
    reason: str = ""
    drift_max: float | None = None  # largest |board logit - reference logit| seen (board logits reported)
    drift_mean: float | None = None
    drift_by_position: list[float] = field(default_factory=list)  # in units of the reference logits' std
    sampled: bool = False

    @property
    def passed(self) -> bool:
        return self.verdict == PASS

    def to_dict(self) -> dict:
        return asdict(self)


def default_tolerance(quant: str) -> float:
    """How far the board's logits may be from the reference's, in units of the standard deviation of
    the reference logits at that step (scale-free: a trained model's logits spread far more than a
    random one's). fp32 programs differ by summation order only. 8da* programs differ more: on Arm,
    XNNPACK runs other int8/int4 kernels than on x86 (other activation-quantization rounding and
    scale precision). Measured for lfm2-350m 8da4w (random weights) on qemu cortex-a76 against x86,
    64 tokens: drift mean 0.15, max 0.40 std; a broken state or kernel gives >= 1 std."""
    return 0.01 if quant == "fp32" else 0.75


def near_tie_budget(generated: int, fraction: float = DEFAULT_NEAR_TIE_BUDGET) -> int:
    return max(MIN_NEAR_TIE_BUDGET, math.ceil(fraction * generated))


# The stream's shape ---------------------------------------------------------------------------------

def check_stream(asked: Asked, stream: Stream) -> str | None:
    """Why the stream cannot be what the board should have sent for ``asked``, or None. Needs no model."""
    toks, n = stream.tokens, len(stream.tokens)
    if n == 0:
        return "the board sent no tokens"
    if n > asked.max_new_tokens:
        return f"the board sent {n} tokens, more than the {asked.max_new_tokens} asked for"
    use_stop = not asked.ignore_eos and bool(asked.stop_ids)
    stops = set(asked.stop_ids)
    if use_stop:
        early = next((i for i, t in enumerate(toks[:-1]) if t in stops), None)
        if early is not None:
            return f"token {early} is stop id {toks[early]}, yet the board went on for {n - 1 - early} more"
    ends_on_stop = use_stop and toks[-1] in stops
    if stream.stop is None:
        return "the board ended the request without STATS"
    if stream.stop == STOP_EOS:
        if not ends_on_stop:
            why = "stop ids were to be ignored" if asked.ignore_eos else f"the last token {toks[-1]} is not a stop id"
            return f"the board claims it stopped at EOS after {n} tokens, but {why}"
    elif stream.stop == STOP_CANCELLED:
        if not asked.cancelled:
            return f"the board claims the host cancelled after {n} tokens, but the host sent no CANCEL"
        if ends_on_stop or n >= asked.max_new_tokens:
            return (f"the board claims it was cancelled after {n} tokens, but it had reached "
                    + ("a stop id" if ends_on_stop else "the token limit"))
    elif stream.stop == STOP_LIMIT:
        if ends_on_stop:
            return f"the last token {toks[-1]} is a stop id, but the board claims it stopped at the token limit"
        if n != asked.max_new_tokens:
            return f"the board claims the token limit after {n} tokens, but {asked.max_new_tokens} were asked for"
    else:
        return f"the board reports an unknown stop reason {stream.stop}"
    if len(stream.logits) != n:
        return f"{n} tokens but logits for {len(stream.logits)}"
    for i, lg in enumerate(stream.logits):
        if lg is None:
            if asked.report_logits:
                return f"token {i} came without the logits the host asked for"
            continue
        values = [lg[0], *(x for _, x in lg[1])]
        if not all(math.isfinite(x) for x in values):
            return f"token {i} carries non-finite logits ({', '.join(f'{x:g}' for x in values)})"
    return None


# Token by token ----------------------------------------------------------------------------------------

def _drift(tok: int, board: BoardLogits, ref: np.ndarray) -> tuple[float, dict[int, float]]:
    deltas = {tok: abs(board[0] - ref[tok])}
    for i, x in board[1]:
        if 0 <= i < len(ref):
            deltas[i] = abs(x - ref[i])
    return max(deltas.values()), deltas


def _with_board_numbers(ref: np.ndarray, tok: int, board: BoardLogits) -> np.ndarray:
    """The reference logits with the board's reported numbers put in (what the board saw, as far as it said)."""
    mixed = ref.astype(np.float32, copy=True)
    mixed[tok] = board[0]
    for i, x in board[1]:
        if 0 <= i < len(mixed):
            mixed[i] = x
    return mixed


def _sampled_near_tie(ref: np.ndarray, tok: int, draw: twin.Draw, u: float, asked: Asked, drift: float,
                      board: BoardLogits | None) -> str | None:
    """None when the measured drift explains the board drawing ``tok`` where the reference draws
    ``draw.token``; else why not."""
    if board is not None:
        seen = twin.draw(_with_board_numbers(ref, tok, board), asked.temperature, asked.top_k, asked.top_p, u)
        if seen.token == tok:
            return None
    # Every logit within +-drift scales each weight by at most e^(2 drift / T), so a boundary of the
    # cumulative distribution (as a fraction of the mass) moves by at most (e^(4 drift / T) - 1).
    eps = math.expm1(min(4.0 * drift / float(np.float32(asked.temperature)), 50.0)) + 1e-9
    order = list(draw.order)
    if tok not in order:
        return f"not a token the sampler could draw (outside top-k/top-p after drift {drift:.4g})"
    k = order.index(tok)
    lo = (float(draw.cdf[k - 1]) if k else 0.0) / draw.mass
    hi = float(draw.cdf[k]) / draw.mass
    f = draw.r / draw.mass
    gap = lo - f if f < lo else f - hi
    edge = lo if f < lo else hi
    if gap <= eps * min(edge, 1.0 - edge) + 1e-12:
        return None
    return (f"the draw {f:.6f} falls {gap:.4g} outside token {tok}'s interval [{lo:.6f}, {hi:.6f}); the drift "
            f"{drift:.4g} explains at most {eps * min(edge, 1.0 - edge):.4g}")


def compare(asked: Asked, stream: Stream, reference_logits: Sequence[np.ndarray], *, tolerance: float,
            near_tie_fraction: float = DEFAULT_NEAR_TIE_BUDGET) -> Verdict:
    """The verdict on one request. ``reference_logits[i]`` are the host's logits before token i,
    teacher-forced on the board's tokens (not needed when the stream's shape already fails)."""
    n = len(stream.tokens)
    v = Verdict(verdict=PASS, generated=n, exact_matches=0, tolerance=tolerance,
                near_tie_budget=near_tie_budget(n, near_tie_fraction), sampled=asked.temperature > 0)
    shape = check_stream(asked, stream)
    if shape is not None:
        v.verdict, v.reason = FAIL, shape
        return v
    if len(reference_logits) != n:
        raise ValueError(f"{n} board tokens but {len(reference_logits)} reference steps")
    draws = twin.uniforms(asked.seed, n) if asked.temperature > 0 else [0.0] * n
    drifts: list[float] = []
    for pos, (tok, ref_in) in enumerate(zip(stream.tokens, reference_logits, strict=True)):
        ref = np.asarray(ref_in, dtype=np.float32).reshape(-1)
        if not 0 <= tok < len(ref):
            v.mismatches.append({"position": pos, "board": tok, "reason": "outside the vocabulary"})
            continue
        ref64 = ref.astype(np.float64)
        scale = max(float(np.std(ref64)), 1e-12)
        tol = tolerance * scale  # in logits
        board = stream.logits[pos]
        if board is not None:
            drift, deltas = _drift(tok, board, ref64)
            drifts.append(drift)
            v.drift_by_position.append(round(drift / scale, 4))
            if drift > tol:
                v.mismatches.append({"position": pos, "board": tok, "drift": drift,
                                     "reason": f"board logits differ from the reference by {drift:.4g} "
                                               f"({drift / scale:.2f} std) > tolerance {tolerance} std"})
                continue
        else:
            drift, deltas = tol, {}
        if asked.temperature > 0:
            draw = twin.draw(ref, asked.temperature, asked.top_k, asked.top_p, draws[pos])
            expected = draw.token
        else:
            expected = int(np.argmax(ref64))
            if board is not None and board[1] and board[1][0][0] != tok and board[0] < board[1][0][1]:
                v.mismatches.append({"position": pos, "board": tok, "reason": "a greedy board did not send its "
                                     f"own argmax {board[1][0][0]}"})
                continue
        if tok == expected:
            v.exact_matches += 1
            continue
        if v.first_divergence is None:
            v.first_divergence = pos
        if asked.temperature > 0:
            why = _sampled_near_tie(ref, tok, draw, draws[pos], asked, drift, board)
            if why is None:
                v.near_ties.append(pos)
            else:
                v.mismatches.append({"position": pos, "board": tok, "reference": expected,
                                     "reason": f"the host's replay of the sampler draws {expected}; {why}"})
            continue
        gap = float(ref64[expected] - ref64[tok])
        if board is not None:
            allowance = deltas[tok] + deltas.get(expected, drift) + 1e-6  # what this step's rounding explains
            beyond = f"more than the measured rounding ({allowance:.4g}) explains"
        else:
            allowance, beyond = tol, f"> tolerance {tolerance} std"
        if gap <= allowance:
            v.near_ties.append(pos)
        else:
            v.mismatches.append({"position": pos, "board": tok, "reference": expected, "gap": gap,
                                 "reason": f"reference prefers {expected} by {gap:.4g}, {beyond}"})
    if drifts:
        v.drift_max, v.drift_mean = float(max(drifts)), float(np.mean(drifts))
    if v.mismatches:
        m = v.mismatches[0]
        v.verdict = FAIL
        v.reason = f"token {m['position']}: board sent {m['board']}, {m['reason']}"
    elif len(v.near_ties) > v.near_tie_budget:
        v.verdict = FAIL
        v.reason = (f"{len(v.near_ties)} near-ties in {n} tokens exceed the budget of {v.near_tie_budget} "
                    f"({near_tie_fraction:.0%}); each was within the drift, but that many is not rounding")
    return v
