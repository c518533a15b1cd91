"""Train ``fortune``: a small LFM2 that has learned some English, shipped with the project.

    make demo-model            # = python -m toolchain.model.train --out models/fortune

The corpus is Debian's ``fortunes`` package (BSD licence, installed by apt from the package
registry): the short quotations, jokes and sayings of fortune(6), read from
``/usr/share/games/fortunes``. A fixed 1-in-20 of the entries (chosen by a hash of their text) is
held out for perplexity. A byte-level BPE tokenizer is trained on the rest with ``tokenizers``;
the model is ``transformers``' ``Lfm2ForCausalLM`` (gated short convolutions and grouped-query
attention, the Hugging Face layout edgelm loads), trained for a fixed number of steps with a fixed
seed on this machine's CPU cores, and written as a Hugging Face folder with a model card.

Every entry is seen in two forms: plain text between ``<|startoftext|>`` and ``<|endoftext|>``
(what `edgelm run --prompt ...` continues), and as the answer of a chat turn asking for a fortune
about the entry's topic (what the checkpoint's chat template renders), so both prompts work.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CORPUS_DIR = Path("/usr/share/games/fortunes")
# The fortune files used, with the topic a chat turn names for them. Left out: ASCII art, the files
# of jokes about groups of people, politics and drugs, and the untranslated ones.
TOPICS = {
    "fortunes": "life", "literature": "books", "wisdom": "wisdom", "science": "science",
    "computers": "computers", "people": "people", "humorists": "humour", "platitudes": "life",
    "kids": "children", "education": "school", "food": "food", "pets": "pets", "love": "love",
    "riddles": "riddles", "work": "work", "law": "the law", "medicine": "medicine", "magic": "magic",
    "songs-poems": "songs", "tao": "the way", "definitions": "words", "miscellaneous": "anything",
    "cookie": "anything", "startrek": "space", "pratchett": "books", "goedel": "logic",
    "paradoxum": "paradoxes", "news": "the news", "sports": "sports", "linux": "linux",
    "debian": "linux", "perl": "programming", "knghtbrd": "computers", "zippy": "nonsense",
}
SPECIALS = ("<|pad|>", "<|startoftext|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>")
PAD, BOS, EOS, IM_START, IM_END = range(len(SPECIALS))
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
MAX_ENTRY_CHARS = 600
LICENCE = "BSD-3-Clause (fortune-mod, The Regents of the University of California; see CORPUS.md)"


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the result: the same recipe on the same software gives the same model."""

    seed: int = 1234
    vocab_size: int = 2048
    hidden_size: int = 256
    ff_dim: int = 768
    heads: int = 4
    kv_heads: int = 2
    layer_types: tuple[str, ...] = ("conv", "conv", "full_attention", "conv", "conv", "full_attention")
    seq_len: int = 128
    batch: int = 24
    steps: int = 1800
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.05
    threads: int = 2


# The draft model for speculative decoding (`edgelm export --draft-model fortune-draft`): the same
# corpus, seed and vocabulary size, so the same tokenizer, and a twentieth of the work per token.
DRAFT = Recipe(hidden_size=128, ff_dim=384, heads=2, kv_heads=1,
               layer_types=("conv", "full_attention", "conv"))
RECIPES = {"fortune": Recipe(), "fortune-draft": DRAFT}


# 1. The corpus -----------------------------------------------------------------------------------

def read_entries(corpus: Path = CORPUS_DIR) -> list[tuple[str, str]]:
    """(topic, text) of every usable entry of the chosen fortune files, in a fixed order."""
    missing = [name for name in TOPICS if not (corpus / name).is_file()]
    if missing:
        raise SystemExit(f"{corpus / missing[0]} is missing: install Debian's fortunes package "
                         "(make demo-model does: apt-get install fortunes)")
    out = []
    for name, topic in TOPICS.items():
        text = (corpus / name).read_text(encoding="utf-8", errors="replace")
        for raw in text.split("\n%\n"):
            entry = re.sub(r"[ \t]+", " ", raw.replace("\r", "")).strip("\n %")
            entry = "\n".join(line.strip() for line in entry.splitlines()).strip()
            if 20 <= len(entry) <= MAX_ENTRY_CHARS and entry.isascii():
                out.append((topic, entry))
    return out


def held_out(text: str) -> bool:
    return hashlib.sha256(text.encode()).digest()[0] % 20 == 0


def plain(text: str) -> str:
    return f"{SPECIALS[BOS]}{text}{SPECIALS[EOS]}"


def chat(topic: str, text: str) -> str:
    return (f"{SPECIALS[BOS]}<|im_start|>user\nTell me a fortune about {topic}.<|im_end|>\n"
            f"<|im_start|>assistant\n{text}<|im_end|>\n")


# 2. The tokenizer --------------------------------------------------------------------------------

def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    assert [tok.token_to_id(s) for s in SPECIALS] == list(range(len(SPECIALS)))  # noqa: S101
    return tok


# 3. The model ------------------------------------------------------------------------------------

def hf_config(r: Recipe) -> dict:
    return {
        "architectures": ["Lfm2ForCausalLM"], "model_type": "lfm2", "vocab_size": r.vocab_size,
        "hidden_size": r.hidden_size, "intermediate_size": r.ff_dim, "block_ff_dim": r.ff_dim,
        "block_auto_adjust_ff_dim": False, "block_ffn_dim_multiplier": 1.0, "block_multiple_of": 256,
        "num_hidden_layers": len(r.layer_types), "num_attention_heads": r.heads,
        "num_key_value_heads": r.kv_heads, "layer_types": list(r.layer_types), "conv_L_cache": 3,
        "conv_bias": False, "norm_eps": 1e-5, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "max_position_embeddings": 2048, "tie_word_embeddings": True, "bos_token_id": BOS,
        "eos_token_id": EOS, "pad_token_id": PAD, "initializer_range": 0.02, "use_cache": True,
        "dtype": "bfloat16",
    }


def batches(stream: torch.Tensor, r: Recipe, gen: torch.Generator):
    while True:
        starts = torch.randint(0, len(stream) - r.seq_len - 1, (r.batch,), generator=gen)
        chunk = torch.stack([stream[s:s + r.seq_len + 1] for s in starts.tolist()])
        yield chunk[:, :-1], chunk[:, 1:]


@torch.no_grad()
def perplexity(model, docs: list[list[int]], seq_len: int) -> float:
    """exp(mean next-token loss) over the held-out entries, each scored on its own."""
    model.eval()
    total, count = 0.0, 0
    for ids in docs:
        ids = ids[:seq_len + 1]
        x = torch.tensor([ids[:-1]])
        logits = model(input_ids=x).logits[0]
        total += float(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum"))
        count += len(ids) - 1
    model.train()
    return math.exp(total / count)


def train(out: Path, r: Recipe, corpus: Path = CORPUS_DIR, name: str = "fortune") -> dict:
    from transformers import Lfm2Config, Lfm2ForCausalLM

    t0 = time.monotonic()
    torch.manual_seed(r.seed)
    torch.set_num_threads(r.threads)
    torch.use_deterministic_algorithms(True)
    entries = read_entries(corpus)
    train_e = [(t, x) for t, x in entries if not held_out(x)]
    test_e = [(t, x) for t, x in entries if held_out(x)]
    texts = [f(t, x) for t, x in train_e for f in (lambda _t, x: plain(x), chat)]
    random.Random(r.seed).shuffle(texts)  # noqa: S311 (an order, not a secret)
    tok = train_tokenizer(texts, r.vocab_size)
    stream = torch.tensor([i for text in texts for i in tok.encode(text).ids], dtype=torch.long)
    test_docs = [tok.encode(plain(x)).ids for _, x in test_e]
    log.info("corpus: %d entries (%d held out), %d training tokens", len(entries), len(test_e), len(stream))

    model = Lfm2ForCausalLM(Lfm2Config(**{k: v for k, v in hf_config(r).items() if k not in ("dtype",)}))
    params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    other = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": r.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=r.lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / r.warmup) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, s / r.steps))))
    gen = torch.Generator().manual_seed(r.seed)
    model.train()
    losses = []
    for step, (x, y) in zip(range(r.steps), batches(stream, r, gen), strict=False):
        logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if step % 100 == 0 or step == r.steps - 1:
            log.info("step %d/%d: loss %.3f (%.0f s)", step, r.steps, sum(losses[-100:]) / len(losses[-100:]),
                     time.monotonic() - t0)
    train_s = time.monotonic() - t0
    model = model.to(torch.bfloat16).float()  # the shipped weights are bfloat16: measure those
    ppl = perplexity(model, test_docs, 512)
    result = {"parameters": params, "train_tokens": len(stream), "steps": r.steps,
              "tokens_seen": r.steps * r.batch * r.seq_len, "train_seconds": round(train_s, 1),
              "final_train_loss": round(sum(losses[-100:]) / len(losses[-100:]), 4),
              "heldout_entries": len(test_e), "heldout_tokens": sum(len(d) - 1 for d in test_docs),
              "heldout_perplexity": round(ppl, 3)}
    write_folder(out, model.to(torch.bfloat16), tok, r, result, name)
    return result


# 4. The folder -----------------------------------------------------------------------------------

def write_folder(out: Path, model, tok, r: Recipe, result: dict, name: str = "fortune") -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(hf_config(r), indent=2) + "\n")
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": SPECIALS[BOS], "eos_token": SPECIALS[IM_END],
        "pad_token": SPECIALS[PAD], "model_max_length": 2048, "add_bos_token": False,
        "chat_template": CHAT_TEMPLATE}, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps({
        "bos_token_id": BOS, "eos_token_id": [EOS, IM_END], "pad_token_id": PAD}, indent=2) + "\n")
    (out / "training.json").write_text(json.dumps({"recipe": {**r.__dict__, "layer_types": list(r.layer_types)},
                                                   "result": result}, indent=2) + "\n")
    (out / "CORPUS.md").write_text(corpus_notice())
    (out / "README.md").write_text(model_card(r, result, name))


def corpus_notice() -> str:
    src = Path("/usr/share/doc/fortunes-min/copyright")
    text = src.read_text(errors="replace") if src.exists() else "(see Debian's fortunes-min package)"
    return ("# Corpus\n\nThe training text is Debian's `fortunes` package (fortune-mod 1.99.1 data files: "
            f"{', '.join(TOPICS)}). Its licence, as Debian ships it (`{src}`):\n\n```\n{text}\n```\n")


def model_card(r: Recipe, result: dict, name: str = "fortune") -> str:
    role = ("" if name == "fortune" else
            "\nThe draft model of `fortune` for speculative decoding (`edgelm export --model fortune --draft-model "
            "fortune-draft`):\nthe same corpus, seed and tokenizer, a sixth of the parameters.\n")
    return f"""# {name}: a small LFM2 trained by edgelm
{role}
A {result['parameters'] / 1e6:.1f}M-parameter model in the LFM2 architecture (`Lfm2ForCausalLM`:
{r.layer_types.count('conv')} gated short-convolution blocks and {r.layer_types.count('full_attention')} grouped-query
attention blocks, hidden size {r.hidden_size}, {r.heads} heads / {r.kv_heads} KV heads, feed-forward {r.ff_dim}),
with {"its own" if name == "fortune" else "fortune's"} {r.vocab_size}-token byte-level BPE tokenizer. Weights are
stored as bfloat16.

- **Data**: Debian's `fortunes` package, {LICENCE}; the files used and left out are listed in
  `toolchain/model/train.py`. {result['heldout_entries']} entries (one in twenty, chosen by a hash of
  their text) are held out. Every training entry appears as plain text and as the answer to the chat
  turn "Tell me a fortune about TOPIC." ({result['train_tokens']} training tokens).
- **Training**: `make demo-model` (`python -m toolchain.model.train --recipe {name} --out models/{name}`),
  seed {r.seed},
  {r.steps} AdamW steps of {r.batch} x {r.seq_len} tokens ({result['tokens_seen'] / 1e6:.1f}M tokens seen),
  learning rate {r.lr} with warm-up and cosine decay, on {r.threads} CPU threads: {result['train_seconds'] / 60:.1f}
  minutes. Final training loss {result['final_train_loss']}.
- **Held-out perplexity**: {result['heldout_perplexity']} per token over {result['heldout_tokens']} tokens
  (bfloat16 weights, as shipped). Against the training loss (perplexity
  {math.exp(result['final_train_loss']):.1f} on text seen {result['tokens_seen'] / result['train_tokens']:.1f} times)
  this says the model has memorised much of its small corpus: it recombines fortunes it has read
  more than it writes new ones. More data or fewer passes would generalise better.
- **Use**: `edgelm run --model {name} --prompt "..."`; the chat template (tokenizer_config.json)
  renders `<|im_start|>user ... <|im_end|>` turns.

It has learned English words and the shape of a fortune, not facts: it is a test subject for
quantization and a demo that speaks, nothing more.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="fortune")
    ap.add_argument("--steps", type=int, default=Recipe.steps)
    ap.add_argument("--corpus", type=Path, default=CORPUS_DIR)
    ap.add_argument("--card-only", action="store_true",
                    help="rewrite README.md of --out from its training.json (no training)")
    args = ap.parse_args()
    if args.card_only:
        facts = json.loads((args.out / "training.json").read_text())
        recipe = Recipe(**{**facts["recipe"], "layer_types": tuple(facts["recipe"]["layer_types"])})
        (args.out / "README.md").write_text(model_card(recipe, facts["result"], args.recipe))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    recipe = dataclasses.replace(RECIPES[args.recipe], steps=args.steps)
    result = train(args.out, recipe, args.corpus, args.recipe)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
