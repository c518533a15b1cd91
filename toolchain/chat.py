"""A conversation as the token ids a board is sent: the checkpoint's chat template (from its
``tokenizer_config.json``, rendered with jinja2) or plain text for a model without one (the presets).

The conversation is kept as ids, the board's replies exactly as it sent them (never re-tokenized
from their text), so each turn's prompt starts with everything the board's state holds after the
last one: with ``keep_state`` the board feeds only the new turn (docs/protocol.md, FLAG_KEEP_STATE).

Pure: no I/O but reading the checkpoint's config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolchain.errors import CapacityError, InputError

_USER, _REPLY, _NEXT = "\x00user\x00", "\x00reply\x00", "\x00next\x00"


# Bounds on rendering a checkpoint's chat template (its own code): a template of a few turns runs a
# few hundred lines of the compiled template and makes a few hundred characters.
MAX_RENDER_STEPS = 1_000_000  # lines of the compiled template run, loops included
MAX_RENDER_CHARS = 1_000_000  # the text one rendering makes, and the longest string or list it may build
MAX_INT_BITS = 4096  # the largest number ** may make


class _TooMuch(Exception):
    """A rendering went past one of the bounds (the message says which)."""


def _size(x: Any) -> int | None:
    return len(x) if isinstance(x, (str, bytes, list, tuple)) else None


def _bounded_environment() -> Any:
    """jinja2's immutable sandbox, with ``*``, ``**`` and ``+`` checked before they build something huge."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Bounded(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "+"})

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0 \
                    and abs(left) > 1 and right * abs(left).bit_length() > MAX_INT_BITS:
                raise _TooMuch(f"it makes a number too large ({left} ** {right})")
            if operator == "*":
                n, times = (_size(left), right) if _size(left) is not None else (_size(right), left)
                if n is not None and isinstance(times, int) and n * times > MAX_RENDER_CHARS:
                    raise _TooMuch(f"it builds a string or list longer than {MAX_RENDER_CHARS:,}")
            if operator == "+" and _size(left) is not None and _size(right) is not None \
                    and _size(left) + _size(right) > MAX_RENDER_CHARS:  # type: ignore[operator]
                raise _TooMuch(f"it builds a string or list longer than {MAX_RENDER_CHARS:,}")
            return super().call_binop(context, operator, left, right)

    return Bounded(trim_blocks=True, lstrip_blocks=True)


def _render_bounded(tpl: Any, **values: Any) -> str:
    """``tpl`` rendered, stopped (``_TooMuch``) past MAX_RENDER_STEPS lines of its code or MAX_RENDER_CHARS
    characters of text. The steps are counted by a trace function on the template's own frames only,
    in this thread, whatever thread it is; the tracer in place before (a debugger, coverage) comes back."""
    import sys

    steps = 0

    def line(frame: Any, event: str, arg: Any) -> Any:
        nonlocal steps
        if event == "line":
            steps += 1
            if steps > MAX_RENDER_STEPS:
                raise _TooMuch(f"it does not end: more than {MAX_RENDER_STEPS:,} steps")
        return line

    def call(frame: Any, event: str, arg: Any) -> Any:
        return line if frame.f_code.co_filename == "<template>" else None

    out: list[str] = []
    size = 0
    before = sys.gettrace()
    sys.settrace(call)
    try:
        for piece in tpl.generate(**values):
            size += len(piece)
            if size > MAX_RENDER_CHARS:
                raise _TooMuch(f"it makes more than {MAX_RENDER_CHARS:,} characters")
            out.append(piece)
    finally:
        sys.settrace(before)
    return "".join(out)


@dataclass(frozen=True)
class ChatFormat:
    """The text around each turn. Plain text when ``template`` is False: the user's text, then the
    model's continuation."""

    template: bool
    before_first: str = ""  # text before the first user message (BOS, the user header)
    after_user: str = ""  # after a user message: its end and the assistant header
    after_reply: str = ""  # after an assistant message: its end and the next user header
    source: str = "plain text"

    @classmethod
    def from_template(cls, template: str, bos_token: str = "", eos_token: str = "", source: str = "") -> ChatFormat:
        """The pieces of ``template``, found by rendering it around sentinel messages."""
        try:  # a checkpoint's file: rendered in jinja2's sandbox, as transformers does, within bounds
            tpl = _bounded_environment().from_string(template)

            def render(messages: list[dict[str, str]], gen: bool) -> str:
                return _render_bounded(tpl, messages=messages, add_generation_prompt=gen, bos_token=bos_token,
                                       eos_token=eos_token)

            one = render([{"role": "user", "content": _USER}], True)
            two = render([{"role": "user", "content": _USER}, {"role": "assistant", "content": _REPLY},
                          {"role": "user", "content": _NEXT}], True)
        except _TooMuch as exc:
            raise InputError(f"{source or 'the chat template'}: {exc}",
                             hint="a chat template renders the messages it is given, in a few hundred steps") from None
        except RecursionError:
            raise InputError(f"{source or 'the chat template'}: does not render (it calls itself without "
                             "end)") from None
        except MemoryError:
            raise InputError(f"{source or 'the chat template'}: does not render (it ran out of memory)") from None
        except Exception as exc:  # the template is the checkpoint's code: whatever it raises, it does not render
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"{source or 'the chat template'}: does not render ({text[:200]})") from None
        if one.count(_USER) != 1 or two.count(_REPLY) != 1 or two.count(_NEXT) != 1:
            raise InputError(f"{source or 'the chat template'}: does not place each message once")
        before_first, after_user = one.split(_USER)
        after_reply = two.split(_REPLY)[1].split(_NEXT)[0]
        if not two.endswith(after_user) or not two.startswith(before_first):
            raise InputError(f"{source or 'the chat template'}: turns are not rendered the same way each time")
        return cls(True, before_first, after_user, after_reply, source or "chat template")

    @classmethod
    def for_checkpoint(cls, folder: Path | None) -> ChatFormat:
        """The chat template of a checkpoint folder's tokenizer_config.json, else plain text."""
        if folder is None:
            return cls(False)
        path = folder / "tokenizer_config.json"
        if not path.is_file():
            return cls(False)
        try:
            cfg: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{path} is not readable JSON ({exc})") from None
        template = cfg.get("chat_template")
        if not isinstance(template, str) or not template:
            return cls(False)

        def token_text(x: Any) -> str:
            return x.get("content", "") if isinstance(x, dict) else str(x or "")

        return cls.from_template(template, token_text(cfg.get("bos_token")), token_text(cfg.get("eos_token")),
                                 source=f"{path} chat_template")


@dataclass
class Conversation:
    """The ids sent and received so far. ``turn(text)`` gives the next prompt; ``replied(...)``
    records what the board said."""

    fmt: ChatFormat
    tok: Any  # model.tokenizer: encode(text) -> ids
    bos_id: int
    eos_ids: tuple[int, ...]
    max_seq_len: int
    ids: list[int] = field(default_factory=list)
    turns: int = 0

    @classmethod
    def from_manifest(cls, fmt: ChatFormat, tok: Any, manifest: dict[str, Any]) -> Conversation:
        """A new conversation with the program of ``manifest`` (a verified manifest dict)."""
        return cls(fmt, tok, manifest["tokens"]["bos_token_id"], tuple(manifest["tokens"]["eos_token_ids"]),
                   manifest["program"]["max_seq_len"])

    def turn(self, text: str, reply_budget: int) -> list[int]:
        """The prompt for the user's ``text``: the whole conversation and the new turn. Refused
        when it and ``reply_budget`` new tokens do not fit the program."""
        if self.fmt.template:
            head = self.fmt.before_first if not self.ids else self._between()
            new = self.tok.encode(head + text + self.fmt.after_user)
            prompt = (self.ids if self.ids else []) + new
            if not self.ids and not new:
                prompt = [self.bos_id]
        else:
            sep = "" if not self.ids else " "
            prompt = (self.ids or [self.bos_id]) + self.tok.encode(sep + text)
        if len(prompt) + reply_budget > self.max_seq_len:
            raise CapacityError(f"the conversation is {len(prompt)} tokens; with {reply_budget} for the reply it "
                                f"exceeds the program's {self.max_seq_len}", hint="/reset starts a new one")
        return prompt

    def _between(self) -> str:
        """The text between the last reply and the next user message: the reply's end (unless the
        board ended it with EOS, which already is that end, or its first part) and the next user header."""
        end = self.fmt.after_reply
        if self.ids and self.ids[-1] in self.eos_ids:
            for cut in range(len(end), 0, -1):  # the longest start of the end text that is the EOS token
                if self.tok.encode(end[:cut]) == [self.ids[-1]]:
                    return end[cut:]
        return end

    def replied(self, prompt: list[int], reply: list[int]) -> None:
        self.ids = list(prompt) + list(reply)
        self.turns += 1

    def reset(self) -> None:
        self.ids = []
        self.turns = 0
