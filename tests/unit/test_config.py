"""Config parsing and the LFM2 shape rules (no torch needed)."""

import pytest

from toolchain.errors import InputError
from toolchain.model.config import LAYER_ATTENTION, LAYER_CONV, PRESETS, from_hf_dict

LFM2_350M_HF = {  # the field spellings of LiquidAI/LFM2-350M's config.json
    "architectures": ["Lfm2ForCausalLM"], "model_type": "lfm2", "block_auto_adjust_ff_dim": True,
    "block_dim": 1024, "block_ff_dim": 6656, "block_ffn_dim_multiplier": 1.0, "block_multiple_of": 256,
    "block_norm_eps": 1e-05, "bos_token_id": 1, "conv_L_cache": 3, "conv_bias": False, "eos_token_id": 7,
    "hidden_size": 1024, "intermediate_size": 6656, "max_position_embeddings": 128000, "norm_eps": 1e-05,
    "num_attention_heads": 16, "num_heads": 16, "num_hidden_layers": 16, "num_key_value_heads": 8,
    "pad_token_id": 0, "rope_theta": 1000000.0, "tie_embedding": True, "vocab_size": 65536,
    "full_attn_idxs": [2, 5, 8, 10, 12, 14],
}


def test_hf_config_of_lfm2_350m_matches_the_preset():
    cfg = from_hf_dict(LFM2_350M_HF)
    assert cfg == PRESETS["lfm2-350m"]
    assert cfg.ff_dim == 4608  # int(2*6656/3)=4437, rounded up to a multiple of 256
    assert cfg.attention_layers == (2, 5, 8, 10, 12, 14)
    assert cfg.head_dim == 64


def test_parameter_count_of_lfm2_350m_is_about_354m():
    assert 350e6 < PRESETS["lfm2-350m"].num_parameters() < 360e6


def test_ff_dim_without_multiplier_skips_the_rounding():
    raw = dict(LFM2_350M_HF, block_ffn_dim_multiplier=None)
    assert from_hf_dict(raw).ff_dim == 4437


def test_layer_types_win_over_full_attn_idxs():
    raw = dict(LFM2_350M_HF, layer_types=[LAYER_CONV, LAYER_ATTENTION], num_hidden_layers=2)
    assert from_hf_dict(raw).layer_types == (LAYER_CONV, LAYER_ATTENTION)


def test_rope_parameters_spelling_of_transformers_5():
    raw = dict(LFM2_350M_HF)
    del raw["rope_theta"]
    raw["rope_parameters"] = {"rope_type": "default", "rope_theta": 5e5}
    assert from_hf_dict(raw).rope_theta == 5e5


@pytest.mark.parametrize("change, message", [
    ({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, "'llama' model, not LFM2"),
    ({"num_key_value_heads": 5}, "not a multiple of num_key_value_heads"),
    ({"layer_types": ["conv", "mamba"], "num_hidden_layers": 2}, "'mamba'"),
    ({"vocab_size": 0}, "vocab_size=0"),
    ({"eos_token_id": 70000}, "outside the vocabulary"),
    ({"num_hidden_layers": 3, "layer_types": ["conv"]}, "num_hidden_layers=3"),
])
def test_bad_configs_name_the_problem(change, message):
    with pytest.raises(InputError, match=message):
        from_hf_dict(dict(LFM2_350M_HF, **change))


def test_missing_required_field():
    raw = dict(LFM2_350M_HF)
    del raw["vocab_size"]
    with pytest.raises(InputError, match="lacks vocab_size"):
        from_hf_dict(raw)


def test_round_trip_through_hf_dict():
    for cfg in PRESETS.values():
        assert from_hf_dict(cfg.to_hf_dict()) == cfg


def test_tiny_preset_keeps_the_group_size_48_error_path():
    tiny = PRESETS["tiny"]
    assert tiny.hidden_size % 48 and tiny.hidden_size % 32 == 0 and tiny.ff_dim % 32 == 0
    assert len(tiny.attention_layers) >= 2 and len(tiny.conv_layers) >= 2
