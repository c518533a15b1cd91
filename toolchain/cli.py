"""The ``edgelm`` command: each subcommand parses, calls one ``toolchain.api`` function, renders."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from toolchain import __version__
from toolchain.errors import EdgelmError

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)
EXIT_INTERRUPTED = 130
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
    """Turn EdgelmError into one line (+ hint) and its exit code; never a traceback for bad input."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EdgelmError as exc:
            hint = f" [dim](hint: {escape(exc.hint)})[/]" if exc.hint else ""
            err.print(f"[bold red]error:[/] {escape(exc.message)}{hint}", soft_wrap=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            err.print("[bold red]error:[/] interrupted")
            sys.exit(EXIT_INTERRUPTED)
        except click.exceptions.Exit:
            raise
        except Exception as exc:  # a bug in edgelm: one line, the traceback only on request
            if os.environ.get("EDGELM_DEBUG"):
                raise
            first = str(exc).splitlines()[0] if str(exc) else ""
            err.print(f"[bold red]internal error:[/] {type(exc).__name__}: {escape(first)} "
                      "[dim](hint: set EDGELM_DEBUG=1 for the traceback, and report it)[/]", soft_wrap=True)
            sys.exit(EXIT_INTERNAL)

    return wrapper


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


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

    def __call__(self, step: str, detail: str) -> None:
        self._finish()
        self._task = self._progress.add_task(detail, step=step, total=None)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgelm")
@click.option("-v", "--verbose", is_flag=True, help="Log what each step does.")
def main(verbose: bool) -> None:
    """edgelm: LFM2-family language models on real boards.

    export -> build -> flash -> run, with the board's tokens validated against the host.
    """
    _quiet_libraries(verbose)


@main.command()
@click.option("--model", "-m", required=True, help="Preset (lfm2-350m, lfm2.5-350m, tiny) or a Hugging Face folder.")
@click.option("--quant", "-q", type=click.Choice(["fp32", "8da8w", "8da4w"]), default="8da4w", show_default=True)
@click.option("--group-size", type=int, default=32, show_default=True, help="Weight group size for 8da4w / int4.")
@click.option("--embedding", type=click.Choice(["none", "int8", "int4"]), default=None,
              help="Embedding quantization [default: int8, none with fp32].")
@click.option("--max-seq-len", type=int, default=512, show_default=True, help="KV-cache length in the program.")
@click.option("--backend", default="xnnpack", show_default=True, help="Delegate backend (see `edgelm backends`).")
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@command
def export(model: str, quant: str, group_size: int, embedding: str | None, max_seq_len: int, backend: str,
           out: Path, as_json: bool) -> None:
    """Quantize and lower a model to an ExecuTorch program (model.pte + manifest.json)."""
    from toolchain import api

    with StepProgress(enabled=not as_json) as progress:
        result = api.export_model(model, out, quant=quant, group_size=group_size, embedding=embedding,
                                  max_seq_len=max_seq_len, backend=backend, progress=progress)
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
        ("model", f"{body['model']['name']} ({body['model']['kind']}), {body['model']['parameters'] / 1e6:.1f}M "
                  f"parameters, {len(cfg['layer_types'])} layers"),
        ("method", f"{prog['method']}(tokens[1, 1..{prog['max_seq_len']}], input_pos[1]) -> logits"),
        ("state", f"{prog['state_bytes'] / 1e6:.2f} MB (KV caches + conv states)"),
        ("quant", f"{q['scheme']}: {q['linear_layers_quantized']}/{q['linear_layers']} linear layers; "
                  f"lm_head {q['lm_head']}"),
        ("backend", f"{d['backend']}: {d['delegated_total']} ops delegated in {d['delegate_calls']} calls, "
                    f"{d['non_delegated_total']} outside"),
        ("layers", "fully delegated" if d["decoder_layers_fully_delegated"] else "[red]NOT fully delegated[/]"),
        ("tokens", f"BOS {body['tokens']['bos_token_id']}, EOS {body['tokens']['eos_token_ids']}, tokenizer "
                   f"{body['tokens']['tokenizer']['kind']}"),
        ("versions", ", ".join(f"{k} {v}" for k, v in body["versions"].items())),
    ]:
        table.add_row(f"[bold]{key}[/]", value)
    console.print(table)
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
        console.print(f"[bold]{b['name']:<10}[/] {b['description']}")


if __name__ == "__main__":
    main()
