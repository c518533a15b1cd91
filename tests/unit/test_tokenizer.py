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
