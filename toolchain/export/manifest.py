"""The manifest written next to every ``.pte``: what the program is, how it was made, what it needs.

Pure: values in, values out; :func:`write` and :func:`read` are the only I/O. A manifest is
trusted only when the program's sha256 matches (:func:`verify`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from toolchain.errors import InputError

FORMAT = "edgelm-manifest/1"
PROGRAM_FILE = "model.pte"
MANIFEST_FILE = "manifest.json"
# ExecuTorch programs are flatbuffers with file identifier "ET" + 2-digit schema version at offset 4.
PTE_MAGIC_OFFSET = 4
PTE_MAGIC_PREFIX = b"ET"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_program_header(head: bytes, name: str) -> None:
    """Raise unless ``head`` (the first bytes of a file) looks like an ExecuTorch program."""
    magic = head[PTE_MAGIC_OFFSET:PTE_MAGIC_OFFSET + 4]
    if len(head) < 8 or not (magic.startswith(PTE_MAGIC_PREFIX) and magic[2:4].isdigit()):
        raise InputError(f"{name} is not an ExecuTorch program (no 'ETnn' identifier at byte 4)")


def state_bytes(config: dict[str, Any], max_seq_len: int) -> int:
    """Bytes of mutable state (fp32 KV caches and conv states) the program carries."""
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    kinds = config["layer_types"]
    kv = 2 * config["num_key_value_heads"] * max_seq_len * head_dim * 4
    conv = config["hidden_size"] * (config["conv_L_cache"] - 1) * 4
    return sum(kv if k == "full_attention" else conv for k in kinds)


def build(*, program: bytes, max_seq_len: int, model: dict[str, Any], quantization: dict[str, Any],
          delegation: dict[str, Any], tokens: dict[str, Any], versions: dict[str, str],
          timings: dict[str, float]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "program": {
            "file": PROGRAM_FILE,
            "sha256": sha256_bytes(program),
            "size_bytes": len(program),
            "method": "forward",
            "inputs": [{"name": "tokens", "dtype": "int64", "shape": [1, f"1..{max_seq_len}"]},
                       {"name": "input_pos", "dtype": "int64", "shape": [1]}],
            "outputs": [{"name": "logits", "dtype": "float32", "shape": [1, model["config"]["vocab_size"]]}],
            "max_seq_len": max_seq_len,
            "state_bytes": state_bytes(model["config"], max_seq_len),
            "reset": "a call with input_pos == 0 starts a new sequence",
        },
        "model": model,
        "quantization": quantization,
        "delegation": delegation,
        "tokens": tokens,
        "versions": versions,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }


def write(directory: Path, program: bytes, manifest: dict[str, Any]) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    pte = directory / PROGRAM_FILE
    man = directory / MANIFEST_FILE
    # Write both to temporaries and rename, so an interrupted export never leaves a .pte whose
    # manifest describes another program.
    tmp_pte, tmp_man = pte.with_suffix(".pte.tmp"), man.with_suffix(".json.tmp")
    tmp_pte.write_bytes(program)
    tmp_man.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp_pte.replace(pte)
    tmp_man.replace(man)
    return pte, man


def read(pte: Path) -> dict[str, Any]:
    """The manifest beside ``pte``, checked to describe exactly this program."""
    if not pte.exists():
        raise InputError(f"{pte} does not exist")
    if not pte.is_file():
        raise InputError(f"{pte} is not a file")
    with pte.open("rb") as f:
        check_program_header(f.read(8), str(pte))
    man = pte.parent / MANIFEST_FILE
    if not man.exists():
        raise InputError(f"{pte} has no {MANIFEST_FILE} beside it", hint="re-run `edgelm export`")
    try:
        body = json.loads(man.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{man} is not valid JSON ({exc})") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise InputError(f"{man} is not an edgelm manifest (format {FORMAT})")
    verify(pte, body)
    return body


def verify(pte: Path, manifest: dict[str, Any]) -> None:
    actual = sha256_file(pte)
    expected = manifest["program"]["sha256"]
    if actual != expected:
        raise InputError(f"{pte} does not match its manifest (sha256 {actual[:12]}..., manifest says "
                         f"{expected[:12]}...)", hint="re-run `edgelm export` for this folder")
