"""Sealed bundles: bundle.json lists exactly the required files by plain name, the folder holds
nothing else, and the release id is computed from the hashes, never taken from bundle.json's text."""

import hashlib
import json
import os
import re

import pytest
from click.testing import CliRunner

from toolchain.bundle import package, sdk
from toolchain.cli import main
from toolchain.errors import InputError


def _refused(root, needle):
    with pytest.raises(InputError) as err:
        package.verify_bundle(package.read_bundle(root))
    assert needle in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


def test_a_fake_bundle_verifies(tmp_path, fakes):
    bundle = fakes.write_bundle(tmp_path / "b")
    package.verify_bundle(bundle)
    assert set(bundle.files) == {"runner", *sdk.RUNTIME_LIBS, "model.pte", "manifest.json"}


def test_the_release_id_is_r_and_16_hex_of_the_sha256_of_the_sorted_file_map(tmp_path, fakes):
    bundle = fakes.write_bundle(tmp_path / "b")
    canonical = json.dumps(dict(sorted(bundle.files.items())), separators=(",", ":")).encode()
    assert bundle.release_id == "r-" + hashlib.sha256(canonical).hexdigest()[:16]


@pytest.mark.parametrize("version", ["../../victim", "/tmp/abs", "a/b", "..", "x\0y", ""])
def test_the_release_id_ignores_the_text_in_bundle_json(tmp_path, fakes, version):
    plain = fakes.write_bundle(tmp_path / "plain")
    crafted = fakes.write_bundle(tmp_path / "crafted", info={"firmware_version": version})
    assert re.fullmatch(r"r-[0-9a-f]{16}", crafted.release_id)
    assert crafted.release_id == plain.release_id  # the same files: the same release


def test_other_files_give_another_release_id(tmp_path, fakes):
    a = fakes.write_bundle(tmp_path / "a")
    b = fakes.write_bundle(tmp_path / "b", runner=b"#!/bin/sh\nexit 1\n")
    assert a.release_id != b.release_id


def _outside_file(tmp_path, rel):
    """A file where ``rel`` (relative to the bundle folder) points, and its sha256 (so old code accepted it)."""
    target = (tmp_path / "b" / rel).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("outside\n")
    return hashlib.sha256(target.read_bytes()).hexdigest()


@pytest.mark.parametrize("edit, needle", [
    (lambda i, t: i["files"].pop("runner"), "does not list runner"),
    (lambda i, t: i["files"].pop("model.pte"), "does not list model.pte"),
    (lambda i, t: i["files"].pop("manifest.json"), "does not list manifest.json"),
    (lambda i, t: i["files"].pop("libexecutorch_backend_xnnpack.so"), "does not list libexecutorch_backend_xnnpack"),
    (lambda i, t: i.__setitem__("files", {}), "does not list runner"),
    (lambda i, t: i["files"].__setitem__("../../etc/hostname", _outside_file(t, "../../etc/hostname")),
     "plain names inside the bundle"),
    (lambda i, t: i["files"].__setitem__("/etc/passwd", hashlib.sha256(open("/etc/passwd", "rb").read()).hexdigest()),
     "plain names inside the bundle"),
    (lambda i, t: i["files"].__setitem__("..", "0" * 64), "plain names"),
    (lambda i, t: i.pop("files"), "has no 'files' object"),
    (lambda i, t: i.__setitem__("files", ["runner"]), "has no 'files' object"),
    (lambda i, t: i["files"].__setitem__("runner", 5), "not 64 hex digits"),
    (lambda i, t: i.pop("board"), "names no board"),
    (lambda i, t: i.pop("format"), "is not an edgelm bundle description"),
    (lambda i, t: i.__setitem__("model_sha256", "0" * 64), "model_sha256 is not"),
], ids=["no runner", "no program", "no manifest", "no lib", "files {}", "dotdot", "absolute", "name ..",
        "no files key", "files list", "hash type", "no board", "no format", "model sha"])
def test_bundle_json_must_list_exactly_the_required_files(tmp_path, fakes, edit, needle):
    fakes.write_bundle(tmp_path / "b")
    fakes.rewrite_info(tmp_path / "b", lambda info: edit(info, tmp_path))
    _refused(tmp_path / "b", needle)


def test_an_extra_file_listed_with_its_hash_is_refused(tmp_path, fakes):
    root = tmp_path / "b"
    fakes.write_bundle(root)
    (root / "evil.so").write_bytes(b"payload")
    fakes.rewrite_info(root, lambda i: i["files"].__setitem__("evil.so", hashlib.sha256(b"payload").hexdigest()))
    _refused(root, "'evil.so', which is not part of a bundle")


def test_an_extra_file_in_the_folder_is_refused(tmp_path, fakes):
    root = tmp_path / "b"
    fakes.write_bundle(root)
    (root / "LD_PRELOAD.so").write_bytes(b"payload")
    _refused(root, "holds 'LD_PRELOAD.so', which is not part of a bundle")


def test_a_folder_in_the_bundle_is_refused(tmp_path, fakes):
    root = tmp_path / "b"
    fakes.write_bundle(root)
    (root / "lib").mkdir()
    _refused(root, "holds 'lib'")


def test_a_symlink_in_the_bundle_is_refused_even_with_the_right_hash(tmp_path, fakes):
    root = tmp_path / "b"
    fakes.write_bundle(root)
    lib = root / "libexecutorch.so"
    elsewhere = tmp_path / "elsewhere.so"
    elsewhere.write_bytes(lib.read_bytes())
    lib.unlink()
    lib.symlink_to(elsewhere)
    _refused(root, "is a symbolic link")


def test_a_symlinked_bundle_json_is_refused(tmp_path, fakes):
    root = tmp_path / "b"
    fakes.write_bundle(root)
    real = tmp_path / "info.json"
    (root / "bundle.json").rename(real)
    (root / "bundle.json").symlink_to(real)
    _refused(root, "is a symbolic link")


def test_a_fifo_in_place_of_a_file_is_refused(tmp_path, fakes):
    root = tmp_path / "b"
    fakes.write_bundle(root)
    (root / "bundle.sig").unlink(missing_ok=True)
    os.mkfifo(root / "bundle.sig")
    _refused(root, "is not a regular file")


@pytest.mark.parametrize("text, needle", [
    (b"{not json", "is not valid JSON"),
    (b"\xff\xfe\x00garbage", "is not valid JSON"),
    (b"[" * 100000, "is not valid JSON"),
    (b"[1, 2]", "is not an edgelm bundle description"),
    (b'"a string"', "is not an edgelm bundle description"),
    (b"", "is not valid JSON"),
], ids=["garbage", "binary", "deep", "list", "string", "empty"])
def test_a_bundle_json_that_is_not_an_object_is_an_input_error(tmp_path, fakes, text, needle):
    root = tmp_path / "b"
    fakes.write_bundle(root)
    (root / "bundle.json").write_bytes(text)
    _refused(root, needle)


def test_a_bundle_whose_manifest_was_edited_and_rehashed_is_refused(tmp_path, fakes):
    """bundle.json carries the manifest's hash; re-hashing an edited manifest still breaks its digest."""
    root = tmp_path / "b"
    fakes.write_bundle(root)
    man = root / "manifest.json"
    body = json.loads(man.read_text())
    body["tokens"]["eos_token_ids"] = [42]
    man.write_text(json.dumps(body, indent=2))
    fakes.rewrite_info(root, lambda i: i["files"].__setitem__("manifest.json", hashlib.sha256(man.read_bytes())
                                                             .hexdigest()))
    _refused(root, "was changed after export")


def _flash(bundle, workdir):
    result = CliRunner().invoke(main, ["flash", str(bundle), "--no-start", "--workdir", str(workdir)])
    return result.exit_code, result.stderr


@pytest.mark.parametrize("text", [b"{garbage", b"[]", b'{"format": "edgelm-bundle/1", "board": "host"}',
                                  b'{"format": "edgelm-bundle/1", "board": "host", "files": {}}'],
                         ids=["garbage", "list", "no files", "files {}"])
def test_flash_of_a_broken_bundle_json_is_exit_3_in_one_line(tmp_path, fakes, text):
    root = tmp_path / "b"
    fakes.write_bundle(root)
    (root / "bundle.json").write_bytes(text)
    code, err = _flash(root, tmp_path / "work")
    assert code == 3, err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err


@pytest.mark.parametrize("where", ["out", "out/bundle", "out/project"])
def test_build_into_an_existing_file_is_a_usage_error_in_one_line(tmp_path, fakes, where):
    bundle = fakes.write_bundle(tmp_path / "b")
    (tmp_path / "out").mkdir(exist_ok=where != "out")
    if where == "out":
        (tmp_path / "out").rmdir()
    (tmp_path / where).write_text("a file, not a folder")
    result = CliRunner().invoke(main, ["build", "--board", "host", "--pte", str(bundle.root / "model.pte"),
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.stderr
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "exists and is not a folder" in lines[0], result.stderr
    assert (tmp_path / where).read_text() == "a file, not a folder"
