"""llama.cpp's own converter (``convert_hf_to_gguf.py`` inside the llama-cpp-python source
distribution) on the benchmark's Hugging Face folder.

    python benchmarks/convert_gguf.py --llama-cpp <sdist>/vendor/llama.cpp HF_FOLDER OUT.gguf [--outtype f32]

One change to the converter, made here and not in its tree: it recognises a tokenizer by hashing
how it splits a fixed text, and refuses one it has not seen. The benchmark's synthetic byte-level
tokenizer is named "lfm2", the pre-tokenizer of the LFM2 checkpoints, which is what llama.cpp
would use for a real LFM2 (the benchmark feeds token ids, so the splitting rule is not exercised).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-cpp", type=Path, required=True)
    ap.add_argument("hf", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--outtype", default="f32")
    args = ap.parse_args()
    tree = args.llama_cpp.resolve()
    sys.path.insert(0, str(tree))
    sys.path.insert(1, str(tree / "gguf-py"))
    from conversion import base

    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "lfm2"
    import convert_hf_to_gguf

    sys.argv = ["convert_hf_to_gguf.py", str(args.hf), "--outtype", args.outtype, "--outfile", str(args.out)]
    convert_hf_to_gguf.main()


if __name__ == "__main__":
    main()
