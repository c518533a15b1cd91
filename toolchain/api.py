"""The library behind the CLI, the pytest plugin and the tests. Each public function is one job.

Long jobs report progress through a ``progress(step, detail)`` callback; they never print.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolchain import __version__
from toolchain.errors import UsageError

log = logging.getLogger(__name__)

Progress = Callable[[str, str], None]
DEFAULT_MAX_SEQ_LEN = 512
EXPORT_STEPS = ("load", "quantize", "export", "lower", "emit", "write")


def _noop(step: str, detail: str) -> None:
    pass


@dataclass
class ExportResult:
    pte: Path
    manifest_path: Path
    manifest: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "pte": str(self.pte),
            "manifest": str(self.manifest_path),
            "sha256": m["program"]["sha256"],
            "size_bytes": m["program"]["size_bytes"],
            "max_seq_len": m["program"]["max_seq_len"],
            "quantization": m["quantization"]["scheme"],
            "linear_layers": m["quantization"]["linear_layers"],
            "linear_layers_quantized": m["quantization"]["linear_layers_quantized"],
            "decoder_layers_fully_delegated": m["delegation"]["decoder_layers_fully_delegated"],
            "delegated_ops": m["delegation"]["delegated_total"],
            "non_delegated_ops": m["delegation"]["non_delegated_total"],
            "timings_s": m["timings_s"],
        }


def default_embedding(quant: str) -> str:
    return "none" if quant == "fp32" else "int8"


def export_model(model: str, out: Path, *, quant: str = "8da4w", group_size: int = 32,
                 embedding: str | None = None, max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
                 backend: str = "xnnpack", progress: Progress = _noop) -> ExportResult:
    """Load ``model`` (preset name or HF folder), quantize, lower and write ``out/model.pte`` + manifest."""
    import torch

    from toolchain.export import lower, manifest, quantize
    from toolchain.model import checkpoint, tokenizer

    spec = quantize.QuantSpec(linear=quant, group_size=group_size,
                              embedding=embedding if embedding is not None else default_embedding(quant))
    lower.get_backend(backend)  # unknown backend: fail before the slow steps
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    timings: dict[str, float] = {}

    def step(name: str, detail: str) -> float:
        progress(name, detail)
        return time.monotonic()

    t = step("load", model)
    net, source = checkpoint.load(model, max_seq_len=max_seq_len)
    tok = tokenizer.for_model(source.tokenizer_path, source.config.vocab_size)
    timings["load"] = time.monotonic() - t

    t = step("quantize", spec.name)
    qplan = quantize.plan(net, spec)  # refuses an impossible group size before any work
    quantize.apply(net, qplan)
    timings["quantize"] = time.monotonic() - t

    t = step("export", f"torch.export, tokens dynamic in [1, {max_seq_len}]")
    with torch.no_grad():
        exported = lower.export(net)
    timings["export"] = time.monotonic() - t

    t = step("lower", f"to_edge_transform_and_lower ({backend})")
    edge = lower.lower(exported, backend)
    delegation = lower.delegation_report(edge, backend, source.config.layer_types)
    timings["lower"] = time.monotonic() - t

    t = step("emit", "memory planning and serialization")
    program = lower.to_program_bytes(edge)
    timings["emit"] = time.monotonic() - t

    t = step("write", str(out))
    body = manifest.build(
        program=program, max_seq_len=max_seq_len,
        model={"name": source.name, "kind": source.kind, "config": source.config.to_dict(),
               "parameters": source.config.num_parameters(), "weights_sha256": source.weights_sha256,
               "seed": source.seed},
        quantization=qplan.to_dict(), delegation=delegation,
        tokens={"bos_token_id": source.config.bos_token_id, "eos_token_ids": list(source.eos_token_ids),
                "pad_token_id": source.config.pad_token_id,
                "tokenizer": {"kind": tok.name, "sha256": tok.sha256, "vocab_size": tok.vocab_size}},
        versions=_versions(), timings=timings)
    pte, man = manifest.write(out, program, body)
    timings["write"] = time.monotonic() - t
    log.info("wrote %s (%d bytes) and %s", pte, len(program), man)
    return ExportResult(pte=pte, manifest_path=man, manifest=body)


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"edgelm": __version__, "executorch": version("executorch"), "torch": version("torch"),
            "torchao": version("torchao")}


def inspect_program(pte: Path) -> dict[str, Any]:
    """The verified manifest of a ``.pte``."""
    from toolchain.export import manifest

    return manifest.read(pte)
