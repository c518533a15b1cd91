"""One measurement of ExecuTorch's own LLM path: a program from ``export_llm`` run by its
TextLLMRunner (the Python binding of the C++ runner in the executorch wheel).

    python probe_executorch.py --pte P --tokenizer tokenizer.json --prompt32 S --prompt127 S \
        [--tokens 128] [--threads 2]

Prints one JSON line. The runner's own Stats are integer milliseconds; decode is measured from the
first generated token to the end, over ``tokens - 1`` steps. The prompts carry the BOS token as
text ("<|startoftext|>..."), so they are the same ids the other engines get. Runs, in one load: a warm-up (8 new
tokens), the 32-token prompt then ``tokens`` greedy steps, the 127-token prompt then one step.
"""

from __future__ import annotations

import argparse
import json
import time

from harness import status_mb  # this folder is on sys.path: the script's own


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pte", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--prompt32", required=True)
    ap.add_argument("--prompt127", required=True)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (the runner expects them loaded)
    import executorch.kernels.quantized  # noqa: F401  (quantized embedding kernels)
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner
    from executorch.extension.pybindings import portable_lib

    portable_lib._unsafe_reset_threadpool(args.threads)
    base_rss = status_mb("VmRSS")
    t0 = time.perf_counter()
    runner = TextLLMRunner(args.pte, args.tokenizer)
    init_ms = (time.perf_counter() - t0) * 1e3

    def generate(prompt: str, n: int, warming: bool = False) -> dict:
        got: list = []
        cfg = GenerationConfig(echo=False, max_new_tokens=n, temperature=0.0, num_bos=0, warming=warming)
        t = time.perf_counter()
        # token_callback stays None: a Python callback crashes on a partial UTF-8 piece.
        runner.generate(prompt, cfg, None, got.append)
        wall = time.perf_counter() - t
        s = got[-1]
        return {"wall_s": wall, "load_ms": s.model_load_end_ms - s.model_load_start_ms,
                # num_generated_tokens counts the decode steps: the first new token comes from prefill
                "prompt_tokens": s.num_prompt_tokens, "steps": s.num_generated_tokens,
                "prefill_ms": s.prompt_eval_end_ms - s.inference_start_ms,
                "ttft_ms": s.first_token_ms - s.inference_start_ms,
                "decode_ms": s.inference_end_ms - s.first_token_ms}

    warm = generate(args.prompt32, 8, warming=True)
    runner.reset()
    a = generate(args.prompt32, args.tokens)
    runner.reset()
    b = generate(args.prompt127, 1)
    ok = a["prompt_tokens"] == 32 and b["prompt_tokens"] == 127 and a["steps"] + 1 == args.tokens
    print(json.dumps({
        "ok": ok, "why": "" if ok else f"prompt {a['prompt_tokens']}/{b['prompt_tokens']} tokens, "
                                       f"{a['steps'] + 1} generated",
        "load_ms": warm["load_ms"] or init_ms, "ttft_ms": a["ttft_ms"],
        "prefill32_tok_s": a["prompt_tokens"] / max(a["prefill_ms"], 1) * 1e3,
        "prefill127_tok_s": b["prompt_tokens"] / max(b["prefill_ms"], 1) * 1e3,
        "decode_tok_s": a["steps"] / max(a["decode_ms"], 1) * 1e3,
        "peak_rss_mb": status_mb("VmHWM"), "base_rss_mb": base_rss, "runs": {"warm": warm, "a": a, "b": b}}))


if __name__ == "__main__":
    main()
