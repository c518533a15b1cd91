"""The LFM2 architecture as a frozen, validated value, read from a Hugging Face ``config.json``.

Hugging Face's LiquidAI checkpoints spell some fields two ways (``block_ff_dim`` and
``intermediate_size``, ``tie_embedding`` and ``tie_word_embeddings``, ``rope_theta`` and
``rope_parameters.rope_theta``, ``full_attn_idxs`` and ``layer_types``); :func:`from_hf_dict`
accepts both, the same way ``transformers``' ``Lfm2Config`` does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from toolchain.errors import InputError

LAYER_CONV = "conv"
LAYER_ATTENTION = "full_attention"
LAYER_TYPES = (LAYER_CONV, LAYER_ATTENTION)
SUPPORTED_MODEL_TYPES = ("lfm2",)
SUPPORTED_ARCHITECTURES = ("Lfm2ForCausalLM",)


@dataclass(frozen=True)
class Lfm2Config:
    """Shapes of an LFM2 / LFM2.5 decoder. Units: counts of elements unless named otherwise."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int  # before the auto-adjust rule; see ff_dim
    num_attention_heads: int
    num_key_value_heads: int
    layer_types: tuple[str, ...]
    conv_L_cache: int = 3
    conv_bias: bool = False
    norm_eps: float = 1e-5
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 128_000
    block_auto_adjust_ff_dim: bool = True
    block_ffn_dim_multiplier: float | None = 1.0
    block_multiple_of: int = 256
    tie_word_embeddings: bool = True
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads",
                     "num_key_value_heads", "conv_L_cache", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise InputError(f"config field {name}={value!r} must be a positive integer")
        if not self.layer_types:
            raise InputError("config field layer_types is empty: an LFM2 model needs at least one layer")
        bad = [t for t in self.layer_types if t not in LAYER_TYPES]
        if bad:
            raise InputError(f"config field layer_types has {bad[0]!r}; allowed: {', '.join(LAYER_TYPES)}")
        if self.hidden_size % self.num_attention_heads:
            raise InputError(f"config: hidden_size={self.hidden_size} is not divisible by "
                             f"num_attention_heads={self.num_attention_heads}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise InputError(f"config: num_attention_heads={self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads={self.num_key_value_heads}")
        if self.head_dim % 2:
            raise InputError(f"config: head_dim={self.head_dim} must be even for rotary embeddings")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if not 0 <= value < self.vocab_size:
                raise InputError(f"config field {name}={value} is outside the vocabulary [0, {self.vocab_size})")

    # Derived shapes -------------------------------------------------------------------------

    @property
    def num_layers(self) -> int:
        return len(self.layer_types)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def ff_dim(self) -> int:
        """Feed-forward width after LFM2's auto-adjust rule (as in ``transformers``' Lfm2MLP)."""
        dim = self.intermediate_size
        if self.block_auto_adjust_ff_dim:
            dim = int(2 * dim / 3)
            if self.block_ffn_dim_multiplier is not None:
                dim = int(self.block_ffn_dim_multiplier * dim)
                dim = self.block_multiple_of * ((dim + self.block_multiple_of - 1) // self.block_multiple_of)
        return dim

    @property
    def attention_layers(self) -> tuple[int, ...]:
        return tuple(i for i, t in enumerate(self.layer_types) if t == LAYER_ATTENTION)

    @property
    def conv_layers(self) -> tuple[int, ...]:
        return tuple(i for i, t in enumerate(self.layer_types) if t == LAYER_CONV)

    def num_parameters(self) -> int:
        """Parameter count with the output projection tied (as stored in the checkpoint)."""
        h, f, kv = self.hidden_size, self.ff_dim, self.num_key_value_heads * self.head_dim
        per_ffn = 3 * h * f + 2 * h
        conv = 3 * h * h + h * self.conv_L_cache + h * h + (4 * h + h if self.conv_bias else 0)
        attn = 2 * h * h + 2 * h * kv + 2 * self.head_dim
        total = self.vocab_size * h + h
        total += sum(per_ffn + (conv if t == LAYER_CONV else attn) for t in self.layer_types)
        if not self.tie_word_embeddings:
            total += self.vocab_size * h
        return total

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layer_types"] = list(self.layer_types)
        return d

    def to_hf_dict(self) -> dict[str, Any]:
        """A ``config.json`` body that ``transformers`` reads as an ``Lfm2Config``."""
        d = self.to_dict()
        d.update(architectures=list(SUPPORTED_ARCHITECTURES), model_type="lfm2",
                 num_hidden_layers=self.num_layers, rope_parameters={"rope_type": "default",
                                                                     "rope_theta": self.rope_theta})
        del d["rope_theta"]
        return d


def _first(raw: dict[str, Any], *names: str, default: Any = None) -> Any:
    for name in names:
        if name in raw and raw[name] is not None:
            return raw[name]
    return default


def _int_id(value: Any, name: str) -> int:
    if isinstance(value, list):  # generation configs may list several EOS ids; the first is the primary
        if not value:
            raise InputError(f"config field {name} is an empty list")
        value = value[0]
    if not isinstance(value, int) or isinstance(value, bool):
        raise InputError(f"config field {name}={value!r} must be an integer token id")
    return value


def from_hf_dict(raw: dict[str, Any], source: str = "config.json") -> Lfm2Config:
    """Validate a Hugging Face config dict and turn it into an :class:`Lfm2Config`.

    Raises :class:`InputError` naming the field when the dict does not describe an LFM2 model.
    """
    if not isinstance(raw, dict):
        raise InputError(f"{source} is not a JSON object")
    model_type = raw.get("model_type")
    archs = raw.get("architectures") or []
    if model_type not in SUPPORTED_MODEL_TYPES and not set(archs) & set(SUPPORTED_ARCHITECTURES):
        found = model_type or (archs[0] if archs else "nothing")
        raise InputError(
            f"{source} describes a {found!r} model, not LFM2 (model_type must be one of "
            f"{', '.join(SUPPORTED_MODEL_TYPES)})",
            hint="edgelm exports LiquidAI LFM2 / LFM2.5 text decoders (Lfm2ForCausalLM)")
    required = {"vocab_size": ("vocab_size",), "hidden_size": ("hidden_size", "block_dim"),
                "num_attention_heads": ("num_attention_heads", "num_heads"),
                "intermediate_size": ("block_ff_dim", "intermediate_size")}
    values: dict[str, Any] = {}
    for field, names in required.items():
        value = _first(raw, *names)
        if value is None:
            raise InputError(f"{source} lacks {' / '.join(names)}, which an LFM2 config needs")
        values[field] = value
    values["num_key_value_heads"] = _first(raw, "num_key_value_heads", default=values["num_attention_heads"])
    layer_types = raw.get("layer_types")
    if layer_types is None:
        n = _first(raw, "num_hidden_layers")
        if n is None:
            raise InputError(f"{source} lacks layer_types and num_hidden_layers")
        full = _first(raw, "full_attn_idxs", default=list(range(n)))
        layer_types = [LAYER_ATTENTION if i in full else LAYER_CONV for i in range(n)]
    elif "num_hidden_layers" in raw and raw["num_hidden_layers"] != len(layer_types):
        raise InputError(f"{source}: num_hidden_layers={raw['num_hidden_layers']} but layer_types has "
                         f"{len(layer_types)} entries")
    rope = raw.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise InputError(f"{source}: rope_type {rope['rope_type']!r} is not supported (only 'default')")
    mult = raw.get("block_ffn_dim_multiplier", 1.0)
    try:
        return Lfm2Config(
            vocab_size=values["vocab_size"], hidden_size=values["hidden_size"],
            intermediate_size=values["intermediate_size"],
            num_attention_heads=values["num_attention_heads"],
            num_key_value_heads=values["num_key_value_heads"], layer_types=tuple(layer_types),
            conv_L_cache=_first(raw, "conv_L_cache", "conv_l_cache", default=3),
            conv_bias=bool(raw.get("conv_bias", False)),
            norm_eps=float(_first(raw, "norm_eps", "block_norm_eps", default=1e-5)),
            rope_theta=float(_first(rope, "rope_theta", default=None) or _first(raw, "rope_theta", "theta",
                                                                               default=1_000_000.0)),
            max_position_embeddings=_first(raw, "max_position_embeddings", default=128_000),
            block_auto_adjust_ff_dim=bool(raw.get("block_auto_adjust_ff_dim", True)),
            block_ffn_dim_multiplier=None if mult is None else float(mult),
            block_multiple_of=int(raw.get("block_multiple_of", 256)),
            tie_word_embeddings=bool(_first(raw, "tie_word_embeddings", "tie_embedding", default=True)),
            bos_token_id=_int_id(raw.get("bos_token_id", 1), "bos_token_id"),
            eos_token_id=_int_id(raw.get("eos_token_id", 2), "eos_token_id"),
            pad_token_id=_int_id(raw.get("pad_token_id", 0) if raw.get("pad_token_id") is not None else 0,
                                 "pad_token_id"),
        )
    except (TypeError, ValueError) as exc:
        raise InputError(f"{source}: {exc}") from exc


# Built-in presets: real architectures with random weights (dry runs, benchmarks) and a tiny one
# with the same block types (tests, the demo). Attention layer positions follow LFM2-350M.
_LFM2_350M_LAYERS = tuple(LAYER_ATTENTION if i in (2, 5, 8, 10, 12, 14) else LAYER_CONV for i in range(16))

PRESETS: dict[str, Lfm2Config] = {
    "lfm2-350m": Lfm2Config(vocab_size=65536, hidden_size=1024, intermediate_size=6656,
                            num_attention_heads=16, num_key_value_heads=8, layer_types=_LFM2_350M_LAYERS,
                            max_position_embeddings=128_000, bos_token_id=1, eos_token_id=7),
    "lfm2.5-350m": Lfm2Config(vocab_size=65536, hidden_size=1024, intermediate_size=6656,
                              num_attention_heads=16, num_key_value_heads=8, layer_types=_LFM2_350M_LAYERS,
                              max_position_embeddings=32_768, bos_token_id=1, eos_token_id=7),
    # 256 byte tokens + 3 specials (pad=0 shifted: see tokenizer.ByteTokenizer). hidden=64 is not a
    # multiple of 48, which keeps the "--group-size 48" error path exercised.
    "tiny": Lfm2Config(vocab_size=259, hidden_size=64, intermediate_size=192, num_attention_heads=4,
                       num_key_value_heads=2,
                       layer_types=(LAYER_CONV, LAYER_ATTENTION, LAYER_CONV, LAYER_ATTENTION),
                       block_multiple_of=32, max_position_embeddings=4096,
                       bos_token_id=1, eos_token_id=2, pad_token_id=0),
}
PRESET_SEEDS = {"lfm2-350m": 350, "lfm2.5-350m": 3505, "tiny": 7}
# Weight scale of the random presets. The 350M ones use the usual 0.02; tiny uses 0.1 so that its
# greedy output wanders over the vocabulary instead of echoing the last input byte, which makes
# token-by-token validation meaningful.
PRESET_INIT_STD = {"lfm2-350m": 0.02, "lfm2.5-350m": 0.02, "tiny": 0.1}
