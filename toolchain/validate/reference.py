"""The host reference: the same ``.pte`` run through ``executorch.runtime`` on this machine."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from toolchain import logs
from toolchain.errors import InputError

log = logging.getLogger(__name__)
logs.quiet_torch()


class ProgramRunner:
    """One loaded method with its state: ``step(tokens, pos)`` returns the next-token logits [V]."""

    def __init__(self, pte: Path | bytes):
        import executorch.kernels.quantized  # noqa: F401  (registers quantized_decomposed kernels)
        from executorch.runtime import Runtime

        runtime = Runtime.get()
        try:
            program = runtime.load_program(pte if isinstance(pte, bytes) else str(pte))
            self._method = program.load_method("forward")
        except (RuntimeError, ValueError) as exc:
            raise InputError(f"cannot load {pte if not isinstance(pte, bytes) else 'program'}: {exc}") from None
        meta = self._method.metadata
        self.max_seq_len = int(meta.input_tensor_meta(0).sizes()[1])
        self.vocab_size = int(meta.output_tensor_meta(0).sizes()[-1])

    def step(self, tokens: list[int], pos: int) -> torch.Tensor:
        if not tokens or pos < 0 or pos + len(tokens) > self.max_seq_len:
            raise ValueError(f"positions {pos}..{pos + len(tokens)} outside [0, {self.max_seq_len})")
        out = self._method.execute([torch.tensor([tokens], dtype=torch.long), torch.tensor([pos], dtype=torch.long)])
        return out[0].reshape(-1)
