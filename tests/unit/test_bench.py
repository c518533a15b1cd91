"""The benchmark's own checks (benchmarks/): the idle check that repeats a disturbed run, the peak
RSS it reads, the prompt ids every engine gets, and the report's verdicts on the targets."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import harness  # noqa: E402
import report  # noqa: E402
import weights  # noqa: E402

SLEEP = [sys.executable, "-c", "import time; time.sleep(1.5); print('{\"ok\": true}')"]


def test_a_busy_neighbour_makes_the_run_disturbed():
    """A process outside the measured tree that burns a core must be seen (other_cores > limit)."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        m = harness.measure(SLEEP)
    finally:
        hog.kill()
        hog.wait()
    assert m.rc == 0 and m.json() == {"ok": True}
    assert m.disturbed, f"a neighbour using a whole core went unseen: other_cores={m.other_cores:.2f}"
    assert m.other_cores > 0.5


def test_the_measured_tree_itself_is_not_a_disturbance():
    """CPU used by the probe and its children counts as the run's own, not as other work."""
    child = "import subprocess, sys; subprocess.run([sys.executable, '-c', 'import time\\nt=time.time()\\n" \
            "while time.time()-t<1.5: pass']); print('{\"ok\": true}')"
    load = harness.wait_idle(wait_s=10.0)  # what else the machine does (about 0 when idle)
    m = harness.measure([sys.executable, "-c", child])
    assert m.rc == 0
    assert m.cpu_s > 1.0, "the child's CPU was not attributed to the measured tree"
    assert m.other_cores < load + 0.5, f"the tree's own CPU was counted as other work: {m.other_cores:.2f}"


def test_peak_rss_is_the_childs_high_water_mark():
    m = harness.measure([sys.executable, "-c", "import time; x = bytearray(300_000_000); "
                         "x[::4096] = b'1' * len(x[::4096]); time.sleep(0.5)"])
    assert m.rc == 0
    assert 286 < m.peak_rss_mb < 600  # 300e6 bytes = 286 MiB


def test_a_small_child_of_a_large_parent_is_measured_small():
    """ru_maxrss survives execve: a child Popen vforks from a big process would report the parent's
    size. The harness must report the child's own peak."""
    ballast = bytearray(800_000_000)
    ballast[::4096] = b"1" * len(ballast[::4096])  # resident in this (the parent) process
    m = harness.measure([sys.executable, "-c", "import time; time.sleep(0.5)"])
    del ballast
    assert m.rc == 0
    assert 1 < m.peak_rss_mb < 100, f"the parent's 760 MiB leaked into the child's peak: {m.peak_rss_mb:.0f} MiB"


def test_a_probe_that_prints_no_result_is_an_error():
    m = harness.measure([sys.executable, "-c", "print('no json here')"])
    with pytest.raises(RuntimeError, match="printed no result"):
        m.json()


def test_prompt_ids_are_edgelms_byte_ids_and_the_bench_tokenizer_agrees():
    from tokenizers import Tokenizer

    from toolchain.model.tokenizer import ByteTokenizer

    text = weights.prompt_text(127)
    ids = weights.prompt_ids(127)
    assert len(ids) == 127 and len(weights.prompt_ids(32)) == 32
    assert ids == [1, *ByteTokenizer().encode(text)]
    tok = Tokenizer.from_str(__import__("json").dumps(weights.tokenizer_json(65536)))
    assert tok.encode(text).ids == ids[1:], "ExecuTorch's runner would see other prompt ids than edgelm"
    assert tok.get_vocab_size() == 65536
    with pytest.raises(ValueError, match="characters"):
        weights.prompt_ids(len(weights.PROMPT_TEXT) + 2)


def _results(edgelm_decode: float, et_decode: float, share: float) -> dict:
    def row(d: float) -> dict:
        return {"ok": True, "decode_tok_s": d, "prefill127_tok_s": d * 9, "prefill32_tok_s": d * 8}

    art = {"system": "edgelm", "file_bytes": 200_000_000, "export": {"wall_s": 170, "peak_rss_mb": 2000},
           "bytes_per_token": {"bytes_per_token": 150_000_000}}
    return {
        "meta": {"rss_method": "VmHWM of the process tree, sampled"},
        "summary": {"edgelm 8da4w g128 emb-int8": {"system": "edgelm", "share_of_ceiling": share},
                    "et": {"system": "executorch", "share_of_ceiling": 0.8}},
        "artifacts": {"edgelm 8da4w g128 emb-int8": art, "edgelm 8da4w g32 emb-int8": art,
                      "et": {**art, "system": "executorch"}},
        "passes": [{"results": {"edgelm 8da4w g128 emb-int8": row(edgelm_decode), "et": row(et_decode)}}] * 3,
        "ratios": [{"decode_tok_s": {"ratio_best_peer": edgelm_decode / et_decode}}] * 3,
    }


@pytest.mark.parametrize(("edgelm", "executorch", "share", "expected"), [
    (100.0, 150.0, 0.5, "not met"),  # slower than the peer, half the ceiling: every decode target fails
    (200.0, 150.0, 0.9, "met"),
])
def test_decode_targets_follow_the_measured_ratios(edgelm, executorch, share, expected):
    verdicts = {t: v for t, _, v in report.targets(_results(edgelm, executorch, share))}
    same = next(t for t in verdicts if t.startswith("decode ≥ 1.0×"))
    assert verdicts[same] == expected
    assert verdicts["decode ≥ 85% of the bandwidth ceiling"] == expected
    assert verdicts["decode ≥ 1.3× the best peer (output tok/s)"] == expected


def test_the_quality_section_is_kept_by_bench_and_replaced_by_bench_quality():
    results = {"model": "fortune", "heldout_docs": 3, "heldout_tokens": 40, "when": "2026-11-30T00:00:00+00:00",
               "host": "vm", "training": {"parameters": 5.5e6, "train_seconds": 1380.0, "heldout_perplexity": 21.5},
               "schemes": {"eager fp32 (the checkpoint)": {"perplexity": 21.5, "top1_agreement": 1.0, "mean_kl": 0.0},
                           "8da4w g32 emb-int8": {"perplexity": 22.0, "top1_agreement": 0.95, "mean_kl": 0.01,
                                                  "pte_bytes": 4096, "command": "edgelm export ..."}}}
    block = report.render_quality(results, Path("benchmarks/results/x-quality.json"))
    assert "| 8da4w g32 emb-int8 | 22.000 | 95.00% | 0.01000 | 4 | `edgelm export ...` |" in block
    main = "# Benchmarks\n\nspeed tables\n"
    once = report.with_quality(main, block)
    assert once.startswith(main.rstrip("\n")) and report.quality_block(once) == block
    newer = block.replace("22.000", "23.000")
    twice = report.with_quality(once, newer)
    assert "23.000" in twice and "22.000" not in twice and twice.count(report.QUALITY_BEGIN) == 1
    # make bench rewrites the speed part and carries the block over; without one it adds nothing
    assert report.quality_block(report.with_quality("# Benchmarks\n\nnew speed tables\n",
                                                    report.quality_block(twice))) == newer
    assert report.with_quality(main, None) == main


def test_a_speculative_row_is_summarized_apart_and_never_counts_as_the_share_of_the_ceiling():
    import bench

    plain = bench.Artifact("edgelm g128", "edgelm", Path("m.pte"), ["probe"], bytes_per_token={"bytes_per_token": 1e8})
    spec = bench.Artifact("edgelm g128 + lookup drafts", "edgelm", Path("m.pte"), ["probe", "--draft"],
                          bytes_per_token={"bytes_per_token": 1e8})
    row = {"ok": True, "decode_tok_s": 50.0, "prefill32_tok_s": 400.0, "prefill127_tok_s": 500.0}
    passes = [{"pass": i, "bandwidth": {"read_gb_s": 10.0},
               "results": {"edgelm g128": row, "edgelm g128 + lookup drafts":
                           {**row, "decode_tok_s": 200.0, "drafted": 100, "accepted": 60, "decode_calls": 67}}}
              for i in range(3)]
    s = bench.summarize([plain, spec], passes)
    assert "drafts" not in s["edgelm g128"]
    assert s["edgelm g128 + lookup drafts"]["drafts"] == {"drafted": 300, "accepted": 180, "calls": 201,
                                                           "acceptance": 0.6}
    none = [{**p, "results": {**p["results"], "edgelm g128 + lookup drafts": {**row, "drafted": 0, "accepted": 0,
                                                                              "decode_calls": 127}}} for p in passes]
    assert bench.summarize([plain, spec], none)["edgelm g128 + lookup drafts"]["drafts"]["acceptance"] is None
    # a share of the ceiling above 1 from drafting must not pass for the plain decoder's efficiency
    results = {"summary": s, "artifacts": {}, "passes": passes, "ratios": [], "meta": {}}
    share = next(m for t, m, _ in report.targets(results) if t.startswith("decode ≥ 85%"))
    assert "lookup drafts" not in share


def test_the_quality_section_shows_each_drafting_mode_and_reads_the_older_form():
    base = {"scheme": "8da8w 32 int8", "prompts": 12, "tokens": 96, "all_pass": True, "all_same_tokens": True,
            "draft_calls": 40, "calls": 900, "plain_calls": 1140, "tokens_per_call": 1.2, "decode_tok_s_plain": 900.0,
            "decode_tok_s_drafts": 950.0}
    lookup = {**base, "accepted": 88, "drafted": 298, "acceptance": 88 / 298, "projected_speedup": 1.07,
              "draft_model": None}
    model = {**base, "accepted": 300, "drafted": 400, "acceptance": 0.75, "projected_speedup": 1.3,
             "draft_model": "fortune-draft", "draft_model_calls": 500, "draft_cost": 0.161,
             "command": "edgelm export --model fortune --draft-model fortune-draft"}
    results = {"model": "fortune", "heldout_docs": 3, "heldout_tokens": 40, "when": "2026-11-30T00:00:00+00:00",
               "host": "vm", "training": {"parameters": 5.5e6, "train_seconds": 1380.0, "heldout_perplexity": 21.5},
               "schemes": {}, "speculative": [lookup, model]}
    block = report.render_quality(results, Path("benchmarks/results/x-quality.json"))
    assert "| the context | 88/298 (30%) |" in block
    assert "| the context, then fortune-draft | 300/400 (75%) | 40 | 900 (1140) | 1.20 | 500 |" in block
    assert "0.161 x draft-model calls" in block and "all PASS" in block
    older = report.render_quality({**results, "speculative": lookup}, Path("x.json"))
    assert "| the context | 88/298 (30%) |" in older and "draft-model calls, a draft-model" not in older
    failing = report.render_quality({**results, "speculative": [lookup, {**model, "all_same_tokens": False}]},
                                    Path("x.json"))
    assert "DIFFERENT" in failing
