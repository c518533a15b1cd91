"""The host reference: the same ``.pte`` run through ``executorch.runtime`` on this machine."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from toolchain import logs
from toolchain.errors import InputError

log = logging.getLogger(__name__)
logs.quiet_torch()


@contextlib.contextmanager
def native_stderr_to_log(what: str) -> Iterator[None]:
    """The ExecuTorch runtime logs from C++ straight to fd 2 (CPU probing chatter on first use).
    Route that to our log (INFO), so a command's stderr carries only what edgelm means to say."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode(errors="replace").splitlines():
                log.info("executorch runtime (%s): %s", what, line)


def _runtime():
    """``executorch.runtime.Runtime``, imported without ``executorch.exir``: the pybindings import exir's
    ``_warnings`` module only for a warning class, and the package around it costs ~10 s of imports (the whole
    export stack). Where exir is not imported yet, its package stands in empty while the runtime is imported
    and is taken away afterwards, so a later ``import executorch.exir`` is the real one."""
    import importlib.util
    import types

    if "executorch.runtime" not in sys.modules and "executorch.exir" not in sys.modules:
        import executorch

        spec = importlib.util.find_spec("executorch.exir")
        if spec is not None and spec.submodule_search_locations:
            stand_in = types.ModuleType("executorch.exir")
            stand_in.__path__ = list(spec.submodule_search_locations)
            stand_in.__spec__ = spec
            sys.modules["executorch.exir"] = stand_in
            try:
                import executorch.kernels.quantized  # noqa: F401  (registers quantized_decomposed kernels)
                from executorch.runtime import Runtime
            finally:
                for name in [n for n in sys.modules if n == "executorch.exir" or n.startswith("executorch.exir.")]:
                    if name == "executorch.exir._warnings" or sys.modules[name] is stand_in:
                        del sys.modules[name]
                if getattr(executorch, "exir", None) is stand_in:
                    del executorch.exir
            return Runtime.get()
    import executorch.kernels.quantized  # noqa: F401,F811
    from executorch.runtime import Runtime

    return Runtime.get()


class ProgramRunner:
    """One loaded method with its state: ``step(tokens, pos)`` returns the next-token logits [V];
    ``rows(tokens, pos)`` the logits after each of the tokens [T, V] (a draft's verification)."""

    def __init__(self, pte: Path | bytes):
        runtime = _runtime()
        try:
            with native_stderr_to_log("load"):
                # The runtime reads a program given as bytes in place: they, and the program the
                # method belongs to, must outlive the method (a freed buffer crashes the next call).
                self._bytes = pte if isinstance(pte, bytes) else None
                self._program = program = runtime.load_program(pte if isinstance(pte, bytes) else str(pte))
                self._method = program.load_method("forward")
                self._warm = False
        except (RuntimeError, ValueError) as exc:
            raise InputError(f"cannot load {pte if not isinstance(pte, bytes) else 'program'}: {exc}") from None
        meta = self._method.metadata
        self.max_seq_len = int(meta.input_tensor_meta(0).sizes()[1])
        self._key_input = meta.num_inputs() >= 3  # key_positions: the attention reads slots 0..pos+T-1
        # logit_rows: which positions' logits come back; its bound is the longest draft + 1
        self._rows_input = meta.num_inputs() >= 4
        self.max_rows = int(meta.input_tensor_meta(3).sizes()[0]) if self._rows_input else 1
        self.vocab_size = int(meta.output_tensor_meta(0).sizes()[-1])

    def step(self, tokens: list[int], pos: int) -> torch.Tensor:
        return self._call(tokens, pos, [len(tokens) - 1]).reshape(-1)

    def rows(self, tokens: list[int], pos: int) -> torch.Tensor:
        if len(tokens) > self.max_rows:
            raise ValueError(f"{len(tokens)} rows asked of a program that returns at most {self.max_rows}")
        return self._call(tokens, pos, list(range(len(tokens)))).reshape(len(tokens), -1)

    def _call(self, tokens: list[int], pos: int, rows: list[int]) -> torch.Tensor:
        if not tokens or pos < 0 or pos + len(tokens) > self.max_seq_len:
            raise ValueError(f"positions {pos}..{pos + len(tokens)} outside [0, {self.max_seq_len})")
        inputs = [torch.tensor([tokens], dtype=torch.long), torch.tensor([pos], dtype=torch.long)]
        if self._key_input:
            inputs.append(torch.arange(pos + len(tokens), dtype=torch.long))
        if self._rows_input:
            inputs.append(torch.tensor(rows, dtype=torch.long))
        if not self._warm:  # the thread pool starts (and probes the CPU) on the first call
            with native_stderr_to_log("first call"):
                out = self._method.execute(inputs)
            self._warm = True
        else:
            out = self._method.execute(inputs)
        return out[0]
