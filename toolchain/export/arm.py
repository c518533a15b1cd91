"""Arm's backends: a model lowered to TOSA, or through Vela to an Ethos-U NPU, checked and budgeted.

The flow (ExecuTorch's Arm backend, torchao's PT2E quantization):

    Lfm2Model -> Step (one token per call, static shapes: what Ethos-U needs)
      -> torch.export -> prepare_pt2e(EthosUQuantizer | TOSAQuantizer) -> calibration sequences
      -> convert_pt2e -> torch.export -> EthosUPartitioner | TOSAPartitioner -> .pte

Every Vela compile (one per delegate) is kept in its own folder, so its summary (cycles, SRAM,
flash, MACs) is read back for the budget; the TOSA graph handed to Vela is kept too, so the
program can be run on the host with every delegate on the TOSA reference model
(:func:`check_numerics`) and compared with the quantized eager model over a teacher-forced
sequence.

What stays on the CPU, and why, is reported (:func:`coverage`), as is the share of the model's
multiply-accumulates that the NPU does. Whether the program fits the board's memories is a
verdict in bytes (:func:`estimate` before any work, :func:`verdict` after the lowering).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.fx.passes.operator_support import OperatorSupportBase

from toolchain import logs
from toolchain.boards import Board
from toolchain.errors import CapacityError, InputError, UsageError, ValidationFailed
from toolchain.export.lower import STATE_BUFFERS, delegation_report, op_name
from toolchain.model.lfm2 import Lfm2Model

log = logging.getLogger(__name__)
logs.quiet_torch()

BACKENDS = ("ethos-u", "tosa")
QUANTS = ("a8w8", "a16w8")  # activations / weights bits; weights per channel, symmetric
TOSA_SPEC = "TOSA-1.0+INT"
TOKENS_PER_CALL = 1  # static shapes: one program step serves the prompt (token by token) and decoding
CHECK_STEPS = 32
MIN_AGREEMENT = 0.9
# Sentences for calibration and (held out) for the numerical check; the model's own tokenizer
# turns them into token sequences. ``--calibration FILE`` gives others, one per line.
CALIBRATION_TEXTS = (
    "Once upon a time there was a little board that ran a language model.",
    "The quick brown fox jumps over the lazy dog while the NPU counts cycles.",
    "Q: What is the capital of France? A: Paris is the capital of France.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
)
CHECK_TEXT = "A small model, trained far past the usual budget, can run on a microcontroller with an NPU."
# Operators a decode step leaves on the CPU, and why (the partition report's reasons, in words).
WHY_ON_CPU = {
    "aten.index_put.default": "KV-cache write into the fp32 state buffer: kept on the CPU (on the NPU it forms a "
                              "partition dependency cycle, ExecuTorch MLETORCH-1971)",
    "aten.index_select.default": "gather by position (the embedding, the rotary tables): Ethos-U55 has no "
                                 "gather",
    "aten.embedding.default": "embedding gather: Ethos-U55 has no gather",
    "aten.where.self": "attention mask from positions: a float select the integer NPU graph does not take",
    "aten.gt.Scalar": "new-sequence flag from input_pos: a comparison (not on Ethos-U55)",
    "aten.le.Tensor": "attention mask: a comparison (not on Ethos-U55)",
    "aten.scalar_tensor.default": "a constant of the mask construction",
    "aten.gt.Tensor": "new-sequence flag from input_pos: a comparison (not on Ethos-U55)",
    "dim_order_ops._to_dim_order_copy.default": "int64 -> int32 cast of a position or index input",
    "aten._to_copy.default": "int64 -> int32 cast of a position or index input",
    "quantized_decomposed.quantize_per_tensor.default": "quantize at the NPU boundary (the state on the CPU is fp32)",
    "quantized_decomposed.dequantize_per_tensor.default": "dequantize at the NPU boundary (the state on the CPU is "
                                                          "fp32)",
    "quantized_decomposed.dequantize_per_channel.default": "dequantize of a weight the CPU uses",
}


@dataclass(frozen=True)
class ArmTarget:
    """Where a program goes: a TOSA profile, or an Ethos-U NPU as Vela knows it (from a board)."""

    backend: str  # "ethos-u" | "tosa"
    accelerator: str | None = None  # Vela's --accelerator-config, e.g. "ethos-u55-128"
    system_config: str | None = None
    memory_mode: str | None = None
    clock_hz: int | None = None
    board: Board | None = None

    @property
    def name(self) -> str:
        return self.accelerator or TOSA_SPEC

    def compile_spec(self) -> Any:
        if self.backend == "tosa":
            from executorch.backends.arm.tosa.compile_spec import TosaCompileSpec

            return TosaCompileSpec(TOSA_SPEC)
        from executorch.backends.arm.ethosu import EthosUCompileSpec

        return EthosUCompileSpec(self.accelerator, system_config=self.system_config, memory_mode=self.memory_mode)


def target_for(backend: str, board: Board | None) -> ArmTarget:
    """The target of ``--backend`` for ``--board``: Ethos-U needs an NPU board; TOSA needs none."""
    if backend not in BACKENDS:
        raise UsageError(f"{backend!r} is not an Arm backend; Arm backends: {', '.join(BACKENDS)}")
    if backend == "tosa":
        if board is not None:
            raise UsageError(f"--backend tosa takes no --board: a TOSA program runs on the reference model, not on "
                             f"{board.name}", hint=f"for {board.name}'s NPU: --backend ethos-u --board {board.name}")
        return ArmTarget("tosa")
    if board is None:
        raise UsageError("--backend ethos-u needs --board: the NPU, its Vela configuration and the memories to "
                         "fit come from the board profile", hint="`edgelm boards` lists corstone-300 (Ethos-U55) "
                                                                 "and corstone-320 (Ethos-U85)")
    if board.npu is None:
        raise UsageError(f"board {board.name!r} has no Ethos-U NPU (its profile has no npu)",
                         hint="`edgelm boards` shows the NPU of each board")
    assert board.npu_clock_mhz is not None  # the profile's checks: an NPU board has them all
    return ArmTarget("ethos-u", board.npu, board.vela_system_config, board.vela_memory_mode,
                     board.npu_clock_mhz * 1_000_000, board)


class Step(torch.nn.Module):
    """One token per call: ``(tokens [1,1], input_pos [1]) -> logits [1, vocab]``; every cache slot is
    attended (the unfilled ones masked). State (KV caches, conv states) is carried in buffers."""

    def __init__(self, model: Lfm2Model):
        super().__init__()
        model.rewinds = False  # one token per call, never a rejected draft: no conv-state gather
        self.model = model

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        return self.model(tokens, input_pos)


def step_inputs(token: int, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([[token]], dtype=torch.long), torch.tensor([pos], dtype=torch.long)


def sequences(tok: Any, bos: int, texts: Sequence[str], length: int, vocab: int) -> list[list[int]]:
    """Token sequences of ``length`` (BOS first) from ``texts``, each repeated to fill; ids checked."""
    out = []
    for text in texts:
        ids = [t for t in tok.encode(text) if 0 <= t < vocab]
        if not ids:
            raise InputError(f"calibration text {text[:40]!r} gives no tokens of the model's vocabulary")
        seq = [bos]
        while len(seq) < length:
            seq.extend(ids)
        out.append(seq[:length])
    return out


def calibration_texts(path: Path | None) -> tuple[str, ...]:
    if path is None:
        return CALIBRATION_TEXTS
    try:
        lines = tuple(line for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--calibration {path}: {exc}") from None
    if not lines:
        raise InputError(f"--calibration {path} has no text (one calibration sample per line)")
    return lines


def reset_state(module: torch.nn.Module) -> None:
    """Zero the state buffers (KV caches, conv states, end of the last call) of any module holding them."""
    with torch.no_grad():
        for name, buf in module.named_buffers():
            if name.endswith(STATE_BUFFERS):
                buf.zero_()


def quantize(step: Step, target: ArmTarget, quant: str, calibration: list[list[int]]) -> torch.fx.GraphModule:
    """PT2E post-training quantization with the backend's quantizer, calibrated token by token."""
    from executorch.backends.arm.quantizer import (
        EthosUQuantizer,
        TOSAQuantizer,
        get_symmetric_a16w8_quantization_config,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if quant not in QUANTS:
        raise UsageError(f"--quant {quant} is not an Arm scheme; Arm backends take: {', '.join(QUANTS)}")
    cs = target.compile_spec()
    quantizer = EthosUQuantizer(cs) if target.backend == "ethos-u" else TOSAQuantizer(cs)
    quantizer.set_global(get_symmetric_a16w8_quantization_config() if quant == "a16w8"
                         else get_symmetric_quantization_config())
    with torch.no_grad():
        exported = torch.export.export(step, step_inputs(0, 0), strict=False)
        # check_guards=False: torch 2.13 otherwise adds a call_module guard the Arm passes refuse.
        prepared = prepare_pt2e(exported.module(check_guards=False), quantizer)
        for seq in calibration:
            for pos, token in enumerate(seq):
                prepared(*step_inputs(token, pos))
        converted = convert_pt2e(prepared)
    reset_state(converted)
    return converted


@dataclass
class VelaRun:
    """One delegate's Vela compile: its folder, the TOSA graph it compiled and its summary row."""

    folder: Path
    tosa: bytes
    payload: bytes = b""
    summary: dict[str, str] = field(default_factory=dict)


@contextlib.contextmanager
def _vela_recorder(folder: Path) -> Iterator[list[VelaRun]]:
    """Give every Vela compile its own folder under ``folder`` (the backend reuses one) and record it.

    Vela's own printout goes to the log, not the terminal. The backend's function is restored on
    the way out, however the lowering ends.
    """
    import executorch.backends.arm.ethosu.backend as ethosu_backend

    original = ethosu_backend.vela_compile
    runs: list[VelaRun] = []

    def compile_one(tosa: bytes, args: list[str], verbose: bool = False, intermediate_path: str | None = None,
                    block_placements: Any = None) -> Any:
        d = folder / f"delegate{len(runs)}"
        d.mkdir(parents=True, exist_ok=True)
        run = VelaRun(d, bytes(tosa))
        runs.append(run)
        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            result = original(tosa, list(args), verbose, str(d), block_placements)
        log.debug("vela (delegate %d): %s", len(runs) - 1, text.getvalue()[-2000:])
        run.payload = bytes(result.processed_bytes)
        run.summary = _read_summary(d / "output")
        return result

    ethosu_backend.vela_compile = compile_one
    try:
        yield runs
    finally:
        ethosu_backend.vela_compile = original


def _read_summary(output: Path) -> dict[str, str]:
    files = sorted(output.glob("*_summary_*.csv"))
    if not files:
        raise InputError(f"Vela wrote no summary in {output}")
    with files[0].open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise InputError(f"Vela's summary {files[0]} is empty")
    return rows[0]


def _require(module: str, what: str, alternative: str = "") -> None:
    import importlib.util

    if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
        from toolchain import doctor

        hint = doctor.hint(module)
        raise UsageError(f"{what} is not installed", hint=f"{hint} {alternative}".strip())


class RejectOps(OperatorSupportBase):
    """An ``additional_checks`` entry for the Arm partitioners: keep the named operators on the CPU."""

    def __init__(self, names: Sequence[str]):
        self.names = frozenset(names)

    def is_node_supported(self, submodules: Any, node: torch.fx.Node) -> bool:
        return not (node.op == "call_function" and op_name(node.target) in self.names)


# The KV-cache writes stay on the CPU for every Arm target: the caches are fp32 mutable buffers
# (PT2E does not quantize them), and on Ethos-U85 / TOSA an index_put into one makes the partition
# cyclic (upstream MLETORCH-1971). Ethos-U55 cannot take them anyway (no scatter).
KEEP_ON_CPU = ("aten.index_put.default",)


def lower(converted: torch.fx.GraphModule, target: ArmTarget, vela_dir: Path) -> tuple[Any, list[VelaRun]]:
    """Export the quantized step and lower it; returns the EdgeProgramManager and the Vela runs."""
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    cs = target.compile_spec()
    if target.backend == "ethos-u":
        _require("ethosu.vela", "Arm's Vela compiler (ethos-u-vela)")
        from executorch.backends.arm.ethosu import EthosUPartitioner as Partitioner
    else:
        from executorch.backends.arm.tosa.partitioner import TOSAPartitioner as Partitioner
    checks = RejectOps(KEEP_ON_CPU)
    with torch.no_grad():
        exported = torch.export.export(converted, step_inputs(0, 0), strict=False)
    scratch = Path(tempfile.mkdtemp(prefix="edgelm-vela-"))  # Vela splits its arguments on spaces
    try:
        with _vela_recorder(scratch) as runs:
            edge = to_edge_transform_and_lower(exported, partitioner=[Partitioner(cs, additional_checks=[checks])],
                                               compile_config=EdgeCompileConfig(_check_ir_validity=False))
        if vela_dir.exists():
            shutil.rmtree(vela_dir)
        vela_dir.mkdir(parents=True)
        for run in runs:
            dest = vela_dir / run.folder.name
            shutil.copytree(run.folder / "output", dest, ignore=shutil.ignore_patterns("*.npz", "*.bin"))
            run.folder = dest
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return edge, runs


def to_program(edge: Any) -> tuple[bytes, int]:
    """The .pte bytes and the bytes of its planned memory (the tensor arena: activations and state)."""
    from executorch.exir import ExecutorchBackendConfig
    from executorch.exir.passes.init_mutable_pass import InitializedMutableBufferPass

    et = edge.to_executorch(ExecutorchBackendConfig(passes=[InitializedMutableBufferPass(list(STATE_BUFFERS))],
                                                    extract_delegate_segments=True))
    plan = et.executorch_program.execution_plan[0]
    return et.buffer, int(sum(plan.non_const_buffer_sizes))


# --- numerical check ----------------------------------------------------------------------------


@contextlib.contextmanager
def _native_output_to_log() -> Iterator[None]:
    """Send what native code prints on fds 1 and 2 (the reference model's version notes) to the log."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    with tempfile.TemporaryFile() as tmp:
        try:
            os.dup2(tmp.fileno(), 1)
            os.dup2(tmp.fileno(), 2)
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            tmp.seek(0)
            text = tmp.read().decode(errors="replace").strip()
            if text:
                log.debug("reference model output: %s", text[-2000:])


def check_numerics(edge: Any, quantized: torch.fx.GraphModule, fp_step: Step, runs: list[VelaRun],
                   target: ArmTarget, seq: list[int]) -> dict[str, Any]:
    """Teacher-force ``seq`` through the lowered program with every delegate run by the TOSA
    reference model (``tosa_reference_model``), and through the quantized eager model; compare.

    Ethos-U delegates carry Vela's command stream, so the TOSA graph that Vela compiled is run.
    """
    import numpy as np

    _require("tosa_reference_model", "the TOSA reference model (tosa-tools)", "or skip the check with --check-steps 0")
    from executorch.backends.arm.test.runner_utils import TosaReferenceModelDispatch, run_tosa_graph

    tosa_of = {r.payload: r.tosa for r in runs}
    ran = {"delegate_calls": 0}

    class Dispatch(TosaReferenceModelDispatch):  # type: ignore[misc]
        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            if func is torch._higher_order_ops.executorch_call_delegate:
                lowered = args[0]
                ran["delegate_calls"] += 1
                if lowered.backend_id == "EthosUBackend":
                    from executorch.backends.arm.ethosu import EthosUCompileSpec

                    self.ran_tosa_dispatch = True
                    graph = tosa_of.get(bytes(lowered.processed_bytes))
                    if graph is None:
                        raise InputError("an Ethos-U delegate has no recorded TOSA graph to check")
                    spec = EthosUCompileSpec._from_list(lowered.compile_specs).tosa_spec
                    return run_tosa_graph(graph, spec, list(args[1:]), lowered.original_module.graph.output_node())
            return super().__torch_function__(func, types, args, kwargs)

    program = edge.exported_program().module()
    reference = copy.deepcopy(quantized)
    reset_state(reference)
    reset_state(fp_step)
    agree = fp_agree = 0
    max_err = fp_err = 0.0
    absmax = 0.0
    steps = len(seq)
    with torch.no_grad(), _native_output_to_log():
        for pos, token in enumerate(seq):
            inputs = step_inputs(token, pos)
            with Dispatch():
                got = program(*inputs)
            got = got[0] if isinstance(got, (tuple, list)) else got
            want = reference(*inputs)
            fp = fp_step(*inputs)
            max_err = max(max_err, float((got - want).abs().max()))
            fp_err = max(fp_err, float((want - fp).abs().max()))
            absmax = max(absmax, float(want.abs().max()))
            agree += int(int(got.argmax(-1)) == int(want.argmax(-1)))
            fp_agree += int(int(want.argmax(-1)) == int(fp.argmax(-1)))
    if not np.isfinite(max_err):
        raise InputError("the reference model's logits are not finite")
    return {
        "steps": steps, "teacher_forced": True, "target": target.name,
        "delegate_calls_on_reference_model": ran["delegate_calls"],
        "greedy_agreement": agree / steps,
        "max_abs_error": max_err,
        "logits_absmax": absmax,
        "quantized_vs_fp32": {"greedy_agreement": fp_agree / steps, "max_abs_error": fp_err},
    }


# --- coverage -----------------------------------------------------------------------------------


def _shape(node: Any) -> tuple[int, ...] | None:
    val = node.meta.get("val") if hasattr(node, "meta") else None
    return tuple(int(d) for d in val.shape) if isinstance(val, torch.Tensor) else None


def node_macs(node: torch.fx.Node) -> int:
    """Multiply-accumulates of one matrix operator (linear, convolution, (b)mm); 0 for the others."""
    name = op_name(node.target)
    out = _shape(node)
    if out is None:
        return 0
    n_out = 1
    for d in out:
        n_out *= d
    if name in ("aten.linear.default", "aten.convolution.default", "aten.conv2d.default", "aten.conv1d.default"):
        w = _shape(node.args[1]) if len(node.args) > 1 else None
        if not w:
            return 0
        per = 1
        for d in w[1:]:
            per *= d
        return n_out * per
    if name in ("aten.mm.default", "aten.bmm.default", "aten.matmul.default"):
        a = _shape(node.args[0])
        return n_out * a[-1] if a else 0
    if name == "aten.addmm.default":
        a = _shape(node.args[1])
        return n_out * a[-1] if a else 0
    return 0


def coverage(edge: Any) -> dict[str, Any]:
    """The share of the step's MACs inside the NPU delegates, and the MAC-carrying operators left out."""
    gm = edge.exported_program().graph_module
    on_npu = on_cpu = 0
    cpu_ops: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        if op_name(node.target) == "executorch_call_delegate":
            lowered = getattr(gm, node.args[0].target)
            on_npu += sum(node_macs(n) for n in lowered.original_module.graph.nodes if n.op == "call_function")
            continue
        macs = node_macs(node)
        if macs:
            on_cpu += macs
            cpu_ops[op_name(node.target)] = cpu_ops.get(op_name(node.target), 0) + macs
    total = on_npu + on_cpu
    return {"macs_total": total, "macs_on_npu": on_npu, "macs_on_cpu": on_cpu,
            "npu_mac_share": (on_npu / total) if total else 0.0, "cpu_mac_ops": cpu_ops}


# --- budget and fit -----------------------------------------------------------------------------


def _num(row: dict[str, str], key: str) -> float:
    try:
        return float(row.get(key) or 0.0)
    except ValueError:
        raise InputError(f"Vela's summary has {key}={row.get(key)!r}, not a number") from None


def vela_budget(runs: list[VelaRun], target: ArmTarget) -> dict[str, Any]:
    """Vela's estimates for one call (one token), summed over the delegates (the NPU's part only)."""
    if not runs:
        return {}
    clock = target.clock_hz or int(_num(runs[0].summary, "core_clock"))
    cycles = sum(_num(r.summary, "cycles_total") for r in runs)
    return {
        "source": "vela estimates (the NPU's part of each delegate; CPU-side operators not included)",
        "delegates": len(runs),
        "clock_hz": clock,
        "cycles_per_token": int(cycles),
        "npu_cycles_per_token": int(sum(_num(r.summary, "cycles_npu") for r in runs)),
        "us_per_token": cycles / clock * 1e6,
        "tokens_per_s_npu_bound": clock / cycles if cycles else None,
        "sram_bytes": int(max(_num(r.summary, "sram_memory_used") for r in runs) * 1024),  # scratch is reused
        "flash_bytes": int(sum(_num(r.summary, "off_chip_flash_memory_used") for r in runs) * 1024),
        "dram_bytes": int(sum(_num(r.summary, "dram_memory_used") for r in runs) * 1024),
        "npu_weights_bytes": int(sum(_num(r.summary, "total_npu_encoded_weights") for r in runs)),
        "npu_macs_per_token": int(sum(_num(r.summary, "nn_macs") for r in runs)),
        "per_delegate": [{"cycles": int(_num(r.summary, "cycles_total")),
                          "sram_bytes": int(_num(r.summary, "sram_memory_used") * 1024),
                          "macs": int(_num(r.summary, "nn_macs")),
                          "csv": f"vela/{r.folder.name}"} for r in runs],
    }


@dataclass(frozen=True)
class Need:
    what: str  # "program" | "sram"
    need: int
    have: int
    where: str  # the memory region: "SRAM", or the program's ("FLASH", "DDR")
    detail: str

    @property
    def fits(self) -> bool:
        return self.need <= self.have

    def line(self) -> str:
        if self.fits:
            return f"{self.what} {self.need:,} B in {self.where} of {self.have:,} B ({self.detail})"
        return (f"{self.what} needs {self.need:,} B in {self.where}, the board has {self.have:,} B: short by "
                f"{self.need - self.have:,} B ({self.detail})")


@dataclass(frozen=True)
class Fit:
    board: str
    needs: tuple[Need, ...]
    estimate: bool  # True: before lowering, from the model's size; False: from the program and Vela

    @property
    def fits(self) -> bool:
        return all(n.fits for n in self.needs)

    def message(self) -> str:
        verdict = "fits" if self.fits else "does NOT fit"
        return f"{self.board}: {verdict}: " + "; ".join(n.line() for n in self.needs)

    def to_dict(self) -> dict[str, Any]:
        return {"board": self.board, "fits": self.fits, "estimate": self.estimate,
                "needs": [{"what": n.what, "need_bytes": n.need, "have_bytes": n.have, "where": n.where,
                           "fits": n.fits, "short_bytes": max(0, n.need - n.have), "detail": n.detail}
                          for n in self.needs]}


def _memories(board: Board) -> tuple[int, int]:
    program, sram = board.program_memory_bytes, board.sram_bytes
    if program is None or sram is None:
        raise UsageError(f"board {board.name!r} has no memory map (an SRAM region, program_memory) in its profile")
    return program, sram


def estimate(board: Board, parameters: int, state: int, quant: str) -> Fit:
    """Before any work: the weights at their quantized width against the program memory, and the
    state (fp32 KV caches and conv states, kept by the CPU) against the SRAM."""
    program, sram = _memories(board)
    weight_bytes = parameters  # 8-bit weights in both schemes
    assert board.program_memory is not None
    return Fit(board.name, (
        Need("program", weight_bytes, program, board.program_memory,
             f"{parameters:,} parameters at 1 byte ({quant} weights) before Vela's lossless compression"),
        Need("state", state, sram, "SRAM", "fp32 KV caches and conv states, exact"),
    ), estimate=True)


def verdict(board: Board, program_bytes: int, arena_bytes: int, npu_scratch: int) -> Fit:
    """After lowering: the .pte against the program memory; the arena and the NPU scratch against SRAM."""
    program, sram = _memories(board)
    assert board.program_memory is not None
    return Fit(board.name, (
        Need("program", program_bytes, program, board.program_memory, "the .pte, plus the runner's own code"),
        Need("sram", arena_bytes + npu_scratch, sram, "SRAM",
             f"tensor arena {arena_bytes:,} B (activations, KV caches, conv states) + NPU scratch {npu_scratch:,} B"),
    ), estimate=False)


class DoesNotFit(CapacityError):
    """A program (or a model, estimated) too big for the board; ``fit`` holds the verdict."""

    def __init__(self, fit: Fit):
        super().__init__(fit.message(), hint="a smaller model, a shorter --max-seq-len, or a board with more memory "
                                             "(`edgelm boards`)")
        self.fit = fit


def refuse(fit: Fit) -> None:
    if not fit.fits:
        raise DoesNotFit(fit)


# --- the whole export ---------------------------------------------------------------------------


def model_size(model: str, max_seq_len: int) -> tuple[int, int]:
    """(parameters, state bytes) of a preset or checkpoint folder, from its config alone (no weights)."""
    from toolchain.export import manifest
    from toolchain.model import checkpoint
    from toolchain.model.config import PRESETS

    cfg = PRESETS[model] if checkpoint.is_preset(model) else checkpoint.inspect_folder(
        checkpoint.folder_of(model)).config
    return cfg.num_parameters(), manifest.state_bytes(cfg.to_dict(), max_seq_len)


def _quantized_linears(converted: torch.fx.GraphModule) -> tuple[int, int, bool]:
    """(linear operators, those with quantized weights, whether the last one (lm_head) is)."""
    linears = [n for n in converted.graph.nodes
               if n.op == "call_function" and op_name(n.target) == "aten.linear.default"]
    quantized = [n for n in linears if isinstance(n.args[1], torch.fx.Node)
                 and "dequantize" in op_name(n.args[1].target)]
    return len(linears), len(quantized), bool(linears) and linears[-1] in quantized


@dataclass
class ArmExport:
    program: bytes
    arena_bytes: int
    arm: dict[str, Any]  # the manifest's "arm" section
    quantization: dict[str, Any]
    delegation: dict[str, Any]


def export(net: Lfm2Model, tok: Any, *, layer_types: tuple[str, ...], vocab: int, bos: int,
           target: ArmTarget, quant: str, vela_dir: Path, calibration: tuple[str, ...] = CALIBRATION_TEXTS,
           check_steps: int = CHECK_STEPS, min_agreement: float = MIN_AGREEMENT,
           progress: Any = lambda step, detail: None) -> ArmExport:
    """Quantize, lower, check and budget ``net`` (an Lfm2Model) for ``target``; Vela's reports go to
    ``vela_dir`` (replaced). Raises ValidationFailed when the reference model's greedy tokens agree with the
    quantized model's on fewer than ``min_agreement`` of the checked steps, CapacityError when a
    board is given and the program does not fit it."""
    max_seq_len = net.max_seq_len
    step = Step(net).eval()
    calib = sequences(tok, bos, calibration, min(16, max_seq_len), vocab)
    progress("quantize", f"{quant} PT2E ({target.name}), {len(calib)} calibration sequences of {len(calib[0])} tokens")
    converted = quantize(step, target, quant, calib)
    n_linear, n_quant, head_quant = _quantized_linears(converted)
    progress("lower", f"{target.backend} ({target.name})" + (" with Vela" if target.backend == "ethos-u" else ""))
    edge, runs = lower(converted, target, vela_dir)
    delegation = delegation_report(edge, target.backend, layer_types, why=WHY_ON_CPU)
    macs = coverage(edge)
    check = None
    if check_steps > 0:
        seq = sequences(tok, bos, (CHECK_TEXT,), min(check_steps, max_seq_len), vocab)[0]
        progress("check", f"{len(seq)} teacher-forced steps on the TOSA reference model")
        check = check_numerics(edge, converted, step, runs, target, seq)
        if check["greedy_agreement"] < min_agreement:
            raise ValidationFailed(
                f"the lowered program ({target.name}, {quant}) on the TOSA reference model agrees with the quantized "
                f"model on {check['greedy_agreement']:.1%} of {check['steps']} teacher-forced greedy tokens (max "
                f"|logit error| {check['max_abs_error']:.3g}); at least {min_agreement:.0%} is required",
                hint=("ExecuTorch's int16 softmax lowering is known to be inaccurate: use --quant a8w8, "
                      if quant == "a16w8" else "") + "or accept it with --min-agreement")
    progress("emit", "memory planning and serialization")
    program, arena = to_program(edge)
    budget = vela_budget(runs, target)
    npu_scratch = budget.get("sram_bytes", 0)
    fit = verdict(target.board, len(program), arena, npu_scratch) if target.board is not None else None
    arm = {
        "backend": target.backend, "target": target.name, "board": target.board.name if target.board else None,
        "system_config": target.system_config, "memory_mode": target.memory_mode,
        "tokens_per_call": TOKENS_PER_CALL,
        "coverage": macs, "check": check, "vela": budget,
        "budget": {"program_bytes": len(program), "arena_bytes": arena, "npu_scratch_bytes": npu_scratch,
                   "sram_bytes_needed": arena + npu_scratch},
        "fit": fit.to_dict() if fit is not None else None,
    }
    quantization = {"scheme": quant, "linear_layers": n_linear, "linear_layers_quantized": n_quant,
                    "lm_head": "int8" if head_quant else "fp32", "weights": "int8 per channel, symmetric",
                    "activations": "int16 symmetric" if quant == "a16w8" else "int8 per tensor, affine",
                    "calibration": {"sequences": len(calib), "tokens": sum(len(s) for s in calib)}}
    if fit is not None:
        refuse(fit)
    return ArmExport(program, arena, arm, quantization, delegation)
