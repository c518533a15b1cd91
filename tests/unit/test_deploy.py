"""Deploying to a process target (no runner started): release ids, re-verification, disk space,
signatures and trusted keys. Nothing in the target's state folder changes when a deploy is refused."""

import errno
import json
import os
import re
import shutil
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from toolchain import api, boards
from toolchain.bundle import package, signing
from toolchain.cli import main
from toolchain.deploy import local
from toolchain.errors import DeviceError, InputError


@pytest.fixture
def target(tmp_path):
    return local.create("local", boards.get("host"), tmp_path / "targets")


@pytest.fixture
def keys(tmp_path):
    """Two key pairs: ``trusted`` and ``other``, as `edgelm keygen` writes them."""
    (tmp_path / "keys").mkdir()
    out = {}
    for name in ("trusted", "other"):
        private, public, _ = signing.generate(tmp_path / "keys" / name)
        out[name] = (private, public)
    return out


def _one_line(exc):
    text = str(exc.value)
    assert "\n" not in text and len(text) < 400, text
    return text


# Release ids --------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["../../victim", "ABS"], ids=["relative", "absolute"])
def test_a_crafted_firmware_version_cannot_reach_outside_releases(tmp_path, fakes, target, version):
    """Old code named the release f'{firmware_version}-{model_sha256[:12]}' and replaced that folder."""
    bundle = fakes.write_bundle(tmp_path / "b")
    short = bundle.files["model.pte"][:12]
    if version == "ABS":
        version = str(tmp_path / "abs")
        victim = tmp_path / f"abs-{short}"
    else:
        victim = target.state.parent / f"victim-{short}"  # beside the target's state folder
    victim.mkdir(parents=True)
    (victim / "precious.txt").write_bytes(b"do not touch\x00\xff")
    (victim / "sub").mkdir()
    (victim / "sub" / "data").write_bytes(b"1234")
    before = fakes.snapshot(victim)
    fakes.rewrite_info(bundle.root, lambda i: i.__setitem__("firmware_version", version))
    crafted = package.read_bundle(bundle.root)
    # a previous release at that id, not current, is what old code deleted: deploy twice
    target.store.deploy(crafted)
    release = target.store.deploy(crafted)
    assert fakes.snapshot(victim) == before
    assert re.fullmatch(r"r-[0-9a-f]{16}", release.id)
    assert Path(release.path).parent == target.state / "releases"
    assert sorted(p.name for p in (target.state / "releases").iterdir()) == [release.id]


def test_a_deploy_lands_in_releases_under_the_computed_id(tmp_path, fakes, target):
    bundle = fakes.write_bundle(tmp_path / "b")
    release = target.store.deploy(bundle)
    assert release.id == bundle.release_id and target.store.current() == release
    package.verify_bundle(package.read_bundle(Path(release.path)))
    assert os.access(Path(release.path) / "runner", os.X_OK)


# Re-flashing a release that exists ------------------------------------------------------------------

@pytest.mark.parametrize("tamper", ["runner", "model.pte", "extra file", "bundle.json"])
def test_reflashing_the_current_release_reverifies_and_replaces_a_tampered_copy(tmp_path, fakes, target, tamper):
    bundle = fakes.write_bundle(tmp_path / "b")
    release = target.store.deploy(bundle)
    deployed = Path(release.path)
    if tamper == "extra file":
        (deployed / "evil.so").write_bytes(b"x")
    elif tamper == "bundle.json":
        fakes.rewrite_info(deployed, lambda i: i.__setitem__("board", "rpi5"))
    else:
        (deployed / tamper).write_bytes(b"tampered")
    again = target.store.deploy(bundle)
    assert again.id == release.id and target.store.current().id == release.id
    package.verify_bundle(package.read_bundle(Path(again.path)))
    for name in [*bundle.files, "bundle.json"]:
        assert (Path(again.path) / name).read_bytes() == (bundle.root / name).read_bytes()
    assert not (Path(again.path) / "evil.so").exists()
    assert sorted(p.name for p in (target.state / "releases").iterdir()) == [release.id]


def test_reflashing_an_intact_current_release_keeps_it(tmp_path, fakes, target):
    bundle = fakes.write_bundle(tmp_path / "b")
    target.store.deploy(bundle)
    before = fakes.snapshot(target.state)
    target.store.deploy(bundle)
    assert fakes.snapshot(target.state) == before


def test_reflashing_a_tampered_release_that_is_not_current_replaces_it(tmp_path, fakes, target):
    first = fakes.write_bundle(tmp_path / "a")
    second = fakes.write_bundle(tmp_path / "b", runner=b"#!/bin/sh\nexit 1\n")
    r1 = target.store.deploy(first)
    target.store.deploy(second)
    (Path(r1.path) / "runner").write_bytes(b"tampered")
    again = target.store.deploy(first)
    assert target.store.current().id == r1.id
    assert (Path(again.path) / "runner").read_bytes() == (first.root / "runner").read_bytes()


# Disk space -----------------------------------------------------------------------------------------

class _Usage:
    def __init__(self, free):
        self.total, self.used, self.free = 10**9, 10**9 - free, free


def _need(bundle):
    return sum((bundle.root / n).stat().st_size for n in [*bundle.files, "bundle.json"])


def test_too_little_free_space_is_one_line_with_the_numbers_and_nothing_deployed(tmp_path, fakes, target,
                                                                                 monkeypatch):
    bundle = fakes.write_bundle(tmp_path / "b")
    seen = []
    monkeypatch.setattr(shutil, "disk_usage", lambda p: seen.append(p) or _Usage(1000))
    with pytest.raises(DeviceError) as err:
        target.store.deploy(bundle)
    text = _one_line(err)
    assert f"needs {_need(bundle):,} bytes" in text and "has 1,000 free" in text, text
    assert text.endswith("nothing is deployed"), text
    assert seen and all(str(target.state).startswith(str(p)) for p in seen)  # the filesystem that will hold it
    assert fakes.snapshot(target.state) == {}


def test_too_little_free_space_names_the_release_that_stays_current(tmp_path, fakes, target, monkeypatch):
    first = target.store.deploy(fakes.write_bundle(tmp_path / "a"))
    second = fakes.write_bundle(tmp_path / "b", runner=b"#!/bin/sh\nexit 1\n")
    before = fakes.snapshot(target.state)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: _Usage(_need(second) - 1))
    with pytest.raises(DeviceError) as err:
        target.store.deploy(second)
    text = _one_line(err)
    assert f"has {_need(second) - 1:,} free; release {first.id} is still current" in text, text
    assert fakes.snapshot(target.state) == before


@pytest.mark.parametrize("previous", [False, True])
def test_running_out_of_space_mid_copy_is_one_line_and_cleans_up(tmp_path, fakes, target, monkeypatch, previous):
    first = target.store.deploy(fakes.write_bundle(tmp_path / "a")) if previous else None
    bundle = fakes.write_bundle(tmp_path / "b", runner=b"#!/bin/sh\nexit 1\n")
    before = fakes.snapshot(target.state)
    real_copy = shutil.copy2
    copied = []

    def full_disk(src, dst, *a, **kw):
        if copied:
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        copied.append(dst)
        return real_copy(src, dst, *a, **kw)

    monkeypatch.setattr(shutil, "copy2", full_disk)
    with pytest.raises(DeviceError) as err:
        target.store.deploy(bundle)
    text = _one_line(err)
    assert "ran out of space" in text and f"needs {_need(bundle):,} bytes" in text and " free" in text, text
    assert text.endswith(f"release {first.id} is still current" if first else "nothing is deployed"), text
    if previous:
        assert fakes.snapshot(target.state) == before and target.store.current() == first
    else:  # only the (empty) releases folder may be left
        assert {k for k in fakes.snapshot(target.state)} <= {"releases"}


# Signatures and trust ------------------------------------------------------------------------------

def _trust(target, keys, name="trusted"):
    return target.store.trust(keys[name][1].read_bytes())


def _signed(tmp_path, fakes, keys, name="trusted", sub="signed", **kw):
    bundle = fakes.write_bundle(tmp_path / sub, **kw)
    package.sign_bundle(bundle, signing.load_private_key(keys[name][0]))
    return bundle


def test_keygen_writes_a_private_key_0600_and_its_public_key(tmp_path, keys):
    private, public = keys["trusted"]
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in private.read_bytes() and b"PUBLIC KEY" in public.read_bytes()
    assert public.name == "trusted.pub"


def test_a_target_that_trusts_a_key_accepts_a_bundle_signed_by_it(tmp_path, fakes, target, keys):
    fp = _trust(target, keys)
    assert (target.state / "trusted_keys" / f"{fp[:16]}.pub").is_file()
    bundle = _signed(tmp_path, fakes, keys)
    release = target.store.deploy(bundle)
    assert target.store.current() == release
    assert (Path(release.path) / "bundle.sig").read_bytes() == (bundle.root / "bundle.sig").read_bytes()


def test_a_target_without_trusted_keys_takes_unsigned_bundles(tmp_path, fakes, target):
    assert target.store.deploy(fakes.write_bundle(tmp_path / "b")).id


def _refusals(tmp_path, fakes, target, keys):
    """A trusting target with a previous release, and the bundles it must refuse."""
    _trust(target, keys)
    previous = target.store.deploy(_signed(tmp_path, fakes, keys, sub="previous"))
    cases = {}
    cases["unsigned"] = (fakes.write_bundle(tmp_path / "unsigned", runner=b"#!/bin/sh\nexit 2\n"),
                         "accepts only signed bundles")
    cases["other key"] = (_signed(tmp_path, fakes, keys, "other", sub="other", runner=b"#!/bin/sh\nexit 3\n"),
                          "which is not trusted here")
    edited = _signed(tmp_path, fakes, keys, sub="edited", runner=b"#!/bin/sh\nexit 4\n")
    fakes.rewrite_info(edited.root, lambda i: i.__setitem__("firmware_version", "9.9.9"))
    cases["bundle.json edited"] = (package.read_bundle(edited.root), "does not match the bytes it signs")
    replaced = _signed(tmp_path, fakes, keys, sub="replaced", runner=b"#!/bin/sh\nexit 5\n")
    (replaced.root / "runner").write_bytes(b"#!/bin/sh\nrm -rf /\n")
    cases["file replaced"] = (replaced, "does not match its sha256")
    rehashed = _signed(tmp_path, fakes, keys, sub="rehashed", runner=b"#!/bin/sh\nexit 6\n")
    (rehashed.root / "runner").write_bytes(b"#!/bin/sh\nrm -rf /\n")
    fakes.rewrite_info(rehashed.root, lambda i: i["files"].__setitem__(
        "runner", package.pte_manifest.sha256_file(rehashed.root / "runner")))
    cases["file replaced and rehashed"] = (package.read_bundle(rehashed.root), "does not match the bytes it signs")
    garbled = _signed(tmp_path, fakes, keys, sub="garbled", runner=b"#!/bin/sh\nexit 7\n")
    (garbled.root / "bundle.sig").write_text("{nope")
    cases["garbled signature"] = (garbled, "is not an edgelm signature")
    swapped = _signed(tmp_path, fakes, keys, sub="swapped", runner=b"#!/bin/sh\nexit 8\n")
    shutil.copy(tmp_path / "previous" / "bundle.sig", swapped.root / "bundle.sig")  # a valid signature, of another
    cases["signature of another bundle"] = (swapped, "does not match the bytes it signs")
    return previous, cases


@pytest.mark.parametrize("case", ["unsigned", "other key", "bundle.json edited", "file replaced",
                                  "file replaced and rehashed", "garbled signature", "signature of another bundle"])
def test_a_trusting_target_refuses_and_changes_nothing(tmp_path, fakes, target, keys, case):
    previous, cases = _refusals(tmp_path, fakes, target, keys)
    bundle, needle = cases[case]
    before = fakes.snapshot(target.state)
    with pytest.raises(InputError) as err:
        target.store.deploy(bundle)
    assert needle in _one_line(err)
    assert fakes.snapshot(target.state) == before
    assert target.store.current() == previous


def test_a_tampered_deployed_copy_of_a_signed_release_is_replaced(tmp_path, fakes, target, keys):
    _trust(target, keys)
    bundle = _signed(tmp_path, fakes, keys)
    release = target.store.deploy(bundle)
    (Path(release.path) / "bundle.sig").unlink()
    again = target.store.deploy(bundle)
    assert (Path(again.path) / "bundle.sig").read_bytes() == (bundle.root / "bundle.sig").read_bytes()


def test_trust_refuses_a_file_that_is_not_a_public_key(tmp_path, target, keys):
    with pytest.raises(InputError, match="not a PEM public key"):
        target.store.trust(keys["trusted"][0].read_bytes())  # the private key
    assert not (target.state / "trusted_keys").exists()


# The CLI -------------------------------------------------------------------------------------------

def _cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def _error_line(err):
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


def test_cli_keygen_trust_and_a_refused_flash(tmp_path, fakes):
    work = tmp_path / "work"
    code, out, err = _cli("keygen", "--out", tmp_path / "k", "--json")
    assert code == 0, err
    made = json.loads(out)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600 and (tmp_path / "k.pub").is_file()
    code, out, err = _cli("trust", tmp_path / "k.pub", "--board", "host", "--target", "local", "--workdir", work,
                          "--json")
    assert code == 0, err
    assert json.loads(out)["fingerprint"] == made["fingerprint"]
    state = work / "targets" / "local-host"
    stored = state / "trusted_keys" / f"{made['fingerprint'][:16]}.pub"
    assert stored.read_bytes() == (tmp_path / "k.pub").read_bytes()
    bundle = fakes.write_bundle(tmp_path / "b")
    code, _, err = _cli("flash", bundle.root, "--target", "local", "--no-start", "--workdir", work)
    assert code == 3 and "accepts only signed bundles" in _error_line(err)
    package.sign_bundle(bundle, signing.load_private_key(tmp_path / "k"))
    code, out, err = _cli("flash", bundle.root, "--target", "local", "--no-start", "--workdir", work, "--json")
    assert code == 0, err
    assert json.loads(out)["release"] == bundle.release_id


def test_cli_keygen_never_overwrites_a_key(tmp_path):
    (tmp_path / "k").write_text("precious")
    code, _, err = _cli("keygen", "--out", tmp_path / "k")
    assert code == 2 and "exists already" in _error_line(err)
    assert (tmp_path / "k").read_text() == "precious"


@pytest.mark.parametrize("content, needle", [(b"hello", "not a PEM public key"), (None, "does not exist")])
def test_cli_trust_of_a_bad_key_file_is_exit_3(tmp_path, content, needle):
    key = tmp_path / "k.pub"
    if content is not None:
        key.write_bytes(content)
    code, _, err = _cli("trust", key, "--board", "host", "--workdir", tmp_path / "w")
    assert code == 3 and needle in _error_line(err)


def test_flash_with_a_sign_key_signs_the_bundle_first(tmp_path, fakes, keys):
    work = tmp_path / "work"
    api.trust(keys["trusted"][1], "host", "local", work)
    bundle = fakes.write_bundle(tmp_path / "b")
    result = api.flash(bundle.root, "local", work, start=False, sign_key=keys["trusted"][0])
    assert result["release"] == bundle.release_id and (bundle.root / "bundle.sig").is_file()


@pytest.mark.parametrize("content, needle", [(b"junk", "not a PEM private key"), (None, "does not exist")])
def test_a_bad_sign_key_is_refused_before_building(tmp_path, fakes, content, needle):
    bundle = fakes.write_bundle(tmp_path / "b")
    key = tmp_path / "key"
    if content is not None:
        key.write_bytes(content)
    code, _, err = _cli("build", "--board", "host", "--pte", bundle.root / "model.pte", "--out", tmp_path / "o",
                        "--sign-key", key)
    assert code == 3 and needle in _error_line(err)
    assert not (tmp_path / "o").exists()


def test_trust_on_a_target_that_cannot_run_the_board_is_refused(tmp_path, keys):
    code, _, err = _cli("trust", keys["trusted"][1], "--board", "host", "--target", "qemu", "--workdir", tmp_path / "w")
    assert code == 2 and "emulates Arm boards" in _error_line(err)
    assert not (tmp_path / "w" / "targets").exists()


def test_signing_a_bundle_that_cannot_be_written_is_one_line(tmp_path, fakes, keys, monkeypatch):
    bundle = fakes.write_bundle(tmp_path / "b")
    key = signing.load_private_key(keys["trusted"][0])
    real = type(tmp_path).write_bytes

    def read_only(self, data):
        if self.name.endswith(".sig.tmp"):
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, data)

    monkeypatch.setattr(type(tmp_path), "write_bytes", read_only)
    with pytest.raises(InputError, match="cannot write .*bundle.sig: Permission denied"):
        package.sign_bundle(bundle, key)
    assert not (bundle.root / "bundle.sig").exists()


# Issue 24: keygen's folders, listing and removing trusted keys, the refusal's hint ---------------------

def test_keygen_makes_the_folders_of_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = _cli("keygen", "--out", "keys/release", "--json")
    assert code == 0, err
    assert (tmp_path / "keys" / "release").is_file() and (tmp_path / "keys" / "release.pub").is_file()
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    (tmp_path / "file").write_text("x")
    code, _, err = _cli("keygen", "--out", "file/release")  # a folder on the way that is a file: one line
    assert code == 2 and "is not a folder" in _error_line(err)


def _trust_cli(key, work, *more):
    return _cli("trust", key, "--board", "host", "--target", "local", "--workdir", work, *more)


def test_trusted_lists_the_keys_and_untrust_removes_one(tmp_path, keys):
    work = tmp_path / "work"
    fps = []
    for name in ("trusted", "other"):
        code, out, err = _trust_cli(keys[name][1], work, "--json")
        assert code == 0, err
        fps.append(json.loads(out)["fingerprint"])
    code, out, err = _cli("trusted", "--board", "host", "--target", "local", "--workdir", work, "--json")
    assert code == 0, err
    listed = json.loads(out)
    assert sorted(k["fingerprint"] for k in listed["keys"]) == sorted(fps)
    assert listed["accepts_unsigned"] is False and listed["security_counter"] == 0
    code, out, err = _cli("untrust", fps[0][:16], "--board", "host", "--target", "local", "--workdir", work, "--json")
    assert code == 0, err
    assert json.loads(out)["removed"] == [fps[0]] and json.loads(out)["remaining"] == 1
    code, out, _ = _cli("trusted", "--board", "host", "--target", "local", "--workdir", work, "--json")
    assert [k["fingerprint"] for k in json.loads(out)["keys"]] == [fps[1]]
    code, out, err = _cli("trust", "--list", "--board", "host", "--target", "local", "--workdir", work, "--json")
    assert code == 0 and [k["fingerprint"] for k in json.loads(out)["keys"]] == [fps[1]], err
    code, _, err = _cli("trust", keys["other"][1], "--list", "--board", "host", "--target", "local", "--workdir", work)
    assert code == 2 and "not both" in _error_line(err)
    code, _, err = _cli("trust", "--board", "host", "--target", "local", "--workdir", work)
    assert code == 2 and "missing PUBLIC_KEY" in _error_line(err)
    code, _, err = _cli("untrust", "0123456789abcdef", "--board", "host", "--target", "local", "--workdir", work)
    assert code == 2 and "trusts no key 0123456789abcdef" in _error_line(err)


def test_untrusting_the_last_key_is_refused_unless_unsigned_bundles_are_asked_for(tmp_path, fakes, keys):
    work = tmp_path / "work"
    code, out, _ = _trust_cli(keys["trusted"][1], work, "--json")
    fp = json.loads(out)["fingerprint"]
    for args in ((fp,), ("--all",)):
        code, _, err = _cli("untrust", *args, "--board", "host", "--target", "local", "--workdir", work)
        line = _error_line(err)
        assert code == 2 and "would accept unsigned bundles again" in line and "--allow-unsigned" in line
    bundle = fakes.write_bundle(tmp_path / "b")
    code, _, err = _cli("flash", bundle.root, "--target", "local", "--no-start", "--workdir", work)
    assert code == 3  # still refused: the key is still trusted
    code, out, err = _cli("untrust", "--all", "--allow-unsigned", "--board", "host", "--target", "local",
                          "--workdir", work)
    assert code == 0, err
    assert "accepts unsigned bundles" in out and out.count("\n") == 1
    code, _, err = _cli("flash", bundle.root, "--target", "local", "--no-start", "--workdir", work)
    assert code == 0, err


def test_the_refusal_names_the_command_that_was_run(tmp_path, fakes, keys, monkeypatch):
    work = tmp_path / "work"
    _trust_cli(keys["trusted"][1], work)
    bundle = fakes.write_bundle(tmp_path / "b")
    code, _, err = _cli("flash", bundle.root, "--target", "local", "--no-start", "--workdir", work)
    line = _error_line(err)
    assert code == 3 and "`edgelm flash" in line and "--sign-key" in line and "edgelm build" not in line

    def run_job(req, **kw):  # what `run` meets after its build: the trusting target refuses the unsigned bundle
        api.target_for("host", "local", work).store.deploy(bundle)

    monkeypatch.setattr(api, "run_job", run_job)
    code, _, err = _cli("run", "--board", "host", "--target", "local", "--workdir", work)
    line = _error_line(err)
    assert code == 3 and "`edgelm run" in line and "--sign-key" in line and "edgelm build" not in line


# Issue 23: the security counter (anti-rollback) ---------------------------------------------------------

def _flash(bundle, work, **kw):
    return api.flash(bundle.root, "local", work, start=False, **kw)


def test_the_security_counter_is_inside_what_the_signature_covers(tmp_path, fakes, keys):
    bundle = fakes.write_bundle(tmp_path / "b")
    package.sign_bundle(bundle, signing.load_private_key(keys["trusted"][0]), security_counter=7)
    data = (bundle.root / "bundle.json").read_bytes()
    assert json.loads(data)["security_counter"] == 7 and package.read_bundle(bundle.root).release_id == \
        bundle.release_id  # the same files: the same release
    signing.verify(data, (bundle.root / "bundle.sig").read_bytes(),
                   [signing.load_public_key(keys["trusted"][1])], "sig")
    fakes.rewrite_info(bundle.root, lambda i: i.__setitem__("security_counter", 9))
    with pytest.raises(InputError, match="does not match the bytes it signs"):
        signing.verify((bundle.root / "bundle.json").read_bytes(), (bundle.root / "bundle.sig").read_bytes(),
                       [signing.load_public_key(keys["trusted"][1])], "sig")


@pytest.mark.parametrize("value", [-1, True, "3", 2**32, 1.5])
def test_a_security_counter_that_is_not_a_small_whole_number_is_refused(tmp_path, fakes, value):
    bundle = fakes.write_bundle(tmp_path / "b")
    fakes.rewrite_info(bundle.root, lambda i: i.__setitem__("security_counter", value))
    with pytest.raises(InputError, match="security_counter"):
        package.read_bundle(bundle.root)


def test_a_bundle_below_the_counter_the_board_accepted_is_refused(tmp_path, fakes, keys):
    work = tmp_path / "work"
    api.trust(keys["trusted"][1], "host", "local", work)
    key = keys["trusted"][0]
    five = fakes.write_bundle(tmp_path / "five")
    assert _flash(five, work, sign_key=key, security_counter=5)["security_counter"] == 5
    assert api.trusted("host", "local", work)["security_counter"] == 5  # recorded on the board
    three = fakes.write_bundle(tmp_path / "three", runner=b"#!/bin/sh\nexit 3\n")
    state = work / "targets" / "local-host"
    before = fakes.snapshot(state)
    with pytest.raises(InputError) as err:
        _flash(three, work, sign_key=key, security_counter=3)
    line = _one_line(err)
    assert "security counter 3" in line and "5" in line, line
    assert fakes.snapshot(state) == before
    again = fakes.write_bundle(tmp_path / "again", runner=b"#!/bin/sh\nexit 4\n")
    assert _flash(again, work, sign_key=key, security_counter=5)["release"] == again.release_id  # not below: taken


@pytest.mark.parametrize("counters, refused", [((1, 2), True), ((2, 2), False)])
def test_a_rollback_below_the_recorded_counter_is_refused(tmp_path, fakes, keys, counters, refused):
    work = tmp_path / "work"
    api.trust(keys["trusted"][1], "host", "local", work)
    first = fakes.write_bundle(tmp_path / "first")
    second = fakes.write_bundle(tmp_path / "second", runner=b"#!/bin/sh\nexit 2\n")
    _flash(first, work, sign_key=keys["trusted"][0], security_counter=counters[0])
    _flash(second, work, sign_key=keys["trusted"][0], security_counter=counters[1])
    if refused:
        with pytest.raises(InputError) as err:
            api.flash(None, "local", work, start=False, board="host", rollback=True)
        line = _one_line(err)
        assert "security counter 1" in line and "2" in line and "rollback" in line, line
        assert api.target_for("host", "local", work).store.current().id == second.release_id
    else:
        assert api.flash(None, "local", work, start=False, board="host", rollback=True)["release"] == \
            first.release_id


def test_a_security_counter_without_a_sign_key_is_refused(tmp_path, fakes):
    bundle = fakes.write_bundle(tmp_path / "b")
    code, _, err = _cli("flash", bundle.root, "--target", "local", "--no-start", "--security-counter", "3",
                        "--workdir", tmp_path / "w")
    assert code == 2 and "--security-counter needs --sign-key" in _error_line(err)


def test_a_garbled_counter_on_the_board_is_one_line(tmp_path, fakes, keys):
    work = tmp_path / "work"
    api.trust(keys["trusted"][1], "host", "local", work)
    (work / "targets" / "local-host" / "security_counter").write_text("\x1b[2Jlots\n")
    with pytest.raises(InputError, match="security counter .* is not a number") as err:
        _flash(fakes.write_bundle(tmp_path / "b"), work, sign_key=keys["trusted"][0])
    _one_line(err)
