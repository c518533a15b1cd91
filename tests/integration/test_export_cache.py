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
    first, reused = api.cached_export("tiny", tmp_path, quant="fp32")
    assert not reused and len(calls) == 1
    old = json.loads(first.manifest_path.read_text())
    del old["digest"]  # what an edgelm before manifest digests wrote
    first.manifest_path.write_text(json.dumps(old, indent=2))
    again, reused = api.cached_export("tiny", tmp_path, quant="fp32")
    assert not reused and calls == [calls[0], calls[0]]  # the same cache entry, exported again
    assert "digest" in json.loads(again.manifest_path.read_text())
    _, reused = api.cached_export("tiny", tmp_path, quant="fp32")
    assert reused and len(calls) == 2
