"""The export cache (api.cached_export): a manifest of an older format is stale, not a crash."""

import json

from toolchain import api
from toolchain.export import manifest


def test_an_export_whose_manifest_has_no_digest_is_exported_again(tmp_path, monkeypatch, fakes):
    calls = []

    def fake_export(model, out, **kw):
        calls.append(out)
        pte, man = manifest.write(out, fakes.FAKE_PTE, fakes.full_manifest())
        return api.ExportResult(pte, man, manifest.read(pte))

    monkeypatch.setattr(api, "export_model", fake_export)
    monkeypatch.setenv("EDGELM_CACHE", str(tmp_path / "cache"))  # a fake program must not enter the session's cache
    first, reused = api.cached_export("tiny", tmp_path, quant="fp32")
    assert not reused and len(calls) == 1
    old = json.loads(first.manifest_path.read_text())
    del old["digest"]  # what an edgelm before manifest digests wrote
    first.manifest_path.write_text(json.dumps(old, indent=2))
    again, reused = api.cached_export("tiny", tmp_path, quant="fp32")
    assert not reused and len(calls) == 2 and again.pte == first.pte  # the same cache entry, exported again
    assert calls[1] != again.pte.parent  # into a folder beside it, renamed into place whole
    assert "digest" in json.loads(again.manifest_path.read_text())
    _, reused = api.cached_export("tiny", tmp_path, quant="fp32")
    assert reused and len(calls) == 2


def test_two_processes_exporting_the_same_model_at_once_make_one_cache_entry(tmp_path):
    """Issue 25: two `edgelm export` (into the cache) of the same model at once: one exports, the other waits for
    it; both succeed with the same program, and the cache holds one entry."""
    import os
    import subprocess
    import sys

    from toolchain import cache

    mine = tmp_path / "cache"  # a cache of its own: the entry must be missing at the start
    mine.mkdir()
    presets = cache.root() / "presets"  # the tiny preset's weights, trained once per machine
    if presets.is_dir():
        (mine / "presets").symlink_to(presets.resolve(), target_is_directory=True)
    env = {**os.environ, "EDGELM_CACHE": str(mine)}
    cmd = [sys.executable, "-m", "toolchain.cli", "export", "--model", "tiny", "--quant", "8da4w", "--max-seq-len",
           "64", "--json"]
    procs = [subprocess.Popen(cmd, env=env, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for folder in (tmp_path, tmp_path.parent)]  # from two folders: the cache is not the folder's
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=1200)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    assert results[0]["pte"] == results[1]["pte"] and results[0]["sha256"] == results[1]["sha256"]
    entries = [e for e in cache.entries(mine) if e.kind == "exports"]
    assert [str(e.path / "model.pte") for e in entries] == [results[0]["pte"]]
    assert manifest.read(entries[0].path / "model.pte")["program"]["sha256"] == results[0]["sha256"]
    assert not [p for p in (mine / "exports").iterdir() if p.name != entries[0].key and p.name != cache.LOCKS]


def test_the_host_reference_loads_without_the_export_stack(tiny_exports):
    """ProgramRunner in a fresh process imports the ExecuTorch runtime, not executorch.exir (~10 s of imports),
    and its logits are the ones it gives with exir imported."""
    import subprocess
    import sys

    pte = tiny_exports("8da4w").pte
    code = f"""
import sys, torch
from pathlib import Path
from toolchain.validate.reference import ProgramRunner
a = ProgramRunner(Path({str(pte)!r})).step([1, 2, 3], 0)
assert "executorch.exir" not in sys.modules, "exir imported"
import executorch.exir
assert hasattr(executorch.exir, "to_edge"), "a stand-in exir was left behind"
b = ProgramRunner(Path({str(pte)!r})).step([1, 2, 3], 0)
assert torch.equal(a, b)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
