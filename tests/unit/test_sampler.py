"""The host twin of the board's sampler (toolchain/validate/sampler.py): the generator and the
algorithm of docs/protocol.md on small cases worked by hand. The byte-for-byte check against
firmware/sampler.c is tests/fuzz/test_sampler_twin.py."""

import math

import numpy as np
import pytest

from toolchain.validate import sampler as S

# ----------------------------------------------------------------------------
# The generator


def test_seed_1_by_hand():
    # x = 1: x ^= x >> 12 -> 1; x ^= x << 25 -> 0x2000001; x ^= x >> 27 -> 0x2000001
    # out = 0x2000001 * 0x2545F4914F6CDD1D mod 2^64 = 0x47E4CE4B896CDD1D
    rng = S.Rng(1)
    assert rng.next_u32() == 0x47E4CE4B
    assert rng.state == 0x2000001
    # x = 0x2000001: ^ (x >> 12 = 0x2000) -> 0x2002001; ^ (x << 25 = 0x4004002000000) -> 0x4004000002001;
    # ^ (x >> 27 = 0x800800) -> 0x4004000802801; out = x * 0x2545F4914F6CDD1D mod 2^64 = 0xABCFA6A8E079651D
    assert rng.next_u32() == 0xABCFA6A8
    assert rng.state == 0x4004000802801


def test_next_float_is_the_top_24_bits_over_2_to_the_24():
    assert S.Rng(1).next_float() == 0x47E4CE / 2**24 == 4711630 / 16777216
    assert S.uniforms(1, 2) == [0x47E4CE / 2**24, 0xABCFA6 / 2**24]


def test_seed_0_is_the_default_constant():
    assert S.uniforms(0, 5) == S.uniforms(S.DEFAULT_SEED, 5)
    assert S.DEFAULT_SEED == 0x9E3779B97F4A7C15


def test_the_largest_seed_and_the_range_of_uniforms():
    us = S.uniforms(2**64 - 1, 1000)
    assert all(0.0 <= u < 1.0 for u in us)
    assert all((u * 2**24).is_integer() for u in us)
    assert len(set(us)) > 990


@pytest.mark.parametrize("seed", [-1, 2**64])
def test_a_seed_outside_u64_is_refused(seed):
    with pytest.raises(ValueError, match="seed"):
        S.Rng(seed)


# ----------------------------------------------------------------------------
# Greedy


def test_greedy_is_the_first_maximum_and_nan_loses_to_every_number():
    assert S.argmax(np.array([1, 3, 3, 2], np.float32)) == 1
    assert S.argmax(np.array([np.nan, -np.inf], np.float32)) == 1
    assert S.argmax(np.array([np.nan, np.nan], np.float32)) == 0
    assert S.argmax(np.array([np.nan, 5, np.inf, np.inf], np.float32)) == 2


def test_greedy_takes_no_draw_and_temperature_is_an_f32():
    rng = S.Rng(4)
    logits = np.array([0.0, 1.0, 0.5], np.float32)
    assert S.sample(logits, 0.0, 0, 1.0, rng) == 1
    assert S.sample(logits, 1e-50, 0, 1.0, rng) == 1  # rounds to 0.0 as f32: greedy
    assert S.sample(logits, -1.0, 0, 1.0, rng) == 1
    assert rng.next_float() == S.uniforms(4, 1)[0]
    with pytest.raises(ValueError, match="temperature"):
        S.draw(logits, 1e-50, 0, 1.0, 0.5)


# ----------------------------------------------------------------------------
# Sampling


def test_two_equal_logits_split_at_one_half_and_r_below_cdf_is_strict():
    logits = np.array([0.0, 0.0], np.float32)
    d = S.draw(logits, 1.0, 0, 1.0, 0.5)
    assert d.order.tolist() == [0, 1] and d.cdf.tolist() == [0.5, 1.0]
    assert (d.mass, d.r, d.token) == (1.0, 0.5, 1)  # r = 0.5 is not < cdf_0 = 0.5
    assert S.draw(logits, 1.0, 0, 1.0, 0.5 - 2**-24).token == 0


def test_three_ids_worked_by_hand():
    logits = np.array([1.0, 2.0, 0.5], np.float32)
    e = [math.exp(0.0), math.exp((1.0 - 2.0) / 0.5), math.exp((0.5 - 2.0) / 0.5)]  # order 1, 0, 2
    z = e[0] + e[1] + e[2]
    cdf = [e[0] / z, e[0] / z + e[1] / z, e[0] / z + e[1] / z + e[2] / z]
    d = S.draw(logits, 0.5, 0, 1.0, 0.9)
    assert d.order.tolist() == [1, 0, 2] and d.cdf.tolist() == cdf
    assert d.mass == cdf[2] and d.r == 0.9 * cdf[2]
    assert d.token == [1, 0, 2][next(i for i, c in enumerate(cdf) if d.r < c)]


def test_top_p_keeps_the_shortest_prefix_reaching_it_without_renormalising():
    logits = np.array([1.0, 2.0, 0.5], np.float32)
    full = S.draw(logits, 0.5, 0, 1.0, 0.0).cdf
    d = S.draw(logits, 0.5, 0, 0.9, 0.99)  # cdf = [0.84, 0.96, 1.0]
    assert d.order.tolist() == [1, 0] and d.cdf.tolist() == full[:2].tolist()
    assert d.mass == full[1] < 1.0 and d.r == 0.99 * full[1]
    assert S.draw(logits, 0.5, 0, 0.0, 0.99).order.tolist() == [1]  # top_p 0 keeps one id
    assert S.draw(logits, 0.5, 0, 1e-6, 0.99).order.tolist() == [1]
    # top_p is compared as the f32 the REQUEST carries: 0.5 + 1e-9 arrives as 0.5
    even = np.array([0.0, 0.0], np.float32)  # cdf [0.5, 1.0]
    assert S.draw(even, 1.0, 0, 0.5, 0.9).order.tolist() == [0]
    assert S.draw(even, 1.0, 0, 0.5 + 1e-9, 0.9).order.tolist() == [0]
    assert S.draw(even, 1.0, 0, float(np.nextafter(np.float32(0.5), np.float32(1))), 0.9).order.tolist() == [0, 1]


def test_top_k_cuts_before_the_softmax_and_zero_or_more_than_v_means_all():
    logits = np.array([3, 1, 2, 0], np.float32)
    assert S.draw(logits, 1.0, 2, 1.0, 0.0).order.tolist() == [0, 2]
    assert S.draw(logits, 1.0, 2, 1.0, 0.0).cdf[-1] == 1.0  # the softmax is over the top_k ids
    for top_k in (0, 4, 5, 2**32 - 1):
        assert S.draw(logits, 1.0, top_k, 1.0, 0.0).order.tolist() == [0, 2, 1, 3]


def test_ties_keep_the_lower_id_first_and_nan_is_minus_infinity():
    logits = np.array([np.nan, 1.0, -np.inf, 1.0, 0.0], np.float32)
    d = S.draw(logits, 1.0, 0, 1.0, 0.999)
    assert d.order.tolist() == [1, 3, 4, 0, 2]
    assert d.cdf[2] == d.cdf[3] == d.cdf[4]  # NaN and -inf weigh exp(-inf) = 0
    assert d.token in (1, 3, 4)


def test_a_non_finite_first_logit_makes_a_certain_token_that_still_takes_its_draw():
    rng = S.Rng(11)
    assert S.sample(np.array([0.0, np.inf, np.inf], np.float32), 1.0, 0, 1.0, rng) == 1
    assert S.sample(np.array([np.nan, -np.inf], np.float32), 1.0, 0, 1.0, rng) == 0
    assert rng.next_float() == S.uniforms(11, 3)[2]
    d = S.draw(np.array([-np.inf, np.nan], np.float32), 2.0, 0, 0.5, 0.25)
    assert (d.token, d.order.tolist(), d.cdf.tolist(), d.mass, d.r) == (0, [0], [1.0], 1.0, 0.25)


def test_extreme_temperatures():
    logits = np.array([0.0, -1.0, -1000.0], np.float32)
    assert S.draw(logits, 1e-3, 0, 1.0, 0.999).cdf.tolist() == [1.0, 1.0, 1.0]  # exp(-1000) = 0
    hot = S.draw(logits, 100.0, 0, 1.0, 0.0)
    assert hot.cdf[1] > 0.66 and hot.token == 0


def test_the_draw_is_frozen_and_read_only():
    d = S.draw(np.array([0.0, 1.0], np.float32), 1.0, 0, 1.0, 0.3)
    with pytest.raises(AttributeError):
        d.token = 0  # type: ignore[misc]
    with pytest.raises(ValueError):
        d.cdf[0] = 0.0
    with pytest.raises(ValueError):
        d.order[0] = 0


@pytest.mark.parametrize("args, field", [
    ((np.zeros((2, 2), np.float32), 1.0, 0, 1.0, 0.5), "logits"),
    ((np.zeros(0, np.float32), 1.0, 0, 1.0, 0.5), "logits"),
    ((np.zeros(3, np.float32), 1.0, -1, 1.0, 0.5), "top_k"),
    ((np.zeros(3, np.float32), 1.0, 2**32, 1.0, 0.5), "top_k"),
    ((np.zeros(3, np.float32), 1.0, 0, 1.0, 1.0), "u"),
])
def test_bad_arguments_name_the_field(args, field):
    with pytest.raises(ValueError, match=field):
        S.draw(*args)


def test_a_full_vocabulary_is_drawn_from_every_id():
    logits = (np.random.default_rng(1).standard_normal(65536) * 2).astype(np.float32)
    d = S.draw(logits, 1.0, 0, 1.0, 0.5)
    assert d.order.size == 65536 and np.all(np.diff(d.cdf) >= 0)
    assert d.cdf[d.order.tolist().index(d.token)] > d.r
