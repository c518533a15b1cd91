import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from toolchain.cli import main
from toolchain.errors import InputError
from toolchain.export import manifest
from toolchain.model.config import PRESETS

FAKE_PTE = b"\x00\x00\x00\x00ET12" + b"x" * 100


@pytest.fixture
def _body(fakes):
    return fakes.full_manifest


def test_write_then_read_verifies_the_hash(tmp_path: Path, _body):
    pte, _ = manifest.write(tmp_path, FAKE_PTE, _body(FAKE_PTE))
    body = manifest.read(pte)
    assert body["program"]["sha256"] == manifest.sha256_bytes(FAKE_PTE)
    assert body["timings_s"]["lower"] == 1.23


def test_a_changed_program_is_refused(tmp_path: Path, _body):
    pte, _ = manifest.write(tmp_path, FAKE_PTE, _body(FAKE_PTE))
    pte.write_bytes(FAKE_PTE + b"!")
    with pytest.raises(InputError, match="does not match its manifest"):
        manifest.read(pte)


def test_a_file_that_is_not_a_program_is_refused(tmp_path: Path):
    bogus = tmp_path / "model.pte"
    bogus.write_text("hello, I am a text file")
    with pytest.raises(InputError, match="not an ExecuTorch program"):
        manifest.read(bogus)


def test_state_bytes_counts_kv_and_conv_state():
    cfg = PRESETS["tiny"].to_dict()  # 2 attention (kv=2 heads, D=16), 2 conv (h=64, L=3)
    caches = 2 * (2 * 2 * 65 * 16 * 4)  # k and v of 2 heads, 64 slots and the spare one, per attention layer
    attended = 2 * 2 * 64 * 16 * 4  # the one pair of working copies of the attended slots
    assert manifest.state_bytes(cfg, 64) == caches + attended + 2 * (64 * 2 * 4)
    assert manifest.state_bytes(cfg, 64, max_draft=8) == caches + attended + 2 * (64 * (2 + 8) * 4)


def test_a_draft_method_adds_its_state_and_is_covered_by_the_digest(tmp_path: Path, _body):
    body = _body(FAKE_PTE)
    cfg = PRESETS["tiny"].to_dict()
    args = dict(program=FAKE_PTE, max_seq_len=64, model={"config": cfg}, quantization={}, delegation={},
                tokens={}, versions={}, timings={}, max_draft=7)
    alone = manifest.build(**args)
    draft = {"method": "draft", "max_draft": 7, "model": {"name": "tiny", "config": cfg}}
    drafted = manifest.build(**args, draft=draft)
    assert drafted["program"]["state_bytes"] == 2 * alone["program"]["state_bytes"]
    body["draft"] = drafted["draft"]
    pte, man = manifest.write(tmp_path, FAKE_PTE, body)
    assert manifest.read(pte)["draft"]["model"]["name"] == "tiny"
    _edit(man, lambda b: b["draft"]["model"].__setitem__("name", "lfm2-350m"))
    with pytest.raises(InputError, match="was changed after export"):
        manifest.read(pte)


# The manifest's own digest ------------------------------------------------------------------------

def _edit(man: Path, edit, reseal: bool = False) -> None:
    body = json.loads(man.read_text())
    edit(body)
    man.write_text(manifest.dumps(body) if reseal else json.dumps(body, indent=2))


def test_build_and_write_seal_the_manifest_with_a_digest_of_its_canonical_json(tmp_path: Path, _body):
    body = _body(FAKE_PTE)
    without = {k: v for k, v in body.items() if k != "digest"}
    canonical = json.dumps(without, sort_keys=True, separators=(",", ":")).encode()
    assert body["digest"] == manifest.sha256_bytes(canonical)
    _, man = manifest.write(tmp_path, FAKE_PTE, body)
    assert json.loads(man.read_text())["digest"] == body["digest"]


def test_the_digest_of_an_in_memory_body_equals_that_of_the_file(tmp_path: Path, _body):
    body = _body(FAKE_PTE)
    body["delegation"]["layers"] = {10: "a", 9: "b"}  # integer keys sort otherwise once they are strings
    body["tokens"]["eos_token_ids"] = (2, 7)  # a tuple is a list in the file
    pte, _ = manifest.write(tmp_path, FAKE_PTE, body)
    assert manifest.read(pte)["digest"] == manifest.seal(body)["digest"]


@pytest.mark.parametrize("edit", [
    lambda b: b["tokens"].__setitem__("eos_token_ids", [99]),
    lambda b: b["program"].__setitem__("max_seq_len", 4096),
    lambda b: b["quantization"].__setitem__("scheme", "fp32-but-not-really"),
    lambda b: b.__setitem__("extra", 1),
], ids=["eos ids", "max_seq_len", "scheme", "added key"])
def test_an_edited_manifest_is_refused(tmp_path: Path, _body, edit):
    pte, man = manifest.write(tmp_path, FAKE_PTE, _body(FAKE_PTE))
    _edit(man, edit)
    with pytest.raises(InputError, match="was changed after export"):
        manifest.read(pte)


def test_a_manifest_without_a_digest_is_stale(tmp_path: Path, _body):
    pte, man = manifest.write(tmp_path, FAKE_PTE, _body(FAKE_PTE))
    _edit(man, lambda b: b.pop("digest"))
    with pytest.raises(InputError, match="has no digest"):
        manifest.read(pte)


@pytest.mark.parametrize("edit, needle", [
    (lambda b: b.pop("program"), "program is missing"),
    (lambda b: b.pop("tokens"), "tokens is missing"),
    (lambda b: b["tokens"].pop("eos_token_ids"), "tokens.eos_token_ids is missing"),
    (lambda b: b["program"].__setitem__("max_seq_len", "64"), "program.max_seq_len is '64', expected an integer"),
    (lambda b: b["program"].__setitem__("max_seq_len", True), "expected an integer"),
    (lambda b: b["program"].__setitem__("max_seq_len", 0), "is not positive"),
    (lambda b: b["program"].__setitem__("sha256", "../x"), "is not a sha256"),
    (lambda b: b["tokens"].__setitem__("eos_token_ids", ["2"]), "must be integers"),
    (lambda b: b["model"]["config"].pop("vocab_size"), "model.config.vocab_size is missing"),
    (lambda b: b["delegation"]["non_delegated_ops"].__setitem__("x", 1), "needs a count and a why"),
    (lambda b: b.__setitem__("program", []), "program is [], expected an object"),
    (lambda b: b.__setitem__("draft", "tiny"), "is not a draft method"),
    (lambda b: b.__setitem__("draft", {"method": "forward", "model": {"name": "tiny"}}), "is not a draft method"),
    (lambda b: b.__setitem__("draft", {"method": "draft", "model": {}}), "is not a draft method"),
], ids=["program", "tokens", "eos", "str seq", "bool seq", "zero seq", "sha", "str eos", "vocab", "op", "list",
        "draft str", "draft method", "draft model"])
def test_a_manifest_lacking_a_field_is_refused_in_one_line(tmp_path: Path, _body, edit, needle):
    """Even with its digest recomputed: a missing key is an input error, never a KeyError (exit 70)."""
    pte, man = manifest.write(tmp_path, FAKE_PTE, _body(FAKE_PTE))
    _edit(man, edit, reseal=True)
    with pytest.raises(InputError) as err:
        manifest.read(pte)
    assert needle in str(err.value) and "\n" not in str(err.value)


def _inspect(pte: Path):
    result = CliRunner().invoke(main, ["inspect", str(pte)])
    return result.exit_code, result.stdout, result.stderr


def test_inspect_says_verified_for_both_the_program_and_the_manifest(tmp_path: Path, _body):
    pte, _ = manifest.write(tmp_path, FAKE_PTE, _body(FAKE_PTE))
    code, out, _ = _inspect(pte)
    assert code == 0, out
    flat = " ".join(out.split())
    assert "verified" in flat.split(" manifest ", 1)[0]  # the program row
    assert f"digest {manifest.read(pte)['digest'][:16]}... verified" in flat  # the manifest row


@pytest.mark.parametrize("edit", [
    lambda b: b["tokens"].__setitem__("eos_token_ids", [5]),
    lambda b: b["program"].__setitem__("max_seq_len", 8),
    lambda b: b.pop("digest"),
], ids=["eos ids", "max_seq_len", "no digest"])
def test_inspect_refuses_an_edited_manifest_in_one_line(tmp_path: Path, _body, edit):
    pte, man = manifest.write(tmp_path, FAKE_PTE, _body(FAKE_PTE))
    _edit(man, edit)
    code, out, err = _inspect(pte)
    assert code == 3, out + err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err


def test_inspect_refuses_a_manifest_without_program_with_exit_3_not_70(tmp_path: Path, _body):
    pte, man = manifest.write(tmp_path, FAKE_PTE, _body(FAKE_PTE))
    _edit(man, lambda b: b.pop("program"), reseal=True)
    code, _, err = _inspect(pte)
    assert code == 3 and "program is missing" in err, err


@pytest.mark.parametrize("text", ["[" * 100000, "\udcff", "[1, 2]", "{not json"], ids=["deep", "bad utf8", "list",
                                                                                       "garbage"])
def test_a_manifest_that_is_not_a_json_object_is_an_input_error(tmp_path: Path, _body, text):
    pte, man = manifest.write(tmp_path, FAKE_PTE, _body(FAKE_PTE))
    man.write_bytes(text.encode(errors="surrogateescape"))
    with pytest.raises(InputError):
        manifest.read(pte)
