"""The manifest written next to every ``.pte``: what the program is, how it was made, what it needs.

Pure: values in, values out; :func:`write` and :func:`read` are the only I/O. A manifest is
trusted only when its own ``digest`` (the sha256 of its canonical JSON without that field) holds,
it has every field the readers use, and the program's sha256 matches (:func:`verify`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from toolchain.errors import InputError

FORMAT = "edgelm-manifest/1"
PROGRAM_FILE = "model.pte"
DRAFT_METHOD = "draft"  # the draft model's method in a program exported with one (export.lower)
MANIFEST_FILE = "manifest.json"
# ExecuTorch programs are flatbuffers with file identifier "ET" + 2-digit schema version at offset 4.
PTE_MAGIC_OFFSET = 4
PTE_MAGIC_PREFIX = b"ET"
DIGEST = "digest"
_HEX64 = frozenset("0123456789abcdef")
# Every field a reader of the manifest uses (api, inspect, run, the bundle); a manifest lacking
# one, or holding a value of another type there, is refused when read.
_FIELDS: dict[str, type] = {
    "program": dict, "program.file": str, "program.sha256": str, "program.size_bytes": int, "program.method": str,
    "program.max_seq_len": int, "program.state_bytes": int,
    "model": dict, "model.name": str, "model.kind": str, "model.parameters": int, "model.config": dict,
    "model.config.vocab_size": int, "model.config.layer_types": list,
    "quantization": dict, "quantization.scheme": str, "quantization.linear_layers": int,
    "quantization.linear_layers_quantized": int, "quantization.lm_head": str,
    "delegation": dict, "delegation.backend": str, "delegation.delegated_total": int,
    "delegation.delegate_calls": int, "delegation.non_delegated_total": int,
    "delegation.decoder_layers_fully_delegated": bool, "delegation.non_delegated_ops": dict,
    "tokens": dict, "tokens.bos_token_id": int, "tokens.eos_token_ids": list, "tokens.tokenizer": dict,
    "tokens.tokenizer.kind": str,
    "versions": dict, "timings_s": dict,
}
_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false", dict: "an object", list: "a list"}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def canonical(body: dict[str, Any]) -> bytes:
    """The bytes the digest covers: ``body`` without its digest, as JSON with sorted keys, no spaces.

    Round-tripped through JSON first, so a body built in memory (tuples, integer keys) and the
    same body read back from the file give the same bytes.
    """
    plain = json.loads(json.dumps({k: v for k, v in body.items() if k != DIGEST}))
    return json.dumps(plain, sort_keys=True, separators=(",", ":")).encode()


def digest(body: dict[str, Any]) -> str:
    return sha256_bytes(canonical(body))


def seal(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with its digest field (re)computed."""
    return {k: v for k, v in body.items() if k != DIGEST} | {DIGEST: digest(body)}


def check_program_header(head: bytes, name: str) -> None:
    """Raise unless ``head`` (the first bytes of a file) looks like an ExecuTorch program."""
    magic = head[PTE_MAGIC_OFFSET:PTE_MAGIC_OFFSET + 4]
    if len(head) < 8 or not (magic.startswith(PTE_MAGIC_PREFIX) and magic[2:4].isdigit()):
        raise InputError(f"{name} is not an ExecuTorch program (no 'ETnn' identifier at byte 4)")


def state_bytes(config: dict[str, Any], max_seq_len: int, max_draft: int = 0) -> int:
    """Bytes of mutable state the program carries: fp32 KV caches (max_seq_len + 1 slots, see
    model.lfm2.Attention) and conv states (the last conv_L_cache - 1 + max_draft inputs), plus the
    one pair of working copies of the attended slots that every attention layer reuses."""
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    kinds = config["layer_types"]
    kv = 2 * config["num_key_value_heads"] * (max_seq_len + 1) * head_dim * 4
    conv = config["hidden_size"] * (config["conv_L_cache"] - 1 + max_draft) * 4
    attended = 2 * config["num_key_value_heads"] * max_seq_len * head_dim * 4 if "full_attention" in kinds else 0
    return sum(kv if k == "full_attention" else conv for k in kinds) + attended


def build(*, program: bytes, max_seq_len: int, model: dict[str, Any], quantization: dict[str, Any],
          delegation: dict[str, Any], tokens: dict[str, Any], versions: dict[str, str],
          timings: dict[str, float], max_draft: int, draft: dict[str, Any] | None = None,
          calls: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest of a program. ``draft``: the draft model's method, when the program carries one.
    ``calls``: the program's ``inputs``, ``outputs`` and ``rewind`` when they are not the dynamic
    method's (Arm's one-token step); ``extra``: further top-level sections (``arm``)."""
    vocab = model["config"]["vocab_size"]
    state = state_bytes(model["config"], max_seq_len, max_draft) + 8
    if draft is not None:
        state += state_bytes(draft["model"]["config"], max_seq_len, draft["max_draft"]) + 8
    return seal({
        "format": FORMAT,
        "program": {
            "file": PROGRAM_FILE,
            "sha256": sha256_bytes(program),
            "size_bytes": len(program),
            "method": "forward",
            "inputs": [{"name": "tokens", "dtype": "int64", "shape": [1, f"1..{max_seq_len}"]},
                       {"name": "input_pos", "dtype": "int64", "shape": [1]},
                       {"name": "key_positions", "dtype": "int64", "shape": [f"input_pos+T (1..{max_seq_len})"],
                        "holds": "0, 1, ..., input_pos+T-1: the cache slots attended"},
                       {"name": "logit_rows", "dtype": "int64", "shape": [f"1..{max_draft + 1}"],
                        "holds": "the chunk's positions whose logits come back: T-1, or 0..T-1 to verify a draft"}],
            "outputs": [{"name": "logits", "dtype": "float32", "shape": [1, "len(logit_rows)", vocab]}],
            "max_seq_len": max_seq_len,
            "max_draft": max_draft,
            "state_bytes": state,
            "reset": "a call with input_pos == 0 starts a new sequence",
            "rewind": f"a call may start up to max_draft ({max_draft}) positions before the end of the last one "
                      "(a rejected draft is dropped)",
        } | (calls or {}),
        "model": model,
        **({"draft": draft} if draft is not None else {}),
        "quantization": quantization,
        "delegation": delegation,
        "tokens": tokens,
        "versions": versions,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        **(extra or {}),
    })


def write(directory: Path, program: bytes, manifest: dict[str, Any]) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    pte = directory / PROGRAM_FILE
    man = directory / MANIFEST_FILE
    # Write both to temporaries and rename, so an interrupted export never leaves a .pte whose
    # manifest describes another program.
    tmp_pte, tmp_man = pte.with_suffix(".pte.tmp"), man.with_suffix(".json.tmp")
    tmp_pte.write_bytes(program)
    tmp_man.write_text(dumps(manifest))
    tmp_pte.replace(pte)
    tmp_man.replace(man)
    return pte, man


def dumps(manifest: dict[str, Any]) -> str:
    """The text of ``manifest.json`` for ``manifest``, its digest (re)computed."""
    return json.dumps(seal(manifest), indent=2) + "\n"


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
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InputError(f"{man} is not valid JSON ({str(exc)[:80]})") from None
    check(body, str(man))
    verify(pte, body)
    return body


def check(body: Any, name: str) -> None:
    """Raise unless ``body`` is an edgelm manifest whose digest holds and that has every field readers use."""
    stale = "re-run `edgelm export` for this program"
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise InputError(f"{name} is not an edgelm manifest (format {FORMAT})", hint=stale)
    recorded = body.get(DIGEST)
    if recorded is None:
        raise InputError(f"{name} has no digest (written by an older edgelm)", hint=stale)
    actual = digest(body)
    if recorded != actual:
        raise InputError(f"{name} was changed after export (its digest says {str(recorded)[:12]}..., its content "
                         f"hashes to {actual[:12]}...)", hint=stale)
    for path, kind in _FIELDS.items():
        value: Any = body
        for key in path.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        # bool is an int to isinstance; an integer field holding true/false is as wrong as a string
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            what = "is missing" if value is None else f"is {repr(value)[:40]}, expected {_TYPE_NAMES[kind]}"
            raise InputError(f"{name}: {path} {what}", hint=stale)
    sha = body["program"]["sha256"]
    if len(sha) != 64 or not set(sha) <= _HEX64:
        raise InputError(f"{name}: program.sha256 {sha[:70]!r} is not a sha256", hint=stale)
    if body["program"]["max_seq_len"] < 1:
        raise InputError(f"{name}: program.max_seq_len {body['program']['max_seq_len']} is not positive", hint=stale)
    eos = body["tokens"]["eos_token_ids"]
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in eos):
        raise InputError(f"{name}: tokens.eos_token_ids {repr(eos)[:40]} must be integers", hint=stale)
    draft = body.get("draft")
    if draft is not None and not (isinstance(draft, dict) and draft.get("method") == DRAFT_METHOD
                                  and isinstance(draft.get("model"), dict)
                                  and isinstance(draft["model"].get("name"), str)):
        raise InputError(f"{name}: draft {repr(draft)[:40]} is not a draft method ('{DRAFT_METHOD}' and its model)",
                         hint=stale)
    for op, info in body["delegation"]["non_delegated_ops"].items():
        if not (isinstance(info, dict) and isinstance(info.get("count"), int) and isinstance(info.get("why"), str)):
            raise InputError(f"{name}: delegation.non_delegated_ops[{op!r}] needs a count and a why", hint=stale)


def verify(pte: Path, manifest: dict[str, Any]) -> None:
    actual = sha256_file(pte)
    expected = manifest["program"]["sha256"]
    if actual != expected:
        raise InputError(f"{pte} does not match its manifest (sha256 {actual[:12]}..., manifest says "
                         f"{expected[:12]}...)", hint="re-run `edgelm export` for this folder")
