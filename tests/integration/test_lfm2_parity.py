"""Our export-ready LFM2 against transformers' Lfm2ForCausalLM, loaded from the same HF folder."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from toolchain.model import checkpoint  # noqa: E402
from toolchain.model.config import LAYER_ATTENTION, LAYER_CONV, Lfm2Config  # noqa: E402

CFG = Lfm2Config(vocab_size=320, hidden_size=64, intermediate_size=192, num_attention_heads=4,
                 num_key_value_heads=2,
                 layer_types=(LAYER_CONV, LAYER_ATTENTION, LAYER_CONV, LAYER_CONV, LAYER_ATTENTION, LAYER_ATTENTION),
                 block_multiple_of=32, max_position_embeddings=1024, rope_theta=10000.0)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf-lfm2")
    torch.manual_seed(1234)
    body = {k: v for k, v in CFG.to_hf_dict().items() if k != "architectures"}
    hf = transformers.Lfm2ForCausalLM(transformers.Lfm2Config(**body)).eval()
    with torch.no_grad():  # norms away from 1 and larger weights, so every path matters
        for name, p in hf.named_parameters():
            p.add_(torch.randn_like(p) * (0.2 if "norm" in name else 0.05))
    hf.save_pretrained(folder)
    return folder, hf


def test_checkpoint_layout_is_the_lfm2_one(hf_folder):
    folder, _ = hf_folder
    assert (folder / "config.json").exists() and (folder / "model.safetensors").exists()


def test_prefill_then_decode_matches_transformers(hf_folder):
    folder, hf = hf_folder
    model, source = checkpoint.load(str(folder), max_seq_len=64, all_logits=True)
    assert source.config.layer_types == CFG.layer_types and source.weights_sha256
    tokens = torch.randint(0, CFG.vocab_size, (1, 32), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        reference = hf(tokens).logits  # full causal forward over 32 tokens
        ours = [model(tokens[:, :16], torch.tensor([0]))]  # 16-token prefill
        for i in range(16, 32):  # 16 single-token decode steps
            ours.append(model(tokens[:, i:i + 1], torch.tensor([i])))
    diff = (torch.cat(ours, dim=1) - reference).abs().max().item()
    print(f"max |logit difference| vs transformers: {diff:.2e}")
    assert diff < 1e-4


def test_a_new_sequence_at_position_zero_resets_the_state(hf_folder):
    folder, hf = hf_folder
    model, _ = checkpoint.load(str(folder), max_seq_len=64, all_logits=True)
    a = torch.randint(0, CFG.vocab_size, (1, 12), generator=torch.Generator().manual_seed(6))
    b = torch.randint(0, CFG.vocab_size, (1, 12), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        model(a, torch.tensor([0]))
        model(a[:, :3], torch.tensor([12]))  # leave state behind
        again = model(b, torch.tensor([0]))
        fresh = hf(b).logits
    assert (again - fresh).abs().max().item() < 1e-4


def test_a_folder_edgelm_writes_loads_in_transformers_with_the_same_logits(hf_folder, tmp_path):
    """save_folder is load's inverse in the real layout: what the benchmarks hand to ExecuTorch's and
    llama.cpp's converters is the model edgelm exports."""
    folder, _ = hf_folder
    ours, _ = checkpoint.load(str(folder), max_seq_len=64, all_logits=True)
    with torch.no_grad():
        for p in ours.parameters():  # other weights than the folder's, so a copy of it proves nothing
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.01)
    written = checkpoint.save_folder(ours, tmp_path / "written")
    hf = transformers.Lfm2ForCausalLM.from_pretrained(written).eval()
    tokens = torch.randint(0, CFG.vocab_size, (1, 24), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        diff = (ours(tokens, torch.tensor([0])) - hf(tokens).logits).abs().max().item()
    assert diff < 1e-4, diff
    again, _ = checkpoint.load(str(written), max_seq_len=64, all_logits=True)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), ours.state_dict().values()))
