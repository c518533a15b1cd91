"""Bad checkpoint folders end in one clear error, through the library and through the CLI."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from toolchain.errors import InputError
from toolchain.model import checkpoint
from toolchain.model.config import PRESETS
from toolchain.model.lfm2 import build_model


@pytest.fixture()
def good_folder(tmp_path):
    return checkpoint.save_folder(build_model(PRESETS["tiny"], max_seq_len=32, seed=3), tmp_path)


def test_a_good_folder_loads_and_equals_the_model_it_came_from(good_folder):
    model, source = checkpoint.load(str(good_folder), max_seq_len=32)
    ref = build_model(PRESETS["tiny"], max_seq_len=32, seed=3)
    tokens = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        assert torch.equal(model(tokens, torch.tensor([0])), ref(tokens, torch.tensor([0])))
    assert source.kind == "folder" and len(source.weights_sha256) == 64


def test_truncated_safetensors(good_folder):
    f = good_folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(InputError, match="corrupt or truncated"):
        checkpoint.load(str(good_folder), max_seq_len=32)


def test_wrong_shape(good_folder):
    cfg = dict(PRESETS["tiny"].to_hf_dict(), intermediate_size=288)
    (good_folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match=r"feed_forward\.w1\.weight has shape \[128, 64\].*\[192, 64\]"):
        checkpoint.load(str(good_folder), max_seq_len=32)


def test_missing_tensor(good_folder):
    from safetensors.torch import load_file
    state = load_file(str(good_folder / "model.safetensors"))
    del state["model.embedding_norm.weight"]
    save_file(state, str(good_folder / "model.safetensors"))
    with pytest.raises(InputError, match="lacks tensor model.embedding_norm.weight"):
        checkpoint.load(str(good_folder), max_seq_len=32)


def test_generation_config_eos_wins(good_folder):
    (good_folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 5]}))
    source = checkpoint.inspect_folder(good_folder)
    assert source.eos_token_ids == (2, 5) and source.config.eos_token_id == 2


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "toolchain.cli", *args], capture_output=True, text=True,
                          timeout=600)


def _one_error_line(proc, code, needle):
    assert proc.returncode == code, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, proc.stderr  # one line, no traceback, no library noise
    assert lines[0].startswith("error:") and needle in lines[0], lines[0]


def test_cli_corrupt_safetensors(good_folder, tmp_path):
    f = good_folder / "model.safetensors"
    f.write_bytes(b"\x00" * 64)
    _one_error_line(_cli("export", "--model", str(good_folder), "--out", str(tmp_path / "o")), 3,
                    "model.safetensors is corrupt or truncated")


def test_cli_config_of_another_architecture(good_folder, tmp_path):
    (good_folder / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"],
                                                         "vocab_size": 32000, "hidden_size": 4096}))
    _one_error_line(_cli("export", "--model", str(good_folder), "--out", str(tmp_path / "o")), 3,
                    "describes a 'llama' model, not LFM2")


def test_cli_group_size_that_does_not_divide(tmp_path):
    _one_error_line(_cli("export", "--model", "tiny", "--group-size", "48", "--out", str(tmp_path / "o")), 2,
                    "--group-size 48 does not divide the input width")


def test_cli_unknown_model(tmp_path):
    _one_error_line(_cli("export", "--model", "no-such-model", "--out", str(tmp_path / "o")), 3,
                    "neither a preset")


def test_cli_inspect_of_a_text_file(tmp_path):
    bogus = tmp_path / "model.pte"
    bogus.write_text("not a program")
    _one_error_line(_cli("inspect", str(bogus)), 3, "not an ExecuTorch program")


def test_cli_run_of_a_folder_without_tokenizer_json_is_refused_before_any_work(good_folder, tmp_path):
    """Without tokenizer.json the prompt would go out as byte ids and a real model would answer nonsense
    that still validates: say so, unless asked for (--byte-tokenizer)."""
    work = tmp_path / "work"
    proc = _cli("run", "--board", "host", "--model", str(good_folder), "--workdir", str(work))
    _one_error_line(proc, 3, "has no tokenizer.json")
    assert "--byte-tokenizer" in proc.stderr
    assert not (work / "exports").exists()
