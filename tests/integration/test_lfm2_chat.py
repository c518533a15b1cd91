"""The published LFM2-350M tokenizer, configuration and chat template (tests/data/lfm2-350m) with random
weights, end to end on the host board: `edgelm run --chat --system` and a three-turn console send the ids
transformers' apply_chat_template gives, and every printed text is tokenizers' decode of the board's ids.

The network is small (4 blocks of width 64) with the real 65,536 vocabulary. Its weights are random but
for one thing, so that the console's replies can be compared with transformers' rendering of them: right
after a newline (the end of ``<|im_start|>assistant\\n``) its greedy choice is EOS (``<|im_end|>``), and
never elsewhere. A reply is then just EOS, whose text, "", transformers renders back into the same ids
(a random reply's text does not tokenize back into the random ids the board sent). ``run --chat
--ignore-eos`` goes on past that EOS with random ids, whose printed text is checked against decode.
"""

import json
import re
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

transformers = pytest.importorskip("transformers")

from toolchain import api  # noqa: E402
from toolchain import console as console_mod  # noqa: E402
from toolchain.model import checkpoint  # noqa: E402
from toolchain.model.config import from_hf_dict  # noqa: E402
from toolchain.model.lfm2 import build_model  # noqa: E402

pytestmark = pytest.mark.slow  # in a fresh workdir: an export and a build (about a minute); then seconds

REPO = Path(__file__).resolve().parents[2]
PUBLISHED = REPO / "tests" / "data" / "lfm2-350m"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                   "generation_config.json")
SMALL = {"block_dim": 64, "hidden_size": 64, "conv_dim": 64, "conv_dim_out": 64, "block_ff_dim": 256,
         "block_multiple_of": 32, "num_hidden_layers": 4, "full_attn_idxs": [1, 3], "num_attention_heads": 4,
         "num_heads": 4, "num_key_value_heads": 2, "tie_embedding": False}  # vocab_size stays 65,536
NEWLINE, EOS = 708, 7  # "\n" (Ċ) and <|im_end|>
SYSTEM = "You are a helpful board. Answer in one line."
RECIPE = "v1"  # change with the weights below: the folder's name, so a stale one is not reused


def _weights(raw: dict) -> torch.nn.Module:
    """Random weights, but EOS exactly when the last token is a newline: dimension 0 of the residual
    stream is written by the newline's embedding only (no block writes it), and EOS's output row reads
    only that dimension."""
    model = build_model(from_hf_dict(raw, source="config"), max_seq_len=64, seed=350, init_std=0.1)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 0.0
        model.model.embed_tokens.weight[NEWLINE, 0] = 8.0
        for name, p in model.named_parameters():
            if name.endswith(("out_proj.weight", "w2.weight")):
                p[0, :] = 0.0  # the blocks leave dimension 0 as the embedding set it
        model.lm_head.weight[EOS] = 0.0
        model.lm_head.weight[EOS, 0] = 2.0
    return model


@pytest.fixture(scope="module")
def folder(hil_workdir):
    """A checkpoint folder: the published files, config.json made small, random weights. Made once per
    workdir (its exports and builds are cached by the folder's files)."""
    out = hil_workdir / "models" / f"lfm2-350m-random-{RECIPE}"
    if not (out / "model.safetensors").exists():
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        raw = {**json.loads((PUBLISHED / "config.json").read_text()), **SMALL}
        (tmp / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
        save_file(checkpoint.hf_state(_weights(raw)), str(tmp / "model.safetensors"))
        for name in TOKENIZER_FILES:
            shutil.copyfile(PUBLISHED / name, tmp / name)
        tmp.rename(out)
    return out


@pytest.fixture(scope="module")
def hf():
    return transformers.AutoTokenizer.from_pretrained(str(PUBLISHED))


def template_ids(hf, messages):
    return list(hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"])


def test_run_chat_sends_apply_chat_template_and_prints_decode(folder, hil_workdir, hf):
    prompt = "I love python and Mathias. Café ✓ 😀"
    proc = subprocess.run([sys.executable, "-m", "toolchain.cli", "run", "--board", "host", "--target", "local",
                           "--model", str(folder), "--chat", "--system", SYSTEM, "--prompt", prompt, "--tokens", "40",
                           "--ignore-eos", "--no-fidelity", "--workdir", str(hil_workdir), "--json"],
                          capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
    assert report["prompt_token_ids"] == template_ids(hf, messages)
    assert report["chat_template"] == f"chat template: {folder / 'chat_template.jinja'}"
    ids = report["generated_token_ids"]
    assert ids[0] == EOS and len(ids) == 40  # the reply ends at once; --ignore-eos goes on with random ids
    assert report["text"] == hf.backend_tokenizer.decode(ids, skip_special_tokens=True)
    assert "".join(report["token_texts"]) == report["text"]
    print(f"prompt ids {report['prompt_token_ids']}\ngenerated {ids}\ntext {report['text']!r}")


def test_run_streams_what_decode_gives_special_tokens_shown(folder, hil_workdir, hf):
    """The text as it streams (run's on_text), with --show-special: decode with the special tokens."""
    pieces: list[str] = []
    req = api.RunRequest(board="host", target="local", model=str(folder), prompt="Hello board", tokens=24,
                         chat=True, ignore_eos=True, fidelity=False, show_special=True, workdir=hil_workdir)
    report = api.run_job(req, on_text=pieces.append)
    assert report.prompt_token_ids == template_ids(hf, [{"role": "user", "content": "Hello board"}])
    assert len(report.prompt_token_ids) == 11  # as the issue counted: 3 ids were sent as plain text
    decoded = hf.backend_tokenizer.decode(report.generated_token_ids, skip_special_tokens=False)
    assert "".join(pieces) == report.text == decoded and decoded.startswith("<|im_end|>")


def test_a_three_turn_console_with_a_system_message_sends_apply_chat_template(folder, hil_workdir, hf, monkeypatch):
    prompts: list[list[int]] = []
    real_open_chat = console_mod.open_chat

    @contextmanager
    def open_chat(opts, progress):  # the real bring-up, each prompt it sends recorded
        with real_open_chat(opts, progress) as chat:
            turn = chat.conv.turn
            chat.conv.turn = lambda *a, **kw: prompts.append(turn(*a, **kw)) or prompts[-1]  # what each turn sent
            yield chat

    monkeypatch.setattr(console_mod, "open_chat", open_chat)
    said = ["Hello board", "I love python and Mathias.", "Café ✓ 😀 — and then?"]
    lines = iter([*said, "/quit"])
    written: list[str] = []
    statuses: list[str] = []
    opts = console_mod.Options(board="host", target="local", model=str(folder), tokens=8, workdir=hil_workdir,
                               system=SYSTEM)  # --system
    failed = console_mod.run(opts, read=lambda p: next(lines), write=written.append, status=statuses.append,
                             progress=lambda step, detail: None)
    assert failed == 0, statuses
    assert statuses[0] == f"chat template: {folder / 'chat_template.jinja'}"  # the console's first line
    messages = [{"role": "system", "content": SYSTEM}]
    for i, text in enumerate(said):
        messages.append({"role": "user", "content": text})
        assert prompts[i] == template_ids(hf, messages), f"turn {i + 1}"
        messages.append({"role": "assistant", "content": ""})  # the board's reply: EOS alone (see above)
    assert prompts[1][:len(prompts[0]) + 1] == [*prompts[0], EOS]  # the board keeps each turn in its state
    kept = [re.search(r"(\d+)/(\d+) prompt tokens kept · PASS", s) for s in statuses if "prompt tokens kept" in s]
    # the board kept each turn but the reply's EOS, which it sampled and feeds with the next turn
    assert [(int(m[1]), int(m[2])) for m in kept] == [(0, len(prompts[0])), (len(prompts[0]), len(prompts[1])),
                                                      (len(prompts[1]), len(prompts[2]))], statuses
    assert "".join(written).strip() == ""  # three replies of EOS alone print nothing
    print("\n".join(statuses))
