"""torch.export -> ExecuTorch edge dialect -> backend delegate -> ``.pte`` bytes.

Backends sit in a small registry (name -> partitioner factory), listable from the CLI. The
program exported here has one method, ``forward(tokens [1,T], input_pos [1], key_positions [L],
logit_rows [R]) -> logits [1,R,V]``, with T dynamic in [1, max_seq_len], L = input_pos + T (the
cache slots the attention reads, so a step costs what the filled part of the caches costs, not the
whole) and R in [1, max_draft + 1] (the rows of the chunk whose logits come back: the last one, or
all of a speculative draft being verified), and carries its state (KV caches, conv states, the
end of the last call) as mutable buffers. No ``llama::`` custom ops are
used: the runtime libraries in the executorch wheel do not carry them.

Lowering never degrades silently: :func:`delegation_report` lists, per decoder layer, which
operators the backend took and which stayed on the portable CPU kernels, with the reason.
"""

from __future__ import annotations

import collections
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from toolchain import logs
from toolchain.errors import UsageError
from toolchain.export.manifest import DRAFT_METHOD
from toolchain.model.lfm2 import Lfm2Model

log = logging.getLogger(__name__)
logs.quiet_torch()

METHOD = "forward"
# DRAFT_METHOD: a program exported with a draft model carries it as a second method with the same
# inputs and outputs (and its own state): the runner drafts with it, the forward method verifies.
STATE_BUFFERS = ("k_cache", "v_cache", "conv_state", "seq_end")


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    make_partitioners: Callable[[], list[Any]] | None  # None: the backend has its own flow (``arm``)
    arm: bool = False  # Arm's backends: static shapes, PT2E quantization, Vela (toolchain.export.arm)


_BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> None:
    if backend.name in _BACKENDS:
        raise ValueError(f"backend {backend.name!r} is already registered")
    _BACKENDS[backend.name] = backend


def backends() -> dict[str, Backend]:
    return dict(_BACKENDS)


def get_backend(name: str) -> Backend:
    if name not in _BACKENDS:
        raise UsageError(f"unknown backend {name!r}; known: {', '.join(sorted(_BACKENDS))}")
    return _BACKENDS[name]


def _xnnpack() -> list[Any]:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    return [XnnpackPartitioner()]


register_backend(Backend("xnnpack", "XNNPACK delegate: Arm Cortex-A (NEON, dotprod, i8mm) and x86 CPUs", _xnnpack))
register_backend(Backend("ethos-u", "Arm Ethos-U NPU (U55, U85) through Vela: int8 / int16-activation PT2E "
                         "quantization, static one-token steps; --board picks the NPU (corstone-300, corstone-320)",
                         None, arm=True))
register_backend(Backend("tosa", "Arm TOSA 1.0 INT graph (what Arm's NPUs take), checked on the TOSA reference "
                         "model; no board needed", None, arm=True))

# Why an operator that stays outside the delegate does so (shown in the manifest).
_WHY_NOT_DELEGATED = {
    "quantized_decomposed.embedding_byte.dtype": "quantized embedding gather: runs on ExecuTorch's "
                                                 "quantized kernels",
    "quantized_decomposed.embedding_4bit.dtype": "quantized embedding gather: runs on ExecuTorch's "
                                                 "quantized kernels",
    "aten.embedding.default": "embedding gather: not an XNNPACK operator",
    "aten.index_select.default": "rotary table lookup by position, the logit rows asked for: not an XNNPACK "
                                 "operator",
    "aten.clamp.default": "conv-state rewind from input_pos",
    "aten.sub.Tensor": "conv-state rewind from input_pos",
    "aten.rsub.Scalar": "conv-state rewind from input_pos",
    "aten.add.Tensor": "positions from input_pos",
    "aten.copy_.default": "end of this call (mutable buffer)",
    "aten.arange.start_step": "position/mask construction from input_pos",
    "aten.where.self": "attention mask construction",
    "aten.le.Tensor": "attention mask construction",
    "aten.gt.Scalar": "new-sequence flag from input_pos",
    "aten._to_copy.default": "dtype cast of a flag or index",
}


def example_inputs(seq_len: int = 2) -> tuple[torch.Tensor, ...]:
    return (torch.zeros((1, seq_len), dtype=torch.long), torch.zeros((1,), dtype=torch.long),
            torch.arange(seq_len, dtype=torch.long), torch.arange(seq_len, dtype=torch.long))


def export(model: Lfm2Model) -> torch.export.ExportedProgram:
    """``torch.export`` with dynamic token, attended-slot and logit-row dimensions, gradients off."""
    seq = torch.export.Dim("seq", min=1, max=model.max_seq_len)
    keys = torch.export.Dim("keys", min=1, max=model.max_seq_len)
    rows = torch.export.Dim("rows", min=1, max=model.max_draft + 1)
    with torch.no_grad():
        return torch.export.export(model, example_inputs(), dynamic_shapes=({1: seq}, None, {0: keys}, {0: rows}),
                                   strict=False)


def lower(exported: torch.export.ExportedProgram, backend: str = "xnnpack",
          draft: torch.export.ExportedProgram | None = None):
    """Partition and lower to the backend; returns the EdgeProgramManager.

    ``draft``: a draft model's program, lowered alongside as the method ``draft``.
    """
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    make = get_backend(backend).make_partitioners
    if make is None:
        raise UsageError(f"backend {backend!r} has its own export flow (toolchain.export.arm)")
    parts = make()
    programs = {METHOD: exported} if draft is None else {METHOD: exported, DRAFT_METHOD: draft}
    return to_edge_transform_and_lower(programs, partitioner=parts,
                                       compile_config=EdgeCompileConfig(_check_ir_validity=False))


def to_program_bytes(edge) -> bytes:
    from executorch.exir import ExecutorchBackendConfig
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.exir.passes.init_mutable_pass import InitializedMutableBufferPass

    # The state buffers start as zeros in the program itself: a planned arena is uninitialized
    # memory, and 0 * NaN from a masked-out cache row would poison the first token.
    et = edge.to_executorch(ExecutorchBackendConfig(
        passes=[InitializedMutableBufferPass(list(STATE_BUFFERS))],
        extract_delegate_segments=True,
        # The cache writes (index_put) become index_put_ on the buffers themselves: without this
        # every call copies each KV cache in full and writes it back.
        run_reinplace_pass=True,
        memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False),
    ))
    return et.buffer


_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)(?:\.|$)")


def op_name(target: Any) -> str:
    """'aten.index_put.default' for an (edge) operator; the bare name for a Python callable."""
    # an EdgeOpOverload wraps the aten OpOverload in _op (an OpOverload's own _op is its C++ callable)
    op = target if isinstance(target, torch._ops.OpOverload) else getattr(target, "_op", target)
    schema = getattr(op, "_schema", None)
    if schema is not None:  # str(op) drops the namespace of some (aten.scalar_tensor -> scalar_tensor.default)
        return f"{schema.name.replace('::', '.')}.{getattr(op, '_overloadname', None) or 'default'}"
    return getattr(target, "__name__", str(target))


def _layer_of(node: torch.fx.Node) -> int | None:
    stack = node.meta.get("nn_module_stack") or {}
    for path, _ in reversed(list(stack.values())):
        m = _LAYER_RE.search(str(path))
        if m:
            return int(m.group(1))
    return None


def _is_compute(node: torch.fx.Node) -> bool:
    """An operator on tensors (not symbolic-size arithmetic such as operator.mul or getitem)."""
    if node.op != "call_function":
        return False
    return hasattr(node.target, "_schema") or op_name(node.target) == "executorch_call_delegate"


# Operators a decoder layer may leave outside the delegate without anything being computed there:
# writes of the program's state, and views (the emitter turns view_copy into an alias).
_LAYER_STATE_OPS = {
    "aten.index_put.default": "KV-cache write at input_pos (mutable buffer)",
    "aten.index_copy.default": "KV-cache write at input_pos (mutable buffer)",
    "aten.slice_copy.Tensor": "conv state: keep the last inputs (mutable buffer); KV caches: "
                              "the filled slots (a dynamic length, which XNNPACK does not slice)",
    "aten.index_select.default": "conv state at input_pos (a rewind picks older columns)",
    "aten.mul.Tensor": "conv state zeroed at input_pos 0",
    "aten.cat.default": "conv state: the kept inputs with the new ones",
    "aten.full.default": "conv state: zeros before the first input of a short sequence (never read back)",
}
# (De)quantization where a delegate meets state the CPU keeps in fp32: a conversion, not compute.
_BOUNDARY_OPS = {"quantized_decomposed.quantize_per_tensor.default",
                 "quantized_decomposed.dequantize_per_tensor.default"}
_VIEW_OPS = {"aten.view_copy.default", "aten.unsqueeze_copy.default", "aten.squeeze_copy.dims",
             "aten.squeeze_copy.dim", "aten.alias_copy.default"}


def _why(op: str, backend_why: dict[str, str]) -> str:
    """Why ``op`` stayed outside the delegate: the backend's reason, else the generic ones."""
    return (backend_why.get(op) or _WHY_NOT_DELEGATED.get(op) or _LAYER_STATE_OPS.get(op)
            or ("view (aliased by the emitter, no copy)" if op in _VIEW_OPS
                else "not supported by the backend's partitioner"))


def delegation_report(edge, backend: str, layer_types: tuple[str, ...], method: str = METHOD,
                      why: dict[str, str] | None = None) -> dict[str, Any]:
    """Counts of delegated and non-delegated operators of one method, overall and per decoder layer.

    ``why``: the backend's own reasons for operators it leaves out (before the generic ones)."""
    why = why or {}
    gm = edge.exported_program(method).graph_module
    delegated: collections.Counter[str] = collections.Counter()
    outside: collections.Counter[str] = collections.Counter()
    per_layer: dict[int, dict[str, collections.Counter[str]]] = {
        i: {"delegated": collections.Counter(), "outside": collections.Counter()} for i in range(len(layer_types))}
    n_delegates = 0
    for node in gm.graph.nodes:
        if not _is_compute(node):
            continue
        name = op_name(node.target)
        if name == "executorch_call_delegate":
            n_delegates += 1
            lowered = getattr(gm, node.args[0].target)
            for inner in lowered.original_module.graph.nodes:
                if _is_compute(inner):
                    inner_name = op_name(inner.target)
                    delegated[inner_name] += 1
                    layer = _layer_of(inner)
                    if layer is not None:
                        per_layer[layer]["delegated"][inner_name] += 1
            continue
        if name == "aten.sym_size.int":
            continue
        outside[name] += 1
        layer = _layer_of(node)
        if layer is not None:
            per_layer[layer]["outside"][name] += 1
    layers = []
    for i, kind in enumerate(layer_types):
        out = per_layer[i]["outside"]
        unexplained = sorted(op for op in out if op not in _LAYER_STATE_OPS and op not in _VIEW_OPS
                             and op not in _BOUNDARY_OPS)
        layers.append({
            "layer": i, "type": kind,
            "delegated_ops": sum(per_layer[i]["delegated"].values()),
            "non_delegated": dict(sorted(out.items())),
            "compute_fully_delegated": not unexplained,
            "not_delegated_compute": unexplained,
        })
    return {
        "backend": backend,
        "delegate_calls": n_delegates,
        "delegated_ops": dict(sorted(delegated.items())),
        "delegated_total": sum(delegated.values()),
        "non_delegated_ops": {op: {"count": n, "why": _why(op, why)} for op, n in sorted(outside.items())},
        "non_delegated_total": sum(outside.values()),
        "layers": layers,
        "decoder_layers_fully_delegated": all(x["compute_fully_delegated"] for x in layers),
    }
