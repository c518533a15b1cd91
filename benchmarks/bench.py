"""`make bench`: edgelm against ExecuTorch's own LLM path and llama.cpp, in one run on one machine.

    .venv/bin/python benchmarks/bench.py [--passes 3] [--tokens 128] [--threads 2] [--work out/bench]
                                         [--only edgelm,executorch,llamacpp] [--no-report]

1. The benchmark's own environment (not a project dependency): llama-cpp-python built from its
   PyPI source distribution, and matplotlib for the chart (``~/.cache/edgelm/bench/llama-venv``).
2. One set of weights: ``lfm2-350m`` (seeded random), also written as a Hugging Face folder.
3. The artifacts, each export timed with its peak RSS: edgelm's (``edgelm export``), ExecuTorch's
   (its LFM2 weight converter, then ``export_llm`` with the LFM2 config inside the installed
   wheel), llama.cpp's (the converter inside the source distribution, then its quantizer).
4. Passes: every system once per pass, in an order that rotates from pass to pass, each probe in
   its own process on an idle machine (a disturbed run is run again), plus the read bandwidth.
5. ``benchmarks/results/<date>-<host>.json``, ``BENCHMARKS.md`` and ``benchmarks/results/latest.png``.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import harness  # noqa: E402
import report  # noqa: E402
import warm_run  # noqa: E402
import weights  # noqa: E402

LLAMA_CPP_PYTHON = "0.3.36"
CACHE = Path(os.environ.get("EDGELM_CACHE", Path.home() / ".cache" / "edgelm")) / "bench"
PY = sys.executable
MODEL = "lfm2-350m"
CONTEXT = 512  # every engine's KV cache / context: edgelm's default --max-seq-len


def log(msg: str) -> None:
    print(f"[bench {datetime.datetime.now():%H:%M:%S}] {msg}", flush=True)


@dataclass
class Artifact:
    """One program a system runs: its file, how it was made and what that cost."""

    name: str
    system: str  # edgelm | executorch | llamacpp
    path: Path
    probe: list[str]  # argv of one measurement, without the prompt arguments
    export: dict[str, Any] = field(default_factory=dict)  # wall_s, peak_rss_mb, command
    bytes_per_token: dict[str, Any] = field(default_factory=dict)


# 1. The benchmark environment --------------------------------------------------------------------

def llama_cmake_args() -> str:
    """How llama.cpp is compiled: for this CPU, without AMX on x86.

    ``-march=native`` turns on ggml's AMX kernels wherever the CPU has AMX, and a kernel or
    hypervisor that does not grant AMX state kills the process at the first ``tilezero``
    (SIGILL, seen on this project's machine). The CPU's other extensions are enabled one by one
    from /proc/cpuinfo; elsewhere (aarch64) ``GGML_NATIVE`` is kept.
    """
    if platform.machine() not in ("x86_64", "AMD64"):
        return "-DGGML_NATIVE=ON"
    flags: set[str] = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    wanted = {"GGML_SSE42": "sse4_2", "GGML_AVX": "avx", "GGML_AVX2": "avx2", "GGML_FMA": "fma", "GGML_F16C": "f16c",
              "GGML_BMI2": "bmi2", "GGML_AVX_VNNI": "avx_vnni", "GGML_AVX512": "avx512f",
              "GGML_AVX512_VBMI": "avx512vbmi", "GGML_AVX512_VNNI": "avx512_vnni", "GGML_AVX512_BF16": "avx512_bf16"}
    args = ["-DGGML_NATIVE=OFF", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"]
    args += [f"-D{opt}={'ON' if flag in flags else 'OFF'}" for opt, flag in sorted(wanted.items())]
    return " ".join(args)


def bench_env() -> Path:
    """The venv with llama-cpp-python (from its sdist) and matplotlib; its python."""
    venv = CACHE / "llama-venv"
    py = venv / "bin" / "python"
    src = CACHE / "src"
    sdist = src / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    stamp = venv / "edgelm-bench.json"
    if not sdist.exists():
        log(f"downloading the llama-cpp-python {LLAMA_CPP_PYTHON} source distribution")
        src.mkdir(parents=True, exist_ok=True)
        subprocess.run([PY, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", str(src)], check=True)
    want = {"sdist_sha256": hashlib.sha256(sdist.read_bytes()).hexdigest(), "version": LLAMA_CPP_PYTHON,
            "cmake_args": llama_cmake_args()}
    if stamp.exists() and json.loads(stamp.read_text()) == want and py.exists():
        return py
    log(f"building llama-cpp-python {LLAMA_CPP_PYTHON} from source into {venv} (about 5 minutes on 2 cores)")
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    env = dict(os.environ, CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 2), CMAKE_ARGS=want["cmake_args"])
    log(f"CMAKE_ARGS={want['cmake_args']}")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-cache-dir", str(sdist), "matplotlib"], check=True,
                   env=env)
    stamp.write_text(json.dumps(want))
    return py


def vendored_llama_cpp() -> Path:
    """llama.cpp's tree inside the source distribution (its converter and gguf-py)."""
    root = CACHE / "src" / f"llama_cpp_python-{LLAMA_CPP_PYTHON}"
    if not (root / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py").exists():
        subprocess.run(["tar", "xzf", str(root) + ".tar.gz", "-C", str(root.parent)], check=True)
    return root / "vendor" / "llama.cpp"


# 2-3. Artifacts ---------------------------------------------------------------------------------

def _measured_step(argv: list[str], what: str, **kw: Any) -> harness.Measured:
    log(what)
    m = harness.measure(argv, **kw)
    if m.rc != 0:
        raise SystemExit(f"bench: {what} failed (exit {m.rc}):\n{m.err[-3000:]}")
    return m


def _cached(dest: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    meta = dest / "bench-export.json"
    if meta.exists():
        body = json.loads(meta.read_text())
        if body.get("key") == key:
            return body
    return None


def _remember(dest: Path, key: dict[str, Any], export: dict[str, Any]) -> dict[str, Any]:
    body = {"key": key, **export}
    (dest / "bench-export.json").write_text(json.dumps(body, indent=2))
    return body


EDGELM_VARIANTS = (  # name, --quant, --group-size, --embedding, --max-seq-len
    ("edgelm 8da4w g32 emb-int8", "8da4w", 32, "int8", CONTEXT),
    ("edgelm 8da4w g128 emb-int8", "8da4w", 128, "int8", CONTEXT),
    ("edgelm 8da4w g128 emb-int4", "8da4w", 128, "int4", CONTEXT),
    ("edgelm 8da8w emb-int8", "8da8w", 32, "int8", CONTEXT),
    ("edgelm 8da4w g128 emb-int4 ctx1024", "8da4w", 128, "int4", 1024),
)


# The variant also run with speculative decoding (drafts from the context, verified in one call).
SPECULATIVE_OF = "edgelm 8da4w g128 emb-int4"


def edgelm_artifacts(work: Path, threads: int, tokens: int) -> list[Artifact]:
    from toolchain import api

    out = []
    for name, quant, group, emb, seq in EDGELM_VARIANTS:
        dest = work / "edgelm" / name.replace(" ", "_")
        cmd = ["edgelm", "export", "--model", MODEL, "--quant", quant, "--group-size", str(group),
               "--embedding", emb, "--max-seq-len", str(seq), "--out", str(dest)]
        key = {"cmd": cmd, "src": api._toolchain_sources_hash()}
        body = _cached(dest, key)
        if body is None:
            shutil.rmtree(dest, ignore_errors=True)
            m = _measured_step([PY, "-m", "toolchain.cli", *cmd[1:], "--json"], f"export: {' '.join(cmd)}", cwd=ROOT)
            dest.mkdir(parents=True, exist_ok=True)
            body = _remember(dest, key, {"wall_s": m.wall_s, "peak_rss_mb": m.peak_rss_mb, "command": " ".join(cmd),
                                         "other_cores": m.other_cores})
        pte = dest / "model.pte"
        probe = [PY, str(HERE / "probe_edgelm.py"), "--pte", str(pte), "--threads", str(threads), "--tokens",
                 str(tokens), "--workdir", str(work / "edgelm-runs")]
        out.append(Artifact(name, "edgelm", pte, probe, export=body))
        if name == SPECULATIVE_OF:  # the same program, drafting from the context
            out.append(Artifact(f"{name} + lookup drafts", "edgelm", pte, [*probe, "--draft"], export=body))
    return out


def executorch_artifact(work: Path, files: dict[str, Path], threads: int, tokens: int) -> Artifact:
    from importlib.metadata import version

    import executorch

    et = Path(list(executorch.__path__)[0])  # a namespace package: no __file__
    yaml = et / "examples" / "models" / "lfm2" / "config" / "lfm2_xnnpack_q8da4w.yaml"
    dest = work / "et-export"  # not ".../executorch": its model factory then imports `examples.` bare
    # The checkpoint's path must not say "8da4w" or "int8": the model class would take it as
    # already quantized.
    meta = dest / "lfm2_350m_meta.pth"
    name = "lfm2_350m_et"
    convert = [PY, "-m", "executorch.examples.models.lfm2.convert_weights", str(files["hf"]), str(meta)]
    export = [PY, "-m", "executorch.extension.llm.export.export_llm", "--config", str(yaml),
              "+base.model_class=lfm2_350m", f"+base.params={files['params']}", f"+base.checkpoint={meta}",
              # the config's own choice stays: use_sdpa_with_kv_cache (llama::custom_sdpa and
              # update_cache, kernels the Python process gets from libcustom_ops_aot_lib.so)
              "+quantization.group_size=128", "+quantization.embedding_quantize='8,0'",
              f"+export.max_seq_length={128}", f"+export.max_context_length={CONTEXT}",
              # an EOS id the random model is not seen to produce, so every run decodes `tokens` steps
              "base.metadata='{\"get_bos_id\": 1, \"get_eos_ids\": [65535]}'",
              f"+export.output_dir={dest}", f"+export.output_name={name}.pte"]
    key = {"convert": convert[2:], "export": export[2:], "et": version("executorch")}
    body = _cached(dest, key)
    pte = dest / f"{name}.pte"
    if body is None or not pte.exists():
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        c = _measured_step(convert, "executorch: LFM2 weight converter (HF -> its layout)", cwd=dest)
        e = _measured_step(export, "executorch: export_llm, lfm2_xnnpack_q8da4w.yaml, group 128, int8 embedding",
                           cwd=dest)
        body = _remember(dest, key, {
            "wall_s": c.wall_s + e.wall_s, "peak_rss_mb": max(c.peak_rss_mb, e.peak_rss_mb),
            "steps": {"convert_weights": {"wall_s": c.wall_s, "peak_rss_mb": c.peak_rss_mb},
                      "export_llm": {"wall_s": e.wall_s, "peak_rss_mb": e.peak_rss_mb}},
            "command": " ".join(["python"] + convert[1:]) + " && " + " ".join(["python"] + export[1:])})
    return Artifact("executorch export_llm 8da4w g128 emb-int8", "executorch", pte,
                    [PY, str(HERE / "probe_executorch.py"), "--pte", str(pte), "--tokenizer", str(files["tokenizer"]),
                     "--threads", str(threads), "--tokens", str(tokens)], export=body)


def llamacpp_artifacts(work: Path, files: dict[str, Path], bench_py: Path, threads: int,
                       tokens: int) -> list[Artifact]:
    tree = vendored_llama_cpp()
    dest = work / "llamacpp"
    f32 = dest / "lfm2-350m-f32.gguf"
    convert = [PY, str(HERE / "convert_gguf.py"), "--llama-cpp", str(tree), str(files["hf"]), str(f32)]
    key = {"convert": convert[2:], "version": LLAMA_CPP_PYTHON}
    body = _cached(dest, key)
    if body is None or not f32.exists():
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        c = _measured_step(convert, "llama.cpp: convert_hf_to_gguf.py from the sdist (f32)")
        steps = {"convert_hf_to_gguf": {"wall_s": c.wall_s, "peak_rss_mb": c.peak_rss_mb}}
        for qt in ("q4_0", "q8_0"):
            q = _measured_step([str(bench_py), str(HERE / "probe_llamacpp.py"), "quantize", "--src", str(f32),
                                "--out", str(dest / f"lfm2-350m-{qt}.gguf"), "--type", qt, "--threads", str(threads)],
                               f"llama.cpp: llama_model_quantize -> {qt.upper()}")
            steps[f"quantize_{qt}"] = {"wall_s": q.wall_s, "peak_rss_mb": q.peak_rss_mb}
        body = _remember(dest, key, {"steps": steps})
    out = []
    for qt in ("q4_0", "q8_0"):
        step = body["steps"][f"quantize_{qt}"]
        conv = body["steps"]["convert_hf_to_gguf"]
        export = {"wall_s": conv["wall_s"] + step["wall_s"],
                  "peak_rss_mb": max(conv["peak_rss_mb"], step["peak_rss_mb"]),
                  "command": "python benchmarks/convert_gguf.py <hf> f32.gguf && "
                             f"probe_llamacpp.py quantize --type {qt}"}
        for fa in ("on", "off"):
            gguf = dest / f"lfm2-350m-{qt}.gguf"
            out.append(Artifact(f"llama.cpp {qt.upper()} flash-attn {fa}", "llamacpp", gguf,
                                [str(bench_py), str(HERE / "probe_llamacpp.py"), "run", "--gguf", str(gguf),
                                 "--threads", str(threads), "--tokens", str(tokens), "--flash-attn", fa,
                                 "--ctx", str(CONTEXT)], export=export))
    return out


# Bytes read per decoded token --------------------------------------------------------------------

def bytes_per_token(art: Artifact, cfg: Any, tokens: int) -> dict[str, Any]:
    """Weights read per step plus the KV cache read at the mean decode position.

    edgelm's and ExecuTorch's programs hold an untied int8/int4 head: the embedding table is only
    gathered (one row per token), so it is left out. llama.cpp's LFM2 uses the tied token
    embedding as its output matrix: the whole table is read every step. edgelm and ExecuTorch
    (no custom SDPA) attend over every slot of their fp32 caches; llama.cpp over the filled part
    of its f16 cache.
    """
    size = art.path.stat().st_size
    hidden, vocab = cfg.hidden_size, cfg.vocab_size
    n_attn = sum(1 for t in cfg.layer_types if t != "conv")
    kv_row = 2 * n_attn * cfg.num_key_value_heads * cfg.head_dim  # values per cached position, k and v
    mean_pos = 32 + tokens / 2
    if art.system == "llamacpp":
        table = 0
        kv = kv_row * 2 * mean_pos
        policy = f"tied head reads the table; f16 cache, filled part (mean position {mean_pos:.0f})"
    else:
        prefix = False
        if art.system == "edgelm":
            from toolchain.export import manifest

            man = manifest.read(art.path)
            emb = man["quantization"]["embedding"]
            seq = man["program"]["max_seq_len"]
            group = man["quantization"]["group_size"]
            prefix = any(i["name"] == "key_positions" for i in man["program"]["inputs"])
        else:
            emb, seq, group = "int8", CONTEXT, hidden
        bits = {"int8": 8, "int4": 4, "none": 32}[emb]
        groups = 1 if emb != "int4" else hidden // group
        table = vocab * hidden * bits // 8 + vocab * groups * 4
        if prefix:
            kv = kv_row * 4 * mean_pos
            policy = f"head untied, table gathered; fp32 cache, filled slots only (mean position {mean_pos:.0f})"
        else:
            kv = kv_row * 4 * seq
            policy = f"head untied, table gathered; fp32 cache, all {seq} slots"
    total = size - table + kv
    return {"file_bytes": size, "table_not_read": table, "kv_bytes": int(kv), "bytes_per_token": int(total),
            "policy": policy}


# 4. Passes --------------------------------------------------------------------------------------

def run_passes(arts: list[Artifact], passes: int, threads: int) -> list[dict[str, Any]]:
    ids32, ids127 = weights.prompt_ids(32), weights.prompt_ids(127)
    prompts = {"edgelm": ["--ids32", ",".join(map(str, ids32)), "--ids127", ",".join(map(str, ids127))],
               "llamacpp": ["--ids32", ",".join(map(str, ids32)), "--ids127", ",".join(map(str, ids127))],
               # the BOS as its special token in the text: the runner's num_bos finds no BOS id in a
               # tokenizer.json, and the prompt must be the same 32 and 127 ids
               "executorch": ["--prompt32", weights.SPECIAL[1] + weights.prompt_text(32),
                              "--prompt127", weights.SPECIAL[1] + weights.prompt_text(127)]}
    out = []
    for p in range(passes):
        bw = harness.measure_quiet([PY, str(HERE / "bandwidth.py"), "--threads", str(threads)])
        bandwidth = bw.json()
        log(f"pass {p + 1}/{passes}: read bandwidth {bandwidth['read_gb_s']:.1f} GB/s")
        order = arts[p % len(arts):] + arts[:p % len(arts)]  # rotate: no system always runs first
        rows = {}
        for art in order:
            m = harness.measure_quiet(art.probe + prompts[art.system], cwd=ROOT)
            try:
                res = m.json()
            except (RuntimeError, ValueError) as exc:
                res = {"ok": False, "why": str(exc)[-500:]}
            res.pop("generated", None)
            res.update({"wall_s": m.wall_s, "process_peak_rss_mb": m.peak_rss_mb, "attempts": m.attempts,
                        "disturbed": m.disturbed})
            rows[art.name] = res
            state = "ok" if res.get("ok") else f"NOT OK: {res.get('why')}"
            log(f"  {art.name}: decode {res.get('decode_tok_s', 0):.1f} tok/s, prefill-32 "
                f"{res.get('prefill32_tok_s', 0):.0f}, prefill-127 {res.get('prefill127_tok_s', 0):.0f} ({state}"
                f"{', disturbed' if m.disturbed else ''})")
        out.append({"pass": p + 1, "bandwidth": bandwidth, "results": rows})
    return out


def summarize(arts: list[Artifact], passes: list[dict[str, Any]]) -> dict[str, Any]:
    metrics = ("decode_tok_s", "prefill32_tok_s", "prefill127_tok_s", "ttft_ms", "load_ms", "peak_rss_mb")
    out: dict[str, Any] = {}
    bw = statistics.median(p["bandwidth"]["read_gb_s"] for p in passes)
    for art in arts:
        rows = [p["results"][art.name] for p in passes if p["results"].get(art.name, {}).get("ok")]
        entry: dict[str, Any] = {"system": art.system, "ok_passes": len(rows), "passes": len(passes)}
        for k in metrics:
            vals = [r[k] for r in rows if k in r]
            if vals:
                entry[k] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
        if "--draft" in art.probe:  # speculative decoding: what the drafts did
            drafted, accepted = sum(r.get("drafted") or 0 for r in rows), sum(r.get("accepted") or 0 for r in rows)
            entry["drafts"] = {"drafted": drafted, "accepted": accepted,
                               "calls": sum(r.get("decode_calls") or 0 for r in rows),
                               "acceptance": accepted / drafted if drafted else None}
        bpt = art.bytes_per_token["bytes_per_token"]
        ceiling = bw * 1e9 / bpt
        entry["ceiling_tok_s"] = ceiling
        if "decode_tok_s" in entry:
            entry["share_of_ceiling"] = entry["decode_tok_s"]["median"] / ceiling
        out[art.name] = entry
    return out


def _best(arts: list[Artifact], results: dict[str, Any], system: str, metric: str) -> tuple[str, float]:
    """The artifact of ``system`` with the highest ``metric`` among the ok results of one pass."""
    cands = [(a.name, results[a.name].get(metric, 0.0)) for a in arts
             if a.system == system and results.get(a.name, {}).get("ok")]
    return max(cands, key=lambda x: x[1]) if cands else ("-", 0.0)


def per_pass_ratios(arts: list[Artifact], passes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each pass: the best edgelm figure over the best peer's in that same pass."""
    out = []
    for p in passes:
        row: dict[str, Any] = {"pass": p["pass"]}
        for metric in ("decode_tok_s", "prefill127_tok_s", "prefill32_tok_s"):
            ours = _best(arts, p["results"], "edgelm", metric)
            peers = {s: _best(arts, p["results"], s, metric) for s in ("executorch", "llamacpp")}
            top = max(peers.values(), key=lambda x: x[1])
            row[metric] = {"edgelm": ours, "best_peer": top,
                           "ratio_best_peer": ours[1] / top[1] if top[1] else None,
                           "ratio_executorch": ours[1] / peers["executorch"][1] if peers["executorch"][1] else None,
                           "ratio_llamacpp": ours[1] / peers["llamacpp"][1] if peers["llamacpp"][1] else None}
        out.append(row)
    return out


def host_meta(threads: int) -> dict[str, Any]:
    from importlib.metadata import version

    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    return {"host": socket.gethostname(), "when": datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"), "cpu": cpu, "cores": os.cpu_count(), "threads": threads, "kernel": platform.release(),
        "commit": commit, "executorch": version("executorch"), "torch": version("torch"),
        "torchao": version("torchao"), "llama_cpp_python": LLAMA_CPP_PYTHON}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "bench")
    ap.add_argument("--only", default="edgelm,executorch,llamacpp")
    ap.add_argument("--no-report", action="store_true", help="write the results JSON only")
    args = ap.parse_args()
    if args.passes < 3:
        raise SystemExit("bench: --passes must be at least 3 (ratios need interleaved passes)")
    systems = set(args.only.split(","))
    args.work = args.work.resolve()  # the exporters run in their own folders
    args.work.mkdir(parents=True, exist_ok=True)
    bench_py = bench_env()
    files = weights.write(args.work / "weights", MODEL)
    arts: list[Artifact] = []
    if "edgelm" in systems:
        arts += edgelm_artifacts(args.work, args.threads, args.tokens)
    if "executorch" in systems:
        arts.append(executorch_artifact(args.work, files, args.threads, args.tokens))
    if "llamacpp" in systems:
        arts += llamacpp_artifacts(args.work, files, bench_py, args.threads, args.tokens)
    from toolchain.model.config import PRESETS

    cfg = PRESETS[MODEL]
    for art in arts:
        art.bytes_per_token = bytes_per_token(art, cfg, args.tokens)
    passes = run_passes(arts, args.passes, args.threads)
    results = {
        "meta": {**host_meta(args.threads), "rss_method": "VmHWM of the process tree, sampled"},
        "model": MODEL, "context": CONTEXT, "tokens": args.tokens,
        "prompts": {"32": weights.prompt_ids(32), "127": weights.prompt_ids(127)},
        "artifacts": {a.name: {"system": a.system, "file": str(a.path.relative_to(args.work)),
                               "file_bytes": a.path.stat().st_size, "export": a.export,
                               "bytes_per_token": a.bytes_per_token, "probe": " ".join(
                                   Path(x).name if x.startswith("/") else x for x in a.probe)} for a in arts},
        "passes": passes, "summary": summarize(arts, passes), "ratios": per_pass_ratios(arts, passes)}
    results_dir = HERE / "results"
    results_dir.mkdir(exist_ok=True)
    stamp = f"{datetime.date.today():%Y-%m-%d}-{socket.gethostname()}"
    path = results_dir / f"{stamp}.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    log(f"wrote {path}")
    if not args.no_report:
        chart = results_dir / "latest.png"
        subprocess.run([str(bench_py), str(HERE / "chart.py"), str(path), str(chart)], check=True)
        md = ROOT / "BENCHMARKS.md"
        kept = report.quality_block(md.read_text()) if md.exists() else None  # make bench-quality's section
        warm = warm_run.block(md.read_text()) if md.exists() else None  # benchmarks/warm_run.py's
        md.write_text(warm_run.with_block(report.with_quality(
            report.render(results, path.relative_to(ROOT), chart.relative_to(ROOT)), kept), warm))
        log("wrote BENCHMARKS.md and " + str(chart.relative_to(ROOT)))
    bad = [n for n, s in results["summary"].items() if s["ok_passes"] < len(passes)]
    if bad:
        raise SystemExit(f"bench: not every pass of {', '.join(bad)} was ok (see {path})")


if __name__ == "__main__":
    main()
