"""`edgelm monitor`'s frames as a person reads them: the token ids a board streams, decoded to text
with the tokenizer its program's manifest names, and one line per frame.

Which program the board serves comes from ``--pte``, else from its sha256 (the release `flash` made
current, or the HELLO the runner sends when it starts) looked up among the workdir's and the
cache's exports and builds. The manifest names the model; its tokenizer must be the one the program was
exported with (its sha256 is in the manifest), else the ids are shown without text, and a note says why.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from toolchain.errors import EdgelmError


class FrameText:
    """Adds the text to the events ``api.monitor`` yields: ``text`` to a TOKEN (what that token
    completes) and ``stream_text`` to a STATS (the whole reply). ``note`` is told which tokenizer
    decodes, or why none does."""

    def __init__(self, workdir: Path, note: Callable[[str], None], *, show_special: bool = False):
        self.workdir, self.note, self.show_special = workdir, note, show_special
        self.tok: Any = None
        self._assembler: Any = None
        self._looked: set[str] = set()

    def use_program(self, pte: Path) -> None:
        """Decode with the tokenizer of the program ``pte`` (``--pte``)."""
        from toolchain.export import manifest

        self._use(manifest.read(pte), str(pte))

    def program(self, sha256: str) -> None:
        """The board serves the program with this sha256: found among the workdir's exports and builds
        (once per sha256; nothing changes once a tokenizer decodes)."""
        from toolchain.export import manifest

        if self.tok is not None or sha256 in self._looked:
            return
        self._looked.add(sha256)
        from toolchain import cache

        root = self.workdir
        found = []
        for base in (root, cache.root()):  # the run's folder (its targets), then the cache (exports, builds)
            found += sorted([*base.glob("exports/*/manifest.json"), *base.glob("builds/*/bundle/manifest.json"),
                             *base.glob("targets/*/current/manifest.json")])
        for path in found:
            try:
                body = json.loads(path.read_text(encoding="utf-8"))
                if body["program"]["sha256"] != sha256:
                    continue
                self._use(manifest.read(path.parent / body["program"]["file"]), str(path.parent))
                return
            except (OSError, ValueError, KeyError, TypeError, EdgelmError):
                continue
        self.note(f"no program with sha256 {sha256[:16]}... under {root} or in the cache: token ids only (give "
                  "--pte, the program the board serves, to see its text)")

    def _use(self, man: dict[str, Any], where: str) -> None:
        from toolchain import api
        from toolchain.model import tokenizer

        name = man["model"]["name"]
        try:
            path = api.tokenizer_path(api.RunRequest(board="host", model=name, prompt="", byte_tokenizer=True))
            tok = tokenizer.for_model(path, man["model"]["config"]["vocab_size"])
        except EdgelmError as exc:
            self.note(f"token ids only: the tokenizer of {name} ({where}) does not load ({exc})")
            return
        want = man["tokens"]["tokenizer"].get("sha256")
        if want != tok.sha256:
            self.note(f"token ids only: {name}'s tokenizer here is not the one {where} was exported with "
                      f"(sha256 {str(tok.sha256)[:12]}... against {str(want)[:12]}...)")
            return
        self.tok = tok
        self.note(f"text decoded with the {tok.name} tokenizer of {name} ({where})")

    def add(self, event: dict[str, Any], kind: int, msg: Any) -> None:
        """Put the text into ``event`` (the frame of type ``kind``, parsed as ``msg``)."""
        from toolchain.link import protocol

        if kind == protocol.HELLO:
            self._assembler = None  # a runner (re)started: no stream goes on across it
            if isinstance(msg, protocol.Hello):
                self.program(msg.model_sha256)
            return
        if self.tok is None:
            return
        if kind == protocol.TOKEN and isinstance(msg, protocol.Token):
            if self._assembler is None:
                self._assembler = self._detokenizer()
            event["text"] = self._assembler.push(msg.token)
        elif kind == protocol.STATS and self._assembler is not None:
            self._assembler.finish()
            event["stream_text"] = self._assembler.text
            self._assembler = None

    def _detokenizer(self) -> Any:
        # The one place monitor turns ids into text: the streaming detokenizer (TextAssembler), as
        # `edgelm run` and `edgelm console` print their replies.
        from toolchain.model.tokenizer import TextAssembler

        return TextAssembler(self.tok, show_special=self.show_special)


def describe(event: dict[str, Any]) -> str:
    """One frame on one line (plain text; the caller escapes it for the terminal)."""
    m = event.get("message")
    kind = event["type"]
    if kind == "TOKEN" and isinstance(m, dict):
        text = f"  {json.dumps(event['text'], ensure_ascii=False)}" if "text" in event else ""
        logit = f"  logit {m['logit']:.3f}" if m.get("logit") is not None else ""
        return f"#{m['index']:<4} id {m['token']:<7}{text}{logit}"
    if kind == "HELLO" and isinstance(m, dict):
        return (f"{m['firmware']} on {m['board']}: program {str(m['model_sha256'])[:16]}..., {m['max_seq_len']} "
                f"tokens of room, vocabulary {m['vocab_size']}, {m['threads']} threads, loaded in "
                f"{m['load_ms']:.0f} ms")
    if kind == "STATS" and isinstance(m, dict):
        stop = {0: "eos", 1: "max tokens", 2: "cancelled"}.get(m["stop"], f"stop {m['stop']}")
        line = (f"{m['prompt_tokens']} prompt + {m['generated']} generated tokens ({stop}), TTFT "
                f"{m['ttft_ms']:.1f} ms, prefill {m['prefill_tok_s']:.1f} tok/s, decode {m['decode_tok_s']:.1f} tok/s")
        if "stream_text" in event:
            line += f"\ntext: {event['stream_text']}"
        return line
    if kind == "ERROR" and isinstance(m, dict):
        from toolchain.link import protocol

        return f"{protocol.ERROR_NAMES.get(m['code'], m['code'])}: {m['message']}"
    return str(m if m is not None else "")
