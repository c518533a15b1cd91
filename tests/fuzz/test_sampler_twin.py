"""The C sampler (firmware/sampler.c) under ASan/UBSan, against its Python twin, byte for byte."""

import math
import random
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from toolchain.validate import sampler as S

HERE = Path(__file__).parent
U64_MAX = 2**64 - 1


def _build(out: Path, *cflags: str) -> Path:
    subprocess.run(["bash", str(HERE / "build_sampler_harness.sh"), str(out), *cflags], check=True, timeout=300)
    return out


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("fuzz") / "sampler_harness")


@pytest.fixture(scope="module")
def optimised_harness(tmp_path_factory):
    """As the runner is built (Release: -O3) and for this CPU: FMA and vector units allowed."""
    return _build(tmp_path_factory.mktemp("fuzz") / "sampler_harness_o3", "-O3", "-march=native")


@pytest.fixture(scope="module")
def buggy_harness(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("fuzz") / "sampler_harness_bug", "-DEDGELM_TEST_SAMPLER_BUG")


# ----------------------------------------------------------------------------
# Cases


def _f32_bits(x: float) -> str:
    return f"{struct.unpack('<I', struct.pack('<f', x))[0]:x}"


def _u_bits(u: float) -> str:
    return f"{struct.unpack('<Q', struct.pack('<d', u))[0]:016x}"


def _logits(rng: random.Random, v: int, temperature: float) -> np.ndarray:
    """A row of V float32 logits: spread (often on the temperature's scale, so that many ids
    share the mass), ties, and now and then NaN and +/-inf."""
    np_rng = np.random.default_rng(rng.randrange(2**32))
    spread = rng.choice([0.01, 0.3, 1.0, 3.0, 30.0, *[max(temperature, 1e-3) * rng.uniform(0.3, 4)] * 3])
    x = np_rng.standard_normal(v) * spread + rng.uniform(-50, 50)
    if rng.random() < 0.3:  # ties: a coarse grid
        x = np.round(x * rng.choice([1, 2, 10]))
    x = x.astype(np.float32)
    specials = rng.random()
    if specials < 0.25:
        for _ in range(rng.randrange(1, 4)):
            x[rng.randrange(v)] = rng.choice([np.nan, np.inf, -np.inf])
    elif specials < 0.28:
        x[:] = rng.choice([np.nan, -np.inf])
        if rng.random() < 0.5:
            x[rng.randrange(v)] = rng.choice([np.nan, np.inf, -np.inf, 1.0])
    elif specials < 0.32:  # many NaN and -inf among numbers
        x[np_rng.random(v) < 0.4] = np.nan
        x[np_rng.random(v) < 0.2] = -np.inf
    return x


def _case(rng: random.Random, v: int) -> tuple:
    temperature = rng.choice([0.0, 1e-3, 1e-2, 0.1, 0.7, 1.0, 2.0, 10.0, 100.0, 1e-40, 1e-50,
                              math.exp(rng.uniform(math.log(1e-3), math.log(100)))])
    top_k = rng.choice([0, 0, 0, 1, v, v + 1, 2**32 - 1, rng.randrange(1, v + 1), rng.randrange(1, v + 1)])
    top_p = rng.choice([0.0, 1e-6, 0.5, 1.0, 1.0, 1.0, 0.9999999, rng.random(), rng.random(), rng.random()])
    seed = rng.choice([0, U64_MAX, rng.randrange(2**64), rng.randrange(2**64)])
    n = rng.choice([0, 1, 1, 2, 3, 5])
    return _logits(rng, v, temperature), temperature, top_k, top_p, seed, n


def _vocab(rng: random.Random) -> int:
    return rng.choice([1, 2, *[int(math.exp(rng.uniform(0, math.log(5000))))] * 5, rng.randrange(1, 5001)])


def _stdin(cases) -> str:
    lines = []
    for logits, temperature, top_k, top_p, seed, n in cases:
        head = (f"{logits.size:x} {_f32_bits(temperature)} {top_k:x} {_f32_bits(top_p)} {seed:x} {n:x}")
        lines.append(head + " " + " ".join(f"{b:x}" for b in logits.view(np.uint32).tolist()))
    return "\n".join(lines) + "\n"


def _run(harness: Path, cases) -> list[str]:
    proc = subprocess.run([str(harness)], input=_stdin(cases), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == len(cases)
    return lines


MAX_LISTED = 64  # sampler_harness.c


def _twin(logits, temperature, top_k, top_p, seed, n) -> str:
    """The harness's line for a case (format: sampler_harness.c), from the Python twin."""
    rng = S.Rng(seed)
    fields, last = [], None
    for _ in range(n):
        if np.float32(temperature) > 0:
            u = rng.next_float()
            last = S.draw(logits, temperature, top_k, top_p, u)
            fields.append(f"{last.token}/{last.order.size}/{_u_bits(u)}/{_u_bits(last.mass)}/{_u_bits(last.r)} ")
        else:
            fields.append(f"{S.sample(logits, temperature, top_k, top_p, rng)} ")
    line = "".join(fields) + f"| {_u_bits(rng.next_float())} |" + "".join(f" {_u_bits(u)}" for u in S.uniforms(seed, n))
    if last is None or last.order.size > MAX_LISTED:
        return line + " | -"
    return line + " |" + "".join(f" {i}:{_u_bits(c)}" for i, c in zip(last.order.tolist(), last.cdf.tolist()))


def _describe(case) -> str:
    logits, temperature, top_k, top_p, seed, n = case
    return (f"V={logits.size} temperature={temperature!r} top_k={top_k} top_p={top_p!r} seed={seed} n={n} "
            f"nan={int(np.isnan(logits).sum())} inf={int(np.isinf(logits).sum())}")


# ----------------------------------------------------------------------------
# Tests


def test_c_and_python_sample_the_same_tokens(harness):
    rng = random.Random(6)
    cases = [_case(rng, _vocab(rng)) for _ in range(3000)]
    lines = _run(harness, cases)
    checked = sampled = 0
    for case, line in zip(cases, lines):
        assert line == _twin(*case), _describe(case)
        checked += 1
        sampled += case[5] if np.float32(case[1]) > 0 else 0
    assert checked == 3000 and sampled > 4000


def test_an_optimised_build_samples_the_same_tokens(optimised_harness):
    rng = random.Random(9)
    cases = [_case(rng, _vocab(rng)) for _ in range(500)]
    for case, line in zip(cases, _run(optimised_harness, cases)):
        assert line == _twin(*case), _describe(case)


def test_a_full_vocabulary_samples_the_same_tokens(harness):
    """V = 65536 (LFM2's vocabulary): every id kept, a few draws, plus top_k and top_p cuts."""
    rng = random.Random(7)
    logits = (np.random.default_rng(7).standard_normal(65536) * 4).astype(np.float32)
    logits[123] = np.nan
    logits[40000] = -np.inf
    cases = [(logits, 0.8, 0, 1.0, 0, 4), (logits, 1.0, 0, 0.95, U64_MAX, 3), (logits, 100.0, 0, 1.0, 5, 2),
             (logits, 0.7, 50, 0.9, rng.randrange(2**64), 3), (logits, 0.0, 0, 1.0, 1, 1)]
    for case, line in zip(cases, _run(harness, cases)):
        assert line == _twin(*case), _describe(case)


def test_the_generator_is_the_same_stream_from_any_seed(harness):
    """One case per seed, greedy (no draws taken): the line is just the stream's first uniforms."""
    seeds = [0, 1, 2, S.DEFAULT_SEED, U64_MAX, 2**63, 0x0123456789ABCDEF]
    cases = [(np.zeros(1, np.float32), 0.0, 0, 1.0, seed, 64) for seed in seeds]
    for case, line in zip(cases, _run(harness, cases)):
        assert line == _twin(*case)


def test_the_test_only_fault_is_caught_by_the_twin(buggy_harness):
    """Built with EDGELM_TEST_SAMPLER_BUG the sampler draws uniformly over the vocabulary with the
    same one draw per token; the twin, given the same seed, disagrees with it."""
    rng = random.Random(8)
    cases = []
    while len(cases) < 200:
        case = _case(rng, rng.randrange(50, 2000))
        logits, temperature, top_k, top_p, seed, n = case
        if np.float32(temperature) > 0 and n > 0:
            cases.append((logits, temperature, 8, 0.9, seed, n))
    differ = 0
    for case, line in zip(cases, _run(buggy_harness, cases)):
        logits, temperature, top_k, top_p, seed, n = case
        tokens = [int(t) for t in line.split("|")[0].split()]  # greedy-style fields: no Sampler.last
        assert tokens == [min(int(u * logits.size), logits.size - 1) for u in S.uniforms(seed, n)]
        assert line.split("|")[1].strip() == _u_bits(S.uniforms(seed, n + 1)[-1])  # still one draw per token
        differ += line != _twin(*case)
    assert differ >= 190
