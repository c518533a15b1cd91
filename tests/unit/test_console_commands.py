"""The console's loop without a board (a stand-in chat that records the prompts it is given): \"\"\"
messages, /set checked by the same check as `edgelm run` (refused in one line, nothing changed),
/system re-rendering the conversation, /help; and the history file's place. The terminal itself
(readline's keys, the history across sessions) is tests/integration/test_console_terminal.py."""

from contextlib import contextmanager
from types import SimpleNamespace

import pytest

from toolchain import console as console_mod
from toolchain.chat import ChatFormat, Conversation
from toolchain.console import Options, Totals, Turn
from toolchain.model.tokenizer import ByteTokenizer


class StandIn:
    """What console.run uses of a Chat: a real conversation (plain text, byte tokens), no board."""

    def __init__(self, opts):
        self.opts, self.totals, self.prompts, self.settings = opts, Totals(), [], []
        self.conv = Conversation(ChatFormat.plain("a preset has none"), ByteTokenizer(), 1, (2,), 512)

    def say(self, text, on_text):
        prompt = self.conv.turn(text, self.opts.tokens)
        self.prompts.append(bytes(t - 3 for t in prompt[1:]).decode())  # the prompt's text, BOS left out
        self.settings.append({k: getattr(self.opts, k) for k in console_mod.SETTINGS})
        reply = [ord(c) + 3 for c in "ok"]
        self.conv.replied(prompt, reply)
        stats = SimpleNamespace(kept=0, ttft_ms=1.0, decode_tok_s=10.0, stop=1)
        return Turn(len(prompt), reply, "ok", stats, "PASS")


def chat_through(monkeypatch, lines, **options):
    """console.run over ``lines`` typed: (the stand-in chat, the status lines)."""
    opts = Options(board="host", model="tiny", **options)
    made = []

    @contextmanager
    def open_chat(o, progress):
        made.append(StandIn(o))
        yield made[0]

    monkeypatch.setattr(console_mod, "open_chat", open_chat)
    typed, shown = iter(lines), []

    def read(prompt):
        try:
            return next(typed)
        except StopIteration:
            raise EOFError from None

    failed = console_mod.run(opts, read=read, write=lambda s: None, status=shown.append, progress=lambda *a: None)
    assert failed == 0
    return made[0], shown


def test_a_message_over_several_lines(monkeypatch):
    chat, _ = chat_through(monkeypatch, ['"""first line', "  second, indented", 'last"""', '"""one line"""'])
    assert chat.prompts == ["first line\n  second, indented\nlast", "first line\n  second, indented\nlastok one line"]


def test_set_takes_a_value_run_would_take_and_refuses_one_it_would_not(monkeypatch):
    chat, shown = chat_through(monkeypatch, ["/set top_k -1", "/set top_p 0", "/set temperature nan",
                                             "/set tokens many", "/set colour 3", "hi", "/set top_k 40",
                                             "/set temperature 0.7", "/set tokens 9", "/set seed 5", "again", "/set"])
    assert shown[2:7] == [
        "error: /set refused: top_k -1 must be 0 (all) or a positive count; top_k stays 0",
        "error: /set refused: top_p 0.0 must be in (0, 1]; top_p stays 1.0",
        "error: /set refused: temperature nan must be a finite number; temperature stays 0.0",
        "error: /set tokens many: not a whole number; tokens stays 64",
        "usage: /set NAME VALUE, NAME one of temperature, top_k, top_p, tokens, seed (now: temperature 0.0, top_k 0, "
        "top_p 1.0, tokens 64, seed 0)"]
    assert chat.settings == [{"temperature": 0.0, "top_k": 0, "top_p": 1.0, "tokens": 64, "seed": 0},
                             {"temperature": 0.7, "top_k": 40, "top_p": 1.0, "tokens": 9, "seed": 5}]
    assert shown[-1] == "sampling: temperature 0.7, top_k 40, top_p 1.0, tokens 9, seed 5"


def test_system_starts_a_new_conversation_with_it(monkeypatch):
    chat, shown = chat_through(monkeypatch, ["hi", "/system You are terse.", "hi", "/system", "/reset", "hi",
                                             '/system """Two', 'lines."""', "hi", "/system -", "hi"],
                               system="Be kind.")
    assert chat.prompts == ["Be kind.\n\nhi", "You are terse.\n\nhi", "You are terse.\n\nhi", "Two\nlines.\n\nhi",
                            "hi"]
    assert "system message: 'You are terse.'" in shown and "(no system message; a new conversation)" in shown


def test_help_lists_every_command(monkeypatch):
    _, shown = chat_through(monkeypatch, ["/help", "/bogus"])
    listed = " ".join(shown)
    for command in ("/help", "/reset", "/system", "/set", "/stats", "/quit", '"""'):
        assert command in listed
    assert shown[-1] == f"unknown command '/bogus': {console_mod.HELP}"


@pytest.mark.parametrize("state, where", [("/x/state", "/x/state/edgelm/console_history"),
                                          ("", "HOME/.local/state/edgelm/console_history"),
                                          ("relative", "HOME/.local/state/edgelm/console_history")])
def test_the_history_lives_in_the_state_folder(monkeypatch, tmp_path, state, where):
    monkeypatch.setenv("XDG_STATE_HOME", state)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert str(console_mod.default_history()) == where.replace("HOME", str(tmp_path))
