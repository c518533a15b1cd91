"""Judge the board's tokens against the host reference. Pure: token ids and logits in, a verdict out.

The reference is teacher-forced on the board's own tokens, so one near-tie does not derail the
comparison of everything after it. For each generated token:

- greedy: exact when it is the reference's argmax; a near-tie when it is not, but its reference
  logit is within ``tolerance`` of the maximum (x86 and Arm kernels round differently and can
  flip such a pick); anything else is a mismatch and the verdict is FAIL.
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

    @property
    def passed(self) -> bool:
        return self.verdict == PASS

    def to_dict(self) -> dict:
        return asdict(self)


def default_tolerance(quant: str) -> float:
    """Logit tolerance for a near-tie: fp32 differs by summation order only; int8 activations by a
    quantization step that x86 and Arm may round differently."""
    return 1e-3 if quant == "fp32" else 5e-2


def _allowed_sampled(logits: np.ndarray, temperature: float, top_k: int, top_p: float, tol: float) -> np.ndarray:
    order = np.argsort(-logits, kind="stable")
    keep = len(order) if top_k <= 0 else min(top_k, len(order))
    z = (logits[order[:keep]] - logits[order[0]]) / temperature
    p = np.exp(z)
    p /= p.sum()
    cut = int(np.searchsorted(np.cumsum(p), top_p - 1e-6)) + 1 if top_p < 1.0 else keep
    threshold = logits[order[min(cut, keep) - 1]] - tol
    return np.flatnonzero(logits >= threshold)


def compare(board_tokens: Sequence[int], reference_logits: Sequence[np.ndarray], *, tolerance: float,
            temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0) -> Verdict:
    if len(reference_logits) != len(board_tokens):
        raise ValueError(f"{len(board_tokens)} board tokens but {len(reference_logits)} reference steps")
    v = Verdict(verdict=PASS, generated=len(board_tokens), exact_matches=0, tolerance=tolerance)
    for pos, (tok, logits) in enumerate(zip(board_tokens, reference_logits, strict=True)):
        logits = np.asarray(logits, dtype=np.float64)
        if not 0 <= tok < len(logits):
            v.mismatches.append({"position": pos, "board": tok, "reason": "outside the vocabulary"})
            continue
        best = int(np.argmax(logits))
        if tok == best:
            v.exact_matches += 1
            continue
        if v.first_divergence is None:
            v.first_divergence = pos
        gap = float(logits[best] - logits[tok])
        if temperature > 0:
            if tok not in _allowed_sampled(logits, temperature, top_k, top_p, tolerance):
                v.mismatches.append({"position": pos, "board": tok, "reference": best, "gap": gap,
                                     "reason": "not a token the sampler could pick"})
        elif gap <= tolerance:
            v.near_ties.append(pos)
        else:
            v.mismatches.append({"position": pos, "board": tok, "reference": best, "gap": gap,
                                 "reason": f"reference prefers {best} by {gap:.4f} > tolerance {tolerance}"})
    if v.mismatches:
        m = v.mismatches[0]
        v.verdict = FAIL
        v.reason = f"token {m['position']}: board sent {m['board']}, {m['reason']}"
    return v
