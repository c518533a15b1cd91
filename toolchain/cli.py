"""The ``edgelm`` command: each subcommand parses, calls one ``toolchain.api`` function, renders."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import unicodedata
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from toolchain import __version__, interrupts
from toolchain.errors import BuildError, EdgelmError, UsageError

console = Console(highlight=False, emoji=False)  # text like usb:1234:5678 must not become an emoji
err = Console(stderr=True, highlight=False, emoji=False)
EXIT_INTERNAL = 70


def _quiet_libraries(verbose: bool) -> None:
    """torch, torchao and executorch log warnings at import that say nothing to a user."""
    level = logging.INFO if verbose else logging.ERROR
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(name)s: %(message)s",
                        stream=sys.stderr)
    for name in ("torch", "torchao", "executorch", "root"):
        logging.getLogger(name).setLevel(level)
    logging.getLogger("toolchain").setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:
        warnings.filterwarnings("ignore")
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")


def command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn EdgelmError into one line (+ hint) and its exit code; never a traceback for bad input.

    Ctrl-C, SIGTERM and SIGHUP unwind through every cleanup (the runner, qemu and socat are
    stopped), then end in one line and 128 + the signal number (130, 143, 129).
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with interrupts.handled():
                if "workdir" in kwargs:
                    check_workdir(kwargs["workdir"])
                return fn(*args, **kwargs)
        except EdgelmError as exc:
            advise = getattr(exc, "advise", None)  # a board's refusal of a bundle: what to do, in this command's words
            if callable(advise):
                ctx = click.get_current_context(silent=True)
                exc.hint = advise(ctx.info_name if ctx is not None else None)
            hint = f" [dim](hint: {escape(printable(exc.hint))})[/]" if exc.hint else ""
            err.print(f"[bold red]error:[/] {escape(printable(exc.message))}{hint}", soft_wrap=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt as exc:
            what = f"terminated by {exc.name}" if isinstance(exc, interrupts.Terminated) else "interrupted"
            try:
                err.print(f"[bold red]error:[/] {what}")
            except OSError:  # SIGHUP: the terminal may be gone
                pass
            sys.exit(interrupts.exit_code(exc))
        except click.exceptions.Exit:
            raise
        except Exception as exc:  # a bug in edgelm: one line, the traceback only on request
            if os.environ.get("EDGELM_DEBUG"):
                raise
            first = str(exc).splitlines()[0] if str(exc) else ""
            err.print(f"[bold red]internal error:[/] {type(exc).__name__}: {escape(printable(first))} "
                      "[dim](hint: set EDGELM_DEBUG=1 for the traceback, and report it)[/]", soft_wrap=True)
            sys.exit(EXIT_INTERNAL)

    return wrapper


def check_workdir(workdir: Path | None) -> None:
    """--workdir must be a folder, or a path where one can be made: not a file, nor under one."""
    if workdir is None:
        return
    path = Path(workdir)
    for p in (path, *path.parents):
        try:
            if not (p.exists() or p.is_symlink()):
                continue
            if not p.is_dir():
                where = f"--workdir {workdir}" + (f": {p}" if p != path else "")
                raise UsageError(f"{where} is a file, not a folder" if p.exists() else f"{where} is a link to nothing",
                                 hint="give a folder for --workdir")
        except OSError as exc:
            raise UsageError(f"--workdir {workdir}: cannot look at {p} ({exc.strerror or exc})") from None
        return


def check_text(option: str, value: str) -> None:
    """Text that is sent to a board must be UTF-8: argv bytes that are not reach Python as lone surrogates."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        c = ord(value[exc.start])
        what = f"the byte 0x{c - 0xdc00:02x}" if 0xdc80 <= c <= 0xdcff else f"U+{c:04X}"
        raise UsageError(f"{option} is not UTF-8 text ({what} at character {exc.start})",
                         hint="give the text in UTF-8") from None


def printable(text: str) -> str:
    """Text from a board or a file, safe for a terminal: control and format characters (an ESC
    sequence, a right-to-left override) are shown escaped, never interpreted; newline and tab stay."""
    out = []
    for ch in text:
        if ch in "\n\t" or unicodedata.category(ch)[0] != "C":
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(f"\\u{ord(ch):04x}")
    return "".join(out)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


TARGET_HELP = ("qemu | qemu-system[:IMAGE] | local | ssh://[user@]host[:port] | dir:PATH | "
               "labgrid://[HOST:PORT/]PLACE (see `edgelm targets`; "
               "default: the board profile's default_target)")


def target_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options that say how a board is reached and wired, shared by every command with --target."""
    for option in reversed([
        click.option("--target", "-t", default=None, help=TARGET_HELP),
        click.option("--port", "-p", "link_port", default=None,
                     help="The host's serial port wired to the board's UART: a device, rfc2217:// or socket:// URL, "
                          "or usb:VID:PID[:SERIAL] (default for ssh://: the SSH channel itself)."),
        click.option("--board-port", default=None,
                     help="The board's serial device the runner opens [default: the profile's serial_device]."),
        click.option("--ssh-config", type=click.Path(path_type=Path), default=None,
                     help="An ssh_config file to use instead of ~/.ssh/config."),
        click.option("--accept-new-host-key", is_flag=True,
                     help="Trust an SSH host key seen for the first time (it is added to known_hosts)."),
        click.option("--boot", type=click.Path(path_type=Path), default=None,
                     help="dir: the card's boot partition, when mounted apart from its root filesystem."),
    ]):
        fn = option(fn)
    return fn


def options_from(kwargs: dict[str, Any], board: str | None = None, target: str | None = None, *,
                 service: bool = False, bundle: Path | None = None, check: bool = True) -> Any:
    """Pop the target_options values out of a command's kwargs into a TargetOptions, refusing those the
    target (``target``, else ``board``'s default; ``bundle``'s board when no board is named) would ignore."""
    from toolchain.deploy.registry import TargetOptions

    options = TargetOptions(port=kwargs.pop("link_port"), board_port=kwargs.pop("board_port"),
                            ssh_config=kwargs.pop("ssh_config"),
                            accept_new_host_key=kwargs.pop("accept_new_host_key"), boot=kwargs.pop("boot"),
                            service=service)
    if check:
        refuse_ignored_options(options, board, target, bundle)
    return options


# The wiring options each kind of target would ignore (the others each kind takes, or refuses itself).
OPTION_FLAGS = {"port": "--port", "board_port": "--board-port", "ssh_config": "--ssh-config",
                "accept_new_host_key": "--accept-new-host-key", "boot": "--boot", "service": "--service"}
IGNORED_BY = {
    "qemu": (tuple(OPTION_FLAGS), "an emulated board on this machine: edgelm makes its link (a pseudo-terminal "
                                  "pair) and starts and stops its runner itself"),
    "local": (tuple(OPTION_FLAGS), "this machine: edgelm makes its link (a pseudo-terminal pair) and starts and "
                                   "stops its runner itself"),
    "qemu-system": (("accept_new_host_key",), "the guest's host key is recorded in the image's known_hosts on "
                                              "first contact"),
}


def refuse_ignored_options(options: Any, board: str | None, target: str | None, bundle: Path | None = None) -> None:
    """One line naming the option and the target kind, for a wiring option the target would not use."""
    given = [name for name in OPTION_FLAGS if getattr(options, name)]
    if not given:
        return
    from toolchain import boards
    from toolchain.deploy import registry

    if target is None:
        if board is None and bundle is not None:
            from toolchain.bundle import package

            board = package.read_bundle(bundle).board
        if board is None:
            return  # nothing names the target yet: the job refuses that itself
        target = registry.default_for(boards.get(board))
    kind = registry.kind_of(target).name
    ignored, why = IGNORED_BY.get(kind, ((), ""))
    for name in given:
        if name in ignored:
            raise UsageError(f"{OPTION_FLAGS[name]} does not apply to the {kind} target ({why})")


class StepProgress:
    """A rich progress line per pipeline step, on stderr."""

    def __init__(self, enabled: bool = True):
        enabled = enabled and err.is_terminal  # a log file or a pipe gets the result, not spinners
        self._progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.fields[step]:<9}[/] {task.description}"),
                                  TimeElapsedColumn(), console=err, transient=False, disable=not enabled)
        self._task: Any = None

    def __enter__(self) -> StepProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._finish()
        self._progress.__exit__(*exc)

    def _finish(self) -> None:
        if self._task is not None:
            self._progress.update(self._task, completed=1, total=1)
            self._progress.stop_task(self._task)

    def pause(self) -> None:
        """Stop redrawing (the steps so far stay on screen), e.g. before streaming text below them."""
        self._finish()
        self._progress.stop()

    def __call__(self, step: str, detail: str) -> None:
        self._finish()  # the detail may hold a board's or a path's text: shown as it is, never as markup
        self._task = self._progress.add_task(escape(printable(detail)), step=step, total=None)


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """edgelm's version (toolchain/__init__.py, the one place it is written) and the firmware versions it builds:
    the version plus a hash of the runner's and the Cortex-M firmware's sources, as a bundle records them."""
    if not value or ctx.resilient_parsing:
        return
    from toolchain.bundle import cortexm, render

    click.echo(f"edgelm {__version__} (firmware {render.firmware_version()}, "
               f"cortex-m firmware {cortexm.firmware_version()})")
    ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show edgelm's version and its firmware's source hash, and exit.")
@click.option("-v", "--verbose", is_flag=True, help="Log what each step does.")
def main(verbose: bool) -> None:
    """edgelm: LFM2-family language models on real boards.

    export -> build -> flash -> run, with the board's tokens validated against the host.
    """
    _quiet_libraries(verbose)


@main.command()
@click.option("--model", "-m", required=True,
              help="Preset (lfm2-350m, lfm2.5-350m, tiny), a shipped model (fortune, fortune-draft) or a "
                   "Hugging Face folder.")
@click.option("--quant", "-q", type=click.Choice(["fp32", "8da8w", "8da4w", "a8w8", "a16w8"]), default=None,
              help="Quantization [default: 8da4w for xnnpack; the board's, else a8w8, for ethos-u and tosa]. "
                   "a8w8 / a16w8 (8- or 16-bit activations, 8-bit weights) are the Arm backends' schemes.")
@click.option("--group-size", type=int, default=32, show_default=True, help="Weight group size for 8da4w / int4.")
@click.option("--embedding", type=click.Choice(["none", "int8", "int4"]), default=None,
              help="Embedding quantization [default: int8, none with fp32].")
@click.option("--max-seq-len", type=int, default=512, show_default=True, help="KV-cache length in the program.")
@click.option("--backend", default="xnnpack", show_default=True, help="Delegate backend (see `edgelm backends`).")
@click.option("--board", "-b", default=None,
              help="ethos-u / tosa: the Arm NPU board to lower for, whose memories the program must fit "
                   "(corstone-300, corstone-320).")
@click.option("--calibration", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="ethos-u / tosa: a text file, one calibration sample per line [default: built-in sentences].")
@click.option("--check-steps", type=int, default=None,
              help="ethos-u / tosa: teacher-forced steps of the reference-model check, 0 for none [default: 32].")
@click.option("--min-agreement", type=float, default=None,
              help="ethos-u / tosa: the greedy agreement with the quantized model the check must reach, else "
                   "nothing is written [default: 0.9].")
@click.option("--draft-model", default=None,
              help="A smaller model with the same tokenizer (e.g. fortune-draft for fortune), carried as the "
                   "program's draft method: the runner drafts with it and the model verifies.")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None,
              help="Output folder [default: edgelm's cache (`edgelm cache list`), reused when the inputs are the same; "
                   "xnnpack only].")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@command
def export(model: str, quant: str | None, group_size: int, embedding: str | None, max_seq_len: int, backend: str,
           board: str | None, calibration: Path | None, check_steps: int | None, min_agreement: float | None,
           draft_model: str | None, out: Path | None, as_json: bool) -> None:
    """Quantize and lower a model to an ExecuTorch program (model.pte + manifest.json)."""
    from toolchain import api
    from toolchain.export.arm import DoesNotFit

    if out is None:  # into the cache: what `edgelm run` would export, made once for every folder
        if backend != "xnnpack" or board is not None or calibration is not None or check_steps is not None \
                or min_agreement is not None:
            raise UsageError(f"--backend {backend} and its options write to a folder: give --out")
    try:
        with StepProgress(enabled=not as_json) as progress:
            if out is None:
                result, _ = api.cached_export(model, quant=quant or "8da4w", group_size=group_size,
                                              embedding=embedding, max_seq_len=max_seq_len, draft_model=draft_model,
                                              progress=progress)
            else:
                result = api.export_model(model, out, quant=quant, group_size=group_size, embedding=embedding,
                                          max_seq_len=max_seq_len, backend=backend, draft_model=draft_model,
                                          board=board, calibration=calibration, check_steps=check_steps,
                                          min_agreement=min_agreement, progress=progress)
    except DoesNotFit as exc:
        if as_json:  # the verdict as data too; the error line and exit code follow
            emit_json({"written": False, "fit": exc.fit.to_dict()})
        raise
    summary = result.summary()
    if as_json:
        emit_json(summary)
        return
    console.print(f"[green]wrote[/] {summary['pte']} ({summary['size_bytes'] / 1e6:.1f} MB, sha256 "
              f"{summary['sha256'][:16]}...)")
    console.print(f"quantization {summary['quantization']}: {summary['linear_layers_quantized']}/"
              f"{summary['linear_layers']} linear layers quantized")
    verdict = "yes" if summary["decoder_layers_fully_delegated"] else "[red]no[/] (see manifest delegation.layers)"
    console.print(f"delegated ops {summary['delegated_ops']}, outside the delegate {summary['non_delegated_ops']}; "
              f"decoder layers fully delegated: {verdict}")
    if "arm" in summary:
        for line in arm_lines(summary["arm"]):
            console.print(line)


def arm_lines(arm: dict[str, Any]) -> list[str]:
    """What an Arm export says: MACs on the NPU, the reference-model check, Vela's budget, the fit."""
    def safe(text: Any) -> str:  # a manifest's strings are shown, never interpreted as markup
        return escape(printable(str(text)))

    cov, check, vela, fit = arm["coverage"], arm["check"], arm["vela"], arm["fit"]
    lines = [f"on the NPU ({safe(arm['target'])}): {cov['npu_mac_share']:.1%} of {cov['macs_total']:,} MACs per "
             "token" + (f"; on the CPU: {safe(', '.join(cov['cpu_mac_ops']))}" if cov["cpu_mac_ops"] else "")]
    if check is not None:
        colour = "green" if check["greedy_agreement"] >= 0.9 else "red"
        lines.append(f"reference-model check: [{colour}]{check['greedy_agreement']:.1%}[/] greedy agreement over "
                     f"{check['steps']} teacher-forced steps, max |logit error| {check['max_abs_error']:.4g} "
                     f"(quantized vs fp32: {check['quantized_vs_fp32']['greedy_agreement']:.1%})")
    if vela:
        lines.append(f"vela estimate per token: {vela['cycles_per_token']:,} cycles = {vela['us_per_token']:.0f} us "
                     f"at {vela['clock_hz'] / 1e6:.0f} MHz (NPU part, {vela['delegates']} delegates); NPU SRAM "
                     f"{vela['sram_bytes']:,} B, flash {vela['flash_bytes']:,} B, DRAM {vela['dram_bytes']:,} B")
    if fit is not None:
        parts = [f"{safe(n['what'])} {n['need_bytes']:,} of {n['have_bytes']:,} B {safe(n['where'])}"
                 for n in fit["needs"]]
        lines.append(f"fit on {safe(fit['board'])}: [green]fits[/] ({'; '.join(parts)})" if fit["fits"]
                     else f"fit on {safe(fit['board'])}: [red]does not fit[/]")
    return lines


@main.command()
@click.argument("pte", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest as JSON.")
@command
def inspect(pte: Path, as_json: bool) -> None:
    """Show the verified manifest of a .pte."""
    from toolchain import api

    body = api.inspect_program(pte)
    if as_json:
        emit_json(body)
        return
    prog, q, d = body["program"], body["quantization"], body["delegation"]
    cfg = body["model"]["config"]
    table = Table(show_header=False, box=None)
    for key, value in [
        ("program", f"{pte} ({prog['size_bytes'] / 1e6:.1f} MB) sha256 {prog['sha256']} [green]verified[/]"),
        ("manifest", f"digest {body['digest'][:16]}... [green]verified[/]"),
        ("model", f"{body['model']['name']} ({body['model']['kind']}), {body['model']['parameters'] / 1e6:.1f}M "
                  f"parameters, {len(cfg['layer_types'])} layers"),
        ("method", f"{prog['method']}(tokens[1, 1], input_pos[1]) -> logits: one token per call, "
                   f"{prog['max_seq_len']} positions" if "arm" in body else
                   f"{prog['method']}(tokens[1, 1..{prog['max_seq_len']}], input_pos[1]) -> logits"),
        ("state", f"{prog['state_bytes'] / 1e6:.2f} MB (KV caches + conv states)"),
        ("quant", f"{q['scheme']}: {q['linear_layers_quantized']}/{q['linear_layers']} linear layers; "
                  f"lm_head {q['lm_head']}"),
        ("backend", f"{d['backend']}: {d['delegated_total']} ops delegated in {d['delegate_calls']} calls, "
                    f"{d['non_delegated_total']} outside"),
        ("layers", "fully delegated" if d["decoder_layers_fully_delegated"] else "[red]NOT fully delegated[/]"),
        ("tokens", f"BOS {body['tokens']['bos_token_id']}, EOS {body['tokens']['eos_token_ids']}, tokenizer "
                   f"{body['tokens']['tokenizer']['kind']}"),
        ("versions", ", ".join(f"{k} {v}" for k, v in body["versions"].items())),
    ] + ([("draft", f"method '{dr['method']}': {dr['model']['name']} ({dr['model']['parameters'] / 1e6:.2f}M "
                    f"parameters), drafts up to {dr['max_draft']} tokens; {dr['delegation']['delegated_total']} ops "
                    f"delegated, {dr['delegation']['non_delegated_total']} outside")]
         if (dr := body.get("draft")) else []):
        table.add_row(f"[bold]{key}[/]", escape(printable(str(value))) if key == "draft" else value)
    console.print(table)
    if "arm" in body:
        for line in arm_lines(body["arm"]):
            console.print(line)
    outside = Table("operator outside the delegate", "count", "why")
    for op, info in d["non_delegated_ops"].items():
        outside.add_row(op, str(info["count"]), info["why"])
    console.print(outside)


@main.command()
@click.option("--json", "as_json", is_flag=True)
@command
def backends(as_json: bool) -> None:
    """List the delegate backends a program can be lowered to."""
    from toolchain.export import lower

    items = [{"name": b.name, "description": b.description} for b in lower.backends().values()]
    if as_json:
        emit_json(items)
        return
    for b in items:
        console.print(f"[bold]{escape(b['name']):<10}[/] {escape(b['description'])}")


@main.command("boards")
@click.option("--wide", is_flag=True, help="Every column (the default fits 80 columns).")
@click.option("--json", "as_json", is_flag=True)
@command
def boards_cmd(wide: bool, as_json: bool) -> None:
    """List the board profiles (boards/*.toml)."""
    from toolchain import boards
    from toolchain.deploy import registry

    reg = boards.load_registry()
    for path, problem in reg.problems():  # a profile that does not load is left out, and said so
        err.print(f"[yellow]warning:[/] {escape(printable(problem.message))} (board {escape(printable(path.stem))} "
                  "left out)", soft_wrap=True)
    items = [b.to_dict() | {"default_target": None if b.bare_metal else registry.default_for(b),
                            "bare_metal": b.bare_metal} for b in reg.all()]
    if as_json:
        emit_json(items)
        return
    from toolchain import tables

    tables.boards(console, items, wide=wide)  # a profile's strings are shown as they are, never as markup


@main.command()
@click.option("--board", "-b", required=True, help="Board profile (see `edgelm boards`).")
@click.option("--pte", type=click.Path(path_type=Path), required=True, help="Program from `edgelm export`.")
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True, help="Build folder.")
@click.option("--sanitize", is_flag=True, help="Build with ASan/UBSan (host board only).")
@click.option("--sdk-wheel", type=click.Path(path_type=Path), default=None,
              help="A local executorch wheel for the board's platform (offline builds).")
@click.option("--sign-key", type=click.Path(path_type=Path), default=None,
              help="Sign the bundle with this ed25519 private key (see `edgelm keygen`).")
@click.option("--security-counter", type=click.IntRange(0, 2**32 - 1), default=None,
              help="With --sign-key: the bundle's security counter (anti-rollback), under the signature; a board "
                   "that trusts keys refuses a bundle below the highest counter it accepted [default: 0, or the "
                   "bundle's own].")
@click.option("--executorch-cortex-m", "executorch_dir", type=click.Path(path_type=Path), default=None,
              help="Bare-metal boards (corstone-300, corstone-320): an ExecuTorch install built for Cortex-M with "
                   "the Arm backend, to link the runner against.")
@click.option("--json", "as_json", is_flag=True)
@command
def build(board: str, pte: Path, out: Path, sanitize: bool, sdk_wheel: Path | None, sign_key: Path | None,
          security_counter: int | None, executorch_dir: Path | None, as_json: bool) -> None:
    """Render and cross-compile the runner firmware for a board; assemble the bundle.

    For a bare-metal Arm board: render the Cortex-M project, compile its own sources, link the
    self-test, and link the runner only with --executorch-cortex-m (else exit 5, saying what is missing).
    """
    from toolchain import api, boards

    if boards.get(board).bare_metal:
        if sanitize or sdk_wheel is not None or sign_key is not None or security_counter is not None:
            raise UsageError("--sanitize, --sdk-wheel, --sign-key and --security-counter are for Linux boards; "
                             f"{board} is bare metal")
        with StepProgress(enabled=not as_json) as progress:
            result = api.build_cortex_m(board, pte, out, executorch_dir=executorch_dir, progress=progress)
        if as_json:
            emit_json(result)
        else:
            console.print(f"rendered {escape(result['project'])} for {escape(board)}: {result['objects']} objects "
                          f"compiled with {escape(' '.join(result['cpu_flags']))} -Werror; self-test "
                          f"{escape(result['selftest_elf'])}")
            console.print(f"arena {result['arena_bytes']:,} B + NPU scratch {result['npu_scratch_bytes']:,} B in "
                          f"SRAM; program {result['program_bytes']:,} B in {result['program_region']}")
            if result["linked"]:
                console.print(f"[green]linked[/] {escape(result['runner_elf'])}")
        if not result["linked"]:
            raise BuildError(f"the runner for {board} is NOT linked: it needs ExecuTorch built for Cortex-M; "
                             f"missing: {', '.join(result['missing'])}",
                             hint="build ExecuTorch for Cortex-M with the Arm backend (pytorch/executorch "
                                  "examples/arm) and pass its install folder as --executorch-cortex-m DIR")
        return
    if executorch_dir is not None:
        raise UsageError(f"--executorch-cortex-m is for bare-metal boards; {board} runs Linux")
    with StepProgress(enabled=not as_json) as progress:
        bundle = api.build_firmware(board, pte, out, sanitize=sanitize, sdk_wheel=sdk_wheel, sign_key=sign_key,
                                    progress=progress, security_counter=security_counter)
    if as_json:
        emit_json({"bundle": str(bundle.root), "release": bundle.release_id, "signed": sign_key is not None}
                  | bundle.info)
        return
    console.print(f"[green]built[/] {escape(str(bundle.root))} for {escape(bundle.board)}: {len(bundle.files)} files, "
                  f"{bundle.info['size_bytes'] / 1e6:.1f} MB, needs glibc {bundle.info['glibc_required']} "
                  f"(board has {bundle.info['glibc_board']}), release {bundle.release_id}"
                  + (", signed" if sign_key is not None else ""))


@main.command()
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True,
              help="Private key file to write (PEM, mode 0600; missing folders are made, mode 0700); the public "
                   "key goes to OUT.pub.")
@click.option("--json", "as_json", is_flag=True)
@command
def keygen(out: Path, as_json: bool) -> None:
    """Make an ed25519 key pair for signing bundles (`build --sign-key`, `trust`)."""
    from toolchain import api

    result = api.keygen(out)
    if as_json:
        emit_json(result)
        return
    console.print(f"[green]wrote[/] {result['private_key']} (private, keep it secret) and {result['public_key']}; "
                  f"fingerprint {result['fingerprint'][:16]}")


@main.command()
@click.argument("public_key", type=click.Path(path_type=Path), required=False)
@click.option("--board", "-b", required=True)
@click.option("--list", "list_keys", is_flag=True, help="List the keys the board trusts (as `edgelm trusted`).")
@target_options
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("out"), show_default=True)
@click.option("--json", "as_json", is_flag=True)
@command
@click.pass_context
def trust(ctx: click.Context, public_key: Path | None, board: str, list_keys: bool, target: str | None,
          workdir: Path, as_json: bool, **kw: Any) -> None:
    """Make a target accept only bundles signed by this public key (or another it trusts); --list shows
    the keys it trusts, `edgelm untrust` removes one.

    The key is kept on the board (its data folder, the card): every host and workdir sees it."""
    from toolchain import api

    if list_keys:
        if public_key is not None:
            raise UsageError("give a PUBLIC_KEY to trust, or --list, not both")
        ctx.invoke(trusted, board=board, target=target, workdir=workdir, as_json=as_json, **kw)
        return
    if public_key is None:
        raise UsageError("missing PUBLIC_KEY: the .pub file `edgelm keygen` wrote (or --list to see the trusted keys)")
    with StepProgress(enabled=not as_json) as progress:
        result = api.trust(public_key, board, target, workdir, options_from(kw, board, target), progress=progress)
    if as_json:
        emit_json(result)
        return
    console.print(f"{escape(result['target'])}:{result['board']} now trusts key {result['fingerprint'][:16]} "
                  f"({result['trusted']} in all) and accepts only bundles signed by a key it trusts", soft_wrap=True)
    _notes(result)


def _notes(result: dict[str, Any]) -> None:
    for note in result.get("notes", []):
        console.print(f"[yellow]note:[/] {escape(printable(note))}", soft_wrap=True)


@main.command()
@click.option("--board", "-b", required=True)
@target_options
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("out"), show_default=True)
@click.option("--json", "as_json", is_flag=True)
@command
def trusted(board: str, target: str | None, workdir: Path, as_json: bool, **kw: Any) -> None:
    """List the keys a target's board trusts, and the security counter it holds."""
    from toolchain import api

    with StepProgress(enabled=not as_json) as progress:
        result = api.trusted(board, target, workdir, options_from(kw, board, target), progress=progress)
    if as_json:
        emit_json(result)
        return
    where = f"{escape(result['target'])}:{result['board']}"
    if not result["keys"]:
        console.print(f"{where} trusts no key: it accepts unsigned bundles (security counter "
                      f"{result['security_counter']})", soft_wrap=True)
    else:
        console.print(f"{where} trusts {len(result['keys'])} key(s) and accepts only bundles signed by one of them "
                      f"with a security counter of at least {result['security_counter']}:", soft_wrap=True)
        for key in result["keys"]:
            console.print(f"  {key['fingerprint']}  {escape(printable(key['file']))}", soft_wrap=True)
    _notes(result)


@main.command()
@click.argument("fingerprint", required=False)
@click.option("--board", "-b", required=True)
@click.option("--all", "all_keys", is_flag=True, help="Remove every key the board trusts.")
@click.option("--allow-unsigned", is_flag=True,
              help="Allow removing the last trusted key: the board then accepts unsigned bundles again.")
@target_options
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("out"), show_default=True)
@click.option("--json", "as_json", is_flag=True)
@command
def untrust(fingerprint: str | None, board: str, all_keys: bool, allow_unsigned: bool, target: str | None,
            workdir: Path, as_json: bool, **kw: Any) -> None:
    """Stop trusting a key (FINGERPRINT: at least 8 hex digits of it, see `edgelm trusted`), or --all."""
    from toolchain import api

    with StepProgress(enabled=not as_json) as progress:
        result = api.untrust(fingerprint, board, target, workdir, options_from(kw, board, target),
                             all_keys=all_keys, allow_unsigned=allow_unsigned, progress=progress)
    if as_json:
        emit_json(result)
        return
    where = f"{escape(result['target'])}:{result['board']}"
    removed = ", ".join(fp[:16] for fp in result["removed"]) or "none"
    if result["accepts_unsigned"]:
        console.print(f"{where} no longer trusts {removed}: it trusts no key and accepts unsigned bundles",
                      soft_wrap=True)
    else:
        console.print(f"{where} no longer trusts {removed}; it still trusts {result['remaining']} key(s)",
                      soft_wrap=True)
    _notes(result)


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path), required=False)
@click.option("--board", "-b", default=None, help="The board (needed with --rollback; else the bundle's).")
@target_options
@click.option("--rollback", is_flag=True, help="Make the previous release current again (verified) and start it.")
@click.option("--service", is_flag=True,
              help="Install the runner as a systemd service that serves after every boot (ssh://, dir:).")
@click.option("--no-start", is_flag=True, help="Deploy only; do not start the runner.")
@click.option("--force", is_flag=True,
              help="Go on when the preflight refuses (the model does not fit, an old glibc): see what the board does.")
@click.option("--sign-key", type=click.Path(path_type=Path), default=None,
              help="First sign the bundle (bundle.sig, in its folder) with this ed25519 private key.")
@click.option("--security-counter", type=click.IntRange(0, 2**32 - 1), default=None,
              help="With --sign-key: the bundle's security counter (anti-rollback), under the signature; a board "
                   "that trusts keys refuses a bundle below the highest counter it accepted [default: 0, or the "
                   "bundle's own].")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("out"), show_default=True)
@click.option("--json", "as_json", is_flag=True)
@command
def flash(bundle: Path | None, board: str | None, target: str | None, rollback: bool, service: bool, no_start: bool,
          force: bool, sign_key: Path | None, security_counter: int | None, workdir: Path, as_json: bool,
          **kw: Any) -> None:
    """Deploy a bundle to a target (hash-verified on the board) and start its runner."""
    from toolchain import api

    options = options_from(kw, board, target, service=service, bundle=bundle)
    with StepProgress(enabled=not as_json) as progress:
        result = api.flash(bundle, target, workdir, start=not no_start, progress=progress, board=board,
                           rollback=rollback, options=options, service=service, force=force, sign_key=sign_key,
                           security_counter=security_counter)
    if as_json:
        emit_json(result)
        return
    what = "rolled back to" if rollback else "flashed"
    console.print(f"[green]{what}[/] {result['release']} on {escape(result['target'])}:{result['board']} "
                  "(hashes verified on the board)")
    if result.get("started"):
        if result.get("serving"):
            console.print(f"runner serving; its link: {escape(result['port'])} "
                          f"(`edgelm monitor --port {escape(result['port'])}`)")
        else:
            console.print("runner answered HELLO with the program's hash, then stopped: its link is the SSH "
                          "channel (`edgelm run` starts it on demand; --port or --service keep it serving)")
    _notes(result)


@main.command()
@click.option("--board", "-b", required=True)
@target_options
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("out"), show_default=True)
@click.option("--json", "as_json", is_flag=True)
@command
def stop(board: str, target: str | None, workdir: Path, as_json: bool, **kw: Any) -> None:
    """Stop the runner a `flash` started."""
    from toolchain import api

    stale = api.stop(board, target, workdir, options_from(kw, board, target))
    if as_json:
        emit_json({"board": board, "stopped": True, "stale_pid_file": stale})
    else:
        console.print(escape(stale) if stale else f"stopped the runner on {board}", soft_wrap=True)


@main.command()
@click.argument("action", type=click.Choice(["on", "off", "cycle", "status"]))
@click.option("--board", "-b", required=True)
@target_options
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("out"), show_default=True)
@click.option("--json", "as_json", is_flag=True)
@command
def power(action: str, board: str, target: str | None, workdir: Path, as_json: bool, **kw: Any) -> None:
    """Switch a board on (boot), off, cycle it, or show its state (qemu-system, labgrid:// with a power port)."""
    from toolchain import api

    options = options_from(kw, board, target)
    with StepProgress(enabled=not as_json) as progress:
        result = api.power(board, action, target, workdir, options, progress)
    if as_json:
        emit_json(result)
        return
    if not result["on"]:
        console.print(f"{board} on {escape(result['target'])}: off")
        return
    boot = f", booted in {result['boot_s']:.1f} s" if result.get("boot_s") is not None else ""
    console.print(f"{board} on {escape(result['target'])}: on (QEMU pid {result['pid']}{boot}); UART "
                  f"{escape(result['uart'])}, SSH {escape(result['ssh'])}, console log {escape(result['console_log'])}",
                  soft_wrap=True)


@main.command()
@click.option("--board", "-b", required=True, help="An Arm board profile (see `edgelm boards`).")
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True, help="The image folder.")
@click.option("--bundle", "bundle_dir", type=click.Path(path_type=Path), default=None,
              help="A bundle from `edgelm build` to serve from the data disk.")
@click.option("--model", "-m", default=None, help="Or: export and build this model for the board and serve it.")
@click.option("--quant", "-q", type=click.Choice(["fp32", "8da8w", "8da4w"]), default=None,
              help="With --model [default: the board's].")
@click.option("--ssh-key", type=click.Path(path_type=Path), default=None,
              help="The key whose public half root accepts [default: edgelm's own, ~/.cache/edgelm/ssh].")
@click.option("--data-size", type=int, default=None, help="Data disk size in MiB [default: room for 3 releases].")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("out"), show_default=True)
@click.option("--json", "as_json", is_flag=True)
@command
def image(board: str, out: Path, bundle_dir: Path | None, model: str | None, quant: str | None,
          ssh_key: Path | None, data_size: int | None, workdir: Path, as_json: bool) -> None:
    """Build a bootable Linux image for an Arm board from Debian packages (kernel, BusyBox, dropbear)."""
    from toolchain import api

    with StepProgress(enabled=not as_json) as progress:
        result = api.image(board, out, bundle_dir=bundle_dir, model=model, quant=quant, workdir=workdir,
                           ssh_key=ssh_key, data_bytes=data_size * (1 << 20) if data_size else None,
                           progress=progress)
    if as_json:
        emit_json(result)
        return
    table = Table("file", "bytes", "sha256")
    for name, digest in sorted(result["files"].items()):
        table.add_row(escape(name), f"{result['bytes'][name]:,}", digest[:16])
    console.print(table)
    release = result["release"] or "no release"
    console.print(f"image {result['sha256'][:16]} for {board} ({release}) in {escape(str(out))}; boot it with "
                  f"`edgelm power on --board {board} --target qemu-system:{escape(str(out))}`", soft_wrap=True)


@main.command()
@click.option("--json", "as_json", is_flag=True)
@command
def targets(as_json: bool) -> None:
    """List the kinds of target (--target SPEC): how a bundle reaches a board."""
    from toolchain import api

    items = api.targets()
    if as_json:
        emit_json(items)
        return
    table = Table("target", "what it is")
    for t in items:
        table.add_row(escape(t["spec"]), escape(t["description"]))
    console.print(table)


@main.command()
@click.option("--port", "-p", default=None,
              help="Serial port: a device path, usb:VID:PID[:SERIAL] (followed across a board reset) or "
                   "rfc2217:// / socket:// URL [default: the link of the runner `flash` started].")
@click.option("--board", "-b", default=None, help="Board whose running runner to attach to.")
@click.option("--target", "-t", default=None)
@click.option("--baud", type=int, default=921600, show_default=True)
@click.option("--seconds", type=float, default=10.0, show_default=True, help="How long to listen.")
@click.option("--prompt-ids", default=None, help="Send a greedy request for these comma-separated token ids.")
@click.option("--tokens", type=int, default=16, show_default=True, help="New tokens for --prompt-ids.")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("out"), show_default=True)
@click.option("--pte", type=click.Path(path_type=Path), default=None,
              help="The program the board serves: its manifest's tokenizer decodes the tokens [default: the "
                   "program of the release `flash` made current, or of the runner's HELLO, found in --workdir].")
@click.option("--log", "log_file", type=click.Path(path_type=Path), default=None,
              help="Also append every frame to this file, one JSON object a line (with its decoded text).")
@click.option("--show-special", is_flag=True,
              help="Print special tokens (<|im_end|>, ...) in the text, as tokenizers decodes them when not skipped.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per frame.")
@command
def monitor(port: str | None, board: str | None, target: str | None, baud: int, seconds: float,
            prompt_ids: str | None, tokens: int, workdir: Path, pte: Path | None, log_file: Path | None,
            show_special: bool, as_json: bool) -> None:
    """Attach to a board's serial link and print the frames it sends, token ids with their text."""
    import contextlib
    import datetime

    from toolchain import api, frames

    with contextlib.ExitStack() as stack:
        try:
            log = stack.enter_context(log_file.open("a", encoding="utf-8")) if log_file is not None else None
        except OSError as exc:
            raise UsageError(f"--log {log_file}: {exc.strerror or exc}") from None

        def note(text: str) -> None:
            err.print(f"[dim]{escape(printable(text))}[/]", soft_wrap=True)

        for event in api.monitor(port=port, board=board, target=target, baud=baud, seconds=seconds,
                                 prompt_ids=prompt_ids, tokens=tokens, workdir=workdir, pte=pte, note=note,
                                 show_special=show_special):
            if log is not None:
                at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
                log.write(json.dumps({"at": at, **event}, default=str, ensure_ascii=False) + "\n")
                log.flush()
            if as_json:
                click.echo(json.dumps(event, default=str))
            else:
                console.print(f"[dim]{event['seq'] if event.get('seq') is not None else '-':>6}[/] "
                              f"[bold]{event['type']:<7}[/] {escape(printable(frames.describe(event)))}",
                              soft_wrap=True)


@main.command()
@click.option("--board", "-b", default="rpi5", show_default=True)
@click.option("--model", "-m", default="tiny", show_default=True)
@click.option("--quant", "-q", type=click.Choice(["fp32", "8da8w", "8da4w"]), default=None,
              help="[default: the board's default_quant]")
@click.option("--prompt", default="Once upon a time", show_default=True)
@click.option("--chat", is_flag=True,
              help="Send --prompt as a user message through the model's chat template (chat_template.jinja, else "
                   "tokenizer_config.json), as transformers' apply_chat_template does: for instruct models.")
@click.option("--system", default=None, help="With --chat: the system message.")
@click.option("--show-special", is_flag=True,
              help="Print special tokens (<|im_end|>, ...) in the text, as tokenizers decodes them when not skipped.")
@click.option("--tokens", "-n", type=int, default=64, show_default=True, help="New tokens to generate.")
@target_options
@click.option("--max-seq-len", type=int, default=512, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy.")
@click.option("--top-k", type=int, default=0, show_default=True)
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--ignore-eos", is_flag=True, help="Generate exactly --tokens tokens.")
@click.option("--no-fidelity", is_flag=True,
              help="Skip the board's agreement with the eager fp32 model (top-1, KL), measured after the verdict.")
@click.option("--min-agreement", type=float, default=None,
              help="Fail (exit 7) when the board's top-1 agreement with the eager fp32 model is below this fraction.")
@click.option("--no-draft", is_flag=True,
              help="One token per forward call: no speculative drafts (same tokens, for comparison).")
@click.option("--draft-model", default=None,
              help="Also draft with this smaller model of the same tokenizer (see `edgelm export --draft-model`).")
@click.option("--threads", type=int, default=None, help="Runner threads [default: the board's].")
@click.option("--tolerance", type=float, default=None,
              help="Without a twin: board vs host logit difference accepted as rounding, in std of the host "
                   "logits [default: 0.01 fp32, 0.75 8da*]. The twin allows none.")
@click.option("--near-tie-budget", type=float, default=None,
              help="Without a twin: largest fraction of the tokens that may be near-ties (a flip where the host's "
                   "own top two are within the board's near_tie) [default: 0.05, at least 1 token]. The twin "
                   "allows none.")
@click.option("--retries", type=int, default=0, show_default=True,
              help="Ask again for a stream the link damaged (garbled or lost frames); only a whole stream is judged.")
@click.option("--byte-tokenizer", is_flag=True,
              help="Allow a checkpoint folder without tokenizer.json: the prompt is sent as UTF-8 bytes.")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("out"), show_default=True)
@click.option("--sign-key", type=click.Path(path_type=Path), default=None,
              help="Sign the bundle with this ed25519 private key (see `edgelm keygen`).")
@click.option("--security-counter", type=click.IntRange(0, 2**32 - 1), default=None,
              help="With --sign-key: the bundle's security counter (anti-rollback), under the signature; a board "
                   "that trusts keys refuses a bundle below the highest counter it accepted [default: 0, or the "
                   "bundle's own].")
@click.option("--force", is_flag=True,
              help="Go on when the preflight refuses (the model does not fit, an old glibc): see what the board does.")
@click.option("--pte", type=click.Path(path_type=Path), default=None,
              help="Serve this program from `edgelm export` (made from --model) instead of exporting again.")
@click.option("--report", "report_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also write the report as one self-contained HTML file (plots, text, validation table).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@command
def run(board: str, model: str, quant: str | None, prompt: str, tokens: int, target: str | None, max_seq_len: int,
        temperature: float, top_k: int, top_p: float, seed: int, ignore_eos: bool, no_fidelity: bool,
        min_agreement: float | None, no_draft: bool, draft_model: str | None,
        threads: int | None, tolerance: float | None, near_tie_budget: float | None, retries: int,
        byte_tokenizer: bool, workdir: Path,
        sign_key: Path | None, security_counter: int | None, force: bool, pte: Path | None,
        report_path: Path | None, as_json: bool, chat: bool = False, system: str | None = None,
        show_special: bool = False, **kw: Any) -> None:
    """Export, build, flash, stream and validate, in one go. Exit status 0 only on PASS."""
    from toolchain import api
    from toolchain.errors import UsageError, ValidationFailed
    from toolchain.validate import html as html_report
    from toolchain.validate import report as report_mod

    check_text("--prompt", prompt)
    if system is not None:
        check_text("--system", system)
    if report_path is not None and not report_path.resolve().parent.is_dir():
        raise UsageError(f"--report {report_path}: the folder {report_path.resolve().parent} does not exist")

    req = api.RunRequest(board=board, model=model, prompt=prompt, tokens=tokens, quant=quant, target=target,
                         max_seq_len=max_seq_len, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                         ignore_eos=ignore_eos, draft=not no_draft, draft_model=draft_model,
                         fidelity=not no_fidelity,
                         min_agreement=min_agreement, tolerance=tolerance, threads=threads,
                         workdir=workdir,
                         retries=retries, near_tie_budget=near_tie_budget, byte_tokenizer=byte_tokenizer,
                         sign_key=sign_key, security_counter=security_counter,
                         target_options=options_from(kw, board, target), force=force, pte=pte,
                         chat=chat, system=system, show_special=show_special)

    def on_text(piece: str) -> None:
        if not as_json and piece:
            console.print(printable(piece), end="", markup=False, highlight=False, soft_wrap=True)

    def on_retry(attempt: int, why: str) -> None:
        if not as_json:
            console.print(f"\n[yellow]link damaged ({escape(printable(why))}); asking again ({attempt}/{retries})[/]")
            console.print(f"[bold]{escape(printable(prompt))}[/]", end="")

    with StepProgress(enabled=not as_json) as progress:
        def step(name: str, detail: str) -> None:
            if name == "chat":  # --chat: which template the prompt goes through, one line
                if not as_json:
                    err.print(f"[dim]{escape(printable(detail))}[/]", soft_wrap=True)
                return
            progress(name, detail)
            if name == "stream" and not as_json:
                progress.pause()  # the text streams below the steps
                console.print(f"[bold]{escape(printable(prompt))}[/]", end="")

        result = api.run_job(req, progress=step, on_text=on_text, on_retry=on_retry).to_dict()
    if report_path is not None:  # written whatever the verdict: a FAIL is when it is read most
        try:
            html_report.write(report_path, [(f"{model} on {board} ({result['target']})", result)],
                              title=f"edgelm run: {model} on {board}", versions=api.versions())
        except OSError as exc:
            raise UsageError(f"--report {report_path}: cannot write it ({exc.strerror or exc})") from None
    if as_json:
        emit_json(result)
    else:
        console.print()
        report_mod.render(result, console)
    if result["validation"]["verdict"] != "PASS":
        if as_json:
            sys.exit(ValidationFailed.exit_code)
        raise ValidationFailed(f"validation failed: {result['validation']['reason']}")
    fid = result.get("fidelity") or {}
    if fid.get("check") == "FAIL":
        if as_json:
            sys.exit(ValidationFailed.exit_code)
        raise ValidationFailed(f"fidelity check failed: top-1 agreement with the fp32 model "
                               f"{fid['top1_agreement']:.3f} is below --min-agreement {fid['min_agreement']}")


@main.command("console")
@click.option("--board", "-b", required=True, help="Board profile (edgelm boards).")
@click.option("--model", "-m", default="tiny", show_default=True)
@click.option("--quant", "-q", type=click.Choice(["fp32", "8da8w", "8da4w"]), default=None,
              help="Quantization scheme [default: the board's].")
@target_options
@click.option("--max-seq-len", type=int, default=512, show_default=True, help="The conversation's room, in tokens.")
@click.option("--tokens", "-n", type=int, default=64, show_default=True, help="Most new tokens per reply.")
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy.")
@click.option("--top-k", type=int, default=0, show_default=True)
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=None, help="Runner threads [default: the board's].")
@click.option("--no-keep-state", is_flag=True,
              help="Have the board feed the whole conversation every turn instead of keeping its state.")
@click.option("--no-validate", is_flag=True, help="Do not judge the replies against the host reference.")
@click.option("--ignore-eos", is_flag=True, help="Every reply runs to --tokens (for measuring).")
@click.option("--attach", is_flag=True,
              help="Talk to the release `edgelm flash` left serving (its link, or --port) instead of bringing one up.")
@click.option("--pte", type=click.Path(path_type=Path), default=None,
              help="The program (`edgelm export`): served as it is, or, with --attach, the one the board serves.")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("out"), show_default=True)
@click.option("--show-special", is_flag=True,
              help="Print special tokens (<|im_end|>, ...) in the text, as tokenizers decodes them when not skipped.")
@click.option("--system", default=None, help="The system message (the chat template renders it first; /system "
                                             "changes it).")
@click.option("--history", type=click.Path(path_type=Path), default=None,
              help="Keep the lines typed here across sessions [default: $XDG_STATE_HOME/edgelm/console_history].")
@click.option("--no-history", is_flag=True, help="Keep no history file (the up arrow recalls this session only).")
@click.option("--sign-key", type=click.Path(path_type=Path), default=None,
              help="Sign the bundle with this ed25519 private key (edgelm keygen), for a board that trusts keys.")
@click.option("--security-counter", type=click.IntRange(0, 2**32 - 1), default=None,
              help="With --sign-key: the bundle's security counter (anti-rollback).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per reply instead of the streamed text.")
@command
def console_cmd(board: str, model: str, quant: str | None, target: str | None, max_seq_len: int, tokens: int,
                temperature: float, top_k: int, top_p: float, seed: int, threads: int | None, no_keep_state: bool,
                no_validate: bool, ignore_eos: bool, attach: bool, pte: Path | None, workdir: Path, as_json: bool,
                show_special: bool = False, system: str | None = None, history: Path | None = None,
                no_history: bool = False, sign_key: Path | None = None, security_counter: int | None = None,
                **kw: Any) -> None:
    """Chat with a board over its link: tokens as they arrive, a status line per reply, Ctrl-C stops
    a reply (CANCEL). On a terminal, the line is edited with readline and the up arrow recalls earlier
    lines (--history); three double quotes open a message of several lines, up to a line ending with
    them; /system TEXT,
    /set temperature|top_k|top_p|tokens|seed VALUE, /reset, /stats, /help, /quit. Exit status 0, or 7 if
    a reply did not validate; 6 if the board or its link fails; 2 to 5 as `edgelm run` when it cannot
    begin."""
    from dataclasses import replace

    from toolchain import console as console_mod
    from toolchain.errors import ValidationFailed

    options = options_from(kw, board, target, check=False)
    # --attach talks to --port itself, whatever the target; else the target takes the options
    refuse_ignored_options(replace(options, port=None) if attach else options, board, target)
    opts = console_mod.Options(board=board, model=model, target=target, quant=quant, max_seq_len=max_seq_len,
                               tokens=tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                               threads=threads, keep_state=not no_keep_state, validate=not no_validate,
                               ignore_eos=ignore_eos,
                               workdir=workdir, target_options=options, attach=attach, pte=pte,
                               show_special=show_special, system=system, sign_key=sign_key,
                               security_counter=security_counter)
    if attach and sign_key is not None:
        raise UsageError("--sign-key signs the bundle a bring-up flashes; --attach flashes nothing")
    from toolchain import api

    api.check_counter_option(security_counter, sign_key)

    def write(text: str) -> None:
        console.print(printable(text), end="", markup=False, highlight=False, soft_wrap=True)

    def status(text: str) -> None:
        err.print(f"[dim]{escape(printable(text))}[/]", soft_wrap=True)  # one line, whatever the width

    with StepProgress(enabled=not as_json) as progress:
        def step(name: str, detail: str) -> None:
            progress(name, detail)
            if name == "chat":
                progress.pause()  # the conversation goes on below the steps

        kept = None if no_history else (history or console_mod.default_history())
        terminal = sys.stdin.isatty() and sys.stdout.isatty() and not as_json
        with console_mod.LineReader(kept, terminal=terminal, warn=status) as reader:
            failed = console_mod.run(opts, read=lambda p: reader("" if as_json else p), write=write, status=status,
                                     progress=step, as_json=as_json)
    if failed:
        raise ValidationFailed(f"{failed} repl{'y' if failed == 1 else 'ies'} did not validate")


@main.command("ports")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("out"), show_default=True,
              help="Also list the serial links of runners `edgelm flash` left running here.")
@click.option("--wide", is_flag=True, help="Every column (the default fits 80 columns).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object per port.")
@command
def ports_cmd(workdir: Path, wide: bool, as_json: bool) -> None:
    """List serial ports: USB VID:PID, serial number, description, and what to pass as --port."""
    from toolchain import api

    items = api.ports(workdir)
    if as_json:
        emit_json(items)
        return
    if not items:
        console.print("no serial ports")
        return
    from toolchain import tables

    tables.ports(console, items, wide=wide)


@main.command("doctor")
@click.option("--for", "for_", multiple=True, metavar="WHAT",
              help="Exit 1 unless this is ready: a capability (export, build-host, build-arm64, local, qemu, ssh, "
                   "image, arm, farm, test, all), run:BOARD[:TARGET] or build:BOARD. Repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: every capability and tool.")
@command
def doctor_cmd(for_: tuple[str, ...], as_json: bool) -> None:
    """What this host can do: one line per capability, ready or what is missing with its install line
    (Debian/Ubuntu apt, macOS, pip), and the torch build in use."""
    from toolchain import doctor

    data = doctor.report(for_)
    if as_json:
        emit_json(data)
    else:
        for line in doctor.render(data):
            console.print(escape(line), soft_wrap=True)
    if not data["ready"]:
        sys.exit(1)


def parse_bytes(text: str) -> int:
    """``--keep-bytes``: a count of bytes, or with K, M, G (powers of 1024), e.g. 500M."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    raw = text.strip().upper().removesuffix("B").removesuffix("I")
    number, unit = (raw[:-1], raw[-1]) if raw[-1:] in units and raw[-1:] else (raw, "")
    try:
        value = float(number)
    except ValueError:
        raise UsageError(f"--keep-bytes {text}: not a size (a count of bytes, or e.g. 500M, 2G)") from None
    if not value >= 0 or value == float("inf"):
        raise UsageError(f"--keep-bytes {text} must be 0 or more")
    return int(value * units[unit])


def _bytes_text(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


@main.group("cache")
def cache_group() -> None:
    """edgelm's cache of exports and builds ($EDGELM_CACHE, else $XDG_CACHE_HOME/edgelm, else ~/.cache/edgelm):
    shared by every folder, the pytest plugin and the benchmarks."""


@cache_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@command
def cache_list_cmd(as_json: bool) -> None:
    """The entries, most recently used first: kind, key, size, last use."""
    from toolchain import api

    listing = api.cache_list()
    if as_json:
        emit_json(listing)
        return
    console.print(f"{escape(listing['root'])}: {len(listing['entries'])} entries, "
                  f"{_bytes_text(listing['total_bytes'])}", soft_wrap=True)
    if not listing["entries"]:
        return
    table = Table()
    for name in ("kind", "key", "size", "last used"):
        table.add_column(name, justify="right" if name == "size" else "left")
    for e in listing["entries"]:
        table.add_row(e["kind"], escape(e["key"]), _bytes_text(e["size_bytes"]), e["last_used_iso"].replace("T", " "))
    console.print(table)


@cache_group.command("prune")
@click.option("--keep-bytes", default="0", show_default=True,
              help="Keep the most recently used entries up to this size (bytes, or e.g. 500M, 2G).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@command
def cache_prune_cmd(keep_bytes: str, as_json: bool) -> None:
    """Remove entries, least recently used first, until the cache holds at most --keep-bytes. An entry a
    process is using (a run, a build, a pytest session) is kept."""
    from toolchain import api

    result = api.cache_prune(parse_bytes(keep_bytes))
    if as_json:
        emit_json(result)
        return
    for e in result["removed"]:
        console.print(f"removed {e['kind']}/{escape(e['key'])} ({_bytes_text(e['size_bytes'])})")
    for e in result["in_use"]:
        console.print(f"kept {e['kind']}/{escape(e['key'])}: in use")
    console.print(f"freed {_bytes_text(result['freed_bytes'])}; {_bytes_text(result['remaining_bytes'])} remain")


if __name__ == "__main__":
    main()
