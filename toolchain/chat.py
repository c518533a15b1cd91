"""A conversation as the token ids a board is sent: the checkpoint's chat template, read and
rendered as transformers reads and renders it, or plain text for a model without one (the presets).

The template comes from the checkpoint folder's ``chat_template.jinja`` first (with any
``additional_chat_templates/*.jinja``), then ``tokenizer_config.json``'s ``chat_template`` (a string,
or the list of named templates); it is rendered in jinja2's immutable sandbox with what transformers
gives it (its ``tojson``, ``raise_exception``, ``strftime_now``, the ``generation`` tag, loop
controls, the special tokens), so that a prompt's ids are ``apply_chat_template``'s for the same
messages: a system message, a tool list, tool responses included.

The conversation is kept as messages, the board's replies exactly as the ids it sent (never
re-tokenized from their text): each turn renders the whole conversation, the replies' ids spliced in
where the template puts their text, so each turn's prompt starts with everything the board's state
holds after the last one, and with ``keep_state`` the board feeds only the new turn (docs/protocol.md,
FLAG_KEEP_STATE).

Pure: no I/O but reading the checkpoint's files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from toolchain.errors import CapacityError, InputError

# Stand-ins for messages while a template is taken apart: letters only, so that a template that
# escapes its messages (tojson) leaves them as they are.
_USER, _REPLY, _NEXT = "EdgelmSentinelUser7f3", "EdgelmSentinelReply7f3", "EdgelmSentinelNext7f3"
TEMPLATE_FILE = "chat_template.jinja"  # how current Hugging Face folders ship the template
TEMPLATES_DIR = "additional_chat_templates"  # more named templates, one NAME.jinja each
# The special tokens transformers hands a template (tokenizer.special_tokens_map).
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


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

    env = Bounded(trim_blocks=True, lstrip_blocks=True, extensions=[_generation_tag(), "jinja2.ext.loopcontrols"])
    _as_transformers_does(env)
    return env


def _generation_tag() -> Any:
    """``{% generation %}...{% endgeneration %}``: transformers marks the assistant's text with it (for
    its training masks); rendering, it is its body."""
    import jinja2.nodes
    from jinja2.ext import Extension

    class Generation(Extension):
        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return caller()

    return Generation


def _as_transformers_does(env: Any) -> None:
    """The filters and globals transformers gives a chat template (utils/chat_template_utils.py):
    a ``tojson`` that escapes nothing and keeps the keys' order, ``raise_exception``, ``strftime_now``,
    and ``dict``/``namespace`` that refuse underscore names."""
    from datetime import datetime

    import jinja2
    from jinja2.exceptions import SecurityError, TemplateError

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    class TemplateDict:
        def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
            return dict(*args, **kwargs)

        def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
            return dict.fromkeys(*args, **kwargs)

    def check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise SecurityError(f"a chat template cannot store {name!r} on a namespace")

    class TemplateNamespace(jinja2.utils.Namespace):
        def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 (jinja's Namespace signature)
            self, rest = args[0], args[1:]
            for name in dict(*rest, **kwargs):
                check_name(name)
            jinja2.utils.Namespace.__init__(self, *rest, **kwargs)

        def __setitem__(self, name: str, value: Any) -> None:
            check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now, dict=TemplateDict(),
                       namespace=TemplateNamespace)


@lru_cache(maxsize=16)
def _compiled(template: str) -> Any:
    return _bounded_environment().from_string(template)


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


Message = dict[str, Any]


@dataclass(frozen=True)
class ChatFormat:
    """A checkpoint's chat template, or plain text (``template`` False: the user's text, then the
    model's continuation). ``line`` says which, in one line (the console's first)."""

    template: bool
    before_first: str = ""  # text before the first user message (BOS, the user header)
    after_user: str = ""  # after a user message: its end and the assistant header
    after_reply: str = ""  # after an assistant message: its end and the next user header
    source: str = "plain text"  # where the template comes from (a file), or "plain text"
    text: str = ""  # the template (jinja): the default one
    tool_text: str = ""  # the folder's template named "tool_use", used when there are tools (as transformers)
    special_tokens: tuple[tuple[str, str], ...] = ()  # bos_token, eos_token, ...: what the template sees
    why_plain: str = ""  # plain text: why (the folder has no template, a preset)

    @property
    def line(self) -> str:
        """``chat template: <file>`` or ``no chat template: plain text (<why>)``."""
        if self.template:
            return f"chat template: {self.source}"
        return "no chat template: plain text" + (f" ({self.why_plain})" if self.why_plain else "")

    @classmethod
    def plain(cls, why: str = "") -> ChatFormat:
        return cls(False, why_plain=why)

    @classmethod
    def from_template(cls, template: str, bos_token: str = "", eos_token: str = "", source: str = "",
                      special_tokens: dict[str, str] | None = None, tool_template: str = "") -> ChatFormat:
        """``template`` checked (it renders, places each message once and renders turns alike), with the
        text around a user message and a reply found by rendering it around sentinel messages."""
        tokens = dict(special_tokens or {})
        tokens.setdefault("bos_token", bos_token)
        tokens.setdefault("eos_token", eos_token)
        fmt = cls(True, source=source or "chat template", text=template, tool_text=tool_template,
                  special_tokens=tuple(sorted(tokens.items())))
        one = fmt.render([{"role": "user", "content": _USER}], add_generation_prompt=True)
        two = fmt.render([{"role": "user", "content": _USER}, {"role": "assistant", "content": _REPLY},
                          {"role": "user", "content": _NEXT}], add_generation_prompt=True)
        if one.count(_USER) != 1 or two.count(_REPLY) != 1 or two.count(_NEXT) != 1:
            raise InputError(f"{fmt.source}: does not place each message once")
        before_first, after_user = one.split(_USER)
        after_reply = two.split(_REPLY)[1].split(_NEXT)[0]
        if not two.endswith(after_user) or not two.startswith(before_first):
            raise InputError(f"{fmt.source}: turns are not rendered the same way each time")
        return cls(True, before_first, after_user, after_reply, fmt.source, template, tool_template,
                   fmt.special_tokens)

    def render(self, messages: list[Message], tools: list[Any] | None = None,
               add_generation_prompt: bool = True) -> str:
        """The template's text for ``messages`` (and ``tools``), as ``apply_chat_template(...,
        tokenize=False)`` renders it; a template that fails or runs away is one InputError line."""
        text = self.tool_text if tools is not None and self.tool_text else self.text
        where = self.source or "the chat template"
        try:  # a checkpoint's file: rendered in jinja2's sandbox, as transformers does, within bounds
            return _render_bounded(_compiled(text), messages=messages, tools=tools, documents=None,
                                   add_generation_prompt=add_generation_prompt, **dict(self.special_tokens))
        except _TooMuch as exc:
            raise InputError(f"{where}: {exc}",
                             hint="a chat template renders the messages it is given, in a few hundred steps") from None
        except RecursionError:
            raise InputError(f"{where}: does not render (it calls itself without end)") from None
        except MemoryError:
            raise InputError(f"{where}: does not render (it ran out of memory)") from None
        except Exception as exc:  # the template is the checkpoint's code: whatever it raises, it does not render
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"{where}: does not render ({why[:200]})") from None

    @classmethod
    def for_checkpoint(cls, folder: Path | None) -> ChatFormat:
        """The chat template of a checkpoint folder as transformers finds it: ``chat_template.jinja``
        (and ``additional_chat_templates/``), else ``tokenizer_config.json``'s ``chat_template`` (a string,
        or a list of ``{"name", "template"}``: the one named ``default``); else plain text."""
        if folder is None:
            return cls.plain("a preset has none")
        cfg = _read_config(folder / "tokenizer_config.json")
        tokens = _special_tokens(folder, cfg)
        templates: dict[str, tuple[str, str]] = {}  # name -> (template, where it comes from)
        jinja = folder / TEMPLATE_FILE
        if jinja.is_file():
            templates["default"] = (_read_text(jinja), str(jinja))
        extra = folder / TEMPLATES_DIR
        if extra.is_dir():
            for f in sorted(extra.glob("*.jinja")):
                templates[f.name.removesuffix(".jinja")] = (_read_text(f), str(f))
        cfg_path = folder / "tokenizer_config.json"
        if not templates:
            named = cfg.get("chat_template")
            if isinstance(named, str) and named:
                templates["default"] = (named, f"{cfg_path} chat_template")
            elif isinstance(named, list):
                for item in named:
                    if not (isinstance(item, dict) and isinstance(item.get("name"), str)
                            and isinstance(item.get("template"), str)):
                        raise InputError(f"{cfg_path} chat_template: a list entry is not "
                                         '{"name": ..., "template": ...}')
                    templates[item["name"]] = (item["template"], f"{cfg_path} chat_template {item['name']!r}")
        if not templates:
            return cls.plain(f"{folder} has no {TEMPLATE_FILE} and no chat_template in tokenizer_config.json")
        if "default" not in templates:
            raise InputError(f"{folder}: its chat templates ({', '.join(sorted(templates))}) name none 'default'",
                             hint="transformers needs one named 'default' too")
        template, source = templates["default"]
        tool = templates.get("tool_use", ("", ""))[0]
        return cls.from_template(template, source=source, special_tokens=tokens, tool_template=tool)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not readable UTF-8 text ({exc})") from None


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not readable JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise InputError(f"{path} is not a JSON object")
    return cfg


def _special_tokens(folder: Path, cfg: dict[str, Any]) -> dict[str, str]:
    """The special tokens a template sees by name (bos_token, eos_token, ...): special_tokens_map.json,
    then tokenizer_config.json's over it."""
    def text(x: Any) -> str | None:
        x = x.get("content") if isinstance(x, dict) else x
        return x if isinstance(x, str) else None

    out: dict[str, str] = {}
    for source in (_read_config(folder / "special_tokens_map.json"), cfg):
        for name in SPECIAL_TOKEN_NAMES:
            value = text(source.get(name))
            if value is not None:
                out[name] = value
    return out


_SPLICE = "EdgelmSentinelIds7f3n{}x"  # where a reply's ids go in the rendered text


@dataclass
class Conversation:
    """The messages so far, the board's replies as its ids. ``turn(text)`` gives the next prompt;
    ``replied(...)`` records what the board said. ``system``: the system message (None: none),
    ``tools``: the tool list the template is given (JSON schemas); both may change between turns."""

    fmt: ChatFormat
    tok: Any  # model.tokenizer: encode(text) -> ids
    bos_id: int
    eos_ids: tuple[int, ...]
    max_seq_len: int
    ids: list[int] = field(default_factory=list)  # the last prompt and its reply: what the board holds
    turns: int = 0
    system: str | None = None
    tools: list[Any] | None = None
    messages: list[Message] = field(default_factory=list)  # user/tool messages and replies (content: ids)
    _pending: Message | None = field(default=None, init=False, repr=False)  # the message turn() sent

    @classmethod
    def from_manifest(cls, fmt: ChatFormat, tok: Any, manifest: dict[str, Any]) -> Conversation:
        """A new conversation with the program of ``manifest`` (a verified manifest dict)."""
        return cls(fmt, tok, manifest["tokens"]["bos_token_id"], tuple(manifest["tokens"]["eos_token_ids"]),
                   manifest["program"]["max_seq_len"])

    def turn(self, text: Any, reply_budget: int, role: str = "user") -> list[int]:
        """The prompt for the user's ``text`` (or, ``role="tool"``, a tool's response): the whole
        conversation and the new message. Refused when it and ``reply_budget`` new tokens do not fit the
        program."""
        message = {"role": role, "content": text}
        prompt = self.prompt_for([*self.messages, message])
        if len(prompt) + reply_budget > self.max_seq_len:
            raise CapacityError(f"the conversation is {len(prompt)} tokens; with {reply_budget} for the reply it "
                                f"exceeds the program's {self.max_seq_len}", hint="/reset starts a new one")
        self._pending = message
        return prompt

    def prompt_for(self, messages: list[Message]) -> list[int]:
        """The ids of ``messages`` (the system message first, if any) and the generation prompt."""
        if not self.fmt.template:
            return self._plain(messages)
        shown: list[Message] = [{"role": "system", "content": self.system}] if self.system is not None else []
        replies: list[list[int]] = []
        for m in messages:
            if m["role"] == "assistant" and isinstance(m["content"], list):
                shown.append({"role": "assistant", "content": _SPLICE.format(len(replies))})
                replies.append(m["content"])
            else:
                shown.append(m)
        text = self.fmt.render(shown, tools=self.tools, add_generation_prompt=True)
        prompt: list[int] = []
        for i, reply in enumerate(replies):
            mark = _SPLICE.format(i)
            if text.count(mark) != 1:
                raise InputError(f"{self.fmt.source}: does not place each message once")
            before, text = text.split(mark)
            prompt += self._after_reply(prompt, before) + reply
        prompt += self._after_reply(prompt, text)
        return prompt or [self.bos_id]

    def _after_reply(self, prompt: list[int], text: str) -> list[int]:
        """``text``'s ids; after a reply the board ended with EOS, less that EOS where the template's
        text starts with it (the board's EOS already is the end of its turn)."""
        ids = self.tok.encode(text)
        if prompt and prompt[-1] in self.eos_ids and ids[:1] == [prompt[-1]]:
            return ids[1:]
        return ids

    def _plain(self, messages: list[Message]) -> list[int]:
        """Plain text: BOS, the system message and a blank line, then each message's text (a space
        between one and the reply before it), the replies' ids as they are."""
        prompt = [self.bos_id]
        head = f"{self.system}\n\n" if self.system else ""
        for m in messages:
            if m["role"] == "assistant" and isinstance(m["content"], list):
                prompt += m["content"]
                continue
            content = m["content"] if isinstance(m["content"], str) else json.dumps(m["content"], ensure_ascii=False)
            prompt += self.tok.encode((head or (" " if len(prompt) > 1 else "")) + content)
            head = ""
        return prompt

    def replied(self, prompt: list[int], reply: list[int]) -> None:
        if self._pending is not None:
            self.messages += [self._pending, {"role": "assistant", "content": list(reply)}]
            self._pending = None
        self.ids = list(prompt) + list(reply)
        self.turns += 1

    def reset(self) -> None:
        self.ids = []
        self.turns = 0
        self.messages = []
        self._pending = None
