"""Judge the board's stream. Pure: what was asked, what came back and what the judge computed in,
a verdict out. Two rules, and the verdict says which one judged (``Verdict.rule``):

- **twin** (``compare_twin``): the board's twin (``validate/twin.py``: the host's build of the same
  runner, on the board's instruction set, served the same requests) sent its own stream; an
  honest board's is the same bit for bit: every token, every reported logit, the stop and the
  call counters. Nothing is excused: the first difference is a FAIL.
- **reference** (``compare``), where no twin can run: the host runs the same program on its own
  CPU (``validate/reference.py``), teacher-forced on the board's tokens. A greedy token is the
  reference's argmax, or a *near-tie*: the host's own top-two gap at that step is within the
  target's ``near_tie`` (in std of the reference logits; measured from honest runs and recorded in
  the board profile). A sampled token is the one the host's replay of the board's sampler draws
  (``validate/sampler.py``) or a near-tie: the draw lies within what a ``near_tie`` change of the
  logits moves the boundary of the board's token by. What the board reports never excuses
  anything: its logits must stay within ``tolerance`` of the reference (a refusal, not an excuse),
  and near-ties are few (``near_tie_budget``, a few percent).

Both check the stream's shape first: at least one token, no more than ``max_new_tokens``; the stop
reason agrees with the tokens (EOS: the last token, and only the last, is a stop id; LIMIT: exactly
``max_new_tokens`` and no stop id was passed over); when the host asked for logits, every token
carries finite ones.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from toolchain.validate import sampler

PASS, FAIL = "PASS", "FAIL"
TWIN, REFERENCE = "twin", "reference"  # Verdict.rule
STOP_EOS, STOP_LIMIT, STOP_CANCELLED = 0, 1, 2  # STATS.stop (docs/protocol.md)
# Under the reference rule: the share of the generated tokens that may be near-ties (each within the
# host's own top-two gap of the target's near_tie), and the count a short run still gets.
DEFAULT_NEAR_TIE_BUDGET = 0.05
MIN_NEAR_TIE_BUDGET = 1
# A host top-two gap (std of the reference logits) under which a flip may be a near-tie, where the
# board profile records none.
DEFAULT_NEAR_TIE = 0.05
# The STATS fields an honest board and its twin agree on exactly (timings are the board's own).
TWIN_COUNTERS = ("prompt_tokens", "generated", "stop", "decode_calls", "draft_calls", "drafted", "accepted",
                 "draft_model_calls", "kept")

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
    rule: str = REFERENCE  # TWIN or REFERENCE: which judged the run
    judge: str = ""  # how: the twin's command, or why there was no twin
    near_tie: float = 0.0  # reference rule: the host top-two gap (std) a flip may have

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

def _drift(tok: int, board: BoardLogits, ref: np.ndarray) -> float:
    """The largest difference between what the board reported and the reference (a refusal only)."""
    deltas = [abs(board[0] - ref[tok])]
    deltas += [abs(x - ref[i]) for i, x in board[1] if 0 <= i < len(ref)]
    return float(max(deltas))


def _sampled_near_tie(tok: int, draw: sampler.Draw, asked: Asked, near_tie: float) -> str | None:
    """None when the host's own draw lies so close to the boundary of ``tok``'s interval that a change of
    every logit by ``near_tie`` (in logits, the host's measure for the target) moves it across; else why not."""
    # Every logit within +-d scales each weight by at most e^(2d / T), so a boundary of the cumulative
    # distribution (as a share of the mass) moves by at most (e^(4d / T) - 1) of the smaller side.
    eps = math.expm1(min(4.0 * near_tie / float(np.float32(asked.temperature)), 50.0)) + 1e-9
    order = list(draw.order)
    if tok not in order:
        return "not a token the sampler could draw (outside top-k/top-p)"
    k = order.index(tok)
    lo = (float(draw.cdf[k - 1]) if k else 0.0) / draw.mass
    hi = float(draw.cdf[k]) / draw.mass
    f = draw.r / draw.mass
    gap = lo - f if f < lo else f - hi
    edge = lo if f < lo else hi
    if gap <= eps * min(edge, 1.0 - edge) + 1e-12:
        return None
    return (f"the draw {f:.6f} falls {gap:.4g} outside token {tok}'s interval [{lo:.6f}, {hi:.6f}); the target's "
            f"near-tie allowance moves it at most {eps * min(edge, 1.0 - edge):.4g}")


def compare(asked: Asked, stream: Stream, reference_logits: Sequence[np.ndarray], *, tolerance: float,
            near_tie: float = DEFAULT_NEAR_TIE, near_tie_fraction: float = DEFAULT_NEAR_TIE_BUDGET,
            judge: str = "") -> Verdict:
    """The verdict on one request by the reference rule. ``reference_logits[i]`` are the host's logits
    before token i, teacher-forced on the board's tokens (not needed when the stream's shape already
    fails). ``near_tie``: the host top-two gap (std) under which a flip may be a near-tie."""
    n = len(stream.tokens)
    v = Verdict(verdict=PASS, generated=n, exact_matches=0, tolerance=tolerance,
                near_tie_budget=near_tie_budget(n, near_tie_fraction), sampled=asked.temperature > 0,
                rule=REFERENCE, judge=judge, near_tie=near_tie)
    shape = check_stream(asked, stream)
    if shape is not None:
        v.verdict, v.reason = FAIL, shape
        return v
    if len(reference_logits) != n:
        raise ValueError(f"{n} board tokens but {len(reference_logits)} reference steps")
    draws = sampler.uniforms(asked.seed, n) if asked.temperature > 0 else [0.0] * n
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
            drift = _drift(tok, board, ref64)
            drifts.append(drift)
            v.drift_by_position.append(round(drift / scale, 4))
            if drift > tol:
                v.mismatches.append({"position": pos, "board": tok, "drift": drift,
                                     "reason": f"board logits differ from the reference by {drift:.4g} "
                                               f"({drift / scale:.2f} std) > tolerance {tolerance} std"})
                continue
        if asked.temperature > 0:
            draw = sampler.draw(ref, asked.temperature, asked.top_k, asked.top_p, draws[pos])
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
            why = _sampled_near_tie(tok, draw, asked, near_tie * scale)
            if why is None:
                v.near_ties.append(pos)
            else:
                v.mismatches.append({"position": pos, "board": tok, "reference": expected,
                                     "reason": f"the host's replay of the sampler draws {expected}; {why}"})
            continue
        gap = float(ref64[expected] - ref64[tok])
        if gap <= near_tie * scale:  # the host's own numbers: the board's never excuse a flip
            v.near_ties.append(pos)
        else:
            v.mismatches.append({"position": pos, "board": tok, "reference": expected, "gap": gap,
                                 "reason": f"reference prefers {expected} by {gap:.4g} ({gap / scale:.3g} std), "
                                           f"more than the target's near-tie gap {near_tie} std"})
    if drifts:
        v.drift_max, v.drift_mean = float(max(drifts)), float(np.mean(drifts))
    if v.mismatches:
        m = v.mismatches[0]
        v.verdict = FAIL
        v.reason = f"token {m['position']}: board sent {m['board']}, {m['reason']}"
    elif len(v.near_ties) > v.near_tie_budget:
        v.verdict = FAIL
        v.reason = (f"{len(v.near_ties)} near-ties in {n} tokens exceed the budget of {v.near_tie_budget} "
                    f"({near_tie_fraction:.0%}); each was within the target's near-tie gap, but that many is not "
                    "rounding")
    return v


def record_drift(v: Verdict, stream: Stream, reference_logits: Sequence[np.ndarray]) -> None:
    """Put the board's drift from the host reference into a twin's verdict (what the report plots):
    information beside the verdict, which the twin already gave without it."""
    drifts = []
    for tok, board, ref_in in zip(stream.tokens, stream.logits, reference_logits, strict=False):
        ref = np.asarray(ref_in, dtype=np.float64).reshape(-1)
        if board is None or not 0 <= tok < len(ref):
            continue
        d = _drift(tok, board, ref)
        drifts.append(d)
        v.drift_by_position.append(round(d / max(float(np.std(ref)), 1e-12), 4))
    if drifts:
        v.drift_max, v.drift_mean = float(max(drifts)), float(np.mean(drifts))


# The twin rule -----------------------------------------------------------------------------------------

def _f32(x: float) -> bytes:
    return struct.pack("<f", x)


def _same_logits(a: BoardLogits | None, b: BoardLogits | None) -> bool:
    """Bit for bit (an f32 travels as one and parses to the same double)."""
    if a is None or b is None:
        return a is b
    return (_f32(a[0]) == _f32(b[0]) and len(a[1]) == len(b[1])
            and all(i == j and _f32(x) == _f32(y) for (i, x), (j, y) in zip(a[1], b[1], strict=True)))


def _shown(lg: BoardLogits | None) -> str:
    if lg is None:
        return "no logits"
    return f"logit {lg[0]!r}, best " + ", ".join(f"{i}:{x!r}" for i, x in lg[1])


def compare_twin(asked: Asked, stream: Stream, twin_stream: Stream, *, stats: Any = None, twin_stats: Any = None,
                 judge: str = "") -> Verdict:
    """The verdict on one request by the twin rule: the board's stream must be its twin's, bit for bit.
    A stream the host cancelled must be a prefix of the twin's (which ran to its end); its counters are
    then not compared. ``stats``/``twin_stats``: the two STATS (``TWIN_COUNTERS`` compared)."""
    n = len(stream.tokens)
    v = Verdict(verdict=PASS, generated=n, exact_matches=0, sampled=asked.temperature > 0, rule=TWIN, judge=judge)

    def fail(pos: int | None, why: str) -> Verdict:
        v.verdict, v.first_divergence = FAIL, pos
        v.reason = why if pos is None else f"token {pos}: {why}"
        if pos is not None:
            v.mismatches.append({"position": pos, "reason": why})
        return v

    shape = check_stream(asked, stream)
    if shape is not None:
        v.verdict, v.reason = FAIL, shape
        return v
    for pos, tok in enumerate(stream.tokens):
        if pos >= len(twin_stream.tokens):
            return fail(pos, f"the board sent a token past the twin's {len(twin_stream.tokens)}")
        if tok != twin_stream.tokens[pos]:
            return fail(pos, f"board sent {tok}, its twin {twin_stream.tokens[pos]}")
        mine, theirs = stream.logits[pos], twin_stream.logits[pos]
        if not _same_logits(mine, theirs):
            return fail(pos, f"the board reports {_shown(mine)}; its twin {_shown(theirs)}")
        v.exact_matches += 1
    if stream.stop == STOP_CANCELLED:
        return v
    if n != len(twin_stream.tokens) or stream.stop != twin_stream.stop:
        return fail(None, f"the board stopped after {n} tokens (stop {stream.stop}), its twin after "
                          f"{len(twin_stream.tokens)} (stop {twin_stream.stop})")
    if stats is not None and twin_stats is not None:
        for name in TWIN_COUNTERS:
            mine, theirs = getattr(stats, name), getattr(twin_stats, name)
            if mine != theirs:
                return fail(None, f"STATS {name} is {mine}, its twin's {theirs}")
    return v
