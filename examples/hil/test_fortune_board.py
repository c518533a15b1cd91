"""Two hardware-in-the-loop tests of a fortune-telling gadget: the board must tell a fortune that
matches the host's reference token for token, quickly enough, and end it by itself."""

from toolchain.hil import assert_decode_tok_s_at_least, assert_stops_at_eos, assert_ttft_ms_under, assert_validates


def test_the_board_tells_a_fortune(edgelm_board):
    report = edgelm_board.generate("You will", tokens=40)
    assert_validates(report)
    assert len(report.generated_token_ids) == 40 or report.stop_reason == "eos"
    assert any(c.isalpha() for c in report.text), report.text
    # Floors that an emulated board meets too; a real Pi 5 clears them by far.
    assert_decode_tok_s_at_least(report, 2.0)
    assert_ttft_ms_under(report, 30_000)


def test_a_fortune_ends_by_itself(edgelm_board):
    report = edgelm_board.generate("A wise old owl", tokens=200)
    assert_validates(report)
    assert_stops_at_eos(report)
