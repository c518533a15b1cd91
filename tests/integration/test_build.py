"""Firmware builds: rendered project, cross-compiled runner, bundle with hashes, glibc check."""

import dataclasses
import json
import re
import subprocess

import pytest

from toolchain import api, boards
from toolchain.bundle import cross, package, render, sdk
from toolchain.errors import BuildError, CapacityError, InputError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_pte(hil_workdir):
    result, _ = api.cached_export("tiny", hil_workdir, quant="8da4w")
    return result.pte


@pytest.mark.parametrize("board, machine", [("rpi5", "AArch64"), ("rpi4", "AArch64"), ("host", "X86-64")])
def test_bundle_for_board(board, machine, tiny_pte, hil_workdir):
    bundle, _ = api.cached_build(board, tiny_pte, hil_workdir)
    files = set(bundle.files)
    assert {"runner", "model.pte", "manifest.json", "libexecutorch.so", "libexecutorch_backend_xnnpack.so",
            "libexecutorch_kernels_quantized.so"} <= files
    header = subprocess.run(["readelf", "-h", str(bundle.root / "runner")], capture_output=True, text=True).stdout
    assert machine in header
    dyn = subprocess.run(["readelf", "-d", str(bundle.root / "runner")], capture_output=True, text=True).stdout
    assert "$ORIGIN" in dyn  # relocatable: finds its libraries beside it
    needed = set(re.findall(r"\(NEEDED\)\s+Shared library: \[([^]]+)\]", dyn))
    assert set(sdk.RUNTIME_LIBS) <= needed  # the self-registering kernels and backend too (--no-as-needed)
    info = json.loads((bundle.root / "bundle.json").read_text())
    assert info["board"] == board and info["model_sha256"] == api.inspect_program(tiny_pte)["program"]["sha256"]
    assert tuple(map(int, info["glibc_required"].split("."))) <= boards.get(board).glibc_tuple
    package.verify_bundle(bundle)


def test_a_board_with_an_older_glibc_is_refused(tiny_pte, hil_workdir, tmp_path):
    bundle, _ = api.cached_build("rpi5", tiny_pte, hil_workdir)
    old = dataclasses.replace(boards.get("rpi5"), glibc="2.17")
    with pytest.raises(CapacityError, match=r"needs GLIBC_2\.\d+ but rpi5 has glibc 2.17"):
        package.assemble(old, bundle.root / "runner", sdk.sdk_for("aarch64"), tiny_pte, tmp_path / "b",
                            render.firmware_version())


def test_the_rpi4_runner_needs_no_newer_glibc_than_the_runtime_libraries(tiny_pte, hil_workdir):
    """rpi4 runs Pi OS bullseye (glibc 2.31), older than the compiler's: its runner is linked by zig cc
    for the runtime libraries' glibc, and needs no more than they do (read from the symbol versions)."""
    rpi4 = boards.get("rpi4")
    assert rpi4.glibc_tuple == (2, 31)
    runtime = sdk.sdk_for("aarch64")
    libs_floor = max(cross.required_glibc(lib, rpi4) for lib in runtime.libs)
    assert libs_floor <= (2, 27)
    bundle, _ = api.cached_build("rpi4", tiny_pte, hil_workdir)
    needs = {name: cross.required_glibc(bundle.root / name, rpi4) for name in ("runner", *sdk.RUNTIME_LIBS)}
    assert needs["runner"] <= libs_floor and max(needs.values()) <= (2, 27), needs
    assert bundle.info["glibc_required"] == ".".join(map(str, libs_floor))
    symbols = subprocess.run(["aarch64-linux-gnu-objdump", "-T", str(bundle.root / "runner")],
                             capture_output=True, text=True, check=True).stdout
    assert re.search(r"\(GLIBC_2\.17\)\s+__libc_start_main$", symbols, re.M)  # not crt1.o's GLIBC_2.34 one
    assert re.search(r"\(GCC_3\.0\)\s+_Unwind_Resume$", symbols, re.M)  # libgcc_s's unwinder, not a copy


def test_a_runner_linked_for_the_compilers_glibc_is_refused_for_rpi4(tiny_pte, hil_workdir, tmp_path):
    """rpi5 has the compiler's glibc, so its runner is linked by the compiler: too new for rpi4's 2.31."""
    rpi5, rpi4 = boards.get("rpi5"), boards.get("rpi4")
    if cross.link_glibc(rpi5, sdk.sdk_for("aarch64")) is not None:
        pytest.skip("this compiler's glibc is newer than rpi5's: its runner is linked by zig cc too")
    bundle, _ = api.cached_build("rpi5", tiny_pte, hil_workdir)
    with pytest.raises(CapacityError, match=r"runner needs GLIBC_2\.\d+ but rpi4 has glibc 2\.31"):
        package.assemble(rpi4, bundle.root / "runner", sdk.sdk_for("aarch64"), tiny_pte, tmp_path / "b",
                         render.firmware_version())


def test_runtime_libraries_newer_than_the_board_are_refused_before_compiling():
    old = dataclasses.replace(boards.get("rpi4"), glibc="2.26")
    with pytest.raises(CapacityError, match=r"libexecutorch\.so needs GLIBC_2\.27 but rpi4 has glibc 2\.26"):
        cross.link_glibc(old, sdk.sdk_for("aarch64"))


def test_a_tampered_bundle_is_refused(tiny_pte, hil_workdir, tmp_path):
    import shutil
    bundle, _ = api.cached_build("host", tiny_pte, hil_workdir)
    copy = tmp_path / "bundle"
    shutil.copytree(bundle.root, copy)
    (copy / "model.pte").write_bytes((copy / "model.pte").read_bytes()[:-1] + b"\x00")
    with pytest.raises(InputError, match="does not match its sha256"):
        package.verify_bundle(package.read_bundle(copy))


def test_templates_must_not_use_unknown_tokens():
    with pytest.raises(BuildError, match="@NOPE@"):
        render.substitute("x @NOPE@ y", {"BOARD": "rpi5"}, "t.in")


def test_sdk_refuses_a_wheel_of_another_version(tmp_path):
    import zipfile

    from toolchain.bundle import sdk
    wheel = tmp_path / "executorch-1.4.0-cp311-cp311-manylinux_2_28_aarch64.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("executorch/version.py", "__version__ = '1.4.0'\n")
    with pytest.raises(BuildError, match="is executorch 1.4.0, but programs are exported with 1.5.1"):
        sdk.sdk_for("aarch64", wheel=wheel)


def test_a_failed_flash_keeps_the_previous_release(tiny_pte, hil_workdir, tmp_path):
    import shutil

    from toolchain.deploy import local
    from toolchain.errors import DeviceError

    bundle, _ = api.cached_build("host", tiny_pte, hil_workdir)
    target = local.create("local", boards.get("host"), tmp_path / "targets")
    first = target.store.deploy(bundle)
    broken = tmp_path / "broken"
    shutil.copytree(bundle.root, broken)
    info = json.loads((broken / "bundle.json").read_text())
    info["firmware_version"] = "9.9.9"  # a different release id...
    (broken / "bundle.json").write_text(json.dumps(info))
    (broken / "runner").write_bytes(b"truncated")  # ...whose runner does not match its hash
    with pytest.raises((InputError, DeviceError)):
        target.store.deploy(package.read_bundle(broken))
    assert target.store.current() == first
    assert not any(p.name.startswith("9.9.9") for p in (target.state / "releases").iterdir())


def test_a_flash_whose_runner_does_not_start_rolls_back_to_the_running_release(tiny_pte, hil_workdir, tmp_path):
    import hashlib
    import shutil

    from toolchain.errors import DeviceError

    bundle, _ = api.cached_build("host", tiny_pte, hil_workdir)
    work = tmp_path / "work"
    good = api.flash(bundle.root, "local", work)
    try:
        broken = tmp_path / "broken"
        shutil.copytree(bundle.root, broken)
        runner = broken / "runner"
        runner.write_text("#!/bin/sh\necho 'edgelm-runner: cannot load the program' >&2\nexit 3\n")
        info = json.loads((broken / "bundle.json").read_text())
        info["firmware_version"] = "0.0.0-broken"
        info["files"]["runner"] = hashlib.sha256(runner.read_bytes()).hexdigest()  # consistent, but it fails
        (broken / "bundle.json").write_text(json.dumps(info))
        with pytest.raises(DeviceError, match=r"does not serve \(.*runner exited with status 3.*rolled back to "
                                              + re.escape(good["release"]) + ", serving again"):
            api.flash(broken, "local", work)
        target = api.target_for("host", "local", work)
        assert target.store.current().id == good["release"]
        assert target.runner.running() is not None  # the previous release's runner serves again
    finally:
        api.stop("host", "local", work)


def test_a_target_that_trusts_a_key_takes_only_bundles_signed_by_it(tiny_pte, hil_workdir, tmp_path, fakes):
    import shutil

    from toolchain.bundle import signing

    keys = tmp_path / "keys"
    keys.mkdir()
    api.keygen(keys / "ours")
    api.keygen(keys / "theirs")
    work = tmp_path / "work"
    api.trust(keys / "ours.pub", "host", "local", work)
    bundle, _ = api.cached_build("host", tiny_pte, hil_workdir, sign_key=keys / "ours")
    assert (bundle.root / "bundle.sig").is_file()
    good = api.flash(bundle.root, "local", work)  # verified, started, serving
    try:
        target = api.target_for("host", "local", work)
        assert target.store.current().id == good["release"] == bundle.release_id
        state = target.state
        before = fakes.snapshot(state / "releases") | fakes.snapshot(state / "trusted_keys")

        def variant(name, runner_text=None, sign_with=None):
            copy = tmp_path / name
            shutil.copytree(bundle.root, copy)
            if runner_text is not None:  # another release id, and still a consistent bundle.json
                (copy / "runner").write_text(runner_text)
                fakes.rewrite_info(copy, lambda i: i["files"].__setitem__(
                    "runner", package.pte_manifest.sha256_file(copy / "runner")))
            if sign_with is not None:
                package.sign_bundle(package.read_bundle(copy), signing.load_private_key(sign_with))
            return copy

        unsigned = variant("unsigned", "#!/bin/sh\nexit 0\n")
        (unsigned / "bundle.sig").unlink()
        theirs = variant("theirs", "#!/bin/sh\nexit 1\n", sign_with=keys / "theirs")
        edited = variant("edited")
        fakes.rewrite_info(edited, lambda i: i.__setitem__("max_seq_len", 4096))
        replaced = variant("replaced")
        (replaced / "model.pte").write_bytes((replaced / "model.pte").read_bytes()[:-1] + b"\x01")
        for copy, needle in [(unsigned, "accepts only signed bundles"), (theirs, "which is not trusted here"),
                             (edited, "does not match the bytes it signs"), (replaced, "does not match its sha256")]:
            with pytest.raises(InputError, match=needle):
                api.flash(copy, "local", work)
            assert target.store.current().id == good["release"]
            assert fakes.snapshot(state / "releases") | fakes.snapshot(state / "trusted_keys") == before
        assert api.target_for("host", "local", work).runner.running() is not None  # the good release still serves
    finally:
        api.stop("host", "local", work)
