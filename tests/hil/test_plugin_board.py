"""The pytest plugin handing a real board to another project's tests (pytester), on the host board:
one bring-up for the session, generations validated and recorded in JUnit XML and the JSON report,
the assertion helpers failing when the board does not meet them; and a lying board failing
``assert_validates``."""

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from runner_io import TIMEOUTS, lying_bundle

from toolchain import api
from toolchain.deploy.bringup import bring_up
from toolchain.hil import assert_validates
from toolchain.hil.board import BoardUnderTest

pytestmark = [pytest.mark.hil, pytest.mark.slow]

OUTSIDE_TESTS = """
from toolchain.hil import assert_decode_tok_s_at_least, assert_stops_at_eos, assert_ttft_ms_under, assert_validates
from toolchain.link import protocol


def test_text_and_ids(edgelm_board):
    r = edgelm_board.generate("Twinkle", tokens=12, ignore_eos=True)
    assert_validates(r)
    assert len(r.generated_token_ids) == 12 and r.prompt_token_ids == edgelm_board.tokenize("Twinkle")
    again = edgelm_board.generate(r.prompt_token_ids, tokens=12, ignore_eos=True)
    assert again.generated_token_ids == r.generated_token_ids
    assert_ttft_ms_under(r, 60_000)
    assert_decode_tok_s_at_least(r, 0.5)


def test_sampling_options(edgelm_board):
    a = edgelm_board.generate("Twinkle", tokens=16, temperature=0.9, top_k=40, top_p=0.95, seed=7, ignore_eos=True)
    b = edgelm_board.generate("Twinkle", tokens=16, temperature=0.9, top_k=40, top_p=0.95, seed=7, ignore_eos=True)
    assert_validates(a)
    assert_validates(b)
    assert a.generated_token_ids == b.generated_token_ids and a.sampling["seed"] == 7


def test_raw_frames_then_a_request(edgelm_board):
    edgelm_board.send_raw(b"\\x05garbage\\x00")
    edgelm_board.send_frame(0x7F, b"?")
    errors = [m for _, m in edgelm_board.frames(3.0) if isinstance(m, protocol.Error)]
    assert [e.code for e in errors][:2] == [protocol.ERR_BAD_FRAME, protocol.ERR_BAD_REQUEST], errors
    assert_validates(edgelm_board.generate("Twinkle", tokens=4, ignore_eos=True))


def test_a_floor_the_board_cannot_meet(edgelm_board):
    assert_decode_tok_s_at_least(edgelm_board.generate("Twinkle", tokens=4, ignore_eos=True), 1e9)


def test_ignore_eos_never_stops_at_eos(edgelm_board):
    assert_stops_at_eos(edgelm_board.generate("Twinkle", tokens=4, ignore_eos=True))
"""


def test_another_projects_tests_get_a_board(pytester, hil_workdir):
    pytester.makepyfile(OUTSIDE_TESTS)
    junit, report = pytester.path / "junit.xml", pytester.path / "edgelm.json"
    r = pytester.runpytest_subprocess("-rA", "--edgelm-board", "host:local", "--edgelm-model", "tiny",
                           "--edgelm-workdir", str(hil_workdir), f"--junitxml={junit}", "--edgelm-report", str(report))
    r.assert_outcomes(passed=3, failed=2)
    r.stdout.fnmatch_lines(["*AssertionError: host on local: decode * tok/s, below the floor 1e+09*",
                            "*AssertionError: host on local: generation stopped on max tokens, not at EOS, after 4*"])
    # the bring-up's steps printed as they happened, though pytest captures output
    r.stdout.fnmatch_lines(["edgelm host:local: export: *", "edgelm host:local: serving release * (HELLO said)"])
    # each test's report carries its streams (text and verdict) and what the runner logged meanwhile
    r.stdout.fnmatch_lines(["*- edgelm board -*", "PASS host local: 12 tokens: *", "PASS host local: 12 tokens: *"])
    # JUnit XML: each test's generations as properties
    props = {tc.get("name"): [json.loads(p.get("value")) for p in tc.iter("property") if p.get("name") == "edgelm"]
             for tc in ET.parse(junit).getroot().iter("testcase")}
    assert [p["verdict"] for p in props["test_text_and_ids[host:local]"]] == ["PASS", "PASS"]
    assert props["test_a_floor_the_board_cannot_meet[host:local]"][0]["generated"] == 4
    # the JSON report: every generation, all on one bring-up (one release, one load)
    runs = json.loads(report.read_text())["runs"]
    assert len(runs) == 7
    assert {run["report"]["release"] for run in runs} == {runs[0]["report"]["release"]}
    assert {run["report"]["board_stats"]["load_ms"] for run in runs} == {runs[0]["report"]["board_stats"]["load_ms"]}
    assert runs[0]["test"].endswith("test_text_and_ids[host:local]")
    outcomes = {k.split("::")[-1]: v for k, v in json.loads(report.read_text())["outcomes"].items()}
    assert {k: v[0] for k, v in outcomes.items()} == {
        "test_text_and_ids[host:local]": "passed", "test_sampling_options[host:local]": "passed",
        "test_raw_frames_then_a_request[host:local]": "passed", "test_a_floor_the_board_cannot_meet[host:local]":
        "failed", "test_ignore_eos_never_stops_at_eos[host:local]": "failed"}
    assert "below the floor" in outcomes["test_a_floor_the_board_cannot_meet[host:local]"][1]


def test_a_board_that_trusts_a_key_gets_bundles_the_plugin_signs(pytester, hil_workdir, tmp_path):
    """`edgelm trust` on the board, then the plugin: unsigned is refused (an error, not a skip); with
    --edgelm-sign-key the same tests pass."""
    pytester.makepyfile(OUTSIDE_TESTS.split("def test_sampling_options")[0])
    key = api.keygen(tmp_path / "keys" / "release")
    api.trust(Path(key["public_key"]), "host", "local", hil_workdir)
    try:
        args = ["-rA", "--edgelm-board", "host:local", "--edgelm-model", "tiny", "--edgelm-workdir", str(hil_workdir)]
        r = pytester.runpytest_subprocess(*args)
        r.assert_outcomes(errors=1)
        r.stdout.fnmatch_lines(["*accepts only signed bundles*hint: sign it with a key the target trusts*"
                                "--edgelm-sign-key KEY*"])
        r = pytester.runpytest_subprocess(*args, "--edgelm-sign-key", key["private_key"])
        r.assert_outcomes(passed=1)
    finally:
        api.untrust(None, "host", "local", hil_workdir, all_keys=True, allow_unsigned=True)


def test_a_lying_board_fails_assert_validates(hil_workdir, tmp_path):
    base = api.RunRequest(board="host", target="local", model="tiny", prompt="", tokens=1, quant="8da4w",
                          workdir=hil_workdir, fidelity=False)
    prep = api.prepare_run(base)
    prep.bundle = lying_bundle(prep.exported.pte, tmp_path / "liar")  # sends its drafts unchecked
    with bring_up(prep.target, prep.bundle, timeouts=TIMEOUTS) as up:
        board = BoardUnderTest(prep, up, base)
        lie = board.generate("Once upon a time, a small board", tokens=48, ignore_eos=True)
        with pytest.raises(AssertionError, match="the stream does not validate: FAIL"):
            assert_validates(lie)
        assert_validates(board.generate("Once upon a time, a small board", tokens=48, ignore_eos=True, draft=False))
