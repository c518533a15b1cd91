"""Fake bundles for tests that need no compiler and no torch: a real bundle in every respect a deploy
checks (the required files, bundle.json with their hashes, a manifest whose digest holds, an
optional signature); only the runner is a script and the libraries are a few bytes."""

from __future__ import annotations

import json
import os
from pathlib import Path

from toolchain.bundle import package, sdk
from toolchain.export import manifest
from toolchain.model.config import PRESETS

FAKE_PTE = b"\x00\x00\x00\x00ET12" + b"x" * 100
# What a bundle holds, stated here independently of compile.REQUIRED_FILES (the spec under test).
BUNDLE_FILES = ("runner", *sdk.RUNTIME_LIBS, "model.pte", "manifest.json")


def full_manifest(program: bytes = FAKE_PTE, max_seq_len: int = 64) -> dict:
    cfg = PRESETS["tiny"].to_dict()
    return manifest.build(
        program=program, max_seq_len=max_seq_len, max_draft=7, model={"name": "tiny", "kind": "preset", "config": cfg,
                                                         "parameters": 1000, "weights_sha256": "0" * 64, "seed": 0},
        quantization={"scheme": "fp32", "linear_layers": 4, "linear_layers_quantized": 0, "lm_head": "tied"},
        delegation={"backend": "xnnpack", "delegated_total": 10, "delegate_calls": 1, "non_delegated_total": 1,
                    "decoder_layers_fully_delegated": True,
                    "non_delegated_ops": {"aten.add": {"count": 1, "why": "state update"}}},
        tokens={"bos_token_id": 1, "eos_token_ids": [2], "pad_token_id": 0,
                "tokenizer": {"kind": "bytes", "sha256": None, "vocab_size": cfg["vocab_size"]}},
        versions={"edgelm": "0.1.0"}, timings={"lower": 1.234})


def write_bundle(root: Path, *, board: str = "host", runner: bytes = b"#!/bin/sh\nexit 0\n",
                 program: bytes = FAKE_PTE, info: dict | None = None) -> package.Bundle:
    """A bundle folder with exactly the required files and bundle.json listing their hashes."""
    root.mkdir(parents=True)
    (root / package.RUNNER).write_bytes(runner)
    os.chmod(root / package.RUNNER, 0o755)
    for lib in sdk.RUNTIME_LIBS:
        (root / lib).write_bytes(f"not really {lib}\n".encode())
    (root / manifest.PROGRAM_FILE).write_bytes(program)
    (root / manifest.MANIFEST_FILE).write_text(json.dumps(full_manifest(program), indent=2) + "\n")
    files = {name: manifest.sha256_file(root / name) for name in BUNDLE_FILES}
    body = {"format": package.BUNDLE_FORMAT, "board": board, "arch": "x86_64", "firmware_version": "0.1.0+test",
            "model_sha256": files[manifest.PROGRAM_FILE], "glibc_required": "2.17",
            "size_bytes": sum((root / name).stat().st_size for name in BUNDLE_FILES), "files": files} | (info or {})
    (root / package.BUNDLE_FILE).write_text(json.dumps(body, indent=2) + "\n")
    return package.read_bundle(root)


def rewrite_info(root: Path, edit) -> None:
    """Apply ``edit`` to bundle.json's content (a dict) and write it back, hashes left as they are."""
    path = root / package.BUNDLE_FILE
    info = json.loads(path.read_text())
    edit(info)
    path.write_text(json.dumps(info, indent=2) + "\n")


def snapshot(root: Path) -> dict[str, object]:
    """Every entry under ``root``: file bytes, link targets, folders; for byte-for-byte comparisons."""
    if not root.exists():
        return {}
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", oct(p.stat().st_mode))
            else:
                out[rel] = ("file", p.read_bytes(), oct(p.stat().st_mode))
    return out
