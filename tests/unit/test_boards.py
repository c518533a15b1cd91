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
                       match="unknown board 'rpi9'; known boards: host, jetson-orin-nano, pizero2w, rpi3b, rpi4, rpi5"):
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
        boards.load_registry(tmp_path)


def test_duplicate_names_are_refused():
    reg = boards.BoardRegistry()
    reg.add(boards.get("rpi5"))
    with pytest.raises(InputError, match="defined twice"):
        reg.add(boards.get("rpi5"))
