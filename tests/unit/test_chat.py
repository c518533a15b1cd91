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


# --- the published LFM2-350M files (tests/data/lfm2-350m, with their LICENSE): token for token against
# transformers' apply_chat_template of the same folder

LFM2 = Path(__file__).resolve().parents[1] / "data" / "lfm2-350m"
EOS = 7  # <|im_end|>
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city, now & <today>",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "e.g. Paris"}},
                   "required": ["city"]}}}
CALL = '<|tool_call_start|>[get_weather(city="Paris")]<|tool_call_end|>'


@pytest.fixture(scope="module")
def hf():
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(LFM2))


@pytest.fixture(scope="module")
def lfm2():
    return for_model(LFM2 / "tokenizer.json", 65536)


def apply(hf, messages, tools=None, folder_tok=None):
    out = (folder_tok or hf).apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def chat(lfm2, folder=LFM2, **kw):
    return Conversation(ChatFormat.for_checkpoint(folder), lfm2, 1, (EOS,), 4096, **kw)


def test_the_published_folder_keeps_its_template_in_chat_template_jinja():
    fmt = ChatFormat.for_checkpoint(LFM2)
    assert fmt.template and fmt.line == f"chat template: {LFM2 / 'chat_template.jinja'}"
    assert "chat_template" not in json.loads((LFM2 / "tokenizer_config.json").read_text())  # only the .jinja has it
    assert ChatFormat.for_checkpoint(None).line == "no chat template: plain text (a preset has none)"


def test_one_turn_is_apply_chat_template(hf, lfm2):
    prompt = chat(lfm2).turn("Hello board", 16)
    assert prompt == apply(hf, [{"role": "user", "content": "Hello board"}])
    assert len(prompt) == 11  # <|startoftext|><|im_start|>user\nHello board<|im_end|>\n<|im_start|>assistant\n


@pytest.mark.parametrize("system", [None, "You are a helpful board. Answer in one line."])
def test_several_turns_are_apply_chat_template_with_the_replies_ids(hf, lfm2, system):
    """Three turns; the board's replies are kept as its ids: one ends with EOS, one is cut short (the
    token limit) and gets the end of turn from the template, as transformers renders the same text."""
    conv = chat(lfm2, system=system)
    said = ["I love python and Mathias.", "Café ✓ — 日本 😀 costs 3€"]
    users = ["Hi there!", "What do you love?", "And then?"]
    messages = [{"role": "system", "content": system}] if system else []
    for i, user in enumerate(users):
        prompt = conv.turn(user, 32)
        messages.append({"role": "user", "content": user})
        assert prompt == apply(hf, messages), f"turn {i + 1}"
        if i < len(said):
            reply = lfm2.encode(said[i]) + ([EOS] if i == 0 else [])  # the second reply ran to its limit
            conv.replied(prompt, reply)
            messages.append({"role": "assistant", "content": said[i]})
            assert conv.ids == prompt + reply
    assert conv.turns == 2 and lfm2.encode("python")[-1] == 64014  # the reply held the non-special added token


def test_a_tool_list_and_a_tool_response_are_apply_chat_template(hf, lfm2):
    conv = chat(lfm2, system="Use the tools.", tools=[WEATHER])
    messages = [{"role": "system", "content": "Use the tools."}, {"role": "user", "content": "Weather in Paris?"}]
    first = conv.turn("Weather in Paris?", 32)
    assert first == apply(hf, messages, tools=[WEATHER])
    assert 8 in first and 9 in first  # <|tool_list_start|> ... <|tool_list_end|>
    conv.replied(first, lfm2.encode(CALL) + [EOS])
    messages.append({"role": "assistant", "content": CALL})
    for response in ('{"temperature": 21, "sky": "clear"}', {"temperature": 21, "sky": "clear ☀"}):
        prompt = conv.turn(response, 32, role="tool")
        assert prompt == apply(hf, [*messages, {"role": "tool", "content": response}], tools=[WEATHER])
        assert prompt[:len(conv.ids)] == conv.ids  # the board keeps the turn it holds
        assert 12 in prompt and 13 in prompt  # <|tool_response_start|> ... <|tool_response_end|>


def _folder(tmp_path, hf_template_config=None, jinja=None):
    """A tokenizer folder: the published tokenizer, the config with ``hf_template_config`` as its
    chat_template, and ``jinja`` as chat_template.jinja."""
    for name in ("tokenizer.json", "special_tokens_map.json"):
        (tmp_path / name).write_bytes((LFM2 / name).read_bytes())
    cfg = json.loads((LFM2 / "tokenizer_config.json").read_text())
    if hf_template_config is not None:
        cfg["chat_template"] = hf_template_config
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    if jinja is not None:
        (tmp_path / "chat_template.jinja").write_text(jinja)
    return tmp_path


def test_the_list_of_named_templates_form_as_transformers_reads_it(tmp_path, lfm2):
    """tokenizer_config.json's list form: 'default' without tools, 'tool_use' with them."""
    transformers = pytest.importorskip("transformers")
    published = (LFM2 / "chat_template.jinja").read_text()
    tool_use = published.replace("List of tools:", "Tools you may call:")
    folder = _folder(tmp_path, [{"name": "default", "template": published}, {"name": "tool_use", "template": tool_use}])
    theirs = transformers.AutoTokenizer.from_pretrained(str(folder))
    fmt = ChatFormat.for_checkpoint(folder)
    assert fmt.line == f"chat template: {folder / 'tokenizer_config.json'} chat_template 'default'"
    user = [{"role": "user", "content": "Weather in Paris?"}]
    assert chat(lfm2, folder).turn("Weather in Paris?", 8) == apply(None, user, folder_tok=theirs)
    with_tools = chat(lfm2, folder, tools=[WEATHER]).turn("Weather in Paris?", 8)
    assert with_tools == apply(None, user, tools=[WEATHER], folder_tok=theirs)
    assert lfm2.encode("Tools you may call:")[0] in with_tools


def test_chat_template_jinja_comes_before_tokenizer_config(tmp_path, lfm2):
    transformers = pytest.importorskip("transformers")
    jinja = "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}{% endfor %}" \
            "{% if add_generation_prompt %}[assistant] {% endif %}"
    folder = _folder(tmp_path, "{{ 'the config template' }}{% for m in messages %}{{ m['content'] }}{% endfor %}",
                     jinja)
    assert ChatFormat.for_checkpoint(folder).line == f"chat template: {folder / 'chat_template.jinja'}"
    theirs = transformers.AutoTokenizer.from_pretrained(str(folder))
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert chat(lfm2, folder, system="Be brief.").turn("Hi", 8) == apply(None, msgs, folder_tok=theirs)


def test_a_folder_with_no_template_says_it_talks_plain_text(tmp_path, lfm2):
    folder = _folder(tmp_path)
    fmt = ChatFormat.for_checkpoint(folder)
    assert not fmt.template
    assert fmt.line == (f"no chat template: plain text ({folder} has no chat_template.jinja and no chat_template "
                        "in tokenizer_config.json)")
    conv = Conversation(fmt, lfm2, 1, (EOS,), 128, system="Be brief.")
    assert conv.turn("Hi", 8) == [1, *lfm2.encode("Be brief.\n\nHi")]


def test_transformers_template_helpers_render(tmp_path, lfm2):
    """What transformers gives a template besides the messages: its tojson (no HTML escaping, keys in
    order), raise_exception, loop controls and the {% generation %} tag."""
    transformers = pytest.importorskip("transformers")
    jinja = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}"
             "{% endif %}{% if loop.index > 9 %}{% break %}{% endif %}<|im_start|>{{ m['role'] }}\n"
             "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}{% endgeneration %}"
             "{% else %}{{ m['content'] | tojson }}{% endif %}<|im_end|>\n{% endfor %}"
             "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    folder = _folder(tmp_path, jinja=jinja)
    theirs = transformers.AutoTokenizer.from_pretrained(str(folder))
    conv = chat(lfm2, folder)
    first = conv.turn("a <b> & 'c' → é", 8)
    assert first == apply(None, [{"role": "user", "content": "a <b> & 'c' → é"}], folder_tok=theirs)
    conv.system = "not allowed"
    with pytest.raises(InputError, match=r"chat_template.jinja: does not render \(no system\)"):
        conv.turn("Hi", 8)
