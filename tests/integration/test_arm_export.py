"""`tiny` lowered to Ethos-U55 (corstone-300) and Ethos-U85 (corstone-320) with ExecuTorch's Arm backend
and Vela, checked on the TOSA reference model against the quantized eager model, and budgeted.

Each export takes one to two minutes on two cores (quantization, the Arm passes, Vela, 32 steps on the
reference model); each board is exported once for the module.
"""

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from toolchain import boards
from toolchain.errors import InputError
from toolchain.export import arm
from toolchain.model.config import PRESETS
from toolchain.model.lfm2 import build_model
from toolchain.model.tokenizer import ByteTokenizer


def edgelm(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "toolchain.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module", params=["corstone-300", "corstone-320"])
def exported(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    proc = edgelm("export", "--model", "tiny", "--backend", "ethos-u", "--board", request.param, "--max-seq-len", "64",
                  "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    return request.param, out, json.loads(proc.stdout)


def test_the_reference_model_agrees_with_the_quantized_model_over_32_teacher_forced_steps(exported):
    board, _, summary = exported
    check = summary["arm"]["check"]
    assert check["teacher_forced"] and check["steps"] == 32
    assert check["target"] == boards.get(board).npu
    assert check["greedy_agreement"] >= 0.9, check
    # every step ran every delegate on the reference model (none ran eagerly)
    delegates = summary["arm"]["vela"]["delegates"]
    assert delegates >= 1 and check["delegate_calls_on_reference_model"] == 32 * delegates
    print(f"{board}: greedy agreement {check['greedy_agreement']:.1%}, max |error| {check['max_abs_error']}")


def test_the_budget_carries_vela_cycles_and_memory(exported):
    board, out, summary = exported
    vela, budget, fit = summary["arm"]["vela"], summary["arm"]["budget"], summary["arm"]["fit"]
    profile = boards.get(board)
    assert vela["clock_hz"] == profile.npu_clock_mhz * 1_000_000
    assert vela["cycles_per_token"] > 0 and vela["npu_macs_per_token"] > 0 and vela["sram_bytes"] > 0
    assert vela["us_per_token"] == pytest.approx(vela["cycles_per_token"] / vela["clock_hz"] * 1e6)
    for delegate in vela["per_delegate"]:  # the figures come from Vela's own summary files, kept in the export
        assert list((out / delegate["csv"]).glob("*_summary_*.csv"))
    assert sum(d["cycles"] for d in vela["per_delegate"]) == vela["cycles_per_token"]
    assert budget["program_bytes"] == summary["size_bytes"] and budget["arena_bytes"] > 0
    assert fit["board"] == board and fit["fits"] and not fit["estimate"]
    assert {n["what"] for n in fit["needs"]} == {"program", "sram"}
    cov = summary["arm"]["coverage"]
    assert cov["macs_total"] > 0 and cov["npu_mac_share"] >= 0.9
    print(f"{board}: {vela['cycles_per_token']} cycles/token = {vela['us_per_token']:.0f} us, NPU SRAM "
          f"{vela['sram_bytes']} B, MACs on the NPU {cov['npu_mac_share']:.1%}")


def test_the_manifest_says_what_stays_on_the_cpu_and_why(exported):
    _, out, _ = exported
    shown = edgelm("inspect", str(out / "model.pte"), "--json")
    assert shown.returncode == 0, shown.stderr
    body = json.loads(shown.stdout)
    assert body["delegation"]["backend"] == "ethos-u" and body["arm"]["tokens_per_call"] == 1
    outside = body["delegation"]["non_delegated_ops"]
    assert outside["aten.index_put.default"]["count"] == 4  # the KV-cache writes of the two attention layers
    assert all(info["why"] != "not supported by the backend's partitioner" for info in outside.values()), outside
    assert body["delegation"]["decoder_layers_fully_delegated"]
    q = body["quantization"]
    assert q["scheme"] == "a8w8" and q["linear_layers"] == q["linear_layers_quantized"] > 0 and q["lm_head"] == "int8"
    text = edgelm("inspect", str(out / "model.pte"))
    assert text.returncode == 0 and "one token per call" in text.stdout and "reference-model check" in text.stdout


def test_the_cortex_m_build_takes_only_its_own_boards_program(exported, tmp_path):
    board, out, _ = exported
    other = "corstone-320" if board == "corstone-300" else "corstone-300"
    proc = edgelm("build", "--board", other, "--pte", str(out / "model.pte"), "--out", str(tmp_path / "fw"))
    assert proc.returncode == 2 and f"exported for {board}, not {other}" in proc.stderr
    proc = edgelm("build", "--board", board, "--pte", str(out / "model.pte"), "--out", str(tmp_path / "fw"))
    assert proc.returncode == 5 and "is NOT linked" in proc.stderr and "Traceback" not in proc.stderr
    assert (tmp_path / "fw" / "selftest.elf").is_file()


def test_lfm2_350m_on_corstone_320_gets_a_verdict_in_bytes_not_a_crash(tmp_path):
    proc = edgelm("export", "--model", "lfm2-350m", "--backend", "ethos-u", "--board", "corstone-320", "--out",
                  str(tmp_path / "big"), "--json", timeout=120)
    assert proc.returncode == 4, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    assert "corstone-320: does NOT fit" in proc.stderr and "short by" in proc.stderr
    verdict = json.loads(proc.stdout)
    assert verdict["written"] is False and verdict["fit"]["fits"] is False
    short = {n["what"]: n["short_bytes"] for n in verdict["fit"]["needs"]}
    assert short["program"] > 0 and short["state"] > 0
    assert not (tmp_path / "big").exists()


# --- can the check be fooled? A two-layer model, lowered once, and checked against wrong references.


@pytest.fixture(scope="module")
def small_lowered(tmp_path_factory):
    cfg = dataclasses.replace(PRESETS["tiny"], layer_types=("conv", "full_attention"))
    net = build_model(cfg, max_seq_len=16, seed=3, init_std=0.1).eval()
    target = arm.target_for("ethos-u", boards.get("corstone-300"))
    tok = ByteTokenizer()
    step = arm.Step(net).eval()
    converted = arm.quantize(step, target, "a8w8", arm.sequences(tok, 1, arm.CALIBRATION_TEXTS[:2], 8, 259))
    edge, runs = arm.lower(converted, target, tmp_path_factory.mktemp("vela"))
    seq = arm.sequences(tok, 1, (arm.CHECK_TEXT,), 12, 259)[0]
    return edge, runs, converted, step, target, seq


def test_the_check_passes_an_honest_lowering(small_lowered):
    edge, runs, converted, step, target, seq = small_lowered
    check = arm.check_numerics(edge, converted, step, runs, target, seq)
    assert check["greedy_agreement"] == 1.0 and check["max_abs_error"] == 0.0


class Flipped(torch.nn.Module):
    """The quantized model with its vocabulary reversed: a reference that is not the program's."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, *inputs):
        return self.inner(*inputs).flip(-1)


def test_the_check_fails_when_the_reference_differs(small_lowered):
    edge, runs, converted, step, target, seq = small_lowered
    check = arm.check_numerics(edge, Flipped(converted), step, runs, target, seq)
    assert check["max_abs_error"] > 0.1 and check["greedy_agreement"] < 0.9, check


def test_a_delegate_whose_graph_was_not_recorded_is_refused(small_lowered):
    edge, runs, converted, step, target, seq = small_lowered
    with pytest.raises(InputError, match="no recorded TOSA graph"):
        arm.check_numerics(edge, converted, step, [], target, seq)


def test_vela_is_restored_after_a_failed_lowering(tmp_path):
    import executorch.backends.arm.ethosu.backend as ethosu_backend

    original = ethosu_backend.vela_compile
    with pytest.raises(RuntimeError):
        with arm._vela_recorder(tmp_path):
            assert ethosu_backend.vela_compile is not original
            raise RuntimeError("the lowering failed")
    assert ethosu_backend.vela_compile is original


def test_the_tosa_backend_needs_no_board_and_is_checked_on_the_reference_model(tmp_path):
    cfg = dataclasses.replace(PRESETS["tiny"], layer_types=("full_attention",))
    net = build_model(cfg, max_seq_len=8, seed=5, init_std=0.1).eval()
    target = arm.target_for("tosa", None)
    tok = ByteTokenizer()
    step = arm.Step(net).eval()
    converted = arm.quantize(step, target, "a8w8", arm.sequences(tok, 1, arm.CALIBRATION_TEXTS[:1], 8, 259))
    edge, runs = arm.lower(converted, target, tmp_path / "vela")
    assert runs == []  # no Vela: the delegate's payload is the TOSA graph itself
    check = arm.check_numerics(edge, converted, step, runs, target, arm.sequences(tok, 1, ("hi",), 6, 259)[0])
    assert check["delegate_calls_on_reference_model"] >= 6 and check["greedy_agreement"] == 1.0
    wrong = arm.check_numerics(edge, Flipped(converted), step, runs, target, arm.sequences(tok, 1, ("hi",), 6, 259)[0])
    assert wrong["greedy_agreement"] < 0.9
