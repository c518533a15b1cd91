"""`edgelm console`: a chat with a board over its link.

Each line typed is a turn: the whole conversation (kept as the ids sent and received, see
``toolchain.chat``) goes to the board with FLAG_KEEP_STATE, so a board that still holds the last
turn feeds only the new one. Tokens print as they arrive; a status line gives the reply's tokens,
decode tokens/s, time to first token, the prompt tokens the board kept, and the verdict of the
reply against the host reference. Ctrl-C during a reply sends CANCEL (the board stops at the next
token and ends with STATS); at the prompt it only says how to leave. ``/reset``, ``/stats``,
``/quit`` (or end of input) do what they say.

As llama.cpp's conversation mode and ollama do: on a terminal the line is edited with GNU readline
(arrows, Ctrl-A/E, Ctrl-R) and the lines typed are kept in a history file across sessions
(``LineReader``); a message between ``\"\"\"`` and ``\"\"\"`` spans lines; ``--system`` and ``/system``
give the system message (a new conversation: the template renders it first); ``/set temperature|
top_k|top_p|tokens|seed VALUE`` changes the sampling from the next reply, checked as `edgelm run`
checks its options (a value out of range is refused in one line and nothing changes).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from toolchain.errors import EdgelmError, UsageError

HELP = "/help lists the commands, /quit (or Ctrl-D) leaves"
COMMANDS = (
    ("/help", "this list"),
    ("/reset", "start a new conversation (the system message stays)"),
    ("/system TEXT", "set the system message and start a new conversation; /system alone shows it, "
                     "/system - drops it"),
    ("/set NAME VALUE", "change temperature, top_k, top_p, tokens or seed from the next reply; /set alone "
                        "shows them"),
    ("/stats", "the figures so far"),
    ("/quit", "leave (or Ctrl-D)"),
    ('"""', 'a message over several lines, up to a line that ends with """'),
)
SETTINGS = {"temperature": float, "top_k": int, "top_p": float, "tokens": int, "seed": int}  # what /set changes
MULTILINE = '"""'


@dataclass
class Options:
    board: str
    model: str
    target: str | None = None
    quant: str | None = None
    max_seq_len: int = 512
    tokens: int = 64  # most new tokens per reply
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    threads: int | None = None
    keep_state: bool = True
    ignore_eos: bool = False  # every reply runs to ``tokens`` (measurements)
    validate: bool = True
    workdir: Path = Path("out")
    target_options: Any = None
    attach: bool = False  # talk to the release `edgelm flash` left serving (no bring-up)
    pte: Path | None = None  # the program it serves (attach: for the tokenizer's sizes and validation)
    show_special: bool = False  # the replies' text shows special tokens (tokenizers' decode with them)
    system: str | None = None  # the system message (--system, /system)
    sign_key: Path | None = None  # sign the bundle with this ed25519 private key (a board that trusts keys)
    security_counter: int | None = None  # with sign_key: the bundle's security counter

    def check(self) -> None:
        """The options in range, checked as `edgelm run` checks them (one line naming the option)."""
        from toolchain import api

        api.RunRequest(board=self.board, model=self.model, prompt="", tokens=self.tokens,
                       max_seq_len=self.max_seq_len, temperature=self.temperature, top_k=self.top_k,
                       top_p=self.top_p, seed=self.seed, threads=self.threads).check()


@dataclass
class Turn:
    prompt_tokens: int
    reply: list[int]
    text: str
    stats: Any  # protocol.Stats
    verdict: str | None  # PASS / FAIL, or None when not validated
    reason: str = ""
    cancelled: bool = False


@dataclass
class Totals:
    turns: list[Turn] = field(default_factory=list)

    def lines(self, conv: Any) -> list[str]:
        out = [f"conversation: {len(conv.ids)} of {conv.max_seq_len} tokens, {conv.turns} turn(s) "
               f"({conv.fmt.source})"]
        if self.turns:
            t = self.turns[-1]
            s = t.stats
            out.append(f"last reply: {len(t.reply)} tokens, prompt {t.prompt_tokens} ({s.kept or 0} kept), "
                       f"TTFT {s.ttft_ms:.1f} ms, prefill {s.prefill_tok_s:.1f} tok/s, decode {s.decode_tok_s:.1f} "
                       f"tok/s, {s.decode_calls} calls, {s.accepted or 0} of {s.drafted or 0} draft tokens accepted, "
                       f"peak RSS {s.peak_rss_kb / 1024:.1f} MiB")
            judged = [x for x in self.turns if x.verdict is not None]
            out.append(f"session: {sum(len(x.reply) for x in self.turns)} tokens in {len(self.turns)} replies, "
                       f"{sum(x.verdict == 'PASS' for x in judged)} of {len(judged)} validated"
                       + (f", {sum(x.cancelled for x in self.turns)} cancelled" if any(x.cancelled
                                                                                    for x in self.turns) else ""))
        return out


@contextmanager
def ctrl_c_cancels() -> Iterator[Callable[[], bool]]:
    """While inside: Ctrl-C (SIGINT) does not raise; the callable says whether it was pressed."""
    pressed = [False]

    def handler(signum: int, frame: Any) -> None:
        pressed[0] = True

    old = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: pressed[0]
    finally:
        signal.signal(signal.SIGINT, old)


@dataclass
class _SessionOnly:
    """What serve_and_validate uses of a BoardUp: its session (an attached board has no BoardUp)."""

    session: Any


class Chat:
    """One conversation on a board that is up: ``say(text)`` runs a turn."""

    def __init__(self, session: Any, conv: Any, judge: Any, opts: Options):
        """``judge``: a ``validate.judge.Judge`` that follows the whole conversation (None: not validated)."""
        self.session, self.conv = session, conv  # the tokenizer and the EOS ids are the conversation's
        self.judge, self.opts = judge, opts
        self.totals = Totals()

    def say(self, text: str, on_text: Callable[[str], None]) -> Turn:
        from toolchain import api
        from toolchain.link import protocol
        from toolchain.model.tokenizer import TextAssembler

        o = self.opts
        prompt = self.conv.turn(text, o.tokens)
        request = protocol.Request(prompt=tuple(prompt), max_new_tokens=o.tokens, temperature=o.temperature,
                                   top_k=o.top_k, top_p=o.top_p, seed=o.seed, stop=self.conv.eos_ids,
                                   report_logits=self.judge is not None, keep_state=o.keep_state,
                                   ignore_eos=o.ignore_eos)
        assembler = TextAssembler(self.conv.tok, o.show_special)  # prints what tokenizers decodes
        with ctrl_c_cancels() as pressed:
            served = api.serve_and_validate(_SessionOnly(self.session), request, self.judge,
                                            on_token=lambda t: on_text(assembler.push(t)), cancel=pressed)
        on_text(assembler.finish())
        stats = served.collected.stats
        reply = list(served.collected.tokens)
        self.conv.replied(prompt, reply)
        verdict = served.verdict
        turn = Turn(len(prompt), reply, assembler.text, stats, verdict.verdict if verdict else None,
                    verdict.reason if verdict else "", cancelled=stats.stop == protocol.STOP_CANCELLED)
        self.totals.turns.append(turn)
        return turn


def status_line(turn: Turn) -> str:
    s = turn.stats
    parts = [f"{len(turn.reply)} tokens", f"{s.decode_tok_s:.1f} tok/s", f"TTFT {s.ttft_ms:.0f} ms",
             f"{s.kept or 0}/{turn.prompt_tokens} prompt tokens kept"]
    if turn.cancelled:
        parts.append("cancelled")
    parts.append(turn.verdict or "not validated")
    if turn.verdict == "FAIL":
        parts.append(turn.reason)
    return " · ".join(parts)


@contextmanager
def open_chat(opts: Options, progress: Callable[[str, str], None]) -> Iterator[Chat]:
    """Bring the board up (or attach to the release serving) and yield the chat on it."""
    from toolchain import api
    from toolchain.chat import ChatFormat, Conversation
    from toolchain.deploy import bringup
    from toolchain.model import checkpoint

    folder = None if checkpoint.is_preset(opts.model) else checkpoint.folder_of(opts.model)
    fmt = ChatFormat.for_checkpoint(folder)
    if opts.attach:
        yield from _attached(opts, fmt, progress)
        return
    req = api.RunRequest(board=opts.board, model=opts.model, prompt="", tokens=1, quant=opts.quant,
                         target=opts.target, max_seq_len=opts.max_seq_len, threads=opts.threads, workdir=opts.workdir,
                         target_options=opts.target_options, fidelity=False, pte=opts.pte, sign_key=opts.sign_key,
                         security_counter=opts.security_counter)
    prep = api.prepare_run(req, progress)
    man = prep.exported.manifest
    conv = Conversation.from_manifest(fmt, prep.tok, man)
    try:
        with bringup.bring_up(prep.target, prep.bundle, threads=opts.threads, progress=progress) as up:
            yield Chat(up.session, conv, prep.judge if opts.validate else None, opts)
    finally:
        prep.close()


def _attached(opts: Options, fmt: Any, progress: Callable[[str, str], None]) -> Iterator[Chat]:
    from toolchain import api, boards
    from toolchain.chat import Conversation
    from toolchain.export import manifest as manifest_mod
    from toolchain.link import ports
    from toolchain.link.session import BoardSession
    from toolchain.model import tokenizer
    from toolchain.validate import compare
    from toolchain.validate.judge import Judge
    from toolchain.validate.reference import ProgramRunner

    if opts.pte is None:
        raise UsageError("--attach needs --pte, the program the board serves (its sizes, its tokens and the "
                         "host reference come from it)")
    man = manifest_mod.read(opts.pte)
    port = opts.target_options.port if opts.target_options is not None else None
    if port is None:
        tgt = api.target_for(opts.board, opts.target, opts.workdir, opts.target_options)
        info = tgt.runner.running() if tgt.runner is not None else None
        if not info:
            raise UsageError(f"no runner is serving on {tgt.where}", hint="start one with `edgelm flash`, or give "
                                                                         "--port")
        port = str(info["port"])
    tok_path = api.tokenizer_path(api.RunRequest(board=opts.board, model=opts.model, prompt=""))
    tok = tokenizer.for_model(tok_path, man["model"]["config"]["vocab_size"])
    conv = Conversation.from_manifest(fmt, tok, man)
    progress("link", f"attaching to {port}")
    open_link = ports.opener(port, boards.get(opts.board).baud)
    transport = open_link()
    try:
        session = BoardSession(transport, reopen=open_link)
        session._rx_seq = None  # the board has been counting since its HELLO: take its numbering as it comes
        # No bundle of ours and no HELLO here: no twin, the host reference judges (the board's near-tie gap).
        tolerance = compare.default_tolerance(man["quantization"]["linear"])
        judge = Judge(reference=ProgramRunner(opts.pte), tolerance=tolerance,
                      near_tie=boards.get(opts.board).near_tie) if opts.validate else None
        yield Chat(session, conv, judge, opts)
    finally:
        transport.close()


def default_history() -> Path:
    """Where the lines typed are kept: ``$XDG_STATE_HOME/edgelm/console_history`` (``~/.local/state``
    when XDG_STATE_HOME is not set), as the XDG base directories say for history."""
    state = os.environ.get("XDG_STATE_HOME") or ""
    return (Path(state) if os.path.isabs(state) else Path.home() / ".local" / "state") / "edgelm" / "console_history"


class LineReader:
    """``reader(prompt)``: the next line typed. On a terminal (``terminal``), GNU readline edits it
    (arrows, Home/End, Ctrl-A/E/K/W, Ctrl-R searches) and the up arrow recalls the lines of this and
    earlier sessions: ``history`` is read on entry and written back on exit (None: this session only),
    the last ``HISTORY_LINES`` of it, private to its owner (0600). Tab completes the commands. Off a
    terminal (a pipe, a file): lines as they come, no history."""

    HISTORY_LINES = 1000

    def __init__(self, history: Path | None, *, terminal: bool, warn: Callable[[str], None] = lambda s: None):
        self.history, self.terminal, self.warn = history, terminal, warn
        self._readline: Any = None

    def __enter__(self) -> LineReader:
        if not self.terminal:
            return self
        try:
            import readline
        except ImportError:  # a Python built without it: lines as they come
            return self
        self._readline = readline
        readline.clear_history()
        readline.set_history_length(self.HISTORY_LINES)
        if self.history is not None and self.history.is_file():
            try:
                readline.read_history_file(str(self.history))
            except OSError as exc:
                self.warn(f"the console history {self.history} is not readable ({exc.strerror or exc}): "
                          "this session's lines only")
        words = sorted({c.split()[0] for c, _ in COMMANDS if c.startswith("/")} | {f"/set {k}" for k in SETTINGS})

        def complete(text: str, state: int) -> str | None:
            line = readline.get_line_buffer()
            found = [w[len(line) - len(text):] + " " for w in words if w.startswith(line) and line.startswith("/")]
            return found[state] if state < len(found) else None

        readline.set_completer_delims(" \t")
        readline.set_completer(complete)
        readline.parse_and_bind("tab: complete")
        return self

    def __exit__(self, *exc: object) -> None:
        readline, self._readline = self._readline, None
        if readline is None:
            return
        readline.set_completer(None)
        if self.history is None:
            return
        try:
            self.history.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.history, os.O_WRONLY | os.O_CREAT, 0o600))  # private: it holds the chats
            readline.write_history_file(str(self.history))
        except OSError as exc:
            self.warn(f"the console history was not kept: {self.history}: {exc.strerror or exc}")

    def __call__(self, prompt: str) -> str:
        return input(prompt)


def _message(first: str, read: Callable[[str], str]) -> str:
    """The message that starts with the line ``first``: itself, or, opened by \"\"\", the lines up to the
    one that ends with \"\"\" (the quotes left out, the lines kept as typed). End of input ends it."""
    body = first.lstrip()[len(MULTILINE):]
    if body.rstrip().endswith(MULTILINE):
        return body.rstrip()[:-len(MULTILINE)]
    lines = [body]
    while True:
        try:
            line = read("... ")
        except EOFError:
            break
        if line.rstrip().endswith(MULTILINE):
            lines.append(line.rstrip()[:-len(MULTILINE)])
            break
        lines.append(line)
    return "\n".join(lines)


def _set(opts: Options, words: list[str], status: Callable[[str], None]) -> None:
    """``/set NAME VALUE``: the option changed if `edgelm run` would take it (RunRequest.check), else one
    line saying why and nothing changed; ``/set`` alone: the values now."""
    now = ", ".join(f"{name} {getattr(opts, name)}" for name in SETTINGS)
    if not words:
        status(f"sampling: {now}")
        return
    if len(words) != 2 or words[0] not in SETTINGS:
        status(f"usage: /set NAME VALUE, NAME one of {', '.join(SETTINGS)} (now: {now})")
        return
    name, text = words
    kind = SETTINGS[name]
    try:
        value = kind(text)
    except ValueError:
        status(f"error: /set {name} {text}: not {'a whole number' if kind is int else 'a number'}; {name} stays "
               f"{getattr(opts, name)}")
        return
    try:
        replace(opts, **{name: value}).check()  # the one check `edgelm run` makes of its options
    except UsageError as exc:
        why = str(exc).replace(f"--{name.replace('_', '-')} ", f"{name} ", 1)
        status(f"error: /set refused: {why}; {name} stays {getattr(opts, name)}")
        return
    setattr(opts, name, value)
    status(f"({name} {value} from the next reply)")


def _system(chat: Chat, text: str, status: Callable[[str], None]) -> None:
    """``/system TEXT``: the system message, and a new conversation that starts with it; ``/system``
    alone shows it; ``/system -`` drops it."""
    conv = chat.conv
    if not text:
        status(f"system message: {conv.system!r}" if conv.system is not None else "(no system message)")
        return
    conv.system = None if text == "-" else text
    chat.opts.system = conv.system
    conv.reset()
    status("(no system message; a new conversation)" if conv.system is None else
           "(system message set; a new conversation)")


def run(opts: Options, *, read: Callable[[str], str], write: Callable[[str], None],
        status: Callable[[str], None], progress: Callable[[str, str], None], as_json: bool = False) -> int:
    """The interactive loop. ``read(prompt)`` returns a line (EOFError ends; KeyboardInterrupt at the
    prompt only reminds how to leave). Returns the number of replies that did not validate."""
    from toolchain.link.session import LinkError

    opts.check()  # before any bring-up
    failed = 0
    with open_chat(opts, progress) as chat:
        chat.conv.system = opts.system
        progress("chat", f"{chat.conv.fmt.line}, {chat.conv.max_seq_len} tokens of room")
        if not as_json:
            status(chat.conv.fmt.line)  # the first line: the template the turns go through, or plain text
            status(f"connected: {opts.model} on {opts.board}; {HELP}; Ctrl-C stops a reply")
        while True:
            try:
                line = read("you> ")
                if line.lstrip().startswith(MULTILINE) or line.lstrip().startswith(f"/system {MULTILINE}"):
                    system = line.lstrip().startswith("/system")
                    body = _message(line.lstrip().removeprefix("/system").lstrip(), read)
                    line = f"/system {body.strip()}" if system else body
            except EOFError:
                break
            except KeyboardInterrupt:
                status(f"(Ctrl-C stops a reply; {HELP})")
                continue
            text = line.strip()
            if not text:
                continue
            if text.startswith("/"):
                command, _, rest = text.partition(" ")
                if command == "/quit":
                    break
                if command == "/reset":
                    chat.conv.reset()
                    status("(a new conversation)")
                elif command == "/stats":
                    for s in chat.totals.lines(chat.conv):
                        status(s)
                elif command == "/help":
                    for name, what in COMMANDS:
                        status(f"{name:<16} {what}")
                elif command == "/system":
                    _system(chat, rest.strip(), status)
                elif command == "/set":
                    _set(opts, rest.split(), status)
                else:
                    status(f"unknown command {command!r}: {HELP}")
                continue
            try:
                turn = chat.say(text, (lambda s: None) if as_json else write)
            except EdgelmError as exc:
                if isinstance(exc, LinkError):  # the board is gone: the session ends
                    raise
                status(f"error: {exc}" + (f" ({exc.hint})" if exc.hint else ""))
                continue
            failed += turn.verdict == "FAIL"
            if as_json:
                write(json.dumps({"prompt": text, "reply": turn.text, "reply_token_ids": turn.reply,
                                  "prompt_tokens": turn.prompt_tokens, "kept": turn.stats.kept,
                                  "cancelled": turn.cancelled, "verdict": turn.verdict, "reason": turn.reason,
                                  "ttft_ms": turn.stats.ttft_ms, "decode_tok_s": turn.stats.decode_tok_s}) + "\n")
            else:
                write("\n")
                status(status_line(turn))
    return failed
