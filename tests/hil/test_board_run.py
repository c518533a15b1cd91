"""The main job on a board in the loop: tokens streamed over the serial link, validated on the host."""

import pytest
import torch

from toolchain import api
from toolchain.validate.reference import ProgramRunner

pytestmark = [pytest.mark.hil, pytest.mark.slow]
PROMPT = "Once upon a time"
N_TOKENS = 64


@pytest.fixture(scope="session")
def greedy_report(hil_board, hil_workdir):
    req = api.RunRequest(board=hil_board.board, target=hil_board.target, model="tiny", prompt=PROMPT,
                         tokens=N_TOKENS, ignore_eos=True, workdir=hil_workdir)
    return api.run_job(req).to_dict()


def _free_running_reference(pte, prompt_ids, n):
    """Greedy generation on the host from the same program, independent of the board's tokens."""
    runner = ProgramRunner(pte)
    logits = runner.step(prompt_ids, 0)
    out = []
    for i in range(n):
        out.append(int(torch.argmax(logits)))
        if i + 1 < n:
            logits = runner.step([out[-1]], len(prompt_ids) + i)
    return out


def test_the_board_passes_validation(greedy_report, hil_board):
    r = greedy_report
    v = r["validation"]
    print(f"\n{hil_board}: {v['exact_matches']}/{v['generated']} exact, near-ties {v['near_ties']}, "
          f"decode {r['board_stats']['decode_tok_s']:.1f} tok/s, TTFT {r['board_stats']['ttft_ms']:.1f} ms; "
          f"text {r['text']!r}")
    assert v["verdict"] == "PASS", v["reason"]
    assert len(r["generated_token_ids"]) == N_TOKENS and r["stop_reason"] == "max tokens"
    assert r["board"] == hil_board.board and r["target"] == hil_board.target
    assert r["emulated"] == (hil_board.target == "qemu")
    # judged by its twin, bit for bit; the drift from this machine's run is measured beside, and small
    assert v["rule"] == "twin" and v["exact_matches"] == N_TOKENS
    assert len(v["drift_by_position"]) == N_TOKENS and max(v["drift_by_position"]) <= v["tolerance"]


def test_tokens_equal_the_host_reference_until_any_near_tie(greedy_report):
    r = greedy_report
    ref = _free_running_reference(r["pte"], r["prompt_token_ids"], N_TOKENS)
    ties = r["validation"]["near_ties"]
    upto = ties[0] if ties else N_TOKENS
    assert r["generated_token_ids"][:upto] == ref[:upto]
    assert upto >= 1


def test_the_tiny_model_tells_its_story(greedy_report):
    # the tiny preset is trained on a short text; greedy decoding continues it
    assert greedy_report["text"].startswith(", a small board sat on a desk")


def test_board_side_timings_are_reported(greedy_report):
    s = greedy_report["board_stats"]
    assert s["ttft_ms"] > 0 and s["decode_tok_s"] > 0 and s["prefill_tok_s"] > 0 and s["peak_rss_kb"] > 0
    assert s["load_ms"] > 0


def test_a_second_run_reuses_export_and_build(greedy_report, hil_board, hil_workdir):
    req = api.RunRequest(board=hil_board.board, target=hil_board.target, model="tiny", prompt=PROMPT, tokens=8,
                         workdir=hil_workdir)
    again = api.run_job(req).to_dict()
    assert again["reused"] == {"export": True, "build": True}
    assert again["generated_token_ids"] == greedy_report["generated_token_ids"][:8]


@pytest.mark.parametrize("quant", ["fp32", "8da8w", "8da4w"])
def test_every_scheme_passes_on_the_board(hil_board, hil_workdir, quant):
    """Every linear scheme's program (caches written in place, attention bounded by key_positions)
    validates against the host reference on the board, emulated ones included."""
    req = api.RunRequest(board=hil_board.board, target=hil_board.target, model="tiny", prompt=PROMPT, tokens=24,
                         quant=quant, ignore_eos=True, workdir=hil_workdir)
    r = api.run_job(req).to_dict()
    assert r["validation"]["verdict"] == "PASS", r["validation"]["reason"]
    assert r["quant"] == quant and len(r["generated_token_ids"]) == 24


def test_the_shipped_model_speaks_on_the_board(hil_board, hil_workdir, record_property):
    """`fortune` (real, peaked distributions): each board stream validates with its measured drift, each
    of three prompts gets its own continuation in English, and the agreement with fp32 is reported."""
    texts = {}
    for prompt in ("A wise old owl", "My computer", "The meaning of life is"):
        req = api.RunRequest(board=hil_board.board, target=hil_board.target, model="fortune", prompt=prompt,
                             tokens=48, workdir=hil_workdir)
        r = api.run_job(req).to_dict()
        v, fid = r["validation"], r["fidelity"]
        print(f"\n{hil_board} {prompt!r} -> {r['text']!r}: {v['exact_matches']}/{v['generated']} exact, "
              f"near-ties {v['near_ties']}, drift max {v['drift_max']:.3g}; fp32 top-1 {fid['top1_agreement']:.2f}, "
              f"KL {fid['mean_kl']:.4f}; drafts {r['board_stats']['accepted']}/{r['board_stats']['drafted']}")
        assert v["verdict"] == "PASS", v["reason"]
        assert len(r["text"].split()) >= 3
        assert fid["tokens"] == len(r["generated_token_ids"]) and fid["top1_agreement"] >= 0.5
        texts[prompt] = r["text"]
    record_property("texts", texts)
    assert len(set(texts.values())) == 3


def test_the_shipped_model_drafts_with_its_draft_model_on_the_board(hil_board, hil_workdir):
    """fortune with fortune-draft in the program (8da8w, what `make demo` runs): the board drafts with the
    draft method, the stream validates unchanged, and the tokens are those of decoding without drafts."""
    runs = {}
    for draft in (True, False):
        req = api.RunRequest(board=hil_board.board, target=hil_board.target, model="fortune", quant="8da8w",
                             prompt="A wise old owl", tokens=64, ignore_eos=True, draft_model="fortune-draft",
                             draft=draft, fidelity=False, workdir=hil_workdir)
        runs[draft] = api.run_job(req).to_dict()
        assert runs[draft]["validation"]["verdict"] == "PASS", runs[draft]["validation"]["reason"]
    s = runs[True]["board_stats"]
    print(f"\n{hil_board}: {s['accepted']}/{s['drafted']} draft tokens accepted, {s['decode_calls']} calls, "
          f"{s['draft_model_calls']} draft-model calls")
    assert s["draft_model_calls"] > 0 and s["accepted"] > 0 and s["decode_calls"] < 63
    assert runs[False]["board_stats"]["decode_calls"] == 63 and runs[False]["board_stats"]["drafted"] == 0
    assert runs[True]["generated_token_ids"] == runs[False]["generated_token_ids"]
