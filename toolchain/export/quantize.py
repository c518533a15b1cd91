"""Quantization with torchao, planned first (pure, every layer accounted for), then applied.

Linear layers: ``fp32`` | ``8da8w`` (int8 per-channel weights) | ``8da4w`` (int4 weights in groups
of ``group_size`` along the input width); activations are quantized to int8 dynamically per token
(torchao's ``Int8DynamicActivationIntxWeightConfig``, which XNNPACK lowers to its QD8 kernels).

Embedding: ``none`` | ``int8`` (per row) | ``int4`` (groups of ``group_size``). torchao's
``IntxWeightOnlyConfig`` computes the integer data and scales; the table is then served by
ExecuTorch's ``quantized_decomposed::embedding_byte`` / ``embedding_4bit`` kernels, which gather
and dequantize only the rows asked for (dequantizing the whole table every token would cost
vocab x hidden floats per step).

The tied output projection: LFM2 ties ``lm_head`` to the embedding. A quantized embedding cannot
serve a matmul, so whenever either side is quantized, ``lm_head`` is untied into its own linear
layer (quantized like the other linears) and the manifest says so and what it costs.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from toolchain import logs
from toolchain.errors import UsageError
from toolchain.model.lfm2 import Lfm2Model

log = logging.getLogger(__name__)
logs.quiet_torch()

LINEAR_SCHEMES = ("fp32", "8da8w", "8da4w")
EMBEDDING_SCHEMES = ("none", "int8", "int4")
DEFAULT_GROUP_SIZE = 32


@dataclass(frozen=True)
class QuantSpec:
    linear: str = "8da4w"
    group_size: int = DEFAULT_GROUP_SIZE
    embedding: str = "int8"

    def __post_init__(self) -> None:
        if self.linear not in LINEAR_SCHEMES:
            raise UsageError(f"--quant {self.linear!r} is unknown; choose one of {', '.join(LINEAR_SCHEMES)}")
        if self.embedding not in EMBEDDING_SCHEMES:
            raise UsageError(f"--embedding {self.embedding!r} is unknown; choose one of "
                             f"{', '.join(EMBEDDING_SCHEMES)}")
        if self.group_size <= 0 or self.group_size % 2:
            raise UsageError(f"--group-size {self.group_size} must be a positive even number")

    @property
    def name(self) -> str:
        parts = [self.linear]
        if self.linear == "8da4w":
            parts.append(f"g{self.group_size}")
        parts.append(f"emb-{self.embedding}")
        return "-".join(parts)


@dataclass(frozen=True)
class LayerQuant:
    """How one weight-bearing layer is stored in the program."""

    name: str
    kind: str  # linear | embedding | conv
    shape: tuple[int, ...]
    scheme: str
    note: str = ""


@dataclass
class QuantPlan:
    spec: QuantSpec
    layers: list[LayerQuant] = field(default_factory=list)
    untie_lm_head: bool = False

    def to_dict(self) -> dict:
        linears = [x for x in self.layers if x.kind == "linear"]
        return {
            "scheme": self.spec.name,
            "linear": self.spec.linear,
            "group_size": self.spec.group_size if self.spec.linear == "8da4w" else None,
            "embedding": self.spec.embedding,
            "lm_head": ("untied: stored as its own " + self.spec.linear + " linear" if self.untie_lm_head
                        else "tied to the embedding"),
            "linear_layers": len(linears),
            "linear_layers_quantized": sum(x.scheme != "fp32" for x in linears),
            "layers": [asdict(x) | {"shape": list(x.shape)} for x in self.layers],
        }


def _linear_scheme(spec: QuantSpec) -> str:
    if spec.linear == "8da4w":
        return f"8da4w (int4 weights, groups of {spec.group_size}, int8 dynamic activations)"
    if spec.linear == "8da8w":
        return "8da8w (int8 per-channel weights, int8 dynamic activations)"
    return "fp32"


def plan(model: Lfm2Model, spec: QuantSpec) -> QuantPlan:
    """Decide the storage of every weight, refusing what cannot be done (pure: reads shapes only)."""
    cfg = model.config
    untie = model.is_tied and (spec.linear != "fp32" or spec.embedding != "none")
    result = QuantPlan(spec=spec, untie_lm_head=untie)
    bad: list[str] = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            if spec.linear == "8da4w" and mod.in_features % spec.group_size:
                bad.append(f"{name} (input width {mod.in_features})")
            note = ""
            if name == "lm_head":
                note = "untied copy of the embedding" if untie else ("tied to the embedding" if model.is_tied
                                                                     else "")
            result.layers.append(LayerQuant(name, "linear", tuple(mod.weight.shape), _linear_scheme(spec), note))
        elif isinstance(mod, nn.Conv1d):
            result.layers.append(LayerQuant(name, "conv", tuple(mod.weight.shape), "fp32",
                                            f"depthwise, {cfg.conv_L_cache} taps per channel: too small to gain"))
    if bad:
        raise UsageError(
            f"--group-size {spec.group_size} does not divide the input width of {len(bad)} linear layer(s), "
            f"first {bad[0]}",
            hint=f"pick a group size that divides {cfg.hidden_size} and {cfg.ff_dim} (e.g. 32, 64, 128)")
    emb_shape = (cfg.vocab_size, cfg.hidden_size)
    if spec.embedding == "int4" and cfg.hidden_size % spec.group_size:
        raise UsageError(f"--group-size {spec.group_size} does not divide the embedding width {cfg.hidden_size}")
    emb_scheme = {"none": "fp32", "int8": "int8 per row (embedding_byte)",
                  "int4": f"int4, groups of {spec.group_size} (embedding_4bit)"}[spec.embedding]
    result.layers.insert(0, LayerQuant("model.embed_tokens", "embedding", emb_shape, emb_scheme))
    return result


class QuantizedEmbedding(nn.Module):
    """An embedding table stored as int8 rows or packed int4 groups, with float scales."""

    def __init__(self, qdata: torch.Tensor, scales: torch.Tensor, bits: int):
        super().__init__()
        self.bits = bits
        if bits == 4:
            shifted = (qdata.to(torch.int16) + 8).to(torch.uint8)  # [-8, 7] -> [0, 15]
            packed = shifted[:, 0::2] * 16 + shifted[:, 1::2]  # two values per byte, even index high
            self.register_buffer("weight", packed.contiguous())
        else:
            self.register_buffer("weight", qdata.to(torch.int8).contiguous())
        self.register_buffer("scales", scales.reshape(qdata.shape[0], -1).squeeze(-1).float().contiguous())

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        if self.bits == 4:
            return torch.ops.quantized_decomposed.embedding_4bit.dtype(
                self.weight, self.scales, None, -8, 7, indices, dtype=torch.float32)
        return torch.ops.quantized_decomposed.embedding_byte.dtype(
            self.weight, self.scales, None, -128, 127, indices, dtype=torch.float32)


def _quantize_embedding(emb: nn.Embedding, spec: QuantSpec) -> QuantizedEmbedding:
    import executorch.exir.passes._quant_patterns_and_replacements  # noqa: F401  (registers the ops)
    from torchao.quantization import IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup

    bits = 4 if spec.embedding == "int4" else 8
    tmp = nn.Embedding(emb.num_embeddings, emb.embedding_dim)
    tmp.weight = nn.Parameter(emb.weight.detach(), requires_grad=False)
    granularity = PerGroup(spec.group_size) if bits == 4 else PerAxis(0)
    quantize_(tmp, IntxWeightOnlyConfig(weight_dtype=torch.int4 if bits == 4 else torch.int8,
                                        granularity=granularity),
              filter_fn=lambda m, fqn: isinstance(m, nn.Embedding))
    w = tmp.weight
    return QuantizedEmbedding(w.qdata, w.scale, bits)


@torch.no_grad()
def apply(model: Lfm2Model, quant_plan: QuantPlan) -> Lfm2Model:
    """Quantize ``model`` in place following ``quant_plan`` (from :func:`plan`)."""
    spec = quant_plan.spec
    if quant_plan.untie_lm_head:
        model.lm_head.weight = nn.Parameter(model.model.embed_tokens.weight.detach().clone(), requires_grad=False)
    if spec.linear != "fp32":
        from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
        from torchao.quantization.granularity import PerAxis, PerGroup

        config = Int8DynamicActivationIntxWeightConfig(
            weight_dtype=torch.int4 if spec.linear == "8da4w" else torch.int8,
            weight_granularity=PerGroup(spec.group_size) if spec.linear == "8da4w" else PerAxis(0))
        quantize_(model, config, filter_fn=lambda m, fqn: isinstance(m, nn.Linear))
        left = [n for n, m in model.named_modules()
                if isinstance(m, nn.Linear) and type(m.weight).__name__ in ("Parameter", "Tensor")]
        if left:  # torchao skipped a layer without saying so: refuse rather than ship it fp32
            raise UsageError(f"torchao left {len(left)} linear layer(s) unquantized, first {left[0]}")
    if spec.embedding != "none":
        model.model.embed_tokens = _quantize_embedding(model.model.embed_tokens, spec)
    log.info("quantized: %s", spec.name)
    return model
