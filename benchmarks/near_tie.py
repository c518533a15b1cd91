"""The near-tie gap of a board without a twin, measured from honest runs: how far apart the host
reference's own top two were where an honest board's greedy token differed from the host's argmax.

    .venv/bin/python benchmarks/near_tie.py --board rpi5 [--model fortune] [--quant 8da8w 8da4w] [--tokens 48]

The board is its qemu target (the same binary a real board runs, on QEMU's model of its CPU); the
host reference is the same .pte on this machine. Prints one JSON line per scheme and a last one with
the largest gap (in std of the reference logits) and the flip rate; the profile's ``near_tie`` is
set from these (with a margin), so the reference rule (no twin) does not FAIL an honest board.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PROMPTS = ["A wise old owl", "The computer said", "Never trust a", "In the beginning", "My grandmother",
           "Life is", "The best way to", "Why do cats"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--board", required=True)
    ap.add_argument("--model", default="fortune")
    ap.add_argument("--quant", nargs="+", default=["8da8w", "8da4w"])
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--workdir", type=Path, default=Path("out"))
    args = ap.parse_args()

    import numpy as np

    from toolchain import api, boards, logs
    from toolchain.deploy.bringup import bring_up
    from toolchain.link import protocol as P
    from toolchain.model import checkpoint, tokenizer
    from toolchain.validate.judge import teacher_forced
    from toolchain.validate.reference import ProgramRunner

    logs.quiet_torch()
    board = boards.get(args.board)
    gaps, tokens = [], 0
    for quant in args.quant:
        exported, _ = api.cached_export(args.model, args.workdir, quant=quant)
        man = exported.manifest
        tok = tokenizer.for_model(checkpoint.inspect_folder(checkpoint.folder_of(args.model)).tokenizer_path,
                                  man["model"]["config"]["vocab_size"])
        bundle, _ = api.cached_build(args.board, exported.pte, args.workdir)
        reference = ProgramRunner(exported.pte)
        target = api.target_for(args.board, "qemu", args.workdir)
        mine = []
        with bring_up(target, bundle) as up:
            for text in PROMPTS:
                prompt = (man["tokens"]["bos_token_id"], *tok.encode(text))
                c = up.session.collect(P.Request(prompt, args.tokens, ignore_eos=True, report_logits=True))
                for t, ref in zip(c.tokens, teacher_forced(reference, prompt, c.tokens), strict=True):
                    ref = ref.astype(np.float64)
                    best = int(np.argmax(ref))
                    if t != best:
                        mine.append((ref[best] - ref[t]) / max(float(np.std(ref)), 1e-12))
                tokens += len(c.tokens)
        gaps += mine
        print(json.dumps({"board": args.board, "cpu": board.qemu_cpu, "model": args.model, "quant": quant,
                          "tokens": len(PROMPTS) * args.tokens, "flips": len(mine),
                          "gaps_std": [round(g, 4) for g in sorted(mine)]}))
    print(json.dumps({"board": args.board, "cpu": board.qemu_cpu, "tokens": tokens, "flips": len(gaps),
                      "flip_rate": round(len(gaps) / max(tokens, 1), 4),
                      "largest_gap_std": round(max(gaps), 4) if gaps else 0.0}))


if __name__ == "__main__":
    main()
