"""Weights of the built-in presets, made locally (nothing is downloaded).

``lfm2-350m`` and ``lfm2.5-350m``: the real architectures with seeded random weights, for dry
runs and benchmarks. ``tiny``: the same block types at a few hundred kB, briefly trained on the
text below so that its greedy choices are confident. A random tiny model has flat logits, so two
correct kernels that round differently (x86 vs Arm, eager vs XNNPACK) would pick different
tokens at near-ties all the time, and the demo would print noise. Training takes seconds on
one core, is deterministic (one thread, fixed seed), and is cached under ``~/.cache/edgelm``.
"""

from __future__ import annotations

import hashlib
import logging
import os

import torch

from toolchain.model.config import PRESET_INIT_STD, PRESET_SEEDS, PRESETS
from toolchain.model.lfm2 import Lfm2Model, build_model
from toolchain.model.tokenizer import ByteTokenizer
from toolchain.paths import cache_dir

log = logging.getLogger(__name__)

CORPUS = (
    "Once upon a time, a small board sat on a desk and waited for a model. The model was small too, "
    "but it had read a great deal. It learned to count, to rhyme and to tell short stories. "
    "One, two, three, four, five, six, seven, eight, nine, ten. "
    "The quick brown fox jumps over the lazy dog. "
    "Twinkle, twinkle, little star, how I wonder what you are. Up above the world so high, like a "
    "diamond in the sky. "
    "Every token came back over the serial link, and the host checked each one against its own "
    "reference. When they agreed, the test passed, and the board went back to waiting. "
)
TRAIN_STEPS = 400
TRAIN_SEQ = 64
TRAIN_BATCH = 16
TRAIN_LR = 3e-3


def tiny_key() -> str:
    h = hashlib.sha256()
    for part in (repr(PRESETS["tiny"]), CORPUS, TRAIN_STEPS, TRAIN_SEQ, TRAIN_BATCH, TRAIN_LR,
                 PRESET_SEEDS["tiny"], PRESET_INIT_STD["tiny"], torch.__version__):
        h.update(str(part).encode())
    return h.hexdigest()[:16]


def _train_tiny(model: Lfm2Model) -> None:
    """A few hundred Adam steps of next-byte prediction on CORPUS (deterministic, one thread)."""
    ids = torch.tensor([1] + ByteTokenizer().encode(CORPUS), dtype=torch.long)
    gen = torch.Generator().manual_seed(PRESET_SEEDS["tiny"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model.all_logits = True
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=TRAIN_LR)
    try:
        for _ in range(TRAIN_STEPS):
            starts = torch.randint(0, len(ids) - TRAIN_SEQ - 1, (TRAIN_BATCH,), generator=gen)
            loss = torch.zeros(())
            for s in starts.tolist():  # batch 1 per call: the model's state buffers are batch-1
                model.reset()
                chunk = ids[s:s + TRAIN_SEQ + 1]
                logits = model(chunk[None, :-1], torch.tensor([0]))
                loss = loss + torch.nn.functional.cross_entropy(logits[0], chunk[1:])
            opt.zero_grad()
            (loss / TRAIN_BATCH).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
        model.all_logits = False
        model.reset()
        model.eval()
    log.info("trained tiny preset: final loss %.3f", float(loss) / TRAIN_BATCH)


def build_preset(name: str, max_seq_len: int, all_logits: bool = False) -> Lfm2Model:
    cfg = PRESETS[name]
    model = build_model(cfg, max_seq_len=max_seq_len, all_logits=all_logits, seed=PRESET_SEEDS[name],
                        init_std=PRESET_INIT_STD[name])
    if name != "tiny":
        return model
    path = cache_dir() / "presets" / f"tiny-{tiny_key()}.pt"
    if path.exists():
        state = torch.load(path, weights_only=True)
    else:
        log.info("training the tiny preset once (cached at %s)", path)
        trainee = build_model(cfg, max_seq_len=TRAIN_SEQ, seed=PRESET_SEEDS[name], init_std=PRESET_INIT_STD[name])
        _train_tiny(trainee)
        state = {k: v for k, v in trainee.state_dict().items() if not k.endswith(_STATE_SUFFIXES)}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(state, tmp)
        tmp.replace(path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.endswith(_STATE_SUFFIXES) for k in missing):
        raise RuntimeError(f"cached tiny preset {path} does not fit the model; delete it")
    return model.eval()


_STATE_SUFFIXES = ("k_cache", "v_cache", "conv_state", "rope_cos", "rope_sin", "rotate_half")
