"""Logging policy: edgelm logs what it does; torch, torchao and executorch say only what matters.

torch installs its own logging setup on import (``torch._logging``), so their levels are set
right after ``import torch`` and before torchao or executorch are imported; otherwise every
command starts with warnings about pytree registrations and CUDA kernels that cannot load here.
"""

from __future__ import annotations

import logging
import os
import warnings

NOISY = ("torch", "torchao", "executorch")


def verbose() -> bool:
    return logging.getLogger("toolchain").isEnabledFor(logging.INFO)


def quiet_torch() -> None:
    if verbose():
        return
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    import torch

    torch._logging.set_logs(all=logging.ERROR)
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"(torch|torchao|executorch)(\.|$)")
    # pytree's deprecation, raised from copyreg when the Arm flow deep-copies a graph module
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
