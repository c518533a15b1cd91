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
    assert zero.serial_device == "/dev/ttyS0"  # the mini UART: the PL011 serves Bluetooth


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
    (tmp_path / "rpi5.toml").write_text("\n".join(lines + [line]) + "\n")
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
    (boards_dir / "rpi5.toml").write_text("\n".join([*lines, f"description = {value}"]) + "\n")
    result, shown = cli("boards")
    assert result.exit_code == 0, result.output
    assert value.strip('"') in shown, shown
