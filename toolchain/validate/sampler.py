"""The board's sampler (firmware/sampler.c) replayed on the host, bit for bit. Pure: values in, values out.

The algorithm is the one in docs/protocol.md ("Sampling"): the same float32 -> float64 conversions,
double arithmetic in the same order, libm ``exp`` per element (``math.exp``; numpy's vectorised exp
may differ by an ulp) and sums taken left to right. Given the board's logits and the REQUEST's
sampling fields, ``sample`` returns the token the board picks; ``draw`` also returns how it picked
it (the kept ids, their cumulative probabilities and the point ``r`` that chose one), so a validator
can tell a wrong token from one decided by a last-bit difference in the logits.

    rng = Rng(seed)                      # once per REQUEST, as the runner does
    for logits in steps:                 # one float32 row of V logits per generated token
        token = sample(logits, temperature, top_k, top_p, rng)
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from itertools import accumulate

import numpy as np

DEFAULT_SEED = 0x9E3779B97F4A7C15  # replaces seed 0 (SAMPLER_DEFAULT_SEED)
MULTIPLIER = 0x2545F4914F6CDD1D  # xorshift64*'s output multiplier
U64_MAX = 2**64 - 1
U32_MAX = 2**32 - 1


class Rng:
    """xorshift64*, as sampler_seed / sampler_next_u32 / sampler_next_float."""

    def __init__(self, seed: int = 0):
        seed = operator.index(seed)
        if not 0 <= seed <= U64_MAX:
            raise ValueError(f"seed: {seed!r} is not a u64 (0 .. 2**64 - 1)")
        self.state = seed or DEFAULT_SEED

    def next_u32(self) -> int:
        x = self.state
        x ^= x >> 12
        x ^= (x << 25) & U64_MAX
        x ^= x >> 27
        self.state = x
        return ((x * MULTIPLIER) & U64_MAX) >> 32

    def next_float(self) -> float:
        """(out >> 40) / 2**24: exact in double, in [0, 1)."""
        return (self.next_u32() >> 8) / 16777216.0


def uniforms(seed: int, n: int) -> list[float]:
    """The first ``n`` draws of a generator seeded with ``seed``."""
    if n < 0:
        raise ValueError(f"n: {n} is negative")
    rng = Rng(seed)
    return [rng.next_float() for _ in range(n)]


@dataclass(frozen=True, eq=False)
class Draw:
    """One sampled token and how the sampler reached it.

    ``order`` holds the kept ids (the top_p prefix of the top_k ids, by descending logit, then
    ascending id); ``cdf[i]`` is the cumulative probability of ``order[:i + 1]`` as the board
    sums it (over the top_k softmax, not renormalised to the prefix); ``mass`` is ``cdf[-1]``;
    ``r = u * mass``; ``token`` is the first ``order[i]`` with ``r < cdf[i]``. When the largest
    logit is not finite the token is certain: ``order = [token]``, ``cdf = [1.0]``, ``mass = 1.0``.
    """

    token: int
    order: np.ndarray  # int64 [keep]
    cdf: np.ndarray  # float64 [keep], non-decreasing
    mass: float
    r: float


def _f32(value: float) -> float:
    """A value as the REQUEST carries it (f32), widened to double as the C does."""
    return float(np.float32(value))


def _logits(logits) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float32)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"logits: expected one non-empty row of V values, got shape {x.shape}")
    return x


def _check_top_k(top_k: int) -> None:
    if not 0 <= top_k <= U32_MAX:
        raise ValueError(f"top_k: {top_k} is not a u32 (0 .. 2**32 - 1)")


def argmax(logits) -> int:
    """Greedy: the first maximum (lowest id); a NaN loses to every number; all NaN -> 0."""
    x = _logits(logits)
    numbers = x[~np.isnan(x)]
    if numbers.size == 0:
        return 0
    return int(np.argmax(x == numbers.max()))  # NaN == m is False


def draw(logits, temperature: float, top_k: int, top_p: float, u: float) -> Draw:
    """The token the board picks at ``temperature`` > 0 with the uniform ``u`` (a next_float)."""
    x = _logits(logits)
    _check_top_k(top_k)
    temp, p_cut = _f32(temperature), _f32(top_p)
    if not temp > 0.0:
        raise ValueError(f"temperature: {temperature} is not > 0 as f32 (greedy: use argmax)")
    if not 0.0 <= u < 1.0:
        raise ValueError(f"u: {u} is not in [0, 1)")
    u = float(u)

    # 1-2: descending logit (NaN as -inf), ascending id on ties; keep the first n
    vals = np.where(np.isnan(x), np.float32(-np.inf), x)
    ordered = np.argsort(-vals, kind="stable")
    v_size = x.size
    n = v_size if top_k == 0 or top_k > v_size else top_k
    top = ordered[:n].astype(np.int64)
    first = float(vals[top[0]])
    # 3: the token is certain when the largest logit is not finite
    if not math.isfinite(first):
        return _frozen(int(top[0]), top[:1], np.array([1.0]), 1.0, u)

    # 4: e_i = exp((l_i - l_0) / T), libm exp, summed left to right
    with np.errstate(over="ignore"):  # a tiny temperature sends far logits to -inf: exp = 0
        scaled = (vals[top].astype(np.float64) - first) / temp  # elementwise IEEE: same as C
    e = np.array([math.exp(s) for s in scaled.tolist()], dtype=np.float64)
    z = 0.0
    for value in e.tolist():
        z += value
    # 5: p_i = e_i / Z, cumulated left to right
    cdf = np.fromiter(accumulate((e / z).tolist()), dtype=np.float64, count=n)
    # 6: the top_p prefix
    keep = n
    if p_cut < 1.0:
        reached = np.flatnonzero(cdf >= p_cut)
        if reached.size:
            keep = int(reached[0]) + 1
    cdf = cdf[:keep]
    mass = float(cdf[-1])
    # 7: the first kept id whose cdf exceeds r
    r = u * mass
    i = int(np.searchsorted(cdf, r, side="right"))
    return _frozen(int(top[min(i, keep - 1)]), top[:keep], cdf, mass, r)


def _frozen(token: int, order: np.ndarray, cdf: np.ndarray, mass: float, r: float) -> Draw:
    order, cdf = order.copy(), cdf.copy()
    order.flags.writeable = cdf.flags.writeable = False
    return Draw(token, order, cdf, mass, r)


def sample(logits, temperature: float, top_k: int, top_p: float, rng: Rng) -> int:
    """One token as the board's sample(): greedy without a draw when temperature (as f32) is not
    > 0, else exactly one ``rng.next_float()``."""
    if not _f32(temperature) > 0.0:
        return argmax(logits)
    return draw(logits, temperature, top_k, top_p, rng.next_float()).token
