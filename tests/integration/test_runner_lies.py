"""The test-only lying runner (cmake -DEDGELM_TEST_LIES=ON, firmware/lies.h) against the honest one, and
the honest runner's own refusal of a damaged program.

Each lie, chosen at start-up by EDGELM_TEST_LIE, must really change what the runner sends; with the
variable unset (or empty) the lying build must send exactly what the production runner sends. These
are the boards that the host's checks are tested against elsewhere."""

import math
import struct
import subprocess

import pytest
import runner_io

from toolchain import api
from toolchain.link import protocol as P

pytestmark = pytest.mark.slow

PROMPT = (1, 82, 114, 103)
# After this prompt the tiny model's second-best logit for token 1 is 0.31 below its best (elsewhere
# 3 to 10 below): a greedy request that swap:0.5 changes.
HELLO = (1, 72, 101, 108, 108, 111)
GREEDY = P.Request(HELLO, 48, ignore_eos=True, report_logits=True)
# The tiny model is sure of itself: at temperature 1 it nearly always samples its argmax.
SAMPLED = P.Request(HELLO, 48, temperature=2.0, top_k=0, top_p=0.9, seed=5, ignore_eos=True, report_logits=True)
LIE = "EDGELM_TEST_LIE"


@pytest.fixture(scope="module")
def tiny_pte(hil_workdir):
    result, _ = api.cached_export("tiny", hil_workdir, quant="8da8w")
    return result.pte


@pytest.fixture(scope="module")
def honest(tiny_pte, hil_workdir):
    """The production runner (no test option) of the same program."""
    bundle, _ = api.cached_build("host", tiny_pte, hil_workdir)
    return bundle


@pytest.fixture(scope="module")
def lying(tiny_pte, tmp_path_factory):
    """The EDGELM_TEST_LIES runner, built once for the module."""
    return runner_io.lying_runner_bundle(tiny_pte, tmp_path_factory.mktemp("lies"))


def _shown(tokens):
    """What a TOKEN frame says apart from its time."""
    return [(t.index, t.token, t.logit, t.top) for t in tokens]


def _counters(stats):
    return (stats.prompt_tokens, stats.generated, stats.stop, stats.decode_calls, stats.draft_calls, stats.drafted,
            stats.accepted, stats.draft_model_calls, stats.kept)


def _chat(honest):
    """Three requests with FLAG_KEEP_STATE, from the honest runner's replies: the second prompt shares the
    first's prompt and 8 tokens of its reply, then goes elsewhere, so an honest board holds nothing of it
    (kept 0); the third is the second's prompt and reply and one token more (a chat turn: all of it kept)."""
    first = P.Request(PROMPT, 16, ignore_eos=True, report_logits=True, keep_state=True)
    reply = [t.token for t in runner_io.serve(honest, first)[0]]
    second = P.Request(PROMPT + tuple(reply[:8]) + ((reply[8] + 1) % 256,), 16, ignore_eos=True,
                       report_logits=True, keep_state=True)
    reply = [t.token for t in runner_io.serve_all(honest, [first, second])[1][0]]
    return [first, second, P.Request(second.prompt + tuple(reply) + (35,), 16, ignore_eos=True, report_logits=True,
                                     keep_state=True)]


@pytest.mark.parametrize("value", [None, ""])
def test_unset_the_lying_build_sends_what_the_honest_runner_sends(honest, lying, value):
    env = None if value is None else {LIE: value}
    for req in (GREEDY, SAMPLED, P.Request(PROMPT, 48, temperature=1.0, seed=9, ignore_eos=True, report_logits=True)):
        want, want_stats = runner_io.serve(honest, req)
        got, got_stats = runner_io.serve(lying, req, env=env)
        assert _shown(got) == _shown(want) and _counters(got_stats) == _counters(want_stats)
    chat = _chat(honest)
    want = runner_io.serve_all(honest, chat)
    got = runner_io.serve_all(lying, chat, env=env)
    assert [(_shown(t), _counters(s)) for t, s in got] == [(_shown(t), _counters(s)) for t, s in want]
    assert [s.kept for _, s in want] == [0, 0, len(chat[1].prompt) + 15]


def test_an_unknown_lie_is_refused_at_start_up(lying):
    root = lying.root
    for value in ("bogus", "swap", "swap:x", "topp:1"):
        proc = subprocess.run([str(root / "runner"), "--model", str(root / "model.pte"), "--serial", "-"],
                              stdin=subprocess.DEVNULL, capture_output=True, env={LIE: value}, timeout=60)
        assert proc.returncode == 2 and f"EDGELM_TEST_LIE={value}" in proc.stderr.decode()


def test_swap_changes_a_greedy_pick_and_reports_the_swapped_row(honest, lying):
    want, _ = runner_io.serve(honest, GREEDY)
    got, _ = runner_io.serve(lying, GREEDY, env={LIE: "swap:0.5"})
    assert [t.token for t in got] != [t.token for t in want]
    assert all(t.token == t.top[0][0] and t.logit == t.top[0][1] for t in got)  # consistent with its pick


def test_inflate_picks_greedily_and_reports_a_higher_logit(honest, lying):
    want, _ = runner_io.serve(honest, SAMPLED)
    got, _ = runner_io.serve(lying, SAMPLED, env={LIE: "inflate:2"})
    assert [t.token for t in got] != [t.token for t in want]
    assert all(t.token == t.top[0][0] and t.logit == t.top[0][1] for t in got)  # the argmax, raised
    greedy, _ = runner_io.serve(honest, GREEDY)
    assert got[0].token == greedy[0].token and got[0].logit > greedy[0].logit  # the same row, a higher number


def test_noise_changes_the_reported_logits(honest, lying):
    want, _ = runner_io.serve(honest, GREEDY)
    got, _ = runner_io.serve(lying, GREEDY, env={LIE: "noise:0.5"})
    assert got[0].top != want[0].top and _shown(got) != _shown(want)


@pytest.mark.parametrize("lie", ["topp", "temperature"])
def test_a_sampler_lie_changes_sampled_tokens(honest, lying, lie):
    want, _ = runner_io.serve(honest, SAMPLED)
    got, _ = runner_io.serve(lying, SAMPLED, env={LIE: lie})
    assert [t.top for t in got[:1]] == [t.top for t in want[:1]]  # the same logits, another pick somewhere
    assert [t.token for t in got] != [t.token for t in want]
    # greedy: no sampler arithmetic to lie in
    assert _shown(runner_io.serve(lying, GREEDY, env={LIE: lie})[0]) == _shown(runner_io.serve(honest, GREEDY)[0])


def test_stale_keeps_a_state_the_prompt_does_not_start_with(honest, lying):
    chat = _chat(honest)[:2]
    want = runner_io.serve_all(honest, chat)
    got = runner_io.serve_all(lying, chat, env={LIE: "stale"})
    assert _shown(got[0][0]) == _shown(want[0][0])  # the first turn: nothing held yet
    assert want[1][1].kept == 0 and got[1][1].kept == len(PROMPT) + 8
    assert _shown(got[1][0]) != _shown(want[1][0])  # fed from the wrong conv state


def test_stats_nan(honest, lying):
    want, want_stats = runner_io.serve(honest, GREEDY)
    got, stats = runner_io.serve(lying, GREEDY, env={LIE: "stats_nan"})
    assert math.isnan(stats.ttft_ms) and math.isnan(stats.decode_tok_s) and not math.isnan(stats.prefill_tok_s)
    assert not math.isnan(want_stats.ttft_ms) and _shown(got) == _shown(want)


def test_stats_counts(honest, lying):
    want, want_stats = runner_io.serve(honest, GREEDY)
    got, stats = runner_io.serve(lying, GREEDY, env={LIE: "stats_counts"})
    assert stats.decode_calls == want_stats.decode_calls + 1 and _shown(got) == _shown(want)
    assert _counters(stats)[:3] + _counters(stats)[4:] == _counters(want_stats)[:3] + _counters(want_stats)[4:]


def test_stats_fast_claims_ten_times_the_speed_consistently(honest, lying):
    """Times differ from run to run: the slowest of two lying runs against the fastest of two honest ones."""
    req = P.Request(PROMPT, 400, ignore_eos=True, draft=False)
    honest_runs = [runner_io.serve(honest, req) for _ in range(2)]
    lying_runs = [runner_io.serve(lying, req, env={LIE: "stats_fast"}) for _ in range(2)]
    assert max(t[-1].t_us for t, _ in lying_runs) * 2 < min(t[-1].t_us for t, _ in honest_runs)
    for tokens, stats in lying_runs:  # its STATS agree with its own TOKEN times
        assert stats.ttft_ms == pytest.approx(tokens[0].t_us / 1e3, rel=1e-5)
        decode_s = (tokens[-1].t_us - tokens[0].t_us) / 1e6
        assert stats.decode_tok_s == pytest.approx((len(tokens) - 1) / decode_s, rel=2e-3)


# ---------------------------------------------------------------------------------------------------
# A damaged program: refused on load (Program::Verification::InternalConsistency), not a crash


def test_a_damaged_program_is_refused_on_load_not_a_crash(honest, tmp_path):
    """Bytes flipped inside the program's flatbuffer (past its header), at nine places. The runner has no
    expected hash of its own (HELLO reports the hash; the host compares it), so a damaged copy given with
    --model reaches Program::load. With Verification::Minimal three of these nine died of SIGSEGV."""
    pte = (honest.root / "model.pte").read_bytes()
    assert pte[4:8] == b"ET12" and pte[8:12] == b"eh00"
    program_size = struct.unpack_from("<Q", pte, 16)[0]  # the extended header: the flatbuffer's length
    assert 0 < program_size < len(pte)
    for k in range(1, 10):
        at = program_size * k // 10
        damaged = bytearray(pte)
        damaged[at:at + 16] = bytes(b ^ 0xFF for b in damaged[at:at + 16])
        path = tmp_path / f"damaged-{at}.pte"
        path.write_bytes(damaged)
        proc = subprocess.run([str(honest.root / "runner"), "--model", str(path), "--serial", "-"],
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        log = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        assert proc.returncode == 3, (at, proc.returncode, log[-3:])  # a signal would be negative
        assert log and log[-1].startswith(f"edgelm-runner: {path}") and "HELLO" not in "".join(log), (at, log)
