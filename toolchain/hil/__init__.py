"""Hardware-in-the-loop testing: the pytest plugin (``plugin``), the board it hands to tests
(``board``) and assertions on its reports (``asserts``)."""

from toolchain.hil.asserts import (
    assert_decode_tok_s_at_least,
    assert_stops_at_eos,
    assert_ttft_ms_under,
    assert_validates,
)

__all__ = ["assert_decode_tok_s_at_least", "assert_stops_at_eos", "assert_ttft_ms_under", "assert_validates"]
