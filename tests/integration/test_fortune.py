"""The shipped `fortune` model (models/fortune, made by `make demo-model`): the real Hugging Face layout,
the logits transformers gives, a model card that says how it was made, and English that it makes up."""

import json
import re

import pytest
import torch
import transformers

from toolchain.model import checkpoint, tokenizer
from toolchain.model.train import CHAT_TEMPLATE, IM_END, Recipe, hf_config

FOLDER = checkpoint.SHIPPED["fortune"]
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
         "README.md", "CORPUS.md", "training.json")
PROMPTS = ("The meaning of life is", "My computer", "A wise old owl")


def test_the_folder_is_complete_and_small():
    assert all((FOLDER / f).is_file() for f in FILES)
    total = sum(p.stat().st_size for p in FOLDER.iterdir() if p.is_file())
    assert total <= 12 * 2**20, f"{total} bytes"
    assert json.loads((FOLDER / "config.json").read_text()) == json.loads(json.dumps(hf_config(Recipe())))


def test_the_model_card_states_data_command_seed_and_perplexity():
    card = (FOLDER / "README.md").read_text()
    facts = json.loads((FOLDER / "training.json").read_text())
    assert "fortunes" in card and "BSD" in card and "make demo-model" in card
    assert f"seed {facts['recipe']['seed']}" in card
    ppl = facts["result"]["heldout_perplexity"]
    assert f"**Held-out perplexity**: {ppl}" in card and 1 < ppl < 200
    assert facts["result"]["train_seconds"] <= 30 * 60
    assert "Copyright (c) 1991 The Regents of the University of California" in (FOLDER / "CORPUS.md").read_text()


def test_transformers_and_edgelm_give_the_same_logits():
    ours, source = checkpoint.load("fortune", max_seq_len=128, all_logits=True)
    assert source.name == "fortune" and source.kind == "folder" and source.eos_token_ids == (2, IM_END)
    hf = transformers.Lfm2ForCausalLM.from_pretrained(FOLDER, dtype=torch.float32).eval()
    tok = tokenizer.for_model(source.tokenizer_path, source.config.vocab_size)
    ids = torch.tensor([[1, *tok.encode("Life is what happens to you while you're busy making other plans.")]])
    with torch.no_grad():
        reference = hf(ids).logits
        mine = ours(ids, torch.tensor([0]))
    assert reference.shape == mine.shape
    assert (mine - reference).abs().max().item() < 1e-4
    assert (reference[0, :-1].argmax(-1) == ids[0, 1:]).float().mean() > 0.3  # it has learned the text's shape


def test_the_chat_template_renders_the_turns_it_was_trained_on():
    import jinja2

    cfg = json.loads((FOLDER / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == CHAT_TEMPLATE
    text = jinja2.Environment(autoescape=False).from_string(CHAT_TEMPLATE).render(  # noqa: S701 (not HTML)
        bos_token=cfg["bos_token"], add_generation_prompt=True,
        messages=[{"role": "user", "content": "Tell me a fortune about cats."}])
    assert text == "<|startoftext|><|im_start|>user\nTell me a fortune about cats.<|im_end|>\n<|im_start|>assistant\n"


def _greedy(model, tok, prompt: str, n: int) -> str:
    ids = [1, *tok.encode(prompt)]
    model.reset()
    out = []
    with torch.no_grad():
        logits = model(torch.tensor([ids]), torch.tensor([0]))
        for i in range(n):
            t = int(logits.argmax())
            if t in (2, IM_END):
                break
            out.append(t)
            logits = model(torch.tensor([[t]]), torch.tensor([len(ids) + i]))
    return b"".join(tok.token_bytes(t) for t in out).decode("utf-8", errors="replace")


@pytest.mark.parametrize("n", [24])
def test_three_prompts_give_three_english_continuations(n):
    model, source = checkpoint.load("fortune", max_seq_len=128)
    tok = tokenizer.for_model(source.tokenizer_path, source.config.vocab_size)
    texts = [_greedy(model, tok, p, n) for p in PROMPTS]
    print(texts)
    assert len(set(texts)) == 3
    words = [w.lower() for t in texts for w in re.findall(r"[A-Za-z']+", t)]
    assert len(words) >= 12
    common = {"the", "a", "to", "of", "and", "is", "you", "i", "it", "in", "that", "be", "not", "your", "for"}
    assert sum(w in common for w in words) >= 3  # English, not byte soup


def test_the_model_card_is_the_one_the_recipe_writes():
    from toolchain.model.train import model_card

    facts = json.loads((FOLDER / "training.json").read_text())
    recipe = Recipe(**{**facts["recipe"], "layer_types": tuple(facts["recipe"]["layer_types"])})
    assert recipe == Recipe()  # the shipped weights come from the recipe in the source
    assert (FOLDER / "README.md").read_text() == model_card(recipe, facts["result"])
