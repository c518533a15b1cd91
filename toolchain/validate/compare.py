"""Judge the board's tokens against the host reference. Pure: token ids and logits in, a verdict out.

The reference is teacher-forced on the board's own tokens, so one near-tie does not derail the
comparison of everything after it. When the board reports its logits (protocol flag bit 1), the
comparison is measured, not guessed: at each step the *drift* is the largest difference between
the board's logits and the reference's for the tokens the board reported. The drift must stay
within ``tolerance``; a token other than the reference's argmax is a near-tie only when that
step's measured differences explain the flip (ref[best] - ref[token] <= |d best| + |d token|);
and a greedy board must have sent its own argmax. Without board logits:

- greedy: exact when it is the reference's argmax; a near-tie when it is not, but its reference
  logit is within ``tolerance`` (in std of the reference logits) of the maximum (x86 and Arm
  kernels round differently and can flip such a pick); anything else is a mismatch: FAIL.
- sampled (temperature > 0): the token must be one the board's sampler could pick under the
  reference logits (inside top-k / top-p, widened by the same tolerance).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

PASS, FAIL = "PASS", "FAIL"


@dataclass
class Verdict:
    verdict: str
    generated: int
    exact_matches: int
    near_ties: list[int] = field(default_factory=list)  # positions
    first_divergence: int | None = None  # first position where board != reference argmax
    mismatches: list[dict] = field(default_factory=list)
    tolerance: float = 0.0
    reason: str = ""
    drift_max: float | None = None  # largest |board logit - reference logit| seen (board logits reported)
    drift_mean: float | None = None
    drift_by_position: list[float] = field(default_factory=list)  # in units of the reference logits' std

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


def _allowed_sampled(logits: np.ndarray, temperature: float, top_k: int, top_p: float, tol: float) -> np.ndarray:
    order = np.argsort(-logits, kind="stable")
    keep = len(order) if top_k <= 0 else min(top_k, len(order))
    z = (logits[order[:keep]] - logits[order[0]]) / temperature
    p = np.exp(z)
    p /= p.sum()
    cut = int(np.searchsorted(np.cumsum(p), top_p - 1e-6)) + 1 if top_p < 1.0 else keep
    threshold = logits[order[min(cut, keep) - 1]] - tol
    return np.flatnonzero(logits >= threshold)


BoardLogits = tuple[float, Sequence[tuple[int, float]]]  # (logit of the sent token, [(id, logit)] best first)


def _drift(tok: int, board: BoardLogits, ref: np.ndarray) -> tuple[float, dict[int, float]]:
    deltas = {tok: abs(board[0] - ref[tok])}
    for i, x in board[1]:
        if 0 <= i < len(ref):
            deltas[i] = abs(x - ref[i])
    return max(deltas.values()), deltas


def compare(board_tokens: Sequence[int], reference_logits: Sequence[np.ndarray], *, tolerance: float,
            temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
            board_logits: Sequence[BoardLogits] | None = None) -> Verdict:
    if len(reference_logits) != len(board_tokens):
        raise ValueError(f"{len(board_tokens)} board tokens but {len(reference_logits)} reference steps")
    if board_logits is not None and len(board_logits) != len(board_tokens):
        raise ValueError(f"{len(board_tokens)} board tokens but logits for {len(board_logits)}")
    v = Verdict(verdict=PASS, generated=len(board_tokens), exact_matches=0, tolerance=tolerance)
    drifts: list[float] = []
    for pos, (tok, logits) in enumerate(zip(board_tokens, reference_logits, strict=True)):
        logits = np.asarray(logits, dtype=np.float64)
        if not 0 <= tok < len(logits):
            v.mismatches.append({"position": pos, "board": tok, "reason": "outside the vocabulary"})
            continue
        best = int(np.argmax(logits))
        scale = max(float(np.std(logits)), 1e-12)
        tol = tolerance * scale  # in logits
        if board_logits is not None:
            board = board_logits[pos]
            drift, deltas = _drift(tok, board, logits)
            drifts.append(drift)
            v.drift_by_position.append(round(drift / scale, 4))
            if drift > tol:
                v.mismatches.append({"position": pos, "board": tok, "drift": drift,
                                     "reason": f"board logits differ from the reference by {drift:.4g} "
                                               f"({drift / scale:.2f} std) > tolerance {tolerance} std"})
                continue
            if temperature == 0 and board[1] and board[1][0][0] != tok and board[0] < board[1][0][1]:
                v.mismatches.append({"position": pos, "board": tok, "reason": "a greedy board did not send its "
                                     f"own argmax {board[1][0][0]}"})
                continue
            allowance = deltas[tok] + deltas.get(best, drift) + 1e-6  # what this step's rounding explains
            beyond = f"more than the measured rounding ({allowance:.4g}) explains"
        else:
            allowance = tol
            beyond = f"> tolerance {tolerance} std"
        if tok == best:
            v.exact_matches += 1
            continue
        if v.first_divergence is None:
            v.first_divergence = pos
        gap = float(logits[best] - logits[tok])
        if temperature > 0:
            if tok not in _allowed_sampled(logits, temperature, top_k, top_p, allowance):
                v.mismatches.append({"position": pos, "board": tok, "reference": best, "gap": gap,
                                     "reason": "not a token the sampler could pick"})
        elif gap <= allowance:
            v.near_ties.append(pos)
        else:
            v.mismatches.append({"position": pos, "board": tok, "reference": best, "gap": gap,
                                 "reason": f"reference prefers {best} by {gap:.4g}, {beyond}"})
    if drifts:
        v.drift_max, v.drift_mean = float(max(drifts)), float(np.mean(drifts))
    if v.mismatches:
        m = v.mismatches[0]
        v.verdict = FAIL
        v.reason = f"token {m['position']}: board sent {m['board']}, {m['reason']}"
    return v
