"""How close the board's model is to the checkpoint it came from. Pure: logits in, figures out.

The verdict (compare.py) checks the board against the *same program* on the host, so it cannot see
what export and quantization changed. This puts a number on that: teacher-forced on the board's own
tokens, the eager fp32 model's logits against the program's (the host reference, which the verdict
has just shown the board to match within its drift):

- **top-1 agreement**: the share of the board's tokens that are also the fp32 model's argmax (for a
  greedy run: how often quantization changed the pick);
- **mean KL divergence** KL(p_fp32 || p_program) per token, in nats, over the whole vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class Fidelity:
    tokens: int
    top1_agreement: float
    mean_kl: float
    max_kl: float
    min_agreement: float | None = None  # the threshold asked for, if any
    check: str | None = None  # "PASS" / "FAIL" with a threshold, else None

    @property
    def failed(self) -> bool:
        return self.check == "FAIL"

    def to_dict(self) -> dict:
        return asdict(self)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def kl_per_token(p_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    """KL(softmax(p) || softmax(q)) in nats for each row of two [N, V] logit arrays (float64)."""
    lp, lq = _log_softmax(p_logits), _log_softmax(q_logits)
    return (np.exp(lp) * (lp - lq)).sum(axis=-1)


def measure(fp32_logits: np.ndarray, program_logits: np.ndarray, tokens: Sequence[int],
            min_agreement: float | None = None) -> Fidelity:
    """``fp32_logits`` and ``program_logits``: [N, V], the logits before each of the N board ``tokens``."""
    if fp32_logits.shape != program_logits.shape or fp32_logits.shape[0] != len(tokens) or not len(tokens):
        raise ValueError(f"fidelity needs [N, V] logits for N tokens: {fp32_logits.shape}, "
                         f"{program_logits.shape}, {len(tokens)} tokens")
    kl = kl_per_token(fp32_logits, program_logits)
    agree = float(np.mean(fp32_logits.argmax(axis=-1) == np.asarray(tokens)))
    check = None if min_agreement is None else ("PASS" if agree >= min_agreement else "FAIL")
    return Fidelity(tokens=len(tokens), top1_agreement=agree, mean_kl=float(kl.mean()), max_kl=float(kl.max()),
                    min_agreement=min_agreement, check=check)
