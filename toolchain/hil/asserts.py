"""Assertions for hardware-in-the-loop tests on an ``api.RunReport`` (what ``edgelm_board.generate``
returns). Each fails with one message that says what the board did."""

from __future__ import annotations

import math
from typing import Any


def _where(report: Any) -> str:
    return f"{report.board} on {report.target}"


def assert_validates(report: Any) -> None:
    """The board's stream matched the host reference (the PASS of ``edgelm run``)."""
    v = report.validation
    if v["verdict"] != "PASS":
        raise AssertionError(f"{_where(report)}: the stream does not validate: {v['verdict']} ({v.get('reason')})")


def _stat(report: Any, name: str) -> float:
    value = report.board_stats.get(name)
    if value is None:
        raise AssertionError(f"{_where(report)}: the board reported no {name} (no STATS frame)")
    if not math.isfinite(float(value)):
        raise AssertionError(f"{_where(report)}: the board reported {name} {value}, not a number to compare")
    return float(value)


def assert_decode_tok_s_at_least(report: Any, floor: float) -> None:
    """The board decoded at least ``floor`` tokens per second (its own clock)."""
    got = _stat(report, "decode_tok_s")
    if not got >= floor:
        raise AssertionError(f"{_where(report)}: decode {got:.1f} tok/s, below the floor {floor:g}")


def assert_ttft_ms_under(report: Any, ceiling_ms: float) -> None:
    """The first token came within ``ceiling_ms`` milliseconds of the request (its own clock)."""
    got = _stat(report, "ttft_ms")
    if not got < ceiling_ms:
        raise AssertionError(f"{_where(report)}: first token after {got:.0f} ms, not under {ceiling_ms:g} ms")


def assert_stops_at_eos(report: Any) -> None:
    """Generation ended on an end-of-sequence token, not on the length limit."""
    if report.stop_reason != "eos":
        raise AssertionError(f"{_where(report)}: generation stopped on {report.stop_reason}, not at EOS, after "
                             f"{len(report.generated_token_ids)} tokens")
