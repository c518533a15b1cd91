"""The one set of weights and prompts every engine of the benchmark gets.

``lfm2-350m`` with its seeded random weights (the preset edgelm exports) is written once as a
Hugging Face folder (``config.json``, ``model.safetensors``) for ExecuTorch's and llama.cpp's
converters, with a tokenizer that both can load and that gives the prompt the same ids edgelm's
byte tokenizer does: id = byte + 3 (0 pad, 1 BOS, 2 EOS), a byte-level BPE (one merge, of two
bytes UTF-8 never has), the other ids past the bytes named ``<xN>`` so that any generated id
decodes. ExecuTorch's export also needs the params file its LFM2 model class reads (the wheel
ships none for 350M).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PROMPT_TEXT = ("The small board on the desk waited for a model to arrive over the wire, and when it came the "
               "board read every weight, checked every length and began to speak, one token at a time, while "
               "the host listened and compared each word with its own.")
BOS, BYTE_OFFSET = 1, 3
SPECIAL = {0: "<|pad|>", 1: "<|startoftext|>", 2: "<|im_end|>"}


def prompt_ids(n: int) -> list[int]:
    """BOS and the first n-1 bytes of PROMPT_TEXT, as edgelm's byte tokenizer numbers them."""
    text = prompt_text(n)
    return [BOS, *(b + BYTE_OFFSET for b in text.encode())]


def prompt_text(n: int) -> str:
    if n - 1 > len(PROMPT_TEXT):
        raise ValueError(f"a {n}-token prompt needs {n - 1} characters; the text has {len(PROMPT_TEXT)}")
    return PROMPT_TEXT[:n - 1]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map (what a ByteLevel pre-tokenizer emits)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def tokenizer_json(vocab_size: int) -> dict[str, Any]:
    chars = _bytes_to_unicode()
    vocab = {name: i for i, name in SPECIAL.items()}
    for b, ch in chars.items():
        vocab[ch] = b + BYTE_OFFSET
    # llama.cpp refuses a BPE vocabulary without merges: one merge of two bytes that never occur
    # in UTF-8 text (0xF5, 0xF6), so no prompt is tokenized differently because of it.
    merge = (chars[0xF5], chars[0xF6])
    vocab["".join(merge)] = BYTE_OFFSET + 256
    for i in range(BYTE_OFFSET + 257, vocab_size):
        vocab[f"<x{i}>"] = i
    added = [{"id": i, "content": name, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, name in SPECIAL.items()]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": [" ".join(merge)]},
    }


def executorch_params(cfg: Any) -> dict[str, Any]:
    """The params file of ExecuTorch's LFM2 model class, from edgelm's config of the same model."""
    return {"dim": cfg.hidden_size, "ffn_dim_multiplier": 1, "hidden_dim": cfg.ff_dim,
            "n_heads": cfg.num_attention_heads, "n_kv_heads": cfg.num_key_value_heads, "n_layers": cfg.num_layers,
            "norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta, "use_scaled_rope": False,
            "vocab_size": cfg.vocab_size, "use_hf_rope": True, "use_qk_norm": True, "qk_norm_before_rope": True,
            "layer_types": list(cfg.layer_types)}


def write(folder: Path, model: str = "lfm2-350m") -> dict[str, Path]:
    """The HF folder, tokenizer and ExecuTorch params for ``model`` (a preset), written once."""
    from toolchain.model import checkpoint
    from toolchain.model.presets import build_preset

    folder = folder.resolve()
    done = folder / "done.json"
    files = {"hf": folder / "hf", "tokenizer": folder / "hf" / "tokenizer.json", "params": folder / "et_params.json"}
    if done.exists() and json.loads(done.read_text()).get("model") == model:
        return files
    net = build_preset(model, max_seq_len=8)
    hf = checkpoint.save_folder(net, files["hf"])
    config = json.loads((hf / "config.json").read_text())
    config.setdefault("rope_theta", net.config.rope_theta)  # llama.cpp's converter reads the top-level key
    (hf / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    files["tokenizer"].write_text(json.dumps(tokenizer_json(net.config.vocab_size)))
    (hf / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": SPECIAL[1], "eos_token": SPECIAL[2],
        "pad_token": SPECIAL[0], "model_max_length": 4096}))
    files["params"].write_text(json.dumps(executorch_params(net.config), indent=2) + "\n")
    done.write_text(json.dumps({"model": model}))
    return files
