"""The Arm flow's pure parts: targets, the fit verdict in bytes, Vela's figures, calibration input."""

from pathlib import Path

import pytest
import torch

from toolchain import boards
from toolchain.errors import CapacityError, InputError, UsageError
from toolchain.export import arm
from toolchain.model.tokenizer import ByteTokenizer


def test_ethos_u_takes_its_npu_and_vela_configuration_from_the_board():
    t = arm.target_for("ethos-u", boards.get("corstone-320"))
    assert (t.accelerator, t.system_config, t.memory_mode, t.clock_hz) == (
        "ethos-u85-256", "Ethos_U85_SYS_DRAM_Mid", "Sram_Only", 1_000_000_000)
    assert t.compile_spec().compiler_flags[-3:] == ["--output-format=raw", "--system-config=Ethos_U85_SYS_DRAM_Mid",
                                                    "--memory-mode=Sram_Only"]
    assert arm.target_for("tosa", None).name == "TOSA-1.0+INT"


@pytest.mark.parametrize("backend, board, message", [
    ("ethos-u", None, "needs --board"),
    ("ethos-u", "rpi5", "has no Ethos-U NPU"),
    ("xnnpack", None, "not an Arm backend"),
    ("tosa", "corstone-300", "--backend tosa takes no --board"),
])
def test_targets_that_cannot_be_are_refused(backend, board, message):
    with pytest.raises(UsageError, match=message):
        arm.target_for(backend, boards.get(board) if board else None)


def test_the_estimate_names_each_shortfall_in_bytes():
    fit = arm.estimate(boards.get("corstone-320"), parameters=354_483_968, state=12_632_064, quant="a8w8")
    assert not fit.fits and fit.estimate
    msg = fit.message()
    assert "corstone-320: does NOT fit" in msg
    assert f"short by {354_483_968 - 256 * 2**20:,} B" in msg
    assert f"short by {12_632_064 - 4 * 2**20:,} B" in msg
    with pytest.raises(CapacityError, match="does NOT fit"):
        arm.refuse(fit)


def test_a_program_one_byte_too_big_does_not_fit_and_one_that_fills_it_does():
    board = boards.get("corstone-300")
    flash, sram = board.program_memory_bytes, board.sram_bytes
    assert arm.verdict(board, flash, sram - 100, 100).fits
    over = arm.verdict(board, flash + 1, 10, 10)
    assert not over.fits and "short by 1 B" in over.message()
    scratch = arm.verdict(board, 10, sram - 99, 100)
    assert not scratch.fits and [n.fits for n in scratch.needs] == [True, False]
    assert scratch.to_dict()["needs"][1]["short_bytes"] == 1
    arm.refuse(arm.verdict(board, 10, 10, 10))  # fits: no error


def _runs(tmp_path: Path, rows: list[dict[str, str]]) -> list[arm.VelaRun]:
    return [arm.VelaRun(tmp_path / f"delegate{i}", b"", summary=row) for i, row in enumerate(rows)]


def test_vela_budget_sums_cycles_and_takes_the_largest_scratch(tmp_path):
    rows = [{"cycles_total": "1000", "cycles_npu": "600", "sram_memory_used": "2.0", "off_chip_flash_memory_used": "10",
             "dram_memory_used": "0", "total_npu_encoded_weights": "500", "nn_macs": "4000"},
            {"cycles_total": "3000", "cycles_npu": "1400", "sram_memory_used": "5.5", "off_chip_flash_memory_used": "1",
             "dram_memory_used": "0", "total_npu_encoded_weights": "100", "nn_macs": "6000"}]
    b = arm.vela_budget(_runs(tmp_path, rows), arm.target_for("ethos-u", boards.get("corstone-300")))
    assert (b["cycles_per_token"], b["npu_cycles_per_token"], b["npu_macs_per_token"]) == (4000, 2000, 10000)
    assert b["us_per_token"] == pytest.approx(8.0)  # 4000 cycles at 500 MHz
    assert b["sram_bytes"] == int(5.5 * 1024) and b["flash_bytes"] == 11 * 1024
    assert [d["csv"] for d in b["per_delegate"]] == ["vela/delegate0", "vela/delegate1"]


def test_a_vela_summary_that_is_not_a_number_is_refused(tmp_path):
    rows = [{"cycles_total": "lots"}]
    with pytest.raises(InputError, match="cycles_total='lots', not a number"):
        arm.vela_budget(_runs(tmp_path, rows), arm.target_for("tosa", None))


def test_a_missing_vela_summary_is_named(tmp_path):
    with pytest.raises(InputError, match="Vela wrote no summary"):
        arm._read_summary(tmp_path)


def test_calibration_sequences_start_with_bos_and_fill_to_length():
    seqs = arm.sequences(ByteTokenizer(), 1, ("ab", "xyz"), 7, 259)
    assert seqs == [[1, 100, 101, 100, 101, 100, 101], [1, 123, 124, 125, 123, 124, 125]]


def test_calibration_text_without_any_token_of_the_vocabulary_is_refused():
    with pytest.raises(InputError, match="gives no tokens"):
        arm.sequences(ByteTokenizer(), 1, ("zz",), 4, vocab=10)


def test_calibration_file_errors_are_one_line(tmp_path):
    empty = tmp_path / "c.txt"
    empty.write_text("\n  \n")
    with pytest.raises(InputError, match="has no text"):
        arm.calibration_texts(empty)
    with pytest.raises(InputError, match="--calibration"):
        arm.calibration_texts(tmp_path / "missing.txt")
    bad = tmp_path / "b.txt"
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InputError, match="--calibration"):
        arm.calibration_texts(bad)
    good = tmp_path / "g.txt"
    good.write_text("one\n\ntwo\n")
    assert arm.calibration_texts(good) == ("one", "two")


def test_macs_are_counted_for_the_matrix_operators():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(8, 4)
            self.conv = torch.nn.Conv1d(4, 4, 3, groups=4)

        def forward(self, x):
            y = self.lin(x)  # [1, 5, 4]: 5 * 4 * 8 MACs
            z = self.conv(y.transpose(1, 2))  # [1, 4, 3]: 12 * 3 MACs (depthwise)
            return torch.bmm(z, z.transpose(1, 2))  # [1, 4, 4]: 16 * 3 MACs

    gm = torch.export.export(M(), (torch.zeros(1, 5, 8),)).run_decompositions({}).graph_module
    macs = {str(n.target): arm.node_macs(n) for n in gm.graph.nodes if n.op == "call_function" and arm.node_macs(n)}
    assert sorted(macs.values()) == [36, 48, 160]


def test_reject_ops_keeps_the_named_operators_on_the_cpu():
    gm = torch.export.export(torch.nn.Linear(2, 2), (torch.zeros(1, 2),)).graph_module
    nodes = [n for n in gm.graph.nodes if n.op == "call_function"]
    keep = arm.RejectOps(["aten.linear.default"])
    assert [keep.is_node_supported({}, n) for n in nodes] == [False]
    assert all(arm.RejectOps([]).is_node_supported({}, n) for n in nodes)


@pytest.mark.parametrize("args, needle", [
    (["--backend", "xnnpack", "--board", "corstone-300"], "are for the Arm backends (ethos-u, tosa), not xnnpack"),
    (["--backend", "xnnpack", "--quant", "a8w8"], "--quant a8w8 is not a xnnpack scheme"),
    (["--backend", "ethos-u"], "--backend ethos-u needs --board"),
    (["--backend", "ethos-u", "--board", "rpi5"], "board 'rpi5' has no Ethos-U NPU"),
    (["--backend", "ethos-u", "--board", "corstone-9"], "unknown board 'corstone-9'"),
    (["--backend", "ethos-u", "--board", "corstone-300", "--quant", "8da4w"], "--quant 8da4w is not an Arm scheme"),
    (["--backend", "tosa", "--min-agreement", "nan"], "--min-agreement nan must be a fraction in [0, 1]"),
    (["--backend", "tosa", "--check-steps", "-1"], "--check-steps -1 must be in [0 (no check)"),
    (["--backend", "tosa", "--draft-model", "tiny"], "--draft-model is not supported with --backend tosa"),
    (["--backend", "npu9"], "unknown backend 'npu9'"),
])
def test_bad_arm_export_options_fail_before_any_work(tmp_path, args, needle):
    from click.testing import CliRunner

    from toolchain.cli import main

    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["export", "--model", "tiny", "--out", str(out), *args])
    assert result.exit_code == 2, result.output
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], result.output
    assert not out.exists()


@pytest.mark.parametrize("command", [
    ["run", "--board", "corstone-300"],
    ["flash", "--board", "corstone-320", "--rollback"],
    ["stop", "--board", "corstone-300"],
    ["image", "--board", "corstone-300", "--out", "img"],
])
def test_commands_that_need_a_reachable_board_say_what_a_bare_metal_one_needs(tmp_path, monkeypatch, command):
    from click.testing import CliRunner

    from toolchain.cli import main

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 2, result.output
    assert "is a bare-metal board" in result.output and "--executorch-cortex-m DIR" in result.output
    assert "Traceback" not in result.output and not list(tmp_path.iterdir())


def test_a_missing_arm_tool_is_named(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.startswith("tosa_ref") else
                        real(name, *a))
    with pytest.raises(UsageError, match=r"the TOSA reference model \(tosa-tools\) is not installed"):
        arm.check_numerics(None, None, None, [], arm.target_for("tosa", None), [1])


def test_a_refused_arm_export_leaves_the_earlier_one_as_it_was(tmp_path, monkeypatch):
    from toolchain import api
    from toolchain.errors import ValidationFailed

    out = tmp_path / "out"
    (out / "vela").mkdir(parents=True)
    (out / "vela" / "old.csv").write_text("old")
    (out / "model.pte").write_bytes(b"old program")
    scratch = []

    def refused(net, tok, *, vela_dir, **kw):  # Vela ran, then the check failed
        vela_dir.mkdir(parents=True)
        (vela_dir / "new.csv").write_text("new")
        scratch.append(vela_dir)
        raise ValidationFailed("agrees on 50% of 32 steps")

    monkeypatch.setattr(arm, "export", refused)
    with pytest.raises(ValidationFailed, match="50%"):
        api.export_model("tiny", out, backend="tosa", max_seq_len=16)
    assert sorted(p.name for p in (out / "vela").iterdir()) == ["old.csv"]
    assert (out / "model.pte").read_bytes() == b"old program"
    assert not scratch[0].exists()  # the refused run's reports are gone too
