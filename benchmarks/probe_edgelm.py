"""One measurement of the edgelm runner on this host (board ``host``, target ``local``), brought up
the one way every command does (deploy, start, HELLO, tear down), its figures from its own STATS.

    .venv/bin/python benchmarks/probe_edgelm.py --pte out/model.pte --ids32 1,2,.. --ids127 1,2,..
        [--tokens 128] [--threads 2] [--workdir DIR] [--draft]

In one bring-up (one load): a warm-up (8 new tokens), the 32-token prompt then ``tokens`` greedy
steps, the 127-token prompt then one step. Every stream is validated against the host reference,
as `edgelm run` does; a stream that does not PASS makes the result not ok. Without ``--draft`` the
runner decodes one token per call (the comparison at equal bytes per token); with it, it verifies
drafts from the context (speculative decoding) and the acceptance is recorded.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pte", type=Path, required=True)
    ap.add_argument("--ids32", required=True)
    ap.add_argument("--ids127", required=True)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path("out/bench"))
    ap.add_argument("--draft", action="store_true", help="let the runner verify drafts from the context")
    args = ap.parse_args()

    from toolchain import api, boards, logs
    from toolchain.deploy import bringup
    from toolchain.export import manifest
    from toolchain.link import protocol
    from toolchain.validate import compare
    from toolchain.validate.judge import Judge
    from toolchain.validate.reference import ProgramRunner

    logs.quiet_torch()
    man = manifest.read(args.pte)
    quant = man["quantization"]["linear"]
    bundle, _ = api.cached_build("host", args.pte, args.workdir)
    target = api.target_for("host", "local", args.workdir)
    # the twin judges after each request (never while the board decodes): timings are the board's alone
    judge = Judge(board=boards.get("host"), bundle_root=bundle.root, reference=ProgramRunner(args.pte),
                  tolerance=compare.default_tolerance(quant))
    runs = {"warm": ([int(x) for x in args.ids32.split(",")], 8),
            "a": ([int(x) for x in args.ids32.split(",")], args.tokens),
            "b": ([int(x) for x in args.ids127.split(",")], 1)}
    got: dict[str, dict] = {}
    with judge, bringup.bring_up(target, bundle, threads=args.threads) as up:
        load_ms = up.hello.load_ms
        for name, (ids, n) in runs.items():
            request = protocol.Request(prompt=tuple(ids), max_new_tokens=n, temperature=0.0, top_k=0, top_p=1.0,
                                       seed=0, stop=tuple(man["tokens"]["eos_token_ids"]), ignore_eos=True,
                                       report_logits=True, draft=args.draft)
            served = api.serve_and_validate(up, request, judge)
            s = served.collected.stats
            got[name] = {"verdict": served.verdict.verdict, "reason": served.verdict.reason,
                         "generated": len(served.collected.tokens), "tokens": list(served.collected.tokens),
                         "ttft_ms": s.ttft_ms, "prefill_tok_s": s.prefill_tok_s, "decode_tok_s": s.decode_tok_s,
                         "peak_rss_kb": s.peak_rss_kb, "decode_calls": s.decode_calls,
                         "draft_calls": s.draft_calls, "drafted": s.drafted,
                         "accepted": s.accepted}
    a, b = got["a"], got["b"]
    bad = [f"{k}: {v['verdict']} ({v['reason']})" for k, v in got.items() if v["verdict"] != "PASS"]
    ok = not bad and a["generated"] == args.tokens
    print(json.dumps({
        "ok": ok, "why": "; ".join(bad) or ("" if ok else f"{a['generated']} generated"),
        "load_ms": load_ms, "ttft_ms": a["ttft_ms"], "prefill32_tok_s": a["prefill_tok_s"],
        "prefill127_tok_s": b["prefill_tok_s"], "decode_tok_s": a["decode_tok_s"],
        "peak_rss_mb": max(v["peak_rss_kb"] for v in got.values()) / 1024.0, "base_rss_mb": 0.0,
        "drafted": a["drafted"], "accepted": a["accepted"], "decode_calls": a["decode_calls"],
        "generated": a["tokens"], "verdicts": {k: v["verdict"] for k, v in got.items()},
        "runs": {k: {x: y for x, y in v.items() if x != "tokens"} for k, v in got.items()}}))


if __name__ == "__main__":
    main()
