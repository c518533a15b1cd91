"""Where a model comes from: a built-in preset (random, seeded weights) or a Hugging Face folder.

A folder holds ``config.json`` and ``model.safetensors`` (or a sharded
``model.safetensors.index.json``), optionally ``tokenizer.json`` and ``generation_config.json``,
in the LiquidAI LFM2 / LFM2.5 layout. Every problem with it ends in one :class:`InputError` line
naming the file and what is wrong; nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolchain.errors import InputError, UsageError
from toolchain.model.config import PRESET_SEEDS, PRESETS, Lfm2Config, from_hf_dict

if TYPE_CHECKING:  # torch is imported where weights are touched: naming or inspecting a model needs none
    import torch

    from toolchain.model.lfm2 import Lfm2Model
from toolchain.paths import MODELS_DIR

log = logging.getLogger(__name__)

# Checkpoint folders that ship with the project, by name (`make demo-model` trains them).
SHIPPED = {"fortune": MODELS_DIR / "fortune", "fortune-draft": MODELS_DIR / "fortune-draft"}


def folder_of(name: str) -> Path:
    """The folder a model name means: a shipped model's, else the name as a path."""
    return SHIPPED.get(name, Path(name))


@dataclass
class ModelSource:
    """What was loaded and from where; enough to name it in a manifest."""

    name: str  # preset name or folder path as given
    kind: str  # "preset" | "folder"
    config: Lfm2Config
    eos_token_ids: tuple[int, ...]
    weights_sha256: str | None = None  # folder: hash of the safetensors file(s); preset: None (seeded)
    seed: int | None = None
    tokenizer_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def bos_token_id(self) -> int:
        return self.config.bos_token_id


def is_preset(name: str) -> bool:
    return name in PRESETS


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON ({exc})") from None


def _sha256(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _weight_files(folder: Path) -> list[Path]:
    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    if single.exists():
        return [single]
    if index.exists():
        body = _read_json(index)
        files = sorted(set((body.get("weight_map") or {}).values()))
        if not files:
            raise InputError(f"{index} has no weight_map")
        missing = [f for f in files if not (folder / f).exists()]
        if missing:
            raise InputError(f"{index} names {missing[0]}, which is missing from {folder}")
        return [folder / f for f in files]
    raise InputError(f"{folder} has no model.safetensors (nor a sharded model.safetensors.index.json)")


def _load_tensors(files: list[Path]) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            part = load_file(str(f))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"{f} is corrupt or truncated: {reason}",
                             hint="re-copy the checkpoint folder; its size should match the source") from None
        tensors.update(part)
    return tensors


def inspect_folder(folder: Path) -> ModelSource:
    """Read and validate config, generation config and tokenizer presence (no weights loaded)."""
    if not folder.is_dir():
        raise InputError(f"model {str(folder)!r} is neither a preset ({', '.join(PRESETS)}), a shipped model "
                         f"({', '.join(SHIPPED)}) nor a folder")
    cfg_path = folder / "config.json"
    raw = _read_json(cfg_path)
    gen_path = folder / "generation_config.json"
    gen = _read_json(gen_path) if gen_path.exists() else {}
    if not isinstance(gen, dict):
        raise InputError(f"{gen_path} is not a JSON object")
    # generation_config.json is what generate() stops on: it overrides config.json's ids.
    merged = dict(raw)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if gen.get(key) is not None:
            merged[key] = gen[key]
    cfg = from_hf_dict(merged, source=str(cfg_path))
    eos = merged.get("eos_token_id", cfg.eos_token_id)
    eos_ids = tuple(eos) if isinstance(eos, list) else (int(eos),)
    tok = folder / "tokenizer.json"
    return ModelSource(name=str(folder), kind="folder", config=cfg, eos_token_ids=eos_ids,
                       tokenizer_path=tok if tok.exists() else None)


def load(name: str, max_seq_len: int, all_logits: bool = False) -> tuple[Lfm2Model, ModelSource]:
    """Load a preset or a checkpoint folder into an eval-mode fp32 :class:`Lfm2Model`."""
    from toolchain.model import presets
    from toolchain.model.lfm2 import Lfm2Model

    if max_seq_len < 2:
        raise UsageError(f"--max-seq-len {max_seq_len} must be at least 2")
    if is_preset(name):
        cfg = PRESETS[name]
        _check_seq_len(cfg, max_seq_len)
        seed = PRESET_SEEDS[name]
        log.info("building preset %s with random weights (seed %d)", name, seed)
        model = presets.build_preset(name, max_seq_len=max_seq_len, all_logits=all_logits)
        return model, ModelSource(name=name, kind="preset", config=cfg, eos_token_ids=(cfg.eos_token_id,),
                                  seed=seed)
    folder = folder_of(name)
    source = inspect_folder(folder)
    source.name = name
    _check_seq_len(source.config, max_seq_len)
    files = _weight_files(folder)
    tensors = _load_tensors(files)
    source.weights_sha256 = _sha256(files)
    model = Lfm2Model(source.config, max_seq_len=max_seq_len, all_logits=all_logits)
    load_state(model, tensors, str(files[0] if len(files) == 1 else folder))
    return model.eval(), source


def _check_seq_len(cfg: Lfm2Config, max_seq_len: int) -> None:
    if max_seq_len > cfg.max_position_embeddings:
        raise UsageError(f"--max-seq-len {max_seq_len} exceeds the model's max_position_embeddings "
                         f"{cfg.max_position_embeddings}")


def load_state(model: Lfm2Model, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy checkpoint tensors into ``model``, checking every name and shape first."""
    import torch

    tensors = dict(tensors)
    if model.is_tied:
        tensors.pop("lm_head.weight", None)  # some exporters store the tied copy too
    # The model splits in_proj into three projections on load; compare against the file's names.
    expected: dict[str, tuple[int, ...]] = {}
    for key, value in model.state_dict().items():
        for proj in ("B_proj", "C_proj", "x_proj"):
            if f".conv.{proj}." in key:
                key = key.replace(f".conv.{proj}.", ".conv.in_proj.")
                value = torch.empty(value.shape[0] * 3, *value.shape[1:])
        expected[key] = tuple(value.shape)
    if model.is_tied:
        expected.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        raise InputError(f"{source} lacks tensor {missing[0]} ({len(missing)} missing in all)",
                         hint="is this an LFM2 text checkpoint in the Hugging Face layout?")
    if unexpected:
        raise InputError(f"{source} has unexpected tensor {unexpected[0]} ({len(unexpected)} in all)")
    for key, shape in expected.items():
        got = tuple(tensors[key].shape)
        if got != shape:
            raise InputError(f"{source}: tensor {key} has shape {list(got)}, the config implies {list(shape)}")
    state = {k: v.float() for k, v in tensors.items()}
    result = model.load_state_dict(state, strict=False)
    left = [k for k in result.missing_keys if not (model.is_tied and k == "lm_head.weight")]
    if left or result.unexpected_keys:  # cannot happen after the checks above; never load half a model
        raise InputError(f"{source}: could not load {(left or result.unexpected_keys)[0]}")


def hf_state(model: Lfm2Model) -> dict[str, torch.Tensor]:
    """``model``'s weights in the Hugging Face layout (the inverse of :func:`load_state`): each conv
    block's B, C and x projections joined back into ``in_proj``, the tied head left out."""
    import torch

    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    if model.is_tied:
        state.pop("lm_head.weight", None)
    for key in sorted(k for k in state if ".conv.B_proj." in k):
        prefix, _, rest = key.partition(".conv.B_proj.")
        parts = [state.pop(f"{prefix}.conv.{p}_proj.{rest}") for p in "BCx"]
        state[f"{prefix}.conv.in_proj.{rest}"] = torch.cat(parts)
    return state


def save_folder(model: Lfm2Model, folder: Path) -> Path:
    """Write ``model`` as a Hugging Face checkpoint folder (``config.json``, ``model.safetensors``):
    the same weights for every engine a benchmark compares (ExecuTorch's converter, llama.cpp's)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(model.config.to_hf_dict(), indent=2) + "\n")
    save_file(hf_state(model), str(folder / "model.safetensors"))
    return folder
