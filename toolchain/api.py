"""The library behind the CLI, the pytest plugin and the tests. Each public function is one job.

Long jobs report progress through a ``progress(step, detail)`` callback; they never print.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolchain import __version__
from toolchain.errors import CapacityError, DeviceError, EdgelmError, InputError, UsageError

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
            "draft_model": (m.get("draft") or {}).get("model", {}).get("name"),  # None: no draft method
            "timings_s": m["timings_s"],
        } | ({"backend": m["delegation"]["backend"], "arm": m["arm"]} if "arm" in m else {})


def default_embedding(quant: str) -> str:
    return "none" if quant == "fp32" else "int8"


def export_model(model: str, out: Path, *, quant: str | None = None, group_size: int = 32,
                 embedding: str | None = None, max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
                 backend: str = "xnnpack", draft_model: str | None = None, board: str | None = None,
                 calibration: Path | None = None, check_steps: int | None = None,
                 min_agreement: float | None = None, progress: Progress = _noop) -> ExportResult:
    """Load ``model`` (preset name or HF folder), quantize, lower and write ``out/model.pte`` + manifest.

    ``draft_model``: a smaller model with the same tokenizer, quantized the same way and carried in
    the program as its ``draft`` method: the runner drafts with it and verifies with the model.
    ``board``, ``calibration``, ``check_steps``, ``min_agreement``: for Arm's backends (``ethos-u``,
    ``tosa``): the NPU board to lower for and fit, the calibration texts, the teacher-forced steps of
    the reference-model check and the greedy agreement it must reach.
    """
    import torch

    from toolchain.export import lower, manifest, quantize
    from toolchain.model import checkpoint, tokenizer

    if lower.get_backend(backend).arm:
        if draft_model is not None:
            raise UsageError(f"--draft-model is not supported with --backend {backend}")
        return _export_arm(model, out, backend=backend, quant=quant, max_seq_len=max_seq_len,
                           board=board, calibration=calibration, check_steps=check_steps,
                           min_agreement=min_agreement, progress=progress)
    if board is not None or calibration is not None or check_steps is not None or min_agreement is not None:
        raise UsageError(f"--board, --calibration, --check-steps and --min-agreement are for the Arm backends "
                         f"(ethos-u, tosa), not {backend}")
    quant = quant or "8da4w"
    if quant not in quantize.LINEAR_SCHEMES:
        raise UsageError(f"--quant {quant} is not a {backend} scheme; {backend} takes: "
                         f"{', '.join(quantize.LINEAR_SCHEMES)}")
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

    draft_net = draft_source = None
    if draft_model is not None:
        draft_net, draft_source = checkpoint.load(draft_model, max_seq_len=max_seq_len)
        draft_tok = tokenizer.for_model(draft_source.tokenizer_path, draft_source.config.vocab_size)
        check_draft(source, tok, draft_source, draft_tok)
        timings["load"] = time.monotonic() - t

    t = step("quantize", spec.name)
    qplan = quantize.plan(net, spec)  # refuses an impossible group size before any work
    draft_plan = quantize.plan(draft_net, spec) if draft_net is not None else None
    quantize.apply(net, qplan)
    if draft_net is not None and draft_plan is not None:
        quantize.apply(draft_net, draft_plan)
    timings["quantize"] = time.monotonic() - t

    t = step("export", f"torch.export, tokens dynamic in [1, {max_seq_len}]")
    with torch.no_grad():
        exported = lower.export(net)
        draft_exported = lower.export(draft_net) if draft_net is not None else None
    timings["export"] = time.monotonic() - t

    t = step("lower", f"to_edge_transform_and_lower ({backend})")
    edge = lower.lower(exported, backend, draft=draft_exported)
    delegation = lower.delegation_report(edge, backend, source.config.layer_types)
    draft = None
    if draft_net is not None and draft_source is not None and draft_plan is not None:
        report = lower.delegation_report(edge, backend, draft_source.config.layer_types, lower.DRAFT_METHOD)
        draft = {"method": lower.DRAFT_METHOD, "max_draft": draft_net.max_draft,
                 "model": {"name": draft_source.name, "kind": draft_source.kind,
                           "config": draft_source.config.to_dict(),
                           "parameters": draft_source.config.num_parameters(),
                           "weights_sha256": draft_source.weights_sha256, "seed": draft_source.seed},
                 "quantization": draft_plan.to_dict(),
                 "delegation": {k: report[k] for k in ("delegated_total", "non_delegated_total",
                                                       "decoder_layers_fully_delegated")}}
    timings["lower"] = time.monotonic() - t

    t = step("emit", "memory planning and serialization")
    program = lower.to_program_bytes(edge)
    timings["emit"] = time.monotonic() - t

    t = step("write", str(out))
    body = manifest.build(
        program=program, max_seq_len=max_seq_len, max_draft=net.max_draft,
        model={"name": source.name, "kind": source.kind, "config": source.config.to_dict(),
               "parameters": source.config.num_parameters(), "weights_sha256": source.weights_sha256,
               "seed": source.seed},
        quantization=qplan.to_dict(), delegation=delegation,
        tokens={"bos_token_id": source.config.bos_token_id, "eos_token_ids": list(source.eos_token_ids),
                "pad_token_id": source.config.pad_token_id,
                "tokenizer": {"kind": tok.name, "sha256": tok.sha256, "vocab_size": tok.vocab_size}},
        versions=versions(), timings=timings, draft=draft)
    pte, man = manifest.write(out, program, body)
    timings["write"] = time.monotonic() - t
    log.info("wrote %s (%d bytes) and %s", pte, len(program), man)
    return ExportResult(pte=pte, manifest_path=man, manifest=body)


def _export_arm(model: str, out: Path, *, backend: str, quant: str | None, max_seq_len: int, board: str | None,
                calibration: Path | None, check_steps: int | None, min_agreement: float | None,
                progress: Progress) -> ExportResult:
    """The Arm flow (toolchain.export.arm): a board's fit is judged before the slow steps and after."""
    import shutil
    import tempfile

    from toolchain import boards
    from toolchain.export import arm, manifest
    from toolchain.model import checkpoint, tokenizer

    profile = boards.get(board) if board is not None else None
    target = arm.target_for(backend, profile)
    if quant is None:
        quant = profile.default_quant if profile is not None and profile.default_quant in arm.QUANTS else "a8w8"
    if quant not in arm.QUANTS:
        raise UsageError(f"--quant {quant} is not an Arm scheme; --backend {backend} takes: {', '.join(arm.QUANTS)}")
    texts = arm.calibration_texts(calibration)
    steps = min(arm.CHECK_STEPS, max_seq_len) if check_steps is None else check_steps
    if not 0 <= steps <= max_seq_len:
        raise UsageError(f"--check-steps {steps} must be in [0 (no check), --max-seq-len {max_seq_len}]")
    agreement = arm.MIN_AGREEMENT if min_agreement is None else min_agreement
    if not (isinstance(agreement, (int, float)) and 0 <= agreement <= 1):
        raise UsageError(f"--min-agreement {agreement} must be a fraction in [0, 1]")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    timings: dict[str, float] = {}
    if profile is not None:
        parameters, state = arm.model_size(model, max_seq_len)
        fit = arm.estimate(profile, parameters, state, quant)
        progress("fit", fit.message())
        arm.refuse(fit)  # a model that cannot fit is refused before hours of lowering
    t = time.monotonic()
    progress("load", model)
    net, source = checkpoint.load(model, max_seq_len=max_seq_len)
    tok = tokenizer.for_model(source.tokenizer_path, source.config.vocab_size)
    timings["load"] = time.monotonic() - t
    t = time.monotonic()
    # Vela's reports are written aside and join the program only when it is written: a refused
    # export (does not fit, fails the check) leaves an earlier export in --out as it was.
    scratch = Path(tempfile.mkdtemp(prefix="edgelm-arm-"))
    try:
        result = arm.export(net, tok, layer_types=source.config.layer_types, vocab=source.config.vocab_size,
                            bos=source.config.bos_token_id, target=target, quant=quant, vela_dir=scratch / "vela",
                            calibration=texts, check_steps=steps, min_agreement=agreement, progress=progress)
        timings["lower"] = time.monotonic() - t
        body = manifest.build(
            program=result.program, max_seq_len=max_seq_len, max_draft=0,
            model={"name": source.name, "kind": source.kind, "config": source.config.to_dict(),
                   "parameters": source.config.num_parameters(), "weights_sha256": source.weights_sha256,
                   "seed": source.seed},
            quantization=result.quantization, delegation=result.delegation,
            tokens={"bos_token_id": source.config.bos_token_id, "eos_token_ids": list(source.eos_token_ids),
                    "pad_token_id": source.config.pad_token_id,
                    "tokenizer": {"kind": tok.name, "sha256": tok.sha256, "vocab_size": tok.vocab_size}},
            versions=versions(), timings=timings, extra={"arm": result.arm},
            calls={"inputs": [{"name": "tokens", "dtype": "int64", "shape": [1, arm.TOKENS_PER_CALL]},
                              {"name": "input_pos", "dtype": "int64", "shape": [1]}],
                   "outputs": [{"name": "logits", "dtype": "float32", "shape": [1, source.config.vocab_size]}],
                   "rewind": "none: one token per call; a prompt is fed token by token"})
        pte, man = manifest.write(out, result.program, body)
        old = out / "vela"
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        elif old.exists() or old.is_symlink():
            old.unlink()
        shutil.move(scratch / "vela", old)
        log.info("wrote %s (%d bytes) and %s", pte, len(result.program), man)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return ExportResult(pte=pte, manifest_path=man, manifest=body)


def check_draft(source: Any, tok: Any, draft_source: Any, draft_tok: Any) -> None:
    """Refuse a draft model that does not speak the model's tokens: another vocabulary or tokenizer."""
    if draft_source.config.vocab_size != source.config.vocab_size:
        raise UsageError(f"--draft-model {draft_source.name} has a vocabulary of {draft_source.config.vocab_size} "
                         f"tokens, {source.name} of {source.config.vocab_size}: a draft must share the "
                         "model's tokenizer")
    if draft_tok.sha256 != tok.sha256:
        raise UsageError(f"--draft-model {draft_source.name} has another tokenizer than {source.name} "
                         f"(tokenizer.json sha256 {str(draft_tok.sha256)[:12]}... against "
                         f"{str(tok.sha256)[:12]}...): a draft must share the model's tokenizer")


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"edgelm": __version__, "executorch": version("executorch"), "torch": version("torch"),
            "torchao": version("torchao")}


def inspect_program(pte: Path) -> dict[str, Any]:
    """The verified manifest of a ``.pte``."""
    from toolchain.export import manifest

    return manifest.read(pte)


# Build, flash, run ----------------------------------------------------------------------------------

DEFAULT_WORKDIR = Path("out")


def _digest(obj: Any) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _model_identity(model: str) -> dict[str, Any]:
    """What determines a model's weights, cheaply (no hashing of gigabytes)."""
    from toolchain.model import checkpoint

    if checkpoint.is_preset(model):
        from toolchain.model import presets

        return {"preset": model, "tiny": presets.tiny_key() if model == "tiny" else None}
    folder = checkpoint.folder_of(model)
    if not folder.is_dir():
        checkpoint.inspect_folder(folder)  # raises the usual one-line error
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".json", ".safetensors"))
    return {"folder": str(folder.resolve()), "files": [(p.name, p.stat().st_size, p.stat().st_mtime_ns)
                                                      for p in files]}


def _toolchain_sources_hash() -> str:
    import hashlib

    root = Path(__file__).parent
    h = hashlib.sha256()
    for sub in ("model", "export"):
        for p in sorted((root / sub).glob("*.py")):
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def cached_export(model: str, workdir: Path | None = None, *, quant: str, group_size: int = 32,
                  embedding: str | None = None, max_seq_len: int = DEFAULT_MAX_SEQ_LEN, draft_model: str | None = None,
                  progress: Progress = _noop) -> tuple[ExportResult, bool]:
    """export_model into the cache (toolchain/cache.py: ``exports/<key>``), reusing an earlier export of exactly
    the same inputs, from whichever folder or process made it. Returns (result, reused).

    ``workdir`` is not used (exports are not a run's: every folder shares them); kept for callers."""
    from toolchain import cache
    from toolchain.export import manifest

    key = _digest({"model": _model_identity(model), "quant": quant, "group": group_size, "emb": embedding,
                   "seq": max_seq_len, "versions": versions(), "src": _toolchain_sources_hash(),
                   **({"draft": _model_identity(draft_model)} if draft_model is not None else {})})
    bodies: dict[Path, dict[str, Any]] = {}

    def ready(folder: Path) -> bool:
        try:
            bodies[folder] = manifest.read(folder / manifest.PROGRAM_FILE)
            return True
        except EdgelmError:
            return False  # damaged or stale entry: export again

    def make(tmp: Path) -> None:
        result = export_model(model, tmp, quant=quant, group_size=group_size, embedding=embedding,
                              max_seq_len=max_seq_len, draft_model=draft_model, progress=progress)
        bodies[tmp] = result.manifest

    out, reused = cache.entry("exports", key, make, ready=ready, waiting=lambda why: progress("export", why))
    body = bodies.get(out) or bodies.popitem()[1]
    if reused:
        progress("export", f"reusing {out}")
    return ExportResult(out / manifest.PROGRAM_FILE, out / manifest.MANIFEST_FILE, body), reused


def cache_list() -> dict[str, Any]:
    """The cache's entries (toolchain/cache.py), most recently used first, with their sizes."""
    from toolchain import cache

    items = [e.to_dict() for e in cache.entries()]
    return {"root": str(cache.root()), "entries": items, "total_bytes": sum(e["size_bytes"] for e in items)}


def cache_prune(keep_bytes: int = 0) -> dict[str, Any]:
    """Remove cache entries, least recently used first, down to ``keep_bytes``; never one a process uses."""
    from toolchain import cache

    if keep_bytes < 0:
        raise UsageError(f"--keep-bytes {keep_bytes} must be 0 or more")
    return cache.prune(keep_bytes)


def check_counter_option(security_counter: int | None, sign_key: Any) -> None:
    """``--security-counter`` means something only inside a signature: refused without ``--sign-key``."""
    if security_counter is None:
        return
    if sign_key is None:
        raise UsageError("--security-counter needs --sign-key: only a signature makes the counter binding",
                         hint="add --sign-key KEY (the private key whose .pub the board trusts)")
    from toolchain.bundle import package

    package.check_security_counter(security_counter)


def build_firmware(board_name: str, pte: Path, out: Path, *, sanitize: bool = False, sdk_wheel: Path | None = None,
                   sign_key: Path | None = None, progress: Progress = _noop, security_counter: int | None = None):
    """Render the firmware for a board, compile it with the board's compiler and assemble the bundle.

    ``sign_key``: an ed25519 private key (`edgelm keygen`) to sign the bundle with (bundle.sig), its
    ``security_counter`` (default 0) written into bundle.json, under the signature.
    """
    from toolchain import boards
    from toolchain.bundle import signing
    from toolchain.export import manifest

    board = boards.get(board_name)
    if board.bare_metal:
        raise UsageError(f"{board.name} is a bare-metal board: its firmware is built by build_cortex_m")
    for path, what in ((out, "--out"), (out / "project", "the project folder"), (out / "bundle", "the bundle folder")):
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            raise UsageError(f"{what} {path} exists and is not a folder", hint="give a folder for --out")
    check_counter_option(security_counter, sign_key)
    key = signing.load_private_key(sign_key) if sign_key is not None else None  # before the slow steps
    body = manifest.read(pte)  # a .pte that is not a program, or not its manifest's, stops here
    return _build(board, pte, body, out, sanitize=sanitize, sdk_wheel=sdk_wheel, sign_key=key, progress=progress,
                  security_counter=security_counter)


def build_cortex_m(board_name: str, pte: Path, out: Path, *, executorch_dir: Path | None = None,
                   progress: Progress = _noop) -> dict[str, Any]:
    """The firmware of a bare-metal Arm board (:mod:`toolchain.bundle.cortexm`): the rendered project,
    its own C compiled with -Werror, the self-test ELF, and the runner, linked only against an
    ExecuTorch built for Cortex-M (``executorch_dir``). ``linked`` says whether that happened."""
    from toolchain import boards
    from toolchain.bundle import cortexm
    from toolchain.export import manifest

    board = boards.get(board_name)
    cortexm.check_bare_metal(board)
    if executorch_dir is not None and not executorch_dir.is_dir():
        raise UsageError(f"--executorch-cortex-m {executorch_dir} is not a folder")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UsageError(f"--out {out} exists and is not a folder", hint="give a folder for --out")
    body = manifest.read(pte)
    result = cortexm.build(board, body, pte, out, executorch_dir=executorch_dir,
                           progress=lambda message: progress("firmware", message))
    return {"board": board.name, "project": str(result.project), "selftest_elf": str(result.selftest_elf),
            "objects": len(result.objects), "cpu_flags": list(board.cpu_flags), "linked": result.linked,
            "runner_elf": str(result.runner_elf) if result.runner_elf else None, "missing": result.missing,
            "arena_bytes": result.plan.arena_bytes, "npu_scratch_bytes": result.plan.npu_scratch_bytes,
            "program_bytes": result.plan.program_bytes, "program_region": result.plan.program_region}


def _build(board, pte: Path, body: dict[str, Any], out: Path, *, sanitize: bool = False,
           sdk_wheel: Path | None = None, sign_key: Any = None, progress: Progress = _noop,
           security_counter: int | None = None):
    """build_firmware for a program whose manifest ``body`` was read (and its hash verified) already."""
    from toolchain.bundle import cross, package, render, sdk

    progress("sdk", f"executorch runtime for {board.arch}")
    runtime = sdk.sdk_for(board.arch, wheel=sdk_wheel)
    progress("render", f"firmware for {board.name}")
    project = render.render(board, out / "project")
    progress("compile", f"{board.cross_prefix or ''}g++ {' '.join(board.cpu_flags)}")
    runner = cross.configure_and_build(board, project, runtime, sanitize=sanitize)
    progress("bundle", str(out / "bundle"))
    return package.assemble(board, runner, runtime, pte, out / "bundle", render.firmware_version(), body,
                            sign_key=sign_key, counter=security_counter)


def cached_build(board_name: str, pte: Path, workdir: Path | None = None, progress: Progress = _noop,
                 sign_key: Path | None = None, security_counter: int | None = None):
    """build_firmware into the cache (toolchain/cache.py: ``builds/<board>-<key>``), reusing an earlier build of
    the same inputs (re-verified), from whichever folder or process made it.

    ``sign_key``: sign the bundle (a reused one too) with this ed25519 private key, with
    ``security_counter`` (None: a reused bundle's own, a new one's 0). ``workdir`` is not used (kept for callers).
    """
    from toolchain import boards, cache
    from toolchain.bundle import package, render, sdk, signing
    from toolchain.export import manifest

    board = boards.get(board_name)
    check_counter_option(security_counter, sign_key)
    signer = signing.load_private_key(sign_key) if sign_key is not None else None
    body = manifest.read(pte)  # hashes the program once; the build below reuses the verified manifest
    key = f"{board.name}-" + _digest({"board": board.to_dict(), "fw": render.firmware_version(),
                                      "et": sdk.host_version(), "pte": body["program"]["sha256"]})

    def ready(folder: Path) -> bool:
        try:
            package.verify_bundle(package.read_bundle(folder / "bundle"))
            return True
        except EdgelmError:
            return False

    def make(tmp: Path) -> None:
        _build(board, pte, body, tmp, progress=progress, security_counter=None)

    waiting = lambda why: progress("build", why)  # noqa: E731
    out, reused = cache.entry("builds", key, make, ready=ready, waiting=waiting)
    if signer is not None:  # a bundle in the cache is shared: signed under its lock
        with cache.changing("builds", key, waiting):
            package.sign_bundle(package.read_bundle(out / "bundle"), signer, security_counter)
    if reused:
        progress("build", f"reusing {out / 'bundle'}")
    return package.read_bundle(out / "bundle"), reused


def target_for(board_name: str, target: str | None, workdir: Path = DEFAULT_WORKDIR, options: Any = None):
    """The target ``target`` (a spec string; None: the board profile's default) for a board."""
    from toolchain import boards
    from toolchain.deploy import registry

    board = boards.get(board_name)
    refuse_bare_metal(board, "run, flash or reach")
    return registry.create(target or registry.default_for(board), board, workdir.resolve() / "targets", options)


def refuse_bare_metal(board: Any, what: str) -> None:
    """A bare-metal NPU board has no target edgelm can drive from here: say what it takes instead."""
    if not board.bare_metal:
        return
    raise UsageError(
        f"{board.name} is a bare-metal board ({board.description}): "
        f"edgelm cannot {what} it from this machine. Its runner must be linked against an ExecuTorch runtime "
        f"built for Cortex-M (`edgelm build --board {board.name} --pte P --executorch-cortex-m DIR`) and flashed to "
        "the board, or run on Arm's Corstone FVP; QEMU has no Ethos-U NPU and no such board or FVP is here",
        hint=f"what edgelm does for {board.name}: `edgelm export --backend ethos-u --board {board.name}` (lowering, "
             f"reference-model check, Vela budget, fit) and `edgelm build --board {board.name}` (the Cortex-M project)")


def targets() -> list[dict[str, Any]]:
    """The kinds of target a spec string can name."""
    from toolchain.deploy import registry

    return [{"kind": k.name, "spec": k.example, "description": k.description} for k in registry.kinds()]


def flash(bundle_dir: Path | None, target: str | None = None, workdir: Path = DEFAULT_WORKDIR, start: bool = True,
          progress: Progress = _noop, sign_key: Path | None = None, *, board: str | None = None,
          rollback: bool = False, options: Any = None, service: bool = False, force: bool = False,
          security_counter: int | None = None) -> dict[str, Any]:
    """Deploy a bundle (verified on the board) and start it; where the target can, it keeps serving
    after we return.

    Started through the one bring-up routine: the release counts as flashed only once its runner
    has said HELLO on the link with the program's hash; otherwise the previous release is restored.
    ``rollback``: instead of a bundle, make the previous release current again (verified) and start it.
    ``sign_key``: first sign the bundle (writes bundle.sig into ``bundle_dir``) with this private key,
    its ``security_counter`` written into bundle.json first (None: the bundle's own, else 0).
    A board that trusts keys records the counter of the release once it serves (``security_counter``
    in the result: the board's counter now).
    ``service``: install the runner as a service that serves after every boot (where the target can).
    """
    from toolchain.bundle import package, signing
    from toolchain.deploy import bringup
    from toolchain.deploy.base import need_runner, need_store

    check_counter_option(security_counter, sign_key)
    bundle = None
    if rollback:
        if bundle_dir is not None:
            raise UsageError("give a bundle or --rollback, not both")
        if board is None:
            raise UsageError("--rollback needs --board")
        board_name = board
    else:
        if bundle_dir is None:
            raise UsageError("give the bundle folder to flash (or --rollback)")
        bundle = package.read_bundle(bundle_dir)
        if sign_key is not None:
            package.sign_bundle(bundle, signing.load_private_key(sign_key), security_counter)
            bundle = package.read_bundle(bundle_dir)  # its bundle.json now holds the counter
        if board is not None and board != bundle.board:
            raise UsageError(f"bundle {bundle_dir} was built for {bundle.board}, not --board {board}")
        board_name = bundle.board
    if service:
        from dataclasses import replace

        from toolchain.deploy.registry import TargetOptions

        options = replace(options or TargetOptions(), service=True)
    tgt = target_for(board_name, target, workdir, options)
    store = need_store(tgt)
    base = {"board": board_name, "target": tgt.spec}
    if tgt.runner is None:  # a card: the board starts the runner when it boots
        start = service = False
    if not start and not service:
        with tgt.lock("flash"):
            if tgt.power is not None:  # a board that boots is switched on to receive it (and left on)
                tgt.power.on(progress)
            release = bringup.stage(tgt, bundle, progress, force)
            store.activate(release)
            counter = store.confirm(release)  # nothing to answer HELLO: made current is confirmed
        return base | {"release": release.id, "path": release.path, "verified": True, "started": False,
                       "security_counter": counter, "notes": list(tgt.notes)}
    runner = need_runner(tgt)
    keep = runner.keeps_serving
    with bringup.bring_up(tgt, bundle, rollback=rollback, keep_running=keep, progress=progress,
                          what="flash", force=force) as up:
        result = base | {"release": up.release.id, "path": up.release.path, "verified": True,
                         "previous": up.previous.id if up.previous else None,
                         "port": up.port, "firmware_version": up.hello.firmware,
                         "model_sha256": up.hello.model_sha256, "load_ms": up.hello.load_ms,
                         "started": True, "serving": keep, "security_counter": up.security_counter}
    return result | {"notes": list(tgt.notes)}


def stop(board_name: str, target: str | None = None, workdir: Path = DEFAULT_WORKDIR,
         options: Any = None) -> str | None:
    """Stop the runner `flash` started. None, or a note on a stale PID file (removed; nothing was killed for it)."""
    from toolchain.deploy.base import need_runner

    tgt = target_for(board_name, target, workdir, options)
    runner = need_runner(tgt)
    with tgt.lock("stop"):
        return runner.stop()


def power(board_name: str, action: str, target: str | None = None, workdir: Path = DEFAULT_WORKDIR,
          options: Any = None, progress: Progress = _noop) -> dict[str, Any]:
    """Switch a target's board ``on``, ``off``, ``cycle`` it, or read its ``status`` (targets with power
    control: the emulated board that boots)."""
    from toolchain.deploy.base import need_power

    tgt = target_for(board_name, target, workdir, options)
    pwr = need_power(tgt)
    if action not in ("on", "off", "cycle", "status"):
        raise UsageError(f"unknown power action {action!r}; known: on, off, cycle, status")
    changed: bool | None = None
    if action != "status":
        with tgt.lock(f"power {action}"):
            if action == "on":
                changed = pwr.on(progress)
            elif action == "off":
                changed = pwr.off()
            else:
                pwr.cycle(progress)
                changed = True
    return {"board": board_name, "target": tgt.spec, "action": action, "changed": changed} | pwr.status()


def image(board_name: str, out: Path, *, bundle_dir: Path | None = None, model: str | None = None,
          quant: str | None = None, workdir: Path = DEFAULT_WORKDIR, ssh_key: Path | None = None,
          data_bytes: int | None = None, progress: Progress = _noop) -> dict[str, Any]:
    """A bootable image for an Arm board (:mod:`toolchain.image.builder`), serving ``bundle_dir``
    (or the bundle built for ``model``), or no release."""
    from toolchain import boards
    from toolchain.bundle import package
    from toolchain.image import builder

    board = boards.get(board_name)
    refuse_bare_metal(board, "make a Linux image for")
    if bundle_dir is not None and model is not None:
        raise UsageError("give --bundle or --model, not both")
    if board.arch == "aarch64":
        builder.check_out(out)  # a folder that is not edgelm's is refused before the model is exported
    bundle = None
    if bundle_dir is not None:
        bundle = package.read_bundle(bundle_dir)
    elif model is not None:
        exported, _ = cached_export(model, workdir, quant=quant or board.default_quant)
        bundle, _ = cached_build(board_name, exported.pte, workdir, progress)
    return builder.build(board, out, bundle=bundle, ssh_key=ssh_key, data_bytes=data_bytes,
                         progress=progress).to_dict()


def keygen(out: Path) -> dict[str, Any]:
    """A new ed25519 signing key: ``out`` (private, PEM, mode 0600) and ``out.pub``; missing folders
    on the way are made (mode 0700)."""
    from toolchain.bundle import signing

    private, public, fp = signing.generate(out)
    return {"private_key": str(private), "public_key": str(public), "fingerprint": fp}


@contextlib.contextmanager
def _trust_job(board_name: str, target: str | None, workdir: Path, options: Any, what: str,
               progress: Progress) -> Iterator[Any]:
    """The target, locked, its board on (a board that boots is switched on for it, and off again
    after): the board's trust lives on the board."""
    tgt = target_for(board_name, target, workdir, options)
    _store_of(tgt)
    with tgt.lock(what):
        powered = tgt.power.on(progress) if tgt.power is not None else False
        try:
            yield tgt
        finally:
            if powered and tgt.power is not None:
                tgt.power.off()


def _store_of(tgt: Any) -> Any:
    from toolchain.deploy.base import need_store

    return need_store(tgt)


def trust(public_key: Path, board_name: str, target: str | None = None,
          workdir: Path = DEFAULT_WORKDIR, options: Any = None, progress: Progress = _noop) -> dict[str, Any]:
    """Make a target accept only bundles signed by this key (or another it trusts) from now on. The
    key is kept on the board (its data folder, the card, a local board's state folder): every host
    and workdir that reaches it finds it there."""
    from toolchain.bundle import signing

    key = signing.load_public_key(public_key)
    with _trust_job(board_name, target, workdir, options, "trust", progress) as tgt:
        store = _store_of(tgt)
        fp = store.trust(signing.public_pem(key))
        keys = store.trusted()
    return {"board": board_name, "target": tgt.spec, "fingerprint": fp, "public_key": str(public_key),
            "trusted": len(keys), "notes": list(tgt.notes)}


def trusted(board_name: str, target: str | None = None, workdir: Path = DEFAULT_WORKDIR, options: Any = None,
            progress: Progress = _noop) -> dict[str, Any]:
    """The keys a target's board trusts and the security counter it holds."""
    with _trust_job(board_name, target, workdir, options, "trusted", progress) as tgt:
        store = _store_of(tgt)
        keys = store.trusted()
        counter = store.security_counter()
    return {"board": board_name, "target": tgt.spec, "keys": keys, "security_counter": counter,
            "accepts_unsigned": not keys, "notes": list(tgt.notes)}


FINGERPRINT_MIN_HEX = 8  # a prefix shorter than this names a key too loosely


def untrust(fingerprint: str | None, board_name: str, target: str | None = None, workdir: Path = DEFAULT_WORKDIR,
            options: Any = None, *, all_keys: bool = False, allow_unsigned: bool = False,
            progress: Progress = _noop) -> dict[str, Any]:
    """Stop trusting the key whose fingerprint starts with ``fingerprint`` (or, ``all_keys``, every
    key). Leaving the board with no trusted key makes it accept unsigned bundles again: refused
    unless ``allow_unsigned`` says that is what is wanted. The security counter stays as it is."""
    if (fingerprint is None) == (not all_keys):
        raise UsageError("give the fingerprint of the key to remove, or --all, not both" if all_keys else
                         "give the fingerprint of the key to remove (`edgelm trusted` lists them), or --all")
    wanted = fingerprint.strip().lower() if fingerprint is not None else ""
    if fingerprint is not None and (len(wanted) < FINGERPRINT_MIN_HEX or len(wanted) > 64
                                    or not all(c in "0123456789abcdef" for c in wanted)):
        raise UsageError(f"{fingerprint[:80]!r} is not a key fingerprint (at least {FINGERPRINT_MIN_HEX} hex digits "
                         "of it)", hint="`edgelm trusted` lists them")
    with _trust_job(board_name, target, workdir, options, "untrust", progress) as tgt:
        store = _store_of(tgt)
        keys = store.trusted()
        where = f"{tgt.spec}:{board_name}"
        chosen = keys if all_keys else [k for k in keys if k["fingerprint"].startswith(wanted)]
        if not all_keys and not chosen:
            known = ", ".join(k["fingerprint"][:16] for k in keys) or "none"
            raise UsageError(f"{where} trusts no key {wanted[:16]} (it trusts: {known})")
        if len(chosen) > 1 and not all_keys:
            raise UsageError(f"{wanted} names {len(chosen)} keys {where} trusts; give more of the fingerprint")
        left = len(keys) - len(chosen)
        if keys and not left and not allow_unsigned:
            what = "its last trusted key" if len(chosen) == 1 else f"all {len(chosen)} keys it trusts"
            raise UsageError(f"removing {what} leaves {where} trusting no key: it would accept unsigned bundles "
                             "again", hint="add --allow-unsigned if that is what you want, or trust another key first")
        for key in chosen:
            store.untrust(key["fingerprint"])
        counter = store.security_counter()
    return {"board": board_name, "target": tgt.spec, "removed": [k["fingerprint"] for k in chosen],
            "remaining": left, "accepts_unsigned": not left, "security_counter": counter, "notes": list(tgt.notes)}


MAX_THREADS = 256
U64 = 2**64


@dataclass
class RunRequest:
    board: str
    model: str
    prompt: str
    tokens: int = 64
    quant: str | None = None
    target: str | None = None
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    ignore_eos: bool = False
    draft: bool = True  # the board may verify drafts (speculative decoding)
    draft_model: str | None = None  # export with this draft model (the program's draft method)
    fidelity: bool = True  # also measure the board's tokens against the eager fp32 model
    min_agreement: float | None = None  # fail below this top-1 agreement with fp32 (needs fidelity)
    tolerance: float | None = None
    threads: int | None = None
    workdir: Path = DEFAULT_WORKDIR
    sign_key: Path | None = None  # sign the bundle with this ed25519 private key (edgelm keygen)
    security_counter: int | None = None  # with sign_key: the bundle's security counter (anti-rollback)
    retries: int = 0
    near_tie_budget: float | None = None  # fraction of the tokens; None: compare.DEFAULT_NEAR_TIE_BUDGET
    byte_tokenizer: bool = False  # allow a checkpoint folder without tokenizer.json (prompt as UTF-8 bytes)
    target_options: Any = None  # registry.TargetOptions: --port, --board-port, --ssh-config, --accept-new-host-key
    force: bool = False  # go on past the preflight's refusal (a note says what it refused)
    pte: Path | None = None  # serve this program from `edgelm export` instead of exporting ``model``
    prompt_ids: tuple[int, ...] | None = None  # send these token ids as the prompt, as they are (no BOS added)
    chat: bool = False  # send the prompt as a user message through the model's chat template
    system: str | None = None  # with chat: the system message
    show_special: bool = False  # the printed text shows special tokens (as tokenizers decodes with them)

    def check(self) -> None:
        """Every option in range, before any work (one line naming the option)."""
        import math

        def finite(name: str, x: float) -> None:
            if not isinstance(x, (int, float)) or not math.isfinite(x):
                raise UsageError(f"{name} {x} must be a finite number")

        if self.tokens < 1:
            raise UsageError(f"--tokens {self.tokens} must be at least 1")
        if self.max_seq_len < 2:
            raise UsageError(f"--max-seq-len {self.max_seq_len} must be at least 2")
        finite("--temperature", self.temperature)
        if self.temperature < 0:
            raise UsageError(f"--temperature {self.temperature} must be 0 (greedy) or positive")
        if not 0 <= self.top_k < 2**32:
            raise UsageError(f"--top-k {self.top_k} must be 0 (all) or a positive count")
        finite("--top-p", self.top_p)
        if not 0 < self.top_p <= 1:
            raise UsageError(f"--top-p {self.top_p} must be in (0, 1]")
        if not 0 <= self.seed < U64:
            raise UsageError(f"--seed {self.seed} must be in [0, 2^64)")
        if self.threads is not None and not 1 <= self.threads <= MAX_THREADS:
            raise UsageError(f"--threads {self.threads} must be in [1, {MAX_THREADS}]")
        if self.min_agreement is not None:
            finite("--min-agreement", self.min_agreement)
            if not 0 <= self.min_agreement <= 1:
                raise UsageError(f"--min-agreement {self.min_agreement} must be a fraction in [0, 1]")
            if not self.fidelity:
                raise UsageError("--min-agreement needs the fidelity measurement: drop --no-fidelity")
        if self.tolerance is not None:
            finite("--tolerance", self.tolerance)
            if self.tolerance <= 0:
                raise UsageError(f"--tolerance {self.tolerance} must be positive")
        if not 0 <= self.retries <= 100:
            raise UsageError(f"--retries {self.retries} must be in [0, 100]")
        if self.system is not None and not self.chat:
            raise UsageError("--system needs --chat: a system message goes through the chat template")
        if self.near_tie_budget is not None:
            finite("--near-tie-budget", self.near_tie_budget)
            if not 0 <= self.near_tie_budget <= 1:
                raise UsageError(f"--near-tie-budget {self.near_tie_budget} must be a fraction in [0, 1]")


@dataclass
class Served:
    """One request served by a board and judged against the host reference."""

    request: Any  # protocol.Request, as sent
    collected: Any  # session.Collected
    verdict: Any  # compare.Verdict
    attempts: int


CANCEL_GRACE_S = 1.0  # after CANCEL, the most a board may stay silent before the request is abandoned


def serve_and_validate(up: Any, request: Any, judge: Any, *, retries: int = 0,
                       on_token: Callable[[int], None] = lambda t: None,
                       on_retry: Callable[[int, str], None] = lambda n, why: None,
                       cancel: Callable[[], bool] | None = None) -> Served:
    """Send ``request`` to a board that is up (``bringup.BoardUp``), gather its stream and judge every
    token with ``judge`` (``validate.judge.Judge``: the board's twin, or the host reference; None:
    not judged).

    A stream the link damaged (garbled or lost frames, a port that went away, a silent board) is
    asked for again, up to ``retries`` times; only a complete stream is judged.

    ``cancel`` is asked after each token and while the board is silent; the first time it says yes,
    the board is sent CANCEL, and the tokens it sent up to its STATS are judged (a board that claims a
    CANCEL nobody sent fails). A board silent for ``CANCEL_GRACE_S`` after the CANCEL is abandoned
    (LinkError)."""
    from toolchain.link import protocol
    from toolchain.link.session import LinkError

    cancelled, cancelled_at = False, 0.0

    def asked_to_cancel() -> None:
        nonlocal cancelled, cancelled_at
        if cancel is not None and not cancelled and cancel():
            up.session.send(protocol.CANCEL)
            cancelled, cancelled_at = True, time.monotonic()

    def token(t: int) -> None:
        on_token(t)
        asked_to_cancel()

    def idle() -> None:  # the board is silent (a long prefill, or a hung board): Ctrl-C must still work
        asked_to_cancel()
        if cancelled and time.monotonic() - cancelled_at > CANCEL_GRACE_S:
            raise LinkError(f"the board did not end the request within {CANCEL_GRACE_S:g} s of CANCEL: abandoned")

    attempt = 0
    up.session.on_idle = idle if cancel is not None else None
    try:
        while True:
            attempt += 1
            try:
                cancelled = False
                collected = up.session.collect(request, token)
                break
            except LinkError as exc:
                if cancelled:  # abandoned on the user's word: asking again is not what they want
                    raise
                if attempt > retries:
                    if retries:
                        raise LinkError(f"{exc} (after {retries} retries)") from None
                    raise
                log.warning("stream damaged (%s); asking again (%d of %d)", exc, attempt, retries)
                on_retry(attempt, str(exc))
                up.session.resync()
    finally:
        up.session.on_idle = None
    if judge is None:  # not judged (a console without a program here to judge by)
        return Served(collected.request, collected, None, attempt)
    verdict = judge.judge(collected, up.session.hello, cancelled=cancelled)
    if cancelled or not verdict.passed:
        # The twin ran a cancelled request to its end, or did not follow a failed one: what the board
        # holds is no longer what the judge's side holds. The next turn starts afresh on both.
        up.session.held = None
    return Served(collected.request, collected, verdict, attempt)


def measure_fidelity(model: str, prompt: list[int], tokens: Sequence[int], program_logits: list[Any],
                     min_agreement: float | None) -> Any:
    """The board's tokens against the eager fp32 model of ``model`` (validate/fidelity.py), teacher-forced."""
    import numpy as np
    import torch

    from toolchain.model import checkpoint
    from toolchain.validate import fidelity

    n = len(prompt) + len(tokens)
    net, _ = checkpoint.load(model, max_seq_len=max(n, 2), all_logits=True)
    with torch.no_grad():
        logits = net(torch.tensor([[*prompt, *tokens[:-1]]]), torch.tensor([0]))[0, len(prompt) - 1:]
    return fidelity.measure(logits.numpy(), np.stack(program_logits), tokens, min_agreement)


def _fp32_imports() -> None:
    """The code of fidelity's eager fp32 model (torch, the model), imported ahead. Only imported: torch's work
    (making the model, its thread pool) waits until after the stream, whose timing a busy CPU would blur."""
    import torch  # noqa: F401

    from toolchain.model import lfm2, presets  # noqa: F401
    from toolchain.validate import fidelity  # noqa: F401


class Later:
    """A value made in a background thread, started at once: ``get()`` waits for it and raises what making it
    raised. A run loads its host references this way while the board comes up (``Prepared.settle``)."""

    def __init__(self, make: Callable[[], Any], name: str):
        import threading

        self._value: Any = None
        self._error: BaseException | None = None

        def run() -> None:
            try:
                self._value = make()
            except BaseException as exc:  # handed to whoever asks for the value
                self._error = exc

        self._thread = threading.Thread(target=run, name=f"edgelm: {name}", daemon=True)
        self._thread.start()

    @property
    def ready(self) -> bool:
        return not self._thread.is_alive()

    def get(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value

    def wait(self) -> None:
        """Wait for the thread to end, whatever it made (nothing runs in the background after a job)."""
        self._thread.join()


class LoadingReference:
    """The host reference (``validate.reference.ProgramRunner`` of a program), loading in the background:
    any use of it waits for the load (``progress`` is told once if it has to)."""

    def __init__(self, pte: Path, progress: Progress = _noop):
        def imports() -> None:  # the slow part (torch, the ExecuTorch runtime); the program loads on first use,
            from toolchain.validate import reference  # in the caller's thread (it briefly takes over fd 2)

            reference._runtime()

        self._pte, self._runner = pte, None  # type: Path, Any
        self._later, self._progress, self._told = Later(imports, "load the host reference"), progress, False

    def loaded(self) -> Any:
        if self._runner is None:
            if not self._later.ready and not self._told:
                self._told = True
                self._progress("reference", "waiting for the host reference to finish loading")
            self._later.get()
            from toolchain.validate.reference import ProgramRunner

            self._runner = ProgramRunner(self._pte)
        return self._runner

    @property
    def ready(self) -> bool:
        return self._later.ready

    def wait(self) -> None:
        self._later.wait()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.loaded(), name)


@dataclass
class RunReport:
    """What the main job found: the board's stream, its timings and the verdict (``to_dict`` for JSON)."""

    board: str
    target: str
    emulated: bool
    model: str
    quant: str
    release: str
    firmware_version: str
    model_sha256: str
    threads: int
    prompt: str
    prompt_token_ids: list[int]
    generated_token_ids: list[int]
    text: str
    stop_reason: str
    sampling: dict[str, Any]
    board_stats: dict[str, Any]
    validation: dict[str, Any]
    attempts: int
    reused: dict[str, bool]
    bundle: str
    pte: str
    boot: dict[str, Any] | None = None  # a board powered on for this run: seconds to SSH and to HELLO
    fidelity: dict[str, Any] | None = None  # validate/fidelity.py: the board's tokens vs the eager fp32 model
    token_times_us: list[int] = field(default_factory=list)  # each token's arrival on the board's clock
    # what each generated token printed (TextAssembler.pieces): "" for one that ends inside a character
    # or is hidden; the report colours the text token by token with them
    token_texts: list[str] = field(default_factory=list)
    chat_template: str | None = None  # --chat: the template the prompt went through (ChatFormat.line)

    @property
    def passed(self) -> bool:
        return self.validation["verdict"] == "PASS" and (self.fidelity or {}).get("check") != "FAIL"

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def _given_program(req: RunRequest, progress: Progress) -> ExportResult:
    """``--pte``: a program `edgelm export` wrote (its manifest verified), made from ``--model``."""
    from toolchain.export import manifest
    from toolchain.model import checkpoint

    assert req.pte is not None
    man = manifest.read(req.pte)
    made_from = man["model"]["name"]
    if (checkpoint.is_preset(req.model) or req.model in checkpoint.SHIPPED) and made_from != req.model:
        raise UsageError(f"--pte {req.pte} was exported from {made_from!r}, not --model {req.model}")
    if req.quant is not None and req.quant != man["quantization"]["linear"]:
        raise UsageError(f"--pte {req.pte} is {man['quantization']['linear']}, not --quant {req.quant}")
    drafted_by = (man.get("draft") or {}).get("model", {}).get("name")
    if req.draft_model is not None and req.draft_model != drafted_by:
        raise UsageError(f"--pte {req.pte} carries " + (f"the draft model {drafted_by!r}" if drafted_by else
                                                        "no draft model") + f", not --draft-model {req.draft_model}")
    progress("export", f"using {req.pte} ({man['quantization']['scheme']})")
    return ExportResult(req.pte, req.pte.parent / manifest.MANIFEST_FILE, man)


def tokenizer_path(req: RunRequest) -> Path | None:
    """The checkpoint's tokenizer.json (None for a preset); a folder without one is refused unless
    ``--byte-tokenizer``."""
    from toolchain.model import checkpoint

    if checkpoint.is_preset(req.model):
        return None
    tok_path = checkpoint.inspect_folder(checkpoint.folder_of(req.model)).tokenizer_path
    if tok_path is None and not req.byte_tokenizer:
        raise InputError(f"{req.model} has no tokenizer.json: the prompt cannot be tokenized as the model was "
                         "trained", hint="add the checkpoint's tokenizer.json, or pass --byte-tokenizer to send "
                                         "the prompt as UTF-8 bytes anyway")
    return tok_path


def _request_for(req: RunRequest, man: dict[str, Any], tok: Any) -> Any:
    """The REQUEST frame for ``req`` on the program ``man`` describes; refused if it cannot fit."""
    from toolchain.link import protocol

    if req.prompt_ids is not None:
        vocab = man["model"]["config"]["vocab_size"]
        prompt_ids = list(req.prompt_ids)
        if not prompt_ids:
            raise UsageError("the prompt has no token ids")
        bad = next((t for t in prompt_ids if not isinstance(t, int) or not 0 <= t < vocab), None)
        if bad is not None:
            raise UsageError(f"prompt token id {bad!r} is outside the vocabulary [0, {vocab})")
    else:
        prompt_ids = chat_prompt(req, man, tok) if req.chat else [man["tokens"]["bos_token_id"],
                                                                    *tok.encode(req.prompt)]
    max_seq = man["program"]["max_seq_len"]
    if len(prompt_ids) + req.tokens > max_seq:
        raise CapacityError(f"{len(prompt_ids)} prompt tokens + {req.tokens} new tokens exceed the program's max "
                            f"sequence length {max_seq}", hint="ask for fewer --tokens or export with a larger "
                                                               "--max-seq-len")
    return protocol.Request(prompt=tuple(prompt_ids), max_new_tokens=req.tokens, temperature=req.temperature,
                            top_k=req.top_k, top_p=req.top_p, seed=req.seed,
                            stop=tuple(man["tokens"]["eos_token_ids"]), ignore_eos=req.ignore_eos,
                            report_logits=True, draft=req.draft)


def chat_format(model: str) -> Any:
    """The chat template of ``model`` (``chat.ChatFormat``; plain text for a preset or a folder without one)."""
    from toolchain.chat import ChatFormat
    from toolchain.model import checkpoint

    return ChatFormat.for_checkpoint(None if checkpoint.is_preset(model) else checkpoint.folder_of(model))


def _chat_template(req: RunRequest) -> Any:
    """``--chat``'s template; refused for a model without one."""
    fmt = chat_format(req.model)
    if not fmt.template:
        raise UsageError(f"--chat: {req.model} has no chat template: {fmt.why_plain}",
                         hint="--chat is for instruct models; drop it to send the prompt as plain text")
    return fmt


def chat_prompt(req: RunRequest, man: dict[str, Any], tok: Any) -> list[int]:
    """``--chat``: the prompt as one user message (after ``--system``) through the model's chat
    template, as transformers' apply_chat_template gives it."""
    from toolchain.chat import Conversation

    conv = Conversation.from_manifest(_chat_template(req), tok, man)
    conv.system = req.system
    return conv.prompt_for([{"role": "user", "content": req.prompt}])


@dataclass
class Prepared:
    """Everything a run needs before the board: the program, the bundle, the tokenizer and the host
    reference. A pytest session prepares once and serves many requests on one bring-up."""

    req: RunRequest
    board: Any  # boards.Board
    target: Any  # deploy.base.Target
    exported: ExportResult
    bundle: Any  # bundle.package.Bundle
    quant: str
    tok: Any  # model.tokenizer tokenizer
    reference: Any  # validate.reference.ProgramRunner (a LoadingReference: it loads in the background)
    tolerance: float
    reused: dict[str, bool]
    judge: Any = None  # validate.judge.Judge: the twin (started on the first request) or the reference
    fp32: Later | None = None  # fidelity's eager fp32 model: its code, imported in the background

    def settle(self, progress: Progress = _noop) -> None:
        """Wait for the background loads: nothing may run beside a stream, whose timing is judged against this
        process's clock (a thread that holds the interpreter would make tokens seem late)."""
        busy = [later for later in (self.reference, self.fp32)
                if isinstance(later, (Later, LoadingReference)) and not later.ready]
        if busy:
            progress("reference", "waiting for the host reference to finish loading (nothing loads during a stream)")
        for later in busy:
            later.wait()

    def close(self) -> None:
        """Stop the twin, if one was started, and wait for the background loads."""
        if self.judge is not None:
            self.judge.close()
        for later in (self.reference, self.fp32):
            if isinstance(later, (Later, LoadingReference)):
                later.wait()


def prepare_run(req: RunRequest, progress: Progress = _noop) -> Prepared:
    """Check the request, export (cached), build (cached), and start loading the host reference (and, for
    fidelity, the eager fp32 model) in the background, while the board comes up (``Prepared.settle``)."""
    from toolchain import boards
    from toolchain.model import tokenizer
    from toolchain.validate import compare
    from toolchain.validate.judge import Judge

    req.check()
    check_counter_option(req.security_counter, req.sign_key)
    if req.sign_key is not None:
        from toolchain.bundle import signing

        signing.load_private_key(req.sign_key)  # a bad key fails before the slow steps
    board = boards.get(req.board)
    tok_path = tokenizer_path(req)
    if req.chat:  # a model without a template is refused before any work
        progress("chat", _chat_template(req).line)
    tgt = target_for(req.board, req.target, req.workdir, req.target_options)  # an unknown target fails early
    if req.pte is not None:
        exported, reused_export = _given_program(req, progress), True
        quant = exported.manifest["quantization"]["linear"]
    else:
        quant = req.quant or board.default_quant
        exported, reused_export = cached_export(req.model, req.workdir, quant=quant, max_seq_len=req.max_seq_len,
                                                draft_model=req.draft_model, progress=progress)
    tok = tokenizer.for_model(tok_path, exported.manifest["model"]["config"]["vocab_size"])
    _request_for(req, exported.manifest, tok)  # a prompt that cannot fit fails before the build
    bundle, reused_build = cached_build(req.board, exported.pte, req.workdir, progress=progress, sign_key=req.sign_key,
                                        security_counter=req.security_counter)
    tol = req.tolerance if req.tolerance is not None else compare.default_tolerance(quant)
    progress("reference", "importing torch and the ExecuTorch runtime for the host reference, in the background")
    reference = LoadingReference(exported.pte, progress)
    fp32 = Later(_fp32_imports, "import the eager fp32 model's code") if req.fidelity else None
    fraction = compare.DEFAULT_NEAR_TIE_BUDGET if req.near_tie_budget is None else req.near_tie_budget
    judge = Judge(board=board, bundle_root=bundle.root, reference=reference, tolerance=tol,
                  near_tie=board.near_tie, near_tie_fraction=fraction)
    return Prepared(req, board, tgt, exported, bundle, quant, tok, reference, tol,
                    {"export": reused_export, "build": reused_build}, judge, fp32)


def serve_run(prep: Prepared, up: Any, req: RunRequest, progress: Progress = _noop,
              on_text: Callable[[str], None] = lambda s: None,
              on_retry: Callable[[int, str], None] = lambda n, why: None) -> RunReport:
    """Serve ``req`` (its prompt, length and sampling) on a board that is up with ``prep``'s bundle,
    validate the stream and measure fidelity: a typed report."""
    from toolchain.link import protocol
    from toolchain.model import tokenizer

    man, tok, tgt = prep.exported.manifest, prep.tok, prep.target
    request = _request_for(req, man, tok)
    assembler = tokenizer.TextAssembler(tok, req.show_special)

    def on_token(token: int) -> None:
        on_text(assembler.push(token))

    def retried(n: int, why: str) -> None:
        nonlocal assembler
        assembler = tokenizer.TextAssembler(tok, req.show_special)
        on_retry(n, why)

    prep.settle(progress)
    progress("stream", f"{len(request.prompt)} prompt tokens, up to {req.tokens} new")
    if prep.judge.rule == "twin":
        progress("validate", f"against the board's twin ({prep.judge.how})")
    served = serve_and_validate(up, request, prep.judge, retries=req.retries, on_token=on_token, on_retry=retried)
    boot = None
    if up.booted and tgt.power is not None:
        state = tgt.power.status()
        boot = {"boot_s": state.get("boot_s"), "boot_to_hello_s": state.get("boot_to_hello_s")}
    on_text(assembler.finish())
    fid = None
    if served.verdict.generated and served.collected.stats is not None:
        from toolchain.validate import compare
        from toolchain.validate.judge import stream_of, teacher_forced

        tokens = list(served.collected.tokens)
        # This machine's run of the program, teacher-forced on the board's tokens (the reference rule
        # computed it already): fidelity's program logits, and the drift the report plots.
        program_logits = prep.judge.last_logits or teacher_forced(prep.reference, served.request.prompt, tokens)
        if served.verdict.rule == compare.TWIN:  # beside the twin's verdict, not part of it
            served.verdict.tolerance = prep.tolerance
            compare.record_drift(served.verdict, stream_of(served.collected), program_logits)
        if req.fidelity:
            progress("fidelity", "the board's tokens against the eager fp32 model")
            fid = measure_fidelity(req.model, list(served.request.prompt), tokens, program_logits,
                                   req.min_agreement).to_dict()
    stats, hello = served.collected.stats, up.hello
    stop_reason = {None: "none (no STATS)", protocol.STOP_EOS: "eos", protocol.STOP_LIMIT: "max tokens",
                   protocol.STOP_CANCELLED: "cancelled"}.get(
        stats.stop if stats else None, "unknown")
    board_stats = ({"load_ms": hello.load_ms, "ttft_ms": stats.ttft_ms, "prefill_tok_s": stats.prefill_tok_s,
                    "decode_tok_s": stats.decode_tok_s, "peak_rss_kb": stats.peak_rss_kb,
                    "decode_calls": stats.decode_calls, "draft_calls": stats.draft_calls, "drafted": stats.drafted,
                    "accepted": stats.accepted, "draft_model_calls": stats.draft_model_calls}
                   if stats else
                   {"load_ms": hello.load_ms})
    return RunReport(
        board=prep.board.name, target=tgt.spec, emulated=tgt.rss_of_emulator, model=req.model, quant=prep.quant,
        release=up.release.id,
        firmware_version=hello.firmware, model_sha256=hello.model_sha256, threads=hello.threads, prompt=req.prompt,
        prompt_token_ids=list(request.prompt), generated_token_ids=list(served.collected.tokens),
        text=assembler.text, stop_reason=stop_reason,
        sampling={"temperature": req.temperature, "top_k": req.top_k, "top_p": req.top_p, "seed": req.seed},
        board_stats=board_stats, validation=served.verdict.to_dict(), attempts=served.attempts,
        reused=dict(prep.reused), bundle=str(prep.bundle.root), pte=str(prep.exported.pte), boot=boot, fidelity=fid,
        token_times_us=list(served.collected.times_us[:len(served.collected.tokens)]),
        token_texts=list(assembler.pieces), chat_template=chat_format(req.model).line if req.chat else None)


def run_job(req: RunRequest, progress: Progress = _noop, on_text: Callable[[str], None] = lambda s: None,
            on_retry: Callable[[int, str], None] = lambda n, why: None,
            open_transport: Callable[[str], Any] | None = None) -> RunReport:
    """The main job, stage by stage: check the request, export, build, bring the board up (the one
    bring-up), stream and validate; a typed report.

    ``open_transport`` opens the host's end of the link (tests put a fault injector there)."""
    from toolchain.deploy import bringup

    prep = prepare_run(req, progress)
    try:
        with bringup.bring_up(prep.target, prep.bundle, threads=req.threads, progress=progress,
                              open_transport=open_transport, force=req.force) as up:
            return serve_run(prep, up, req, progress, on_text, on_retry)
    finally:
        prep.close()


def monitor(*, port: str | None, board: str | None, target: str | None, baud: int, seconds: float,
            prompt_ids: str | None = None, tokens: int = 16, workdir: Path = DEFAULT_WORKDIR,
            pte: Path | None = None, note: Callable[[str], None] = lambda s: None, show_special: bool = False):
    """Yield one dict per frame the board sends (and per garbled frame) for ``seconds``; a TOKEN's
    ``text`` and a STATS's ``stream_text`` are decoded with the tokenizer of the program the board serves
    (``pte``, else found by its sha256 under ``workdir``: see ``toolchain.frames``). ``note``: which
    tokenizer decodes, or why none does."""
    from toolchain.frames import FrameText
    from toolchain.link import framing, protocol
    from toolchain.link import ports as ports_mod
    from toolchain.link.session import BoardSession
    from toolchain.link.transport import Deadline

    ids = _monitor_request(prompt_ids, tokens, seconds, baud)  # every option checked before the port is opened
    text = FrameText(workdir, note, show_special=show_special)
    if pte is not None:
        text.use_program(pte)
    if port is None:
        if board is None:
            raise UsageError("give --port, or --board of a runner that `edgelm flash` started")
        tgt = target_for(board, target, workdir)
        info = tgt.runner.running() if tgt.runner is not None else None
        if not info:
            raise DeviceError(f"no runner is running on {tgt.where}", hint="start one with `edgelm flash`")
        port = str(info["port"])
        if pte is None and tgt.store is not None:
            try:
                release = tgt.store.current()  # the release `flash` made current: its program's sha256
            except EdgelmError:
                release = None
            if release is not None:
                text.program(release.model_sha256)
    open_link = ports_mod.opener(port, baud)  # a usb: port is resolved on each open
    transport = open_link()
    try:
        session = BoardSession(transport, reopen=open_link)  # found again after a board reset re-enumerates it
        if ids:
            session.send(protocol.REQUEST, protocol.Request(prompt=ids, max_new_tokens=tokens).pack())
        for frame, msg in session.frames(Deadline(seconds)):
            if isinstance(frame, framing.FrameError):
                yield {"type": "GARBLED", "seq": None, "message": f"{frame} (code {frame.code})"}
            else:
                event = {"type": protocol.NAMES.get(frame.type, hex(frame.type)), "seq": frame.seq,
                         "message": msg if not hasattr(msg, "__dict__") else {k: v for k, v in vars(msg).items()}}
                text.add(event, frame.type, msg)
                yield event
    finally:
        transport.close()


def _monitor_request(prompt_ids: str | None, tokens: int, seconds: float, baud: int) -> tuple[int, ...]:
    """monitor's options, in range (one line naming the option); the prompt's token ids, if any."""
    import math

    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds >= 0):
        raise UsageError(f"--seconds {seconds} must be a finite number of seconds, at least 0")
    if baud <= 0:
        raise UsageError(f"--baud {baud} must be a positive rate")
    if not prompt_ids:
        return ()
    try:
        ids = tuple(int(x) for x in prompt_ids.split(","))
    except ValueError:
        raise UsageError(f"--prompt-ids {prompt_ids!r} must be comma-separated integers") from None
    bad = next((t for t in ids if not 0 <= t < 2**32), None)
    if bad is not None:
        raise UsageError(f"--prompt-ids: token id {bad} is not in [0, 2^32)")
    if not 1 <= tokens < 2**32:
        raise UsageError(f"--tokens {tokens} must be in [1, 2^32)")
    return ids


def _edgelm_links(workdir: Path) -> list[Any]:
    """The host ends of the links of runners `edgelm flash` left running under ``workdir``."""
    from toolchain import boards
    from toolchain.deploy import registry
    from toolchain.link import ports as ports_mod

    state_dir = workdir.resolve() / "targets"
    if not state_dir.is_dir():
        return []
    found = []
    for board in boards.load_registry().all():
        for name in ("qemu", "local"):  # the targets whose link is a pseudo-terminal pair on this machine
            try:
                tgt = registry.create(name, board, state_dir)
            except EdgelmError:  # not a target for this board (the host board under qemu)
                continue
            info = tgt.runner.running() if tgt.runner is not None else None
            port = info.get("port") if isinstance(info, dict) else None
            link = ports_mod.edgelm_link(port, name, board.name) if isinstance(port, str) else None
            if link is not None:
                found.append(link)
    return found


def ports(workdir: Path | None = DEFAULT_WORKDIR, lister: Callable[[], Any] | None = None) -> list[dict[str, Any]]:
    """The serial ports here, with USB VID/PID, serial number and description, then the links of
    runners `edgelm flash` left running under ``workdir`` (pseudo-terminals, which pyserial does not list).
    Each entry's ``spec`` is what to pass as ``--port``."""
    from toolchain.link import ports as ports_mod

    links = _edgelm_links(workdir) if workdir is not None else []
    found = ports_mod.list_ports(lister or ports_mod.system_lister, extra=links)
    return [p.to_dict() for p in found]
