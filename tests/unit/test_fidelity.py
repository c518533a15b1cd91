import numpy as np
import pytest

from toolchain.validate import fidelity


def _logits(seed: int, n: int = 6, v: int = 50) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, v)).astype(np.float32) * 3


def test_the_same_model_agrees_fully_and_diverges_nowhere():
    x = _logits(0)
    f = fidelity.measure(x, x.copy(), list(x.argmax(-1)))
    assert f.top1_agreement == 1.0 and abs(f.mean_kl) < 1e-12 and f.check is None


def test_a_different_model_is_seen_in_both_figures():
    fp32, program = _logits(0), _logits(1)
    board_tokens = list(program.argmax(-1))  # the board followed its own (different) model
    f = fidelity.measure(fp32, program, board_tokens)
    assert f.top1_agreement < 0.5 and f.mean_kl > 0.5 and f.max_kl >= f.mean_kl
    # KL is measured in nats of the fp32 distribution: a constant shift of the logits changes nothing
    assert abs(fidelity.measure(fp32, fp32 + 7.0, list(fp32.argmax(-1))).mean_kl) < 1e-9


def test_the_threshold_turns_it_into_a_check():
    fp32 = _logits(2)
    tokens = list(fp32.argmax(-1))
    tokens[0] = (tokens[0] + 1) % 50  # one of six tokens is not the fp32 pick
    assert fidelity.measure(fp32, fp32, tokens, min_agreement=0.8).check == "PASS"
    failed = fidelity.measure(fp32, fp32, tokens, min_agreement=0.9)
    assert failed.check == "FAIL" and failed.failed and failed.top1_agreement == pytest.approx(5 / 6)


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="fidelity needs"):
        fidelity.measure(_logits(0), _logits(0, n=5), [1] * 6)
    with pytest.raises(ValueError, match="fidelity needs"):
        fidelity.measure(_logits(0), _logits(0), [1] * 5)
