"""The machine's read bandwidth, the ceiling of memory-bound decoding: the best of ``--repeats``
sums over a 1 GiB float32 tensor (far past every cache) with ``--threads`` threads.

    .venv/bin/python benchmarks/bandwidth.py [--threads 2] [--gib 1] [--repeats 7]

Prints one JSON line: {"read_gb_s": ..., "threads": ..., "bytes": ..., "all_gb_s": [...]}.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    n = int(args.gib * (1 << 30)) // 4
    x = torch.ones(n, dtype=torch.float32)  # written once: every page is resident before timing
    rates = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        s = float(x.sum())
        rates.append(n * 4 / (time.perf_counter() - t) / 1e9)
        if abs(s - n) > n * 1e-3:
            raise SystemExit(f"sum {s} != {n}: the read was not complete")
    print(json.dumps({"read_gb_s": max(rates), "threads": args.threads, "bytes": n * 4,
                      "all_gb_s": [round(r, 2) for r in rates]}))


if __name__ == "__main__":
    main()
