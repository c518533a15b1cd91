import json
import os

import pytest

from toolchain import boards
from toolchain.errors import InputError, UsageError


def test_all_profiles_load():
    names = [b.name for b in boards.load_registry().all()]
    assert {"rpi5", "rpi4", "pizero2w", "jetson-orin-nano", "host"} <= set(names)
    rpi5 = boards.get("rpi5")
    assert rpi5.arch == "aarch64" and rpi5.qemu_cpu == "cortex-a76" and "-mcpu=cortex-a76" in rpi5.cpu_flags
    assert boards.get("rpi4").qemu_cpu == "cortex-a72"


def test_the_pi_zero_2_w_is_a_512_mb_cortex_a53():
    zero = boards.get("pizero2w")
    assert (zero.arch, zero.qemu_cpu, zero.cpu_flags) == ("aarch64", "cortex-a53", ("-mcpu=cortex-a53",))
    assert (zero.cores, zero.threads, zero.ram_mb, zero.glibc) == (4, 4, 512, "2.36")
    assert zero.serial_device == "/dev/ttyAMA0"  # the PL011, Bluetooth moved off it
    assert zero.uart_for("/dev/ttyAMA0").config == ("enable_uart=1", "dtoverlay=disable-bt")


def test_a_pi_5_serves_on_uart0_of_the_gpio_header_and_knows_its_debug_uart():
    rpi5 = boards.get("rpi5")
    assert rpi5.serial_device == "/dev/ttyAMA0"
    gpio, debug = rpi5.uart_for("/dev/ttyAMA0"), rpi5.uart_for("/dev/ttyAMA10")
    assert gpio.config == ("dtparam=uart0=on",) and gpio.consoles == ("ttyAMA0",)
    assert debug.config == () and debug.consoles == ("serial0", "ttyAMA10")
    assert rpi5.uart_for("/dev/ttyUSB0") is None


@pytest.mark.parametrize("table, message", [
    ('device = "/dev/ttyAMA0"\nwhere = "x"\nconfig = ["dtoverlay=x\\nstart_file=evil.elf"]', "is not one edgelm"),
    ('device = "/dev/ttyAMA0"\nwhere = "x"\nconfig = ["start_file=evil.elf"]', "is not one edgelm writes"),
    ('device = "/dev/ttyAMA0"\nwhere = "x"\nconsoles = ["tty1 init=/bin/sh"]', "must be a device name"),
    ('device = "/dev/../etc/passwd"\nwhere = "x"', "must be a /dev path"),
    ('device = "/dev/ttyAMA9"\nwhere = "x"', "is none of its uarts"),
    ('device = "/dev/ttyAMA0"\nwhere = "x"\nbaud = 1', "unknown field 'baud'"),
    ('device = "/dev/ttyAMA0"', "where must be a string"),
])
def test_bad_uarts_are_refused(tmp_path, table, message):
    text = (boards.BOARDS_DIR / "rpi5.toml").read_text()
    head = text.split("\n[[uarts]]")[0]
    (tmp_path / "rpi5.toml").write_text(head + "\n[[uarts]]\n" + table + "\n")
    with pytest.raises(InputError, match=message):
        boards.load_registry(tmp_path).get("rpi5")


def top_level(lines: list[str], line: str) -> str:
    """A profile's lines with ``line`` among its top-level keys (before its first table)."""
    first_table = next((i for i, x in enumerate(lines) if x.startswith("[")), len(lines))
    return "\n".join(lines[:first_table] + [line] + lines[first_table:]) + "\n"


def test_unknown_board_lists_the_known_ones():
    with pytest.raises(UsageError,
                       match="unknown board 'rpi9'; known boards: corstone-300, corstone-320, host, jetson-orin-nano, "
                             "pizero2w, rpi3b, rpi4, rpi5"):
        boards.get("rpi9")


@pytest.mark.parametrize("line, message", [
    ('arch = "riscv64"', "arch='riscv64'; allowed"),
    ("threads = 9", "threads=9 exceeds cores=4"),
    ('glibc = "two"', "glibc='two'"),
    ("colour = 3", "unknown field 'colour'"),
])
def test_bad_profiles_name_field_and_value(tmp_path, line, message):
    text = (boards.BOARDS_DIR / "rpi5.toml").read_text()
    key = line.split(" = ")[0]
    lines = [x for x in text.splitlines() if not x.startswith(key + " ")]
    (tmp_path / "rpi5.toml").write_text(top_level(lines, line))
    with pytest.raises(InputError, match=message):
        boards.load_registry(tmp_path).get("rpi5")


def test_duplicate_names_are_refused():
    reg = boards.BoardRegistry()
    reg.add(boards.get("rpi5"))
    with pytest.raises(InputError, match="defined twice"):
        reg.add(boards.get("rpi5"))


def test_the_arm_npu_boards_carry_their_npu_and_memories():
    c300, c320 = boards.get("corstone-300"), boards.get("corstone-320")
    assert c300.bare_metal and c320.bare_metal and not boards.get("rpi5").bare_metal
    assert (c300.npu, c300.npu_clock_mhz, c300.vela_system_config, c300.vela_memory_mode) == (
        "ethos-u55-128", 500, "Ethos_U55_High_End_Embedded", "Shared_Sram")
    assert (c320.npu, c320.npu_clock_mhz, c320.vela_system_config) == ("ethos-u85-256", 1000, "Ethos_U85_SYS_DRAM_Mid")
    assert c300.sram_bytes == 2 * 1024 * 1024 and c300.program_memory_bytes == 8 * 1024 * 1024
    assert c320.sram_bytes == 4 * 1024 * 1024 and c320.program_memory_bytes == 256 * 1024 * 1024
    assert c300.glibc is None and c300.cross_prefix == "arm-none-eabi-" and "-mcpu=cortex-m55" in c300.cpu_flags
    with pytest.raises(UsageError, match="bare metal"):
        c300.glibc_tuple


@pytest.mark.parametrize("line, message", [
    # Vela's arguments are joined and split on spaces by the backend: a value must not smuggle flags in
    ('vela_system_config = "X --output-dir=/etc"', "must be a section name"),
    ('vela_memory_mode = "../../vela.ini"', "must be a section name"),
    ('npu = "ethos-u55-128 --verbose-all"', "must be a Vela accelerator config"),
    ('npu = "ethos-u99-1"', "must be a Vela accelerator config"),
    ('program_memory = "SDCARD"', "program_memory='SDCARD' is not a region of its memory map"),
    ('code_region = "flash"', "code_region='flash' is not a region"),
    ('serial_device = "/dev/ttyAMA0"', "must name the UART"),
    ('glibc = "2.36"', "has no glibc"),
    ('triple = "aarch64-linux-gnu"', "must be 'arm-none-eabi'"),
    ("uart_base = -1", "uart_base=-1 must be a positive integer"),
])
def test_bad_npu_profiles_are_refused(tmp_path, line, message):
    text = (boards.BOARDS_DIR / "corstone-300.toml").read_text()
    key = line.split(" = ")[0]
    lines = [x for x in text.splitlines() if not x.startswith(key + " ")]
    table = lines.index("[memory]")  # top-level keys go before the first table
    (tmp_path / "corstone-300.toml").write_text("\n".join(lines[:table] + [line] + lines[table:]) + "\n")
    with pytest.raises(InputError, match=message):
        boards.load_registry(tmp_path).get("corstone-300")


def test_a_board_with_an_npu_needs_its_vela_configuration(tmp_path):
    text = (boards.BOARDS_DIR / "corstone-300.toml").read_text()
    lines = [x for x in text.splitlines() if not x.startswith("vela_system_config ")]
    (tmp_path / "corstone-300.toml").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="needs vela_system_config"):
        boards.load_registry(tmp_path).get("corstone-300")


@pytest.mark.parametrize("region, message", [
    ('SRAM = [0x31000000, 0, "rw"]', "does not fit a 32-bit address space"),
    ('SRAM = [0xFFFFF000, 8, "rw"]', "does not fit a 32-bit address space"),
    ('SRAM = [0x30000000, 64, "rw"]', "memory regions DTCM and SRAM overlap"),
    ('SRAM = [0x31000000, 2048, "rw; x"]', "access 'rw; x' must be letters of 'rwx'"),
    ('SRAM = "big"', r"must be \[origin, size in KiB"),
    ('sram = [0x31000000, 2048, "rw"]', "must be upper-case letters"),
])
def test_bad_memory_maps_are_refused(tmp_path, region, message):
    text = (boards.BOARDS_DIR / "corstone-300.toml").read_text()
    lines = [x for x in text.splitlines() if not x.startswith("SRAM ")] + [region]
    (tmp_path / "corstone-300.toml").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=message):
        boards.load_registry(tmp_path).get("corstone-300")


@pytest.fixture
def boards_dir(tmp_path, monkeypatch):
    """A boards folder of our own, with rpi5 and host as shipped: what every command reads."""
    folder = tmp_path / "boards"
    folder.mkdir()
    for name in ("rpi5", "host"):
        (folder / f"{name}.toml").write_text((boards.BOARDS_DIR / f"{name}.toml").read_text())
    monkeypatch.setattr(boards, "BOARDS_DIR", folder)
    return folder


def cli(*args):
    import io

    from click.testing import CliRunner
    from rich.console import Console

    from toolchain import cli as cli_mod

    screen = Console(file=io.StringIO(), width=400, highlight=False, emoji=False)
    old = cli_mod.console
    cli_mod.console = screen
    try:
        result = CliRunner().invoke(cli_mod.main, list(args))
    finally:
        cli_mod.console = old
    return result, screen.file.getvalue()


def test_a_bad_profile_hides_only_itself(boards_dir):
    (boards_dir / "broken.toml").write_text("name = 'broken'\narch = [unclosed\n")
    (boards_dir / "odd.toml").write_text((boards_dir / "rpi5.toml").read_text().replace('name = "rpi5"', 'name = "odd"')
                                         .replace("cores = 4", "cores = 'four'"))
    reg = boards.load_registry()
    assert [b.name for b in reg.all()] == ["host", "rpi5"]
    assert boards.get("rpi5").qemu_cpu == "cortex-a76"  # the others load and work
    with pytest.raises(InputError, match=r"broken\.toml is not valid TOML"):
        boards.get("broken")
    with pytest.raises(InputError, match=r"odd\.toml: cores='four' must be a positive integer"):
        boards.get("odd")
    assert sorted(p.name for p, _ in reg.problems()) == ["broken.toml", "odd.toml"]
    with pytest.raises(UsageError, match="unknown board 'rpi9'; known boards: host, rpi5"):
        boards.get("rpi9")


def test_boards_lists_the_good_profiles_and_warns_of_a_bad_one(boards_dir):
    (boards_dir / "broken.toml").write_text("name = 'broken'\narch = [unclosed\n")
    result, shown = cli("boards")
    assert result.exit_code == 0, result.output
    assert "rpi5" in shown and "host" in shown
    warnings = [x for x in result.output.splitlines() if x.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("warning:") and "broken.toml" in warnings[0], result.output
    result, _ = cli("run", "--board", "broken", "--workdir", str(boards_dir / "work"))
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert result.exit_code == 3 and len(lines) == 1 and "broken.toml is not valid TOML" in lines[0], result.output


@pytest.mark.parametrize("value", [
    ('"[red]x[/red] and [/] and [bold]b"'),
    ('"[link=file:///etc/passwd]click[/link]"'),
])
def test_a_profile_s_text_is_shown_as_it_is_not_as_markup(boards_dir, value):
    text = (boards_dir / "rpi5.toml").read_text()
    lines = [x for x in text.splitlines() if not x.startswith("description ")]
    (boards_dir / "rpi5.toml").write_text(top_level(lines, f"description = {value}"))
    result, shown = cli("boards")
    assert result.exit_code == 0, result.output
    assert value.strip('"') in shown, shown


def _edgelm_at(columns, *args):
    """`edgelm ARGS` as a terminal of ``columns`` columns runs it (rich reads COLUMNS)."""
    import subprocess
    import sys

    env = {**os.environ, "COLUMNS": str(columns), "NO_COLOR": "1", "TERM": "dumb"}
    proc = subprocess.run([sys.executable, "-m", "toolchain.cli", *args], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_boards_fit_80_columns_and_cut_no_name_or_serial_device():
    items = json.loads(_edgelm_at(80, "boards", "--json"))
    shown = _edgelm_at(80, "boards")
    print(shown)
    lines = shown.splitlines()
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    assert "…" not in shown
    words = {w for line in lines for w in line.split()}
    for b in items:
        assert b["name"] in words and b["serial_device"] in words, (b["name"], b["serial_device"])


def test_boards_wide_shows_every_column_uncut_however_narrow_the_terminal():
    items = json.loads(_edgelm_at(80, "boards", "--json"))
    shown = _edgelm_at(80, "boards", "--wide")
    assert "…" not in shown
    header = shown.splitlines()[1]
    assert [c.strip() for c in header.split("│")[1:-1]] == ["board", "cpu", "cores", "memory", "NPU", "glibc",
                                                            "serial", "target", "description"]
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.split("│")[1:-1]]
                                          for line in shown.splitlines()[3:-1])}
    for b in items:  # one line per board, each value whole
        assert rows[b["name"]][6] == f"{b['serial_device']} @ {b['baud']}"
        assert rows[b["name"]][8] == b["description"]
