"""A board serving a model, handed to hardware-in-the-loop tests by the pytest plugin.

Every generation goes through the same path as ``edgelm run``: the request, the board's stream,
and its validation against the host reference on the same program (a typed ``api.RunReport``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from toolchain.link import protocol
from toolchain.link.transport import Deadline


class BoardUnderTest:
    """The board, up for the whole session. ``generate`` and ``expect`` judge every stream;
    ``send_frame``, ``send_raw`` and ``frames`` talk to the runner below the request level."""

    def __init__(self, prep: Any, up: Any, base: Any, record: Callable[[Any], None] = lambda r: None):
        self._prep, self._up, self._base, self._record = prep, up, base, record
        self._talked_raw = [False]  # shared by every binding: the link's state is the board's

    def bound(self, record: Callable[[Any], None]) -> BoardUnderTest:
        """The same board, recording each report with ``record`` (the current test's)."""
        bound = BoardUnderTest(self._prep, self._up, self._base, record)
        bound._talked_raw = self._talked_raw
        return bound

    # What the board is ---------------------------------------------------------------------------

    @property
    def board(self) -> str:
        return str(self._prep.board.name)

    @property
    def target(self) -> str:
        return str(self._prep.target.spec)

    @property
    def model(self) -> str:
        return str(self._base.model)

    @property
    def quant(self) -> str:
        return str(self._prep.quant)

    @property
    def hello(self) -> protocol.Hello:
        return self._up.hello

    @property
    def manifest(self) -> dict[str, Any]:
        return dict(self._prep.exported.manifest)

    @property
    def emulated(self) -> bool:
        return bool(self._prep.target.emulated)

    def tokenize(self, text: str) -> list[int]:
        """``text`` as the prompt ``generate`` would send: BOS, then the model's tokens."""
        return [self.manifest["tokens"]["bos_token_id"], *self._prep.tok.encode(text)]

    # Generation ---------------------------------------------------------------------------------

    def generate(self, prompt: str | Sequence[int], *, tokens: int = 32, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int = 0, ignore_eos: bool = False, draft: bool = True,
                 fidelity: bool = False, retries: int = 0) -> Any:
        """Generate on the board from ``prompt`` (text, tokenized with the model's tokenizer after
        BOS; or token ids, sent as they are) and validate the stream: an ``api.RunReport``. The
        verdict is in ``report.validation``; assert it with ``assert_validates``."""
        from toolchain import api

        if isinstance(prompt, str):
            text, ids = prompt, None
        else:
            ids = tuple(int(t) for t in prompt)
            text = ""
        req = dataclasses.replace(self._base, prompt=text, prompt_ids=ids, tokens=tokens, temperature=temperature,
                                  top_k=top_k, top_p=top_p, seed=seed, ignore_eos=ignore_eos, draft=draft,
                                  fidelity=fidelity, retries=retries)
        req.check()
        if self._talked_raw[0]:  # frames sent or read below the request level: start clean
            self.resync()
        report = api.serve_run(self._prep, self._up, req)
        self._record(report)
        return report

    def expect(self, text: str, prompt: str | Sequence[int], *, tokens: int = 64, **kw: Any) -> Any:
        """Generate, and fail the test unless the stream validates and its text contains ``text``."""
        from toolchain.hil.asserts import assert_validates

        report = self.generate(prompt, tokens=tokens, **kw)
        assert_validates(report)
        if text not in report.text:
            raise AssertionError(f"expected {text!r} in the board's reply to {prompt!r}; it said {report.text!r}")
        return report

    # Below the request level --------------------------------------------------------------------

    def send_frame(self, msg_type: int, body: bytes = b"") -> None:
        """One well-formed frame (``toolchain.link.protocol`` message type, body), numbered in turn."""
        self._talked_raw[0] = True
        self._up.session.send(msg_type, body)

    def send_raw(self, data: bytes) -> None:
        """Bytes on the link as they are: a garbled frame, line noise."""
        self._talked_raw[0] = True
        self._up.session.transport.write(bytes(data))

    def frames(self, seconds: float) -> list[tuple[Any, Any]]:
        """Every frame the board sends for ``seconds``: ``(framing.Frame or FrameError, message)``."""
        self._talked_raw[0] = True
        return list(self._up.session.frames(Deadline(seconds)))

    def resync(self) -> None:
        """Let the board finish whatever it was saying and start the next request clean."""
        self._up.session.resync()
        self._talked_raw[0] = False
