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
from toolchain.errors import CapacityError, DeviceError, EdgelmError, UsageError

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
    folder = Path(model)
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


def cached_export(model: str, workdir: Path, *, quant: str, group_size: int = 32, embedding: str | None = None,
                  max_seq_len: int = DEFAULT_MAX_SEQ_LEN, progress: Progress = _noop) -> tuple[ExportResult, bool]:
    """export_model, reusing an earlier export of exactly the same inputs. Returns (result, reused)."""
    from toolchain.export import manifest

    key = _digest({"model": _model_identity(model), "quant": quant, "group": group_size, "emb": embedding,
                   "seq": max_seq_len, "versions": _versions(), "src": _toolchain_sources_hash()})
    out = workdir / "exports" / key
    pte = out / manifest.PROGRAM_FILE
    if pte.exists():
        try:
            body = manifest.read(pte)
            progress("export", f"reusing {out}")
            return ExportResult(pte, out / manifest.MANIFEST_FILE, body), True
        except EdgelmError:
            pass  # damaged cache entry: export again
    return export_model(model, out, quant=quant, group_size=group_size, embedding=embedding,
                        max_seq_len=max_seq_len, progress=progress), False


def build_firmware(board_name: str, pte: Path, out: Path, *, sanitize: bool = False, sdk_wheel: Path | None = None,
                   progress: Progress = _noop):
    """Render the firmware for a board, compile it with the board's compiler and assemble the bundle."""
    from toolchain import boards
    from toolchain.export import manifest

    board = boards.get(board_name)
    body = manifest.read(pte)  # a .pte that is not a program, or not its manifest's, stops here
    return _build(board, pte, body, out, sanitize=sanitize, sdk_wheel=sdk_wheel, progress=progress)


def _build(board, pte: Path, body: dict[str, Any], out: Path, *, sanitize: bool = False,
           sdk_wheel: Path | None = None, progress: Progress = _noop):
    """build_firmware for a program whose manifest ``body`` was read (and its hash verified) already."""
    from toolchain.build import compile as fw_compile
    from toolchain.build import render, sdk

    progress("sdk", f"executorch runtime for {board.arch}")
    runtime = sdk.sdk_for(board.arch, wheel=sdk_wheel)
    progress("render", f"firmware for {board.name}")
    project = render.render(board, out / "project")
    progress("compile", f"{board.cross_prefix or ''}g++ {' '.join(board.cpu_flags)}")
    runner = fw_compile.configure_and_build(board, project, runtime, sanitize=sanitize)
    progress("bundle", str(out / "bundle"))
    return fw_compile.assemble(board, runner, runtime, pte, out / "bundle", render.firmware_version(), body)


def cached_build(board_name: str, pte: Path, workdir: Path, progress: Progress = _noop):
    from toolchain import boards
    from toolchain.build import compile as fw_compile
    from toolchain.build import render, sdk
    from toolchain.export import manifest

    board = boards.get(board_name)
    body = manifest.read(pte)  # hashes the program once; the build below reuses the verified manifest
    key = _digest({"board": board.to_dict(), "fw": render.firmware_version(), "et": sdk.host_version(),
                   "pte": body["program"]["sha256"]})
    out = workdir / "builds" / f"{board.name}-{key}"
    if (out / "bundle" / fw_compile.BUNDLE_FILE).exists():
        try:
            bundle = fw_compile.read_bundle(out / "bundle")
            fw_compile.verify_bundle(bundle)
            progress("build", f"reusing {out / 'bundle'}")
            return bundle, True
        except EdgelmError:
            pass
    return _build(board, pte, body, out, progress=progress), False


def target_for(board_name: str, target: str | None, workdir: Path = DEFAULT_WORKDIR):
    from toolchain import boards
    from toolchain.deploy import registry

    board = boards.get(board_name)
    return registry.create(target or registry.default_for(board), board, workdir.resolve() / "targets")


def flash(bundle_dir: Path, target: str | None = None, workdir: Path = DEFAULT_WORKDIR, start: bool = True,
          progress: Progress = _noop) -> dict[str, Any]:
    """Deploy a bundle (verified on arrival) and start it; the runner keeps running after we return."""
    from toolchain.build import compile as fw_compile
    from toolchain.deploy.base import Capability, require

    bundle = fw_compile.read_bundle(bundle_dir)
    tgt = target_for(bundle.board, target, workdir)
    require(tgt, Capability.DEPLOY, "it has no way to receive a bundle")
    if start:
        require(tgt, Capability.START, "it cannot start a runner")
    with tgt.lock("flash"):
        progress("flash", f"{tgt.name}:{bundle.board}")
        previous = tgt.current()
        release = tgt.deploy(bundle)
        result: dict[str, Any] = {"board": bundle.board, "target": tgt.name, "release": release.id,
                                  "path": str(release.path), "verified": True}
        if not start:
            return result
        progress("start", release.id)
        try:
            result["port"] = tgt.start()
            why = tgt.wait_ready()
            if why is not None:  # never leave the board without a working release
                tgt.stop()
                if previous is None or previous.id == release.id:
                    raise DeviceError(f"release {release.id} does not start: {why}")
                tgt.activate(previous)
                tgt.start()
                again = tgt.wait_ready()
                state = "running again" if again is None else f"current again, but it does not start either: {again}"
                raise DeviceError(f"release {release.id} does not start ({why}); rolled back to {previous.id}, "
                                  f"{state}")
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP: stop what we started; the previous release stays
            tgt.stop()
            if previous is not None and previous.id != release.id:
                tgt.activate(previous)
            raise
    return result  # the runner keeps running: only a failure or an interruption stops it


def stop(board_name: str, target: str | None = None, workdir: Path = DEFAULT_WORKDIR) -> str | None:
    """Stop the runner `flash` started. None, or a note on a stale PID file (removed; nothing was killed for it)."""
    tgt = target_for(board_name, target, workdir)
    with tgt.lock("stop"):
        return tgt.stop()


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
    tolerance: float | None = None
    threads: int | None = None
    workdir: Path = DEFAULT_WORKDIR


def run_job(req: RunRequest, progress: Progress = _noop, on_text: Callable[[str], None] = lambda s: None,
            on_runner: Callable[[Any], None] = lambda t: None) -> dict[str, Any]:
    """Export, build, flash, stream and validate: the main job. Returns the report dict."""
    import numpy as np

    from toolchain import boards
    from toolchain.link import protocol
    from toolchain.link.session import BoardSession, Timeouts
    from toolchain.link.transport import SerialTransport
    from toolchain.model import checkpoint, tokenizer
    from toolchain.validate import compare
    from toolchain.validate.reference import ProgramRunner

    board = boards.get(req.board)
    quant = req.quant or board.default_quant
    if req.tokens < 1:
        raise UsageError(f"--tokens {req.tokens} must be at least 1")
    exported, reused_export = cached_export(req.model, req.workdir, quant=quant, max_seq_len=req.max_seq_len,
                                            progress=progress)
    man = exported.manifest
    tok_path = checkpoint.inspect_folder(Path(req.model)).tokenizer_path if not checkpoint.is_preset(req.model) \
        else None
    tok = tokenizer.for_model(tok_path, man["model"]["config"]["vocab_size"])
    prompt_ids = [man["tokens"]["bos_token_id"], *tok.encode(req.prompt)]
    max_seq = man["program"]["max_seq_len"]
    if len(prompt_ids) + req.tokens > max_seq:
        raise CapacityError(f"{len(prompt_ids)} prompt tokens + {req.tokens} new tokens exceed the program's max "
                            f"sequence length {max_seq}", hint="ask for fewer --tokens or export with a larger "
                                                               "--max-seq-len")
    bundle, reused_build = cached_build(req.board, exported.pte, req.workdir, progress=progress)
    tgt = target_for(req.board, req.target, req.workdir)
    progress("flash", f"{tgt.name}:{board.name}")
    release = tgt.deploy(bundle)
    port = tgt.link()
    transport = SerialTransport(port, board.baud)  # open our end first: the runner drops earlier input
    progress("start", f"runner {release.id} on {tgt.name}:{board.name}")
    try:
        tgt.start(threads=req.threads)
    except BaseException:
        transport.close()
        tgt.stop()
        raise
    on_runner(tgt)
    request = protocol.Request(prompt=tuple(prompt_ids), max_new_tokens=req.tokens, temperature=req.temperature,
                               top_k=req.top_k, top_p=req.top_p, seed=req.seed,
                               stop=tuple(man["tokens"]["eos_token_ids"]), ignore_eos=req.ignore_eos,
                               report_logits=True)
    emulated = tgt.name == "qemu"
    timeouts = Timeouts(first_token_s=120.0 if emulated else 60.0, token_s=30.0 if emulated else 10.0)
    tokens: list[int] = []
    board_logits: list[tuple[float, tuple[tuple[int, float], ...]]] = []
    assembler = tokenizer.TextAssembler(tok)
    try:
        session = BoardSession(transport, timeouts, alive=tgt.alive)
        progress("link", f"waiting for HELLO on {port}")
        hello = session.wait_hello()
        if hello.model_sha256 != man["program"]["sha256"]:
            raise DeviceError(f"the board runs program {hello.model_sha256[:12]}..., not the exported "
                              f"{man['program']['sha256'][:12]}...")
        progress("stream", f"{len(prompt_ids)} prompt tokens, up to {req.tokens} new")
        stats = None
        for msg in session.generate(request):
            if isinstance(msg, protocol.Token):
                tokens.append(msg.token)
                if msg.logit is not None:
                    board_logits.append((msg.logit, msg.top))
                on_text(assembler.push(msg.token))
            else:
                stats = msg
        on_text(assembler.finish())
        session.quit()
    finally:
        transport.close()
        tgt.stop()
    if stats is None:  # generate() ends with STATS or raises; this guards the contract
        raise DeviceError("the board ended the request without a STATS frame")
    progress("validate", "host reference, teacher-forced on the board's tokens")
    ref = ProgramRunner(exported.pte)
    logits = [ref.step(prompt_ids, 0).numpy()]
    for i, t in enumerate(tokens[:-1]):
        logits.append(ref.step([t], len(prompt_ids) + i).numpy())
    tol = req.tolerance if req.tolerance is not None else compare.default_tolerance(quant)
    verdict = compare.compare(tokens, [np.asarray(x) for x in logits], tolerance=tol, temperature=req.temperature,
                              top_k=req.top_k, top_p=req.top_p,
                              board_logits=board_logits if len(board_logits) == len(tokens) else None)
    stop_reason = "eos" if stats.stop == protocol.STOP_EOS else "max tokens"
    return {
        "board": board.name, "target": tgt.name, "emulated": emulated, "model": req.model, "quant": quant,
        "firmware_version": hello.firmware, "model_sha256": hello.model_sha256, "threads": hello.threads,
        "prompt": req.prompt, "prompt_token_ids": prompt_ids, "generated_token_ids": tokens,
        "text": assembler.text, "stop_reason": stop_reason,
        "sampling": {"temperature": req.temperature, "top_k": req.top_k, "top_p": req.top_p, "seed": req.seed},
        "board_stats": {"load_ms": hello.load_ms, "ttft_ms": stats.ttft_ms, "prefill_tok_s": stats.prefill_tok_s,
                        "decode_tok_s": stats.decode_tok_s, "peak_rss_kb": stats.peak_rss_kb},
        "validation": verdict.to_dict(),
        "reused": {"export": reused_export, "build": reused_build},
        "bundle": str(bundle.root), "pte": str(exported.pte),
    }


def monitor(*, port: str | None, board: str | None, target: str | None, baud: int, seconds: float,
            prompt_ids: str | None = None, tokens: int = 16, workdir: Path = DEFAULT_WORKDIR):
    """Yield one dict per frame the board sends (and per garbled frame) for ``seconds``."""
    from toolchain.link import framing, protocol
    from toolchain.link.session import BoardSession
    from toolchain.link.transport import Deadline, SerialTransport

    if port is None:
        if board is None:
            raise UsageError("give --port, or --board of a runner that `edgelm flash` started")
        tgt = target_for(board, target, workdir)
        info = tgt.running() if hasattr(tgt, "running") else None
        if not info:
            raise DeviceError(f"no runner is running on {tgt.name}:{board}", hint="start one with `edgelm flash`")
        port = info["port"]
    transport = SerialTransport(port, baud)
    try:
        session = BoardSession(transport)
        if prompt_ids:
            try:
                ids = tuple(int(x) for x in prompt_ids.split(","))
            except ValueError:
                raise UsageError(f"--prompt-ids {prompt_ids!r} must be comma-separated integers") from None
            session.send(protocol.REQUEST, protocol.Request(prompt=ids, max_new_tokens=tokens).pack())
        for frame, msg in session.frames(Deadline(seconds)):
            if isinstance(frame, framing.FrameError):
                yield {"type": "GARBLED", "seq": None, "message": f"{frame} (code {frame.code})"}
            else:
                yield {"type": protocol.NAMES.get(frame.type, hex(frame.type)), "seq": frame.seq,
                       "message": msg if not hasattr(msg, "__dict__") else {k: v for k, v in vars(msg).items()}}
    finally:
        transport.close()
