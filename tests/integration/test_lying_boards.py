"""Lying boards, judged as `edgelm run` judges them: the runner built with test-only lies
(firmware/lies.h, chosen at start-up by EDGELM_TEST_LIE) serves on host:local and on rpi5:qemu, and
every request is judged by the board's twin (the honest build of the same bundle). Each lie must be
told (the board's stream or STATS differ from the honest one) and every request that told it must
FAIL: the false-PASS count is 0. The same requests are also judged by the host reference alone (what
a board without a twin gets), recorded beside. Honest runners PASS on every scheme, bit for bit.

The table (lie x target -> verdicts) is written to out/lying-boards.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import runner_io
from judges import reference_judge

from toolchain import api, boards
from toolchain.deploy.bringup import bring_up
from toolchain.link import protocol as P
from toolchain.model import checkpoint, tokenizer
from toolchain.validate.compare import TWIN_COUNTERS
from toolchain.validate.judge import Judge

pytestmark = pytest.mark.slow

TARGETS = [("host", "local"), ("rpi5", "qemu")]
MODEL, QUANT = "fortune", "8da8w"
TEXTS = ["A wise old owl", "The computer said", "Never trust a", "In the beginning"]
GREEDY_LIES = ["swap:0.1", "swap:0.25", "swap:0.5", "noise:0.05", "noise:0.1", "noise:0.2"]
SAMPLED_LIES = ["inflate:0.3", "topp", "temperature"]
STATS_LIES = ["stats_nan", "stats_fast", "stats_counts"]
LIES = [*GREEDY_LIES, *SAMPLED_LIES, "stale", *STATS_LIES]
SEEDS = (1, 2, 3)


@pytest.fixture(scope="module")
def program(hil_workdir):
    exported, _ = api.cached_export(MODEL, hil_workdir, quant=QUANT)
    man = exported.manifest
    tok = tokenizer.for_model(checkpoint.inspect_folder(checkpoint.folder_of(MODEL)).tokenizer_path,
                              man["model"]["config"]["vocab_size"])
    bos, eos = man["tokens"]["bos_token_id"], tuple(man["tokens"]["eos_token_ids"])
    prompts = [(bos, *tok.encode(t)) for t in TEXTS]
    return exported.pte, prompts, eos


def _requests(lie: str, prompts, eos) -> list[P.Request]:
    if lie in GREEDY_LIES:
        return [P.Request(p, 48, stop=eos, ignore_eos=True, report_logits=True) for p in prompts]
    if lie in SAMPLED_LIES:
        temperature = 0.7  # the temperature lie multiplies where it should divide: the same at 1.0
        return [P.Request(p, 48, temperature=temperature, top_k=0 if lie != "topp" else 40, top_p=0.9, seed=s,
                          stop=eos, ignore_eos=True, report_logits=True) for p, s in zip(prompts, SEEDS)]
    if lie == "stale":  # a chat turn, then /reset: a new conversation that shares only its first tokens
        first = P.Request(prompts[0], 24, stop=eos, ignore_eos=True, report_logits=True, keep_state=True)
        other = P.Request((*prompts[0][:3], *prompts[1][1:]), 24, stop=eos, ignore_eos=True, report_logits=True,
                          keep_state=True)
        return [first, other]
    # stats lies: long enough that a board claiming ten times its speed is seen on the host's clock
    return [P.Request(prompts[0], 500, stop=eos, ignore_eos=True, report_logits=True)]


def _told(lie: str, served, twin) -> bool:
    """Did the board say anything other than what an honest board says (its twin)? The STATS lies about
    time always do; the others show in the tokens, the logits or the counters."""
    if lie in ("stats_nan", "stats_fast") or twin is None:
        return True
    mine = served.collected
    return (mine.tokens != twin.tokens or mine.logits != twin.logits
            or any(getattr(mine.stats, f) != getattr(twin.stats, f) for f in TWIN_COUNTERS))


def _judged(board_name: str, target_spec: str, bundle, honest, pte, requests, workdir, lie: str | None,
            monkeypatch) -> list[dict]:
    board = boards.get(board_name)
    target = api.target_for(board_name, target_spec, workdir / "lying-targets" / (lie or "honest").replace(":", "-"))
    if lie:
        monkeypatch.setenv("EDGELM_TEST_LIE", lie)
    else:
        monkeypatch.delenv("EDGELM_TEST_LIE", raising=False)
    rows = []
    twin = Judge(board=board, bundle_root=honest.root, tolerance=0.75)
    ref = reference_judge(pte, near_tie=board.near_tie)
    with twin, bring_up(target, bundle) as up:
        monkeypatch.delenv("EDGELM_TEST_LIE", raising=False)  # the twin (started on the first request) is honest
        assert twin.rule == "twin"
        for req in requests:
            served = api.serve_and_validate(up, req, twin)
            by_reference = ref.judge(served.collected, up.hello)
            rows.append({"lie": lie or "none", "target": f"{board_name}:{target_spec}", "prompt": len(req.prompt),
                         "sampled": req.temperature > 0, "keep_state": req.keep_state,
                         "told": _told(lie, served, twin.last_twin) if lie else False,
                         "twin": served.verdict.verdict, "why": served.verdict.reason,
                         "reference": by_reference.verdict, "reference_why": by_reference.reason,
                         "decode_tok_s": served.collected.stats.decode_tok_s,
                         "host_span_s": served.collected.arrivals_s[-1] - served.collected.arrivals_s[0]})
    return rows


@pytest.fixture(scope="module")
def table():
    rows: list[dict] = []
    yield rows
    out = Path(__file__).resolve().parents[2] / "out"
    out.mkdir(exist_ok=True)
    (out / "lying-boards.json").write_text(json.dumps(rows, indent=1))


@pytest.mark.parametrize("board_name,target_spec", TARGETS)
def test_every_lie_told_fails_and_honest_boards_pass(board_name, target_spec, program, hil_workdir, tmp_path_factory,
                                                      monkeypatch, table):
    pte, prompts, eos = program
    honest, _ = api.cached_build(board_name, pte, hil_workdir)
    liar = runner_io.lying_runner_bundle(pte, tmp_path_factory.mktemp(f"liar-{board_name}"), board_name)
    everything = [r for lie in LIES for r in _requests(lie, prompts, eos)]
    # The lying build with no lie armed is the honest board: bit for bit its twin, on every request.
    for row in _judged(board_name, target_spec, liar, honest, pte, everything[:6], hil_workdir, None, monkeypatch):
        table.append(row)
        assert row["twin"] == "PASS", row
    rows = []
    for lie in LIES:
        rows += _judged(board_name, target_spec, liar, honest, pte, _requests(lie, prompts, eos), hil_workdir, lie,
                        monkeypatch)
    table.extend(rows)
    false_pass = [r for r in rows if r["told"] and r["twin"] == "PASS"]
    assert not false_pass, false_pass
    for lie in LIES:
        assert any(r["told"] for r in rows if r["lie"] == lie), f"{lie} was never told on {board_name}:{target_spec}"
    # a request the lie did not touch is the honest board's, and passes
    assert all(r["twin"] == "PASS" for r in rows if not r["told"]), [r for r in rows if not r["told"]]
    print(json.dumps({lie: [r["twin"] + ("" if r["told"] else " (not told)") for r in rows if r["lie"] == lie]
                      for lie in LIES}, indent=1))


# Honest boards and their twins: bit for bit on every scheme, CPU and thread count the profiles use ----------

SCHEMES = ("fp32", "8da8w", "8da4w")
CPUS = {"cortex-a76": "rpi5", "cortex-a72": "rpi4", "cortex-a53": "rpi3b", "neoverse-n1": "jetson-orin-nano"}


def test_every_profile_cpu_and_thread_count_is_bit_for_bit_its_twin():
    """The boards above share a CPU model with these; every aarch64 profile's CPU is covered."""
    arm = [b for b in boards.load_registry().all() if b.arch == "aarch64"]
    assert {b.qemu_cpu for b in arm} == set(CPUS), "a profile with a CPU this suite does not cover"


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("board_name,target_spec", [("host", "local"), *((b, "qemu") for b in CPUS.values())])
def test_an_honest_board_is_bit_for_bit_its_twin(board_name, target_spec, scheme, hil_workdir, table):
    board = boards.get(board_name)
    exported, _ = api.cached_export("tiny", hil_workdir, quant=scheme)
    bundle, _ = api.cached_build(board_name, exported.pte, hil_workdir)
    target = api.target_for(board_name, target_spec, hil_workdir / "twin-targets")
    prompt = (1, 72, 101, 108, 108, 111)  # where the tiny model has a near-tie (runner_lies)
    reqs = [P.Request(prompt, 32, ignore_eos=True, report_logits=True),
            P.Request(prompt, 32, temperature=2.0, top_p=0.9, seed=5, ignore_eos=True, report_logits=True),
            P.Request((*prompt, 44, 32, 72, 101, 108, 108, 111), 24, ignore_eos=True, report_logits=True,
                      draft=False)]
    with Judge(board=board, bundle_root=bundle.root, tolerance=0.75) as judge, bring_up(target, bundle) as up:
        assert up.hello.threads == board.threads and judge.rule == "twin"
        for req in reqs:
            served = api.serve_and_validate(up, req, judge)
            table.append({"lie": "none", "target": f"{board_name}:{target_spec}", "scheme": scheme,
                          "threads": up.hello.threads, "sampled": req.temperature > 0, "twin": served.verdict.verdict,
                          "why": served.verdict.reason, "exact": served.verdict.exact_matches})
            assert served.verdict.passed and served.verdict.exact_matches == req.max_new_tokens, served.verdict.reason
