"""Quantization quality on real weights: the shipped `fortune` model (models/fortune), every scheme.

    make bench-quality      # = .venv/bin/python benchmarks/quality.py

For each scheme the model is exported as `edgelm export` does, and the *program* (the .pte a board
runs, through ExecuTorch's runtime on this host) is teacher-forced over the held-out fortunes (the
entries `make demo-model` left out of training). Reported per scheme: held-out perplexity, greedy
(top-1) agreement with the eager fp32 model at every position, the mean KL divergence from it, and
the program's size. Results: ``benchmarks/results/<date>-<host>-quality.json`` and the quality section
of ``BENCHMARKS.md`` (the rest of that file is `make bench`'s and is left as it is).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import report  # noqa: E402

MODEL = "fortune"
CONTEXT = 256
SCHEMES = (  # name, --quant, --group-size, --embedding
    ("fp32", "fp32", 32, "none"),
    ("8da8w emb-int8", "8da8w", 32, "int8"),
    ("8da4w g32 emb-int8", "8da4w", 32, "int8"),
    ("8da4w g64 emb-int8", "8da4w", 64, "int8"),
    ("8da4w g128 emb-int8", "8da4w", 128, "int8"),
    ("8da4w g32 emb-int4", "8da4w", 32, "int4"),
    ("8da4w g128 emb-int4", "8da4w", 128, "int4"),
)


def heldout_docs(tok: Any) -> list[list[int]]:
    """The held-out entries as `make demo-model` scored them: BOS, text, EOS, cut to the context."""
    from toolchain.model import train

    docs = [tok.encode(train.plain(x)) for _, x in train.read_entries() if train.held_out(x)]
    return [d[:CONTEXT] for d in docs if len(d) >= 2]


def teacher_forced(runner: Any, ids: list[int]) -> Any:
    """The program's logits before each of ids[1:], in calls of up to max_rows tokens: [n-1, V]."""
    import torch

    rows, pos = [], 0
    inputs = ids[:-1]
    while pos < len(inputs):
        chunk = inputs[pos:pos + runner.max_rows]
        rows.append(runner.rows(chunk, pos))
        pos += len(chunk)
    return torch.cat(rows)


def score(logits: Any, ids: list[int], fp32: Any) -> dict[str, float]:
    import torch

    from toolchain.validate import fidelity

    target = torch.tensor(ids[1:])
    lq = torch.log_softmax(logits.double(), -1)
    return {"nll_sum": float(-lq[torch.arange(len(target)), target].sum()), "tokens": len(target),
            "agree": int((logits.argmax(-1) == fp32.argmax(-1)).sum()),
            "kl_sum": float(fidelity.kl_per_token(fp32.numpy(), logits.numpy()).sum())}


SPEC_SCHEME = ("8da8w", 32, "int8")  # what `make demo` runs
SPEC_PROMPTS = 12  # held-out fortunes whose first words start a request
SPEC_TOKENS = 96
DRAFT_MODEL = "fortune-draft"


def speculative(work: Path, tok: Any, docs: list[list[int]], draft_model: str | None,
                draft_cost: float) -> dict[str, Any]:
    """The host runner on real text: each prompt (the first 6 tokens of a held-out fortune) decoded
    greedily with drafts and without, every stream validated; acceptance, forward calls and output
    tokens/s. ``draft_model``: the program also carries it (drafts from the context first, then from
    it). ``draft_cost``: what a draft-model call reads, in model calls (for the projection)."""
    from toolchain import api, boards
    from toolchain.deploy import bringup
    from toolchain.link import protocol
    from toolchain.validate.judge import Judge
    from toolchain.validate.reference import ProgramRunner

    quant, group, emb = SPEC_SCHEME
    exported, _ = api.cached_export(MODEL, work, quant=quant, group_size=group, embedding=emb,
                                    max_seq_len=CONTEXT, draft_model=draft_model)
    bundle, _ = api.cached_build("host", exported.pte, work)
    judge = Judge(board=boards.get("host"), bundle_root=bundle.root, reference=ProgramRunner(exported.pte))
    prompts = [d[:6] for d in docs[:SPEC_PROMPTS]]
    out: dict[str, Any] = {"scheme": " ".join(map(str, SPEC_SCHEME)), "prompts": len(prompts),
                           "tokens": SPEC_TOKENS, "draft_model": draft_model, "runs": [],
                           "command": f"edgelm export --model {MODEL} --quant {quant} --group-size {group} "
                                      f"--embedding {emb} --max-seq-len {CONTEXT}"
                                      + (f" --draft-model {draft_model}" if draft_model else "")}
    with judge, bringup.bring_up(api.target_for("host", "local", work), bundle, threads=2) as up:
        for ids in prompts:
            row: dict[str, Any] = {"prompt": tok_text(tok, ids)}
            for draft in (False, True):
                req = protocol.Request(prompt=tuple(ids), max_new_tokens=SPEC_TOKENS, ignore_eos=True,
                                       report_logits=True, draft=draft)
                served = api.serve_and_validate(up, req, judge)
                s = served.collected.stats
                row["drafts" if draft else "plain"] = {
                    "verdict": served.verdict.verdict, "decode_tok_s": s.decode_tok_s, "calls": s.decode_calls,
                    "draft_calls": s.draft_calls, "drafted": s.drafted, "accepted": s.accepted,
                    "draft_model_calls": s.draft_model_calls or 0, "tokens": list(served.collected.tokens)}
            row["same_tokens"] = row["plain"]["tokens"] == row["drafts"]["tokens"]
            out["runs"].append(row)
    runs = out["runs"]

    def total(key: str, kind: str = "drafts") -> int:
        return sum(r[kind][key] for r in runs)

    drafted, accepted, calls = total("drafted"), total("accepted"), total("calls")
    draft_calls, model_calls, plain_calls = total("draft_calls"), total("draft_model_calls"), total("calls", "plain")
    out |= {"drafted": drafted, "accepted": accepted, "calls": calls, "draft_calls": draft_calls,
            "draft_model_calls": model_calls, "plain_calls": plain_calls, "draft_cost": draft_cost,
            # on a bandwidth-bound model a call that verifies a draft costs VERIFY_COST one-token steps,
            # and a draft-model call what its weights are worth against the model's
            "projected_speedup": plain_calls / (calls + (report.VERIFY_COST - 1) * draft_calls
                                                + draft_cost * model_calls),
            "acceptance": accepted / drafted if drafted else 0.0,
            "tokens_per_call": (calls + accepted) / calls if calls else 1.0,
            "all_pass": all(r[k]["verdict"] == "PASS" for r in runs for k in ("plain", "drafts")),
            "all_same_tokens": all(r["same_tokens"] for r in runs),
            "decode_tok_s_plain": statistics.median(r["plain"]["decode_tok_s"] for r in runs),
            "decode_tok_s_drafts": statistics.median(r["drafts"]["decode_tok_s"] for r in runs)}
    print(f"speculative ({draft_model or 'context only'}): {accepted}/{drafted} draft tokens accepted, "
          f"{out['tokens_per_call']:.2f} tokens per call, {model_calls} draft-model calls, all PASS "
          f"{out['all_pass']}, same tokens {out['all_same_tokens']}", flush=True)
    return out


def tok_text(tok: Any, ids: list[int]) -> str:
    return b"".join(tok.token_bytes(t) for t in ids).decode("utf-8", errors="replace")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "bench-quality")
    ap.add_argument("--no-report", action="store_true", help="write the results file only")
    args = ap.parse_args()

    import torch

    from toolchain import api, logs
    from toolchain.model import checkpoint, tokenizer
    from toolchain.validate.reference import ProgramRunner

    logs.quiet_torch()
    torch.set_num_threads(2)
    eager, source = checkpoint.load(MODEL, max_seq_len=CONTEXT, all_logits=True)
    tok = tokenizer.for_model(source.tokenizer_path, source.config.vocab_size)
    docs = heldout_docs(tok)
    with torch.no_grad():
        reference = []
        for ids in docs:
            eager.reset()
            reference.append(eager(torch.tensor([ids[:-1]]), torch.tensor([0]))[0])
    n_tokens = sum(len(d) - 1 for d in docs)
    print(f"quality: {len(docs)} held-out fortunes, {n_tokens} tokens", flush=True)
    fp32_nll = sum(float(-torch.log_softmax(r.double(), -1)[torch.arange(len(d) - 1), torch.tensor(d[1:])].sum())
                   for r, d in zip(reference, docs, strict=True))
    rows: dict[str, Any] = {"eager fp32 (the checkpoint)": {"perplexity": math.exp(fp32_nll / n_tokens),
                                                            "top1_agreement": 1.0, "mean_kl": 0.0}}
    for name, quant, group, emb in SCHEMES:
        t0 = time.monotonic()
        exported, _ = api.cached_export(MODEL, args.work, quant=quant, group_size=group,
                                        embedding=None if emb == "none" else emb, max_seq_len=CONTEXT)
        runner = ProgramRunner(exported.pte)
        total = {"nll_sum": 0.0, "tokens": 0, "agree": 0, "kl_sum": 0.0}
        with torch.no_grad():
            for ids, ref in zip(docs, reference, strict=True):
                for k, v in score(teacher_forced(runner, ids), ids, ref).items():
                    total[k] += v
        rows[name] = {"perplexity": math.exp(total["nll_sum"] / total["tokens"]),
                      "top1_agreement": total["agree"] / total["tokens"], "mean_kl": total["kl_sum"] / total["tokens"],
                      "pte_bytes": exported.pte.stat().st_size,
                      "command": f"edgelm export --model {MODEL} --quant {quant} --group-size {group} "
                                 f"--embedding {emb} --max-seq-len {CONTEXT}"}
        print(f"  {name}: ppl {rows[name]['perplexity']:.3f}, top-1 {rows[name]['top1_agreement'] * 100:.2f}%, "
              f"KL {rows[name]['mean_kl']:.5f} ({time.monotonic() - t0:.0f} s)", flush=True)
    # The draft model on its own: how often its pick is the model's is what bounds its acceptance.
    draft_net, draft_source = checkpoint.load(DRAFT_MODEL, max_seq_len=CONTEXT, all_logits=True)
    total = {"nll_sum": 0.0, "tokens": 0, "agree": 0, "kl_sum": 0.0}
    with torch.no_grad():
        for ids, ref in zip(docs, reference, strict=True):
            draft_net.reset()
            for k, v in score(draft_net(torch.tensor([ids[:-1]]), torch.tensor([0]))[0], ids, ref).items():
                total[k] += v
    rows[f"{DRAFT_MODEL} (the draft model, eager fp32)"] = {
        "perplexity": math.exp(total["nll_sum"] / total["tokens"]),
        "top1_agreement": total["agree"] / total["tokens"], "mean_kl": total["kl_sum"] / total["tokens"]}
    draft_cost = draft_source.config.num_parameters() / source.config.num_parameters()
    spec = [speculative(args.work, tok, docs, None, 0.0),
            speculative(args.work, tok, docs, DRAFT_MODEL, draft_cost)]
    facts = json.loads((checkpoint.SHIPPED[MODEL] / "training.json").read_text())
    results = {"when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "host": socket.gethostname(), "model": MODEL, "weights_sha256": source.weights_sha256,
               "context": CONTEXT, "heldout_docs": len(docs), "heldout_tokens": n_tokens,
               "training": facts["result"], "schemes": rows, "speculative": spec}
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"{datetime.date.today():%Y-%m-%d}-{socket.gethostname()}-quality.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {path}")
    if not args.no_report:
        md = ROOT / "BENCHMARKS.md"
        old = md.read_text() if md.exists() else "# Benchmarks\n"
        md.write_text(report.with_quality(old, report.render_quality(results, path.relative_to(ROOT))))
        print(f"wrote the quality section of {md.name}")


if __name__ == "__main__":
    main()
