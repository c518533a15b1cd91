from pathlib import Path

import pytest

from toolchain.errors import InputError
from toolchain.export import manifest
from toolchain.model.config import PRESETS


def _body(program: bytes) -> dict:
    cfg = PRESETS["tiny"].to_dict()
    return manifest.build(program=program, max_seq_len=64, model={"config": cfg}, quantization={},
                          delegation={}, tokens={}, versions={}, timings={"lower": 1.234})


FAKE_PTE = b"\x00\x00\x00\x00ET12" + b"x" * 100


def test_write_then_read_verifies_the_hash(tmp_path: Path):
    pte, _ = manifest.write(tmp_path, FAKE_PTE, _body(FAKE_PTE))
    body = manifest.read(pte)
    assert body["program"]["sha256"] == manifest.sha256_bytes(FAKE_PTE)
    assert body["timings_s"]["lower"] == 1.23


def test_a_changed_program_is_refused(tmp_path: Path):
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
    assert manifest.state_bytes(cfg, 64) == 2 * (2 * 2 * 64 * 16 * 4) + 2 * (64 * 2 * 4)
