import numpy as np

from toolchain.validate.compare import compare


def logits(best, second=None, gap=1.0, v=10):
    x = np.zeros(v)
    x[best] = 5.0
    if second is not None:
        x[second] = 5.0 - gap
    return x  # std about 1.5-2


def test_exact_near_tie_and_mismatch_without_board_logits():
    ref = [logits(1), logits(2, 3, gap=0.01), logits(4, 5, gap=2.0)]
    v = compare([1, 3, 4], ref, tolerance=0.05)
    assert v.passed and v.exact_matches == 2 and v.near_ties == [1] and v.first_divergence == 1
    v = compare([1, 2, 5], ref, tolerance=0.05)
    assert not v.passed and "token 2" in v.reason and v.first_divergence == 2


def test_sampled_tokens_must_be_pickable():
    ref = [logits(1, 2, gap=0.1)]
    assert compare([2], ref, tolerance=0.0, temperature=1.0, top_k=2).passed
    assert not compare([7], ref, tolerance=0.0, temperature=1.0, top_k=2).passed


def test_with_board_logits_a_flip_must_be_explained_by_the_measured_drift():
    ref = [logits(2, 3, gap=0.02)]
    # the board saw token 3 slightly above token 2: differences of 0.015 each explain a 0.02 gap
    board = [(4.995, [(3, 4.995), (2, 4.995 - 0.01)])]
    v = compare([3], ref, tolerance=0.1, board_logits=board)
    assert v.passed and v.near_ties == [0] and abs(v.drift_max - 0.015) < 1e-9
    # the board's numbers match the reference for all it reported, yet it skipped the best token
    board = [(4.98, [(3, 4.98), (0, 0.0)])]
    v = compare([3], ref, tolerance=0.1, board_logits=board)
    assert not v.passed and "measured rounding" in v.reason


def test_with_board_logits_drift_beyond_tolerance_fails():
    ref = [logits(2)]
    board = [(9.0, [(2, 9.0), (0, 0.0)])]  # right token, numbers far off
    v = compare([2], ref, tolerance=0.5, board_logits=board)
    assert not v.passed and "differ from the reference by 4" in v.reason


def test_a_greedy_board_must_send_its_own_argmax():
    ref = [logits(2, 3, gap=0.001)]
    board = [(4.5, [(2, 5.0), (3, 4.5)])]
    v = compare([3], ref, tolerance=1.0, board_logits=board)
    assert not v.passed and "own argmax 2" in v.reason
