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
