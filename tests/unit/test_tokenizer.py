from toolchain.model.tokenizer import ByteTokenizer, TextAssembler


def test_byte_tokenizer_round_trips_utf8():
    tok = ByteTokenizer()
    ids = tok.encode("héllo ✓")
    assert all(3 <= i < 259 for i in ids)
    asm = TextAssembler(tok)
    pieces = [asm.push(i) for i in ids]
    asm.finish()
    assert asm.text == "héllo ✓"
    # the 3-byte check mark prints nothing until its last byte arrives
    assert pieces[-3:] == ["", "", "✓"]


def test_specials_print_nothing():
    tok = ByteTokenizer()
    asm = TextAssembler(tok)
    assert asm.push(1) == "" and asm.push(2) == ""


def test_invalid_utf8_is_replaced_not_raised():
    tok = ByteTokenizer()
    asm = TextAssembler(tok)
    asm.push(0xFF + 3)
    asm.push(ord("a") + 3)
    asm.finish()
    assert asm.text == "\ufffda"


def _bpe_tokenizer_json(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|pad|>", "<|startoftext|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["héllo wörld, the board says hello ✓ again and again"] * 20, trainer)
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return path


def test_hf_byte_level_tokens_reassemble_into_text(tmp_path):
    from toolchain.model.tokenizer import HFTokenizer

    tok = HFTokenizer(_bpe_tokenizer_json(tmp_path))
    text = "héllo wörld ✓ — new text 日本"
    ids = tok.encode(text)
    asm = TextAssembler(tok)
    for i in ids:
        asm.push(i)
    asm.finish()
    assert asm.text == text
    assert tok.token_bytes(2) == b"" and len(tok.sha256) == 64  # a special token prints nothing


def test_a_corrupt_tokenizer_json_is_one_clear_error(tmp_path):
    import pytest

    from toolchain.errors import InputError
    from toolchain.model.tokenizer import HFTokenizer

    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"version": "1.0", "model": ')
    with pytest.raises(InputError, match="is not a readable tokenizer.json"):
        HFTokenizer(bad)


# --- the streaming detokenizer: what it prints, joined, is tokenizers' decode of the same ids

import json  # noqa: E402
import random  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from toolchain.model.tokenizer import HFTokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
LFM2 = REPO / "tests" / "data" / "lfm2-350m" / "tokenizer.json"  # the published LFM2-350M tokenizer
CORPUS = ["héllo wörld, the board says hello ✓ again and again. Don't stop: 日本語 text, ok?"] * 20


def streamed(tok, ids, show_special=False):
    asm = TextAssembler(tok, show_special)
    pieces = [asm.push(i) for i in ids]
    tail = asm.finish()
    assert asm.text == "".join(pieces) + tail
    return pieces, tail


def _sentencepiece_like(path):
    """Llama's layout: '▁' for spaces, <0xNN> byte fallback, decoded by Replace, ByteFallback, Fuse, Strip."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers

    base = Tokenizer(models.BPE())
    base.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    base.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"]))
    vocab = base.get_vocab()
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
              for m in json.loads(base.to_str())["model"]["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>"))
    tok.normalizer = base.normalizer
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.add_tokens(["python"])
    tok.save(str(path))


def _metaspace(path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=150, special_tokens=["<pad>", "<s>", "</s>"]))
    tok.add_tokens(["python"])
    tok.save(str(path))


def _wordpiece(path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=150, special_tokens=["[PAD]", "[UNK]"]))
    tok.save(str(path))


@pytest.fixture(scope="module")
def lfm2():
    return HFTokenizer(LFM2)


@pytest.fixture(scope="module", params=["lfm2-350m", "fortune", "bytes", "sentencepiece", "metaspace", "wordpiece"])
def any_tok(request, tmp_path_factory):
    make = {"sentencepiece": _sentencepiece_like, "metaspace": _metaspace, "wordpiece": _wordpiece}
    if request.param == "lfm2-350m":
        return HFTokenizer(LFM2)
    if request.param == "fortune":
        return HFTokenizer(REPO / "models" / "fortune" / "tokenizer.json")
    if request.param == "bytes":
        return ByteTokenizer()
    path = tmp_path_factory.mktemp(request.param) / "tokenizer.json"
    make[request.param](path)
    return HFTokenizer(path)


def test_added_tokens_that_are_not_special_print_as_text(lfm2):
    ids = lfm2.encode("I love python and Mathias.")
    assert 64014 in ids and 64011 in ids  # python, Mathias: added tokens, not special
    pieces, tail = streamed(lfm2, ids)
    assert "".join(pieces) + tail == "I love python and Mathias." == lfm2._tok.decode(ids)
    assert "python" in pieces and "Mathias" in pieces  # each printed as it arrived


def test_a_character_split_across_tokens_prints_once_whole(lfm2):
    ids = lfm2.encode(" 😀 €")
    assert [lfm2._tok.id_to_token(i) for i in ids] == ["ĠðŁĺ", "Ģ", "ĠâĤ¬"]  # the emoji's 4 bytes: 2 tokens
    pieces, tail = streamed(lfm2, ids)
    assert pieces == ["", " 😀", " €"] and tail == ""
    # cut off inside the character: it prints as tokenizers decodes it, one U+FFFD
    pieces, tail = streamed(lfm2, ids[:1])
    assert pieces == [""] and tail == lfm2._tok.decode(ids[:1]) == " \ufffd"


def test_special_tokens_are_hidden_unless_shown(lfm2):
    ids = [1, *lfm2.encode("Hi"), 7, 708, 6, *lfm2.encode("python")]  # BOS Hi <|im_end|> \n <|im_start|> python
    assert "".join(streamed(lfm2, ids)[0]) == "Hi\npython" == lfm2._tok.decode(ids)
    shown = "".join(streamed(lfm2, ids, show_special=True)[0])
    assert shown == "<|startoftext|>Hi<|im_end|>\n<|im_start|>python"
    assert shown == lfm2._tok.decode(ids, skip_special_tokens=False) == lfm2.decode(ids, show_special=True)


def test_ids_past_the_tokenizer_print_as_tokenizers_decodes_them(lfm2):
    """The model's vocabulary (65,536) is larger than the tokenizer's (64,400): tokenizers drops those ids."""
    ids = [*lfm2.encode("a"), 65000, *lfm2.encode(" b")]
    assert "".join(streamed(lfm2, ids)[0]) == "a b" == lfm2._tok.decode(ids)
    assert ByteTokenizer().decode([3 + ord("a"), 31670]) == "a<id 31670>"  # the byte tokenizer shows them


def test_byte_fallback_runs_are_decoded_whole(tmp_path):
    """A run of <0xNN> tokens is decoded together: bytes that do not make UTF-8 become one U+FFFD each,
    including those of a character that looked complete, so nothing prints before the run ends."""
    path = tmp_path / "tokenizer.json"
    _sentencepiece_like(path)
    tok = HFTokenizer(path)
    byte = {b: tok._tok.token_to_id(f"<0x{b:02X}>") for b in (0xC3, 0xA9, 0x80)}
    word = tok.encode("hello")
    e_acute = [byte[0xC3], byte[0xA9]]
    pieces, tail = streamed(tok, word + e_acute + word)
    assert pieces[len(word):len(word) + 2] == ["", ""]  # the run's bytes print nothing ...
    assert pieces[len(word) + 2].startswith("é")  # ... until the token after it ends the run
    assert "".join(pieces) + tail == tok.decode(word + e_acute + word)
    ids = word + e_acute + [byte[0x80]] + word  # é then a stray continuation byte: all three are U+FFFD
    assert tok.decode(ids) == "hello\ufffd\ufffd\ufffd hello"
    pieces, tail = streamed(tok, ids)
    assert "".join(pieces) + tail == tok.decode(ids) and "é" not in "".join(pieces)


def test_printed_text_is_tokenizers_decode_for_random_ids(any_tok):
    """Property: for random id sequences (any id, specials and ids past the tokenizer included; ids of
    multi-byte text shuffled), what streams out is decode of the same ids, specials shown or not."""
    rng = random.Random(2024)
    vocab = any_tok.vocab_size
    text_ids = any_tok.encode("I love python and Mathias. é€😀 日本 ✓  a\n\n b")
    for n in range(400):
        kind = n % 3
        if kind == 0:
            ids = [rng.randrange(vocab + 40) for _ in range(rng.randint(1, 40))]
        elif kind == 1:
            ids = [rng.randrange(min(vocab, 600)) for _ in range(rng.randint(1, 40))]  # control and byte ids
        else:
            ids = text_ids + [rng.randrange(vocab) for _ in range(3)]
            rng.shuffle(ids)
        for show in (False, True):
            pieces, tail = streamed(any_tok, ids, show)
            assert "".join(pieces) + tail == any_tok.decode(ids, show), (ids, show)
