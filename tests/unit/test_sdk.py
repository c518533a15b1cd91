"""The executorch runtime wheel is pinned by sha256, not only by version."""

import hashlib
import json
import zipfile

import pytest

from toolchain.bundle import sdk
from toolchain.errors import BuildError

VERSION = sdk.host_version()
PINNED_NAME = f"executorch-{VERSION}-cp311-cp311-manylinux_2_28_aarch64.whl"


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGELM_CACHE", str(tmp_path / "cache"))


def _fake_wheel(folder, name=PINNED_NAME, version=VERSION, complete=True):
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / name
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("executorch/version.py", f"__version__ = '{version}'\n")
        if complete:
            for lib in sdk.RUNTIME_LIBS:
                zf.writestr(f"executorch/lib/{lib}", b"not really a library")
            zf.writestr("executorch/include/executorch/runtime.h", "// header\n")
    return wheel


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_supported_python_and_platform_has_a_pin():
    pins = sdk.WHEEL_SHA256[VERSION]
    for py in ("cp310", "cp311", "cp312", "cp313"):
        for plat in sdk.WHEEL_PLATFORMS.values():
            name = f"executorch-{VERSION}-{py}-{py}-{plat}.whl"
            assert len(pins[name]) == 64 and set(pins[name]) <= set("0123456789abcdef")


def test_a_local_wheel_of_a_pinned_version_with_another_hash_is_refused_naming_both(tmp_path):
    wheel = _fake_wheel(tmp_path / "w")
    with pytest.raises(BuildError) as err:
        sdk.sdk_for("aarch64", wheel=wheel)
    assert _sha(wheel) in str(err.value) and sdk.WHEEL_SHA256[VERSION][PINNED_NAME] in str(err.value)
    assert not (tmp_path / "cache" / "sdk" / f"executorch-{VERSION}-aarch64").exists()


def test_a_fetched_wheel_with_another_hash_is_refused(tmp_path, monkeypatch):
    fetched = []

    def fake_fetch(arch, version, into):
        fetched.append(arch)
        return _fake_wheel(into)

    monkeypatch.setattr(sdk, "_fetch_wheel", fake_fetch)
    with pytest.raises(BuildError, match=f"sha256 [0-9a-f]{{64}}, but {sdk.WHEEL_SHA256[VERSION][PINNED_NAME]} "
                                         "is pinned"):
        sdk.sdk_for("aarch64")
    assert fetched == ["aarch64"]


def test_a_fetched_wheel_without_a_pin_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(sdk, "_fetch_wheel",
                        lambda arch, version, into: _fake_wheel(into, f"executorch-{VERSION}-cp399-cp399-"
                                                                      "manylinux_2_28_aarch64.whl"))
    with pytest.raises(BuildError, match="has no pinned sha256"):
        sdk.sdk_for("aarch64")


def test_a_wheel_with_the_pinned_hash_is_unpacked_and_its_hash_recorded(tmp_path, monkeypatch):
    wheel = _fake_wheel(tmp_path / "w")
    monkeypatch.setitem(sdk.WHEEL_SHA256, VERSION, {PINNED_NAME: _sha(wheel)})
    runtime = sdk.sdk_for("aarch64", wheel=wheel)
    recorded = json.loads((runtime.root / "sdk.json").read_text())
    assert recorded["sha256"] == _sha(wheel) and recorded["wheel"] == PINNED_NAME
    assert sdk.sdk_for("aarch64") == runtime  # the cache is reused: its recorded hash is the pinned one


def test_a_cached_runtime_without_a_recorded_hash_is_fetched_again(tmp_path, monkeypatch):
    wheel = _fake_wheel(tmp_path / "w")
    monkeypatch.setitem(sdk.WHEEL_SHA256, VERSION, {PINNED_NAME: _sha(wheel)})
    runtime = sdk.sdk_for("aarch64", wheel=wheel)
    meta = runtime.root / "sdk.json"
    meta.write_text(json.dumps({k: v for k, v in json.loads(meta.read_text()).items() if k != "sha256"}))
    fetched = []
    monkeypatch.setattr(sdk, "_fetch_wheel", lambda arch, version, into: fetched.append(arch) or
                        _fake_wheel(into, complete=False))  # another hash: refused
    with pytest.raises(BuildError, match="is pinned for it"):
        sdk.sdk_for("aarch64")
    assert fetched == ["aarch64"]


def test_a_local_wheel_of_an_unpinned_version_is_not_held_to_a_pin(tmp_path, monkeypatch, caplog):
    wheel = _fake_wheel(tmp_path / "w")
    monkeypatch.delitem(sdk.WHEEL_SHA256, VERSION)
    runtime = sdk.sdk_for("aarch64", wheel=wheel)
    assert json.loads((runtime.root / "sdk.json").read_text())["sha256"] == _sha(wheel)
    assert "no sha256 is pinned" in caplog.text
