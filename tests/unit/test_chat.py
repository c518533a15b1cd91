"""A conversation as token ids: the checkpoint's chat template taken apart, each turn's prompt
extending the last one exactly (so the board may keep its state), and templates that must be refused."""

import json
from pathlib import Path

import pytest

from toolchain.chat import ChatFormat, Conversation
from toolchain.errors import CapacityError, InputError
from toolchain.model.tokenizer import ByteTokenizer, for_model

FORTUNE = Path(__file__).resolve().parents[2] / "models" / "fortune"


@pytest.fixture(scope="module")
def tok():
    return for_model(FORTUNE / "tokenizer.json", 2048)


def test_the_fortune_template_taken_apart():
    fmt = ChatFormat.for_checkpoint(FORTUNE)
    assert fmt.template
    assert fmt.before_first == "<|startoftext|><|im_start|>user\n"
    assert fmt.after_user == "<|im_end|>\n<|im_start|>assistant\n"
    assert fmt.after_reply == "<|im_end|>\n<|im_start|>user\n"


def test_each_turn_is_the_whole_conversation_as_the_template_renders_it(tok):
    import jinja2

    cfg = json.loads((FORTUNE / "tokenizer_config.json").read_text())
    render = jinja2.Environment(autoescape=False).from_string(cfg["chat_template"]).render  # noqa: S701
    im_end = tok.encode("<|im_end|>")[0]
    conv = Conversation(ChatFormat.for_checkpoint(FORTUNE), tok, 1, (im_end,), 512)
    first = conv.turn("Tell me a fortune.", 32)
    reply = tok.encode("You will be lucky.") + [im_end]  # the board's ids, ending with EOS
    conv.replied(first, reply)
    second = conv.turn("And another?", 32)
    assert second[:len(first) + len(reply)] == first + reply  # the state the board holds is a prefix
    whole = render(messages=[{"role": "user", "content": "Tell me a fortune."},
                             {"role": "assistant", "content": "You will be lucky."},
                             {"role": "user", "content": "And another?"}],
                   add_generation_prompt=True, bos_token="<|startoftext|>")
    assert second == tok.encode(whole)
    # a reply cut short (no EOS: the token limit, or Ctrl-C) gets the end-of-turn marker added
    conv.reset()
    first = conv.turn("Tell me a fortune.", 32)
    conv.replied(first, tok.encode("You will"))
    cut = conv.turn("Go on.", 32)
    assert cut == first + tok.encode("You will") + tok.encode("<|im_end|>\n<|im_start|>user\nGo on.<|im_end|>\n"
                                                              "<|im_start|>assistant\n")


def test_a_conversation_that_does_not_fit_is_refused(tok):
    conv = Conversation(ChatFormat.for_checkpoint(FORTUNE), tok, 1, (4,), 40)
    with pytest.raises(CapacityError, match="with 32 for the reply it exceeds the program's 40"):
        conv.turn("Tell me a long fortune about many things.", 32)


def test_plain_text_for_a_model_without_a_template():
    conv = Conversation(ChatFormat.for_checkpoint(None), ByteTokenizer(), 1, (2,), 128)
    first = conv.turn("Hi", 8)
    assert first == [1, *ByteTokenizer().encode("Hi")]
    conv.replied(first, [50, 51])
    assert conv.turn("there", 8) == [*first, 50, 51, *ByteTokenizer().encode(" there")]


@pytest.mark.parametrize("template, why", [
    ("{{ messages[0]['content'] }}", "does not place each message once"),  # drops the later messages
    ("{% for m in messages %}{{ m['content'] }}{{ m['content'] }}{% endfor %}", "does not place each message once"),
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "does not render"),  # the sandbox stops it
    ("{% for m in messages %}", "does not render"),
])
def test_templates_that_cannot_be_used_are_refused(tmp_path, template, why):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    with pytest.raises(InputError, match=why):
        ChatFormat.for_checkpoint(tmp_path)


def test_a_folder_without_a_template_is_plain_text(tmp_path):
    assert not ChatFormat.for_checkpoint(tmp_path).template
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(InputError, match="not readable JSON"):
        ChatFormat.for_checkpoint(tmp_path)


LOOPS = "{% for i in range(100000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("template, why", [
    (LOOPS + "{% for m in messages %}{{ m['content'] }}{% endfor %}", "more than 1,000,000 steps"),  # 10^8 turns
    ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "does not render"),  # no end to it
    ("{% for m in messages %}{{ m['content'] * 100000000 }}{% endfor %}", "longer than 1,000,000"),
    ("{{ 'x' + 'y' * 999999 + 'z' * 999999 }}", "longer than 1,000,000"),
    ("{{ 10 ** 99999999 }}", "a number too large"),
    ("{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}", "more than 1,000,000 characters"),
    ("{{ 1 / 0 }}", r"does not render \(division by zero\)"),
])
def test_a_template_that_does_not_end_or_grows_without_bound_is_refused_in_one_line(tmp_path, template, why):
    import time

    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    started = time.monotonic()
    with pytest.raises(InputError, match=f"tokenizer_config.json chat_template: .*{why}") as err:
        ChatFormat.for_checkpoint(tmp_path)
    assert "\n" not in str(err.value) and time.monotonic() - started < 20
