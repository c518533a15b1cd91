"""Board-side decode speed of the edgelm runner, against a peer measured in the same run.

For each model and board, `edgelm run`'s board-side STATS (measured by the runner itself) are set
beside the peer: the same .pte driven by ExecuTorch's own Python runtime (executorch.runtime) on
this host, greedy, same prompt and token count. Ratios are runner / peer. Under qemu the runner's
speed is the emulator's, not the board's: it says whether the build runs, not how fast a Pi is.

    .venv/bin/python benchmarks/board_decode.py [--models tiny,lfm2-350m] [--boards rpi5:qemu,host:local]

Writes benchmarks/results/board_decode.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

from toolchain import api, logs
from toolchain.validate.reference import ProgramRunner

RESULTS = Path(__file__).parent / "results"
PROMPT = "Once upon a time"


def peer_decode(pte: Path, prompt_ids: list[int], n: int) -> dict:
    runner = ProgramRunner(pte)
    t0 = time.perf_counter()
    logits = runner.step(prompt_ids, 0)
    t1 = time.perf_counter()
    pos = len(prompt_ids)
    for _ in range(n - 1):
        logits = runner.step([int(logits.argmax())], pos)
        pos += 1
    t2 = time.perf_counter()
    return {"ttft_ms": (t1 - t0) * 1e3, "prefill_tok_s": len(prompt_ids) / (t1 - t0),
            "decode_tok_s": (n - 1) / (t2 - t1)}


def main() -> None:
    warnings.filterwarnings("ignore")
    logs.quiet_torch()
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="tiny,lfm2-350m")
    ap.add_argument("--boards", default="rpi5:qemu,host:local")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--workdir", type=Path, default=Path("out"))
    args = ap.parse_args()
    rows = []
    for model in args.models.split(","):
        for spec in args.boards.split(","):
            board, _, target = spec.partition(":")
            t = time.perf_counter()
            report = api.run_job(api.RunRequest(board=board, target=target, model=model, prompt=PROMPT,
                                                tokens=args.tokens, ignore_eos=True, workdir=args.workdir)).to_dict()
            wall = time.perf_counter() - t
            peer = peer_decode(Path(report["pte"]), report["prompt_token_ids"], args.tokens)
            s = report["board_stats"]
            rows.append({
                "model": model, "quant": report["quant"], "board": board, "target": target,
                "verdict": report["validation"]["verdict"], "tokens": len(report["generated_token_ids"]),
                "runner": {k: s[k] for k in ("ttft_ms", "prefill_tok_s", "decode_tok_s", "peak_rss_kb")},
                "peer_host_python_runtime": peer,
                "decode_ratio_runner_vs_peer": s["decode_tok_s"] / peer["decode_tok_s"],
                "job_wall_s": wall,
            })
            print(json.dumps(rows[-1]))
    RESULTS.mkdir(exist_ok=True)
    meta = {"host": platform.processor() or platform.machine(), "when": time.strftime("%Y-%m-%d %H:%M:%S"),
            "prompt": PROMPT}
    (RESULTS / "board_decode.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = ["| model | board:target | verdict | runner decode tok/s | peer decode tok/s (host, Python runtime) "
             "| ratio | runner TTFT ms | peak RSS MiB |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} {r['quant']} | {r['board']}:{r['target']} | {r['verdict']} | "
                     f"{r['runner']['decode_tok_s']:.1f} | {r['peer_host_python_runtime']['decode_tok_s']:.1f} | "
                     f"{r['decode_ratio_runner_vs_peer']:.2f} | {r['runner']['ttft_ms']:.1f} | "
                     f"{r['runner']['peak_rss_kb'] / 1024:.0f} |")
    (RESULTS / "board_decode.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
