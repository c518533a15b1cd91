"""The lowered program against the eager model it came from (fp32 and 8da4w), on the host runtime."""

import json
import subprocess
import sys

import pytest
import torch

from toolchain.export import quantize
from toolchain.model.config import PRESETS
from toolchain.model.presets import build_preset
from toolchain.validate.reference import ProgramRunner

pytestmark = pytest.mark.slow
TOKENS = torch.randint(3, 259, (80,), generator=torch.Generator().manual_seed(11)).tolist()


def _eager(quant: str, max_seq_len: int = 128):
    model = build_preset("tiny", max_seq_len=max_seq_len)
    if quant != "fp32":
        spec = quantize.QuantSpec(linear=quant, embedding="int8")
        quantize.apply(model, quantize.plan(model, spec))
    return model


def test_fp32_program_matches_eager_over_prefill_and_decode(tiny_exports):
    result = tiny_exports("fp32")
    runner = ProgramRunner(result.pte)
    eager = _eager("fp32")
    worst = 0.0
    with torch.no_grad():
        for round_ in range(2):  # the second round starts at position 0 again: state reset
            ref = eager(torch.tensor([TOKENS[:16]]), torch.tensor([0]))[0]
            worst = max(worst, (runner.step(TOKENS[:16], 0) - ref).abs().max().item())
            for pos in range(16, 32):
                ref = eager(torch.tensor([[TOKENS[pos]]]), torch.tensor([pos]))[0]
                worst = max(worst, (runner.step([TOKENS[pos]], pos) - ref).abs().max().item())
    print(f"fp32 .pte vs eager: max |logit difference| {worst:.2e}")
    assert worst < 1e-3


def _greedy_teacher_forced(step, n: int) -> list[int]:
    """Prefill 16 tokens, then feed the fixed sequence one token at a time; argmax after each."""
    picks = [int(step(TOKENS[:16], 0).argmax())]
    for pos in range(16, 16 + n - 1):
        picks.append(int(step([TOKENS[pos]], pos).argmax()))
    return picks


def test_8da4w_program_agrees_with_the_quantized_eager_model(tiny_exports, record_property):
    result = tiny_exports("8da4w")
    runner = ProgramRunner(result.pte)
    eager_q, eager_f = _eager("8da4w"), _eager("fp32")

    def eager_step(model):
        return lambda toks, pos: model(torch.tensor([toks]), torch.tensor([pos]))[0]

    with torch.no_grad():
        pte_picks = _greedy_teacher_forced(runner.step, 64)
        q_picks = _greedy_teacher_forced(eager_step(eager_q), 64)
        f_picks = _greedy_teacher_forced(eager_step(eager_f), 64)
    agree = sum(a == b for a, b in zip(pte_picks, q_picks, strict=True))
    vs_fp32 = sum(a == b for a, b in zip(pte_picks, f_picks, strict=True))
    print(f"8da4w .pte vs 8da4w eager: {agree}/64 greedy tokens agree; 8da4w vs fp32: {vs_fp32}/64 "
          "(depends on the weights: random ones give flat logits)")
    record_property("8da4w_pte_vs_eager", f"{agree}/64")
    record_property("8da4w_vs_fp32", f"{vs_fp32}/64")
    assert agree >= 61  # >= 95% of 64
    assert len(set(q_picks)) > 8  # the model's choices vary: agreement is not a constant echo


def test_manifest_accounts_for_every_linear_and_delegation(tiny_exports):
    m = tiny_exports("8da4w").manifest
    cfg = PRESETS["tiny"]
    q = m["quantization"]
    # 4 linears per conv layer (B, C, x, out), 4 per attention layer (q, k, v, out), 3 per FFN, + lm_head
    expected = 4 * len(cfg.conv_layers) + 4 * len(cfg.attention_layers) + 3 * cfg.num_layers + 1
    assert q["linear_layers"] == expected == q["linear_layers_quantized"]
    assert q["lm_head"].startswith("untied")
    d = m["delegation"]
    assert d["decoder_layers_fully_delegated"] is True
    assert all(layer["compute_fully_delegated"] for layer in d["layers"])
    assert d["non_delegated_ops"]["aten.index_put.default"]["count"] == 2 * len(cfg.attention_layers)
    assert m["tokens"]["bos_token_id"] == 1 and m["tokens"]["eos_token_ids"] == [2]
    assert m["versions"]["executorch"] == "1.5.1"


def test_cli_export_json_and_inspect(tmp_path):
    out = tmp_path / "o"
    proc = subprocess.run([sys.executable, "-m", "toolchain.cli", "export", "--model", "tiny", "--quant", "8da8w",
                           "--max-seq-len", "64", "--out", str(out), "--json"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["quantization"].startswith("8da8w") and summary["max_seq_len"] == 64
    assert summary["linear_layers_quantized"] == summary["linear_layers"]
    proc = subprocess.run([sys.executable, "-m", "toolchain.cli", "inspect", str(out / "model.pte"), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["program"]["sha256"] == summary["sha256"]
    proc = subprocess.run([sys.executable, "-m", "toolchain.cli", "inspect", str(out / "model.pte")],
                          capture_output=True, text=True, timeout=120)
    assert "verified" in proc.stdout and "fully delegated" in proc.stdout


def test_run_with_pte_refuses_another_models_program_another_quant_and_a_damaged_one(tiny_exports, tmp_path):
    """`edgelm run --pte`: the program is served only if its manifest verifies and names --model."""
    import shutil

    from click.testing import CliRunner

    from toolchain.cli import main

    src = tiny_exports("8da4w").pte
    work = str(tmp_path / "work")

    def run(*args):
        r = CliRunner().invoke(main, ["run", "--board", "host", "--workdir", work, *args])
        lines = [x for x in r.output.splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), r.output
        return r.exit_code, lines[0]

    code, line = run("--model", "lfm2-350m", "--pte", str(src))
    assert code == 2 and "was exported from 'tiny', not --model lfm2-350m" in line
    code, line = run("--model", "tiny", "--pte", str(src), "--quant", "fp32")
    assert code == 2 and "is 8da4w, not --quant fp32" in line
    code, line = run("--model", "tiny", "--pte", str(src), "--draft-model", "tiny")
    assert code == 2 and "carries no draft model, not --draft-model tiny" in line
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(src, bad / src.name)
    shutil.copy(src.parent / "manifest.json", bad / "manifest.json")
    data = bytearray((bad / src.name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / src.name).write_bytes(bytes(data))
    code, line = run("--model", "tiny", "--pte", str(bad / src.name))
    assert code == 3 and "sha256" in line.lower()


@pytest.mark.parametrize("kv_heads", [1, 2], ids=["one KV head (multi-query)", "grouped"])
def test_a_program_with_one_kv_head_writes_its_cache_in_place(kv_heads):
    """Python's index assignment strips a value's leading size-1 dims: with one KV head the cache write
    reached the in-place index_put kernel as a rank-2 value and every call failed (error 0x12)."""
    from toolchain.export import lower
    from toolchain.model.config import LAYER_ATTENTION, LAYER_CONV, Lfm2Config
    from toolchain.model.lfm2 import Lfm2Model

    cfg = Lfm2Config(vocab_size=259, hidden_size=64, intermediate_size=96, num_attention_heads=2,
                     num_key_value_heads=kv_heads, layer_types=(LAYER_CONV, LAYER_ATTENTION), block_multiple_of=32,
                     max_position_embeddings=1024, rope_theta=10000.0)
    torch.manual_seed(0)
    eager = Lfm2Model(cfg, max_seq_len=64).eval()
    runner = ProgramRunner(lower.to_program_bytes(lower.lower(lower.export(eager))))
    with torch.no_grad():
        ref = eager(torch.tensor([TOKENS[:9]]), torch.tensor([0]))[0]
        assert (runner.step(TOKENS[:9], 0) - ref).abs().max().item() < 1e-4
        for pos in range(9, 14):
            ref = eager(torch.tensor([[TOKENS[pos]]]), torch.tensor([pos]))[0]
            assert (runner.step([TOKENS[pos]], pos) - ref).abs().max().item() < 1e-4
