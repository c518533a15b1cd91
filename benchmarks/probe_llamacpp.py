"""One measurement of llama.cpp (through llama-cpp-python, in the benchmark's own environment),
or the quantization of a GGUF file with llama.cpp's own quantizer.

    python probe_llamacpp.py run --gguf F --ids32 1,2,.. --ids127 1,2,.. [--tokens 128]
                                 [--threads 2] [--flash-attn on|off] [--ctx 512]
    python probe_llamacpp.py quantize --src f32.gguf --out q4_0.gguf --type q4_0|q8_0 [--threads 2]

Token ids go in as they are (the same ids every engine gets); timings are llama.cpp's own
(llama_perf_context). In one load: a warm-up (8 new tokens), the 32-token prompt then ``tokens``
greedy steps, the 127-token prompt then one step; the memory is cleared between runs.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import time
from pathlib import Path

from harness import status_mb  # this folder is on sys.path: the script's own

FTYPES = {"q4_0": 2, "q8_0": 7}  # LLAMA_FTYPE_MOSTLY_Q4_0, LLAMA_FTYPE_MOSTLY_Q8_0


def quantize(args: argparse.Namespace) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[args.type]
    params.nthread = args.threads
    t = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(args.src.encode(), args.out.encode(), ctypes.byref(params))
    if rc != 0:
        sys.exit(f"llama_model_quantize {args.src} -> {args.type} failed ({rc})")
    print(json.dumps({"ok": True, "seconds": time.perf_counter() - t, "bytes": Path(args.out).stat().st_size}))


def run(args: argparse.Namespace) -> None:
    import llama_cpp
    from llama_cpp import Llama

    ids32 = [int(x) for x in args.ids32.split(",")]
    ids127 = [int(x) for x in args.ids127.split(",")]
    base_rss = status_mb("VmRSS")
    t = time.perf_counter()
    llm = Llama(model_path=args.gguf, n_ctx=args.ctx, n_batch=args.ctx, n_ubatch=args.ctx, n_threads=args.threads,
                n_threads_batch=args.threads, flash_attn=args.flash_attn == "on", verbose=False, seed=0)
    load_ms = (time.perf_counter() - t) * 1e3

    def generate(ids: list[int], n: int) -> dict:
        llm.reset()
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llm.ctx), True)
        llama_cpp.llama_perf_context_reset(llm.ctx)
        out: list[int] = []
        t0 = time.perf_counter()
        ttft = 0.0
        for tok in llm.generate(ids, temp=0.0, reset=False):
            if not out:
                ttft = (time.perf_counter() - t0) * 1e3
            out.append(int(tok))
            if len(out) == n:
                break
        d = llama_cpp.llama_perf_context(llm.ctx)
        return {"tokens": out, "ttft_ms": ttft, "n_p_eval": d.n_p_eval, "t_p_eval_ms": d.t_p_eval_ms,
                "n_eval": d.n_eval, "t_eval_ms": d.t_eval_ms}

    generate(ids32, 8)
    a = generate(ids32, args.tokens)
    b = generate(ids127, 1)
    ok = a["n_p_eval"] == len(ids32) and b["n_p_eval"] == len(ids127) and len(a["tokens"]) == args.tokens
    print(json.dumps({
        "ok": ok, "why": "" if ok else f"prompt evals {a['n_p_eval']}/{b['n_p_eval']}, {len(a['tokens'])} generated",
        "load_ms": load_ms, "ttft_ms": a["ttft_ms"],
        "prefill32_tok_s": a["n_p_eval"] / a["t_p_eval_ms"] * 1e3,
        "prefill127_tok_s": b["n_p_eval"] / b["t_p_eval_ms"] * 1e3,
        "decode_tok_s": a["n_eval"] / a["t_eval_ms"] * 1e3,
        "peak_rss_mb": status_mb("VmHWM"), "base_rss_mb": base_rss, "generated": a["tokens"],
        "runs": {name: {k: v for k, v in r.items() if k != "tokens"} for name, r in (("a", a), ("b", b))}}))


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--gguf", required=True)
    r.add_argument("--ids32", required=True)
    r.add_argument("--ids127", required=True)
    r.add_argument("--tokens", type=int, default=128)
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--flash-attn", choices=("on", "off"), default="on")
    r.add_argument("--ctx", type=int, default=512)
    q = sub.add_parser("quantize")
    q.add_argument("--src", required=True)
    q.add_argument("--out", required=True)
    q.add_argument("--type", choices=sorted(FTYPES), required=True)
    q.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    run(args) if args.cmd == "run" else quantize(args)


if __name__ == "__main__":
    main()
