"""Fidelity beside the verdict: the verdict compares the board with the same program, so a program that
is not the checkpoint's passes it; the board's agreement with the eager fp32 model does not."""

import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from toolchain import api
from toolchain.cli import main
from toolchain.model import checkpoint, tokenizer
from toolchain.validate.judge import teacher_forced
from toolchain.validate.reference import ProgramRunner

pytestmark = pytest.mark.slow

PROMPT = "A wise old owl"


def _greedy_on_program(pte, prompt: list[int], n: int) -> tuple[list[int], list]:
    runner = ProgramRunner(pte)
    tokens = [int(runner.step(prompt, 0).argmax())]
    for i in range(n - 1):
        tokens.append(int(runner.step([tokens[-1]], len(prompt) + i).argmax()))
    return tokens, teacher_forced(ProgramRunner(pte), prompt, tokens)


def test_a_program_made_from_other_weights_passes_as_itself_but_not_as_the_checkpoint(tmp_path):
    src = checkpoint.SHIPPED["fortune"]
    honest, damaged = tmp_path / "honest", tmp_path / "damaged"
    shutil.copytree(src, honest)
    shutil.copytree(src, damaged)
    state = load_file(str(damaged / "model.safetensors"))
    gen = torch.Generator().manual_seed(3)
    for k, v in state.items():  # what a broken quantizer or a wrong conversion could do to every linear
        if v.ndim == 2 and "embed" not in k:
            state[k] = (v.float() + torch.randn(v.shape, generator=gen) * v.float().std() * 0.8).to(v.dtype)
    save_file(state, str(damaged / "model.safetensors"), metadata={"format": "pt"})
    exported = api.export_model(str(damaged), tmp_path / "export", quant="8da8w", max_seq_len=128)
    tok = tokenizer.for_model(honest / "tokenizer.json", 2048)
    prompt = [1, *tok.encode(PROMPT)]
    tokens, logits = _greedy_on_program(exported.pte, prompt, 24)
    as_itself = api.measure_fidelity(str(damaged), prompt, tokens, logits, 0.75)
    as_checkpoint = api.measure_fidelity(str(honest), prompt, tokens, logits, 0.75)
    print(as_itself, as_checkpoint)
    assert as_itself.check == "PASS" and as_itself.mean_kl < 0.1
    assert as_checkpoint.check == "FAIL" and as_checkpoint.mean_kl > 5 * as_itself.mean_kl


def test_run_reports_fidelity_and_drafts_and_the_threshold_can_fail_it(tmp_path):
    work = tmp_path / "work"
    args = ["run", "--board", "host", "--model", "fortune", "--prompt", PROMPT, "--tokens", "24", "--workdir",
            str(work), "--json"]
    ok = CliRunner().invoke(main, [*args, "--min-agreement", "0.5"])
    assert ok.exit_code == 0, ok.output
    report = json.loads(ok.output)
    fid = report["fidelity"]
    assert report["validation"]["verdict"] == "PASS" and report["model"] == "fortune"
    assert fid["tokens"] == len(report["generated_token_ids"]) and fid["check"] == "PASS"
    assert 0.5 <= fid["top1_agreement"] <= 1 and fid["mean_kl"] >= 0
    assert report["board_stats"]["decode_calls"] is not None
    # the same stream against an agreement it cannot reach: a clear failure, exit 7
    strict = CliRunner().invoke(main, [*args, "--min-agreement", "1.0"])
    if fid["top1_agreement"] < 1.0:
        assert strict.exit_code == 7 and json.loads(strict.output)["fidelity"]["check"] == "FAIL"
    else:  # an 8da4w stream that happened to agree everywhere: nothing to fail
        assert strict.exit_code == 0
