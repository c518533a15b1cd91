import numpy as np

from toolchain.validate.compare import compare


def logits(best, second=None, gap=1.0, v=10):
    x = np.zeros(v)
    x[best] = 5.0
    if second is not None:
        x[second] = 5.0 - gap
    return x


def test_exact_near_tie_and_mismatch():
    ref = [logits(1), logits(2, 3, gap=0.01), logits(4, 5, gap=2.0)]
    v = compare([1, 3, 4], ref, tolerance=0.05)
    assert v.passed and v.exact_matches == 2 and v.near_ties == [1] and v.first_divergence == 1
    v = compare([1, 2, 5], ref, tolerance=0.05)
    assert not v.passed and "token 2" in v.reason and v.first_divergence == 2


def test_sampled_tokens_must_be_pickable():
    ref = [logits(1, 2, gap=0.1)]
    assert compare([2], ref, tolerance=0.0, temperature=1.0, top_k=2).passed
    assert not compare([7], ref, tolerance=0.0, temperature=1.0, top_k=2).passed
