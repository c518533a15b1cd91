"""A Raspberry Pi OS card's boot partition: enable_uart=1 and no serial console, byte-exact otherwise,
idempotent, found on a card laid out in a folder, and written both-or-neither."""

from __future__ import annotations

import os

import pytest

from toolchain import boards
from toolchain.deploy import bootfs
from toolchain.errors import DeviceError, InputError, UsageError

MINI_UART = boards.get("rpi4").uart_for("/dev/ttyS0")  # enable_uart=1; consoles serial0, ttyS0

# Raspberry Pi OS bookworm (2024) as written by Raspberry Pi Imager.
BOOKWORM_CONFIG = """\
# For more options and information see
# http://rptl.io/configtxt
# Some settings may impact device functionality. See link above for details

# Uncomment some or all of these to enable the optional hardware interfaces
#dtparam=i2c_arm=on
#dtparam=i2s=on
#dtparam=spi=on

# Enable audio (loads snd_bcm2835)
dtparam=audio=on

# Additional overlays and parameters are documented
# /boot/firmware/overlays/README

# Automatically load overlays for detected cameras
camera_auto_detect=1

# Automatically load overlays for detected DSI displays
display_auto_detect=1

# Automatically load initramfs files, if found
auto_initramfs=1

# Enable DRM VC4 V3D driver
dtoverlay=vc4-kms-v3d
max_framebuffers=2

# Don't have the firmware create an initial video= setting in cmdline.txt.
# Use the kernel's default instead.
disable_fw_kms_setup=1

# Run in 64-bit mode
arm_64bit=1

# Disable compensation for displays with overscan
disable_overscan=1

# Run as fast as firmware / board allows
arm_boost=1

[cm4]
# Enable host mode on the 2711 built-in XHCI USB controller.
# This line should be removed if the legacy DWC2 controller is required
# (e.g. for USB device mode) or if USB support is not required.
otg_mode=1

[cm5]
dtoverlay=dwc2,dr_mode=host

[all]
"""
BOOKWORM_CMDLINE = ("console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 fsck.repair=yes "
                    "rootwait quiet splash plymouth.ignore-serial-consoles cfg80211.ieee80211_regdom=GB\n")
STRIPPED_CMDLINE = ("console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 fsck.repair=yes rootwait quiet splash "
                    "plymouth.ignore-serial-consoles cfg80211.ieee80211_regdom=GB\n")


# --------------------------------------------------------------------------------------------------
# config.txt
# --------------------------------------------------------------------------------------------------

def test_bookworm_config_gets_enable_uart_in_its_final_all_section():
    out = bootfs.enable_uart(BOOKWORM_CONFIG)
    assert out == BOOKWORM_CONFIG + "enable_uart=1\n"
    assert bootfs.enable_uart(out) == out


def test_a_config_ending_in_a_filtered_section_gets_an_all_section():
    text = "dtparam=audio=on\n\n[pi4]\narm_boost=1\n\n[cm4]\notg_mode=1\n"
    out = bootfs.enable_uart(text)
    assert out == text + "[all]\nenable_uart=1\n"
    assert bootfs.enable_uart(out) == out


def test_enable_uart_0_is_replaced_in_place_and_nothing_else_moves():
    text = "# serial\nenable_uart=0\ndtparam=audio=on\n[pi4]\narm_boost=1\n[all]\ngpu_mem=64\n"
    out = bootfs.enable_uart(text)
    assert out == text.replace("enable_uart=0", "enable_uart=1")
    assert bootfs.enable_uart(out) == out
    # under [all] too, with spaces around '='
    text = "[pi3]\nfoo=1\n[all]\nenable_uart = 0\n"
    assert bootfs.enable_uart(text) == "[pi3]\nfoo=1\n[all]\nenable_uart=1\n"


def test_a_later_filtered_enable_uart_0_is_overridden_at_the_end():
    text = "enable_uart=1\n[pi4]\nenable_uart=0\n"
    out = bootfs.enable_uart(text)
    assert out == text + "[all]\nenable_uart=1\n"
    assert bootfs.enable_uart(out) == out


def test_enable_uart_only_for_one_model_or_commented_out_counts_for_nothing():
    for text in ("[pi4]\nenable_uart=1\n", "#enable_uart=1\n", "dtoverlay=disable-bt\n"):
        out = bootfs.enable_uart(text)
        assert out.startswith(text) and out.endswith("enable_uart=1\n") and bootfs.enable_uart(out) == out
    assert bootfs.enable_uart("[pi4]\nenable_uart=1\n") == "[pi4]\nenable_uart=1\n[all]\nenable_uart=1\n"
    assert bootfs.enable_uart("enable_uart=1\n[pi4]\nenable_uart=1\n") == "enable_uart=1\n[pi4]\nenable_uart=1\n"


def test_line_endings_a_missing_final_newline_and_an_empty_file():
    assert bootfs.enable_uart("a=1\r\n[cm4]\r\nb=2\r\n") == "a=1\r\n[cm4]\r\nb=2\r\n[all]\r\nenable_uart=1\r\n"
    assert bootfs.enable_uart("arm_64bit=1") == "arm_64bit=1\nenable_uart=1\n"
    assert bootfs.enable_uart("") == "enable_uart=1\n"


# --------------------------------------------------------------------------------------------------
# cmdline.txt
# --------------------------------------------------------------------------------------------------

def test_bookworm_cmdline_loses_its_serial_console_only():
    out = bootfs.strip_serial_console(BOOKWORM_CMDLINE)
    assert out == STRIPPED_CMDLINE
    assert bootfs.strip_serial_console(out) == out
    assert bootfs.serial_consoles(BOOKWORM_CMDLINE) == ["console=serial0,115200"]


@pytest.mark.parametrize("line, expected", [
    ("console=ttyAMA10,115200 console=tty1 root=/dev/mmcblk0p2 rootwait", "console=tty1 root=/dev/mmcblk0p2 rootwait"),
    ("root=/dev/mmcblk0p2 console=ttyAMA0 rootwait", "root=/dev/mmcblk0p2 rootwait"),
    ("root=/dev/mmcblk0p2 rootwait console=ttyS0,115200n8", "root=/dev/mmcblk0p2 rootwait"),
    ("console=serial1,9600 console=serial0,115200 quiet", "quiet"),
    ("console=tty1 kgdboc=serial0,115200 quiet", "console=tty1 kgdboc=serial0,115200 quiet"),
    ("console=ttyUSB0,115200 quiet", "console=ttyUSB0,115200 quiet"),
    ("xconsole=ttyS0 quiet", "xconsole=ttyS0 quiet"),
    ("console=serial0,115200", ""),
])
def test_serial_consoles_go_everything_else_stays(line, expected):
    for ending in ("\n", ""):
        assert bootfs.strip_serial_console(line + ending) == expected + ending
    assert bootfs.strip_serial_console(expected) == expected


def test_a_cmdline_of_two_lines_is_refused():
    with pytest.raises(InputError, match="more than one line"):
        bootfs.strip_serial_console("console=serial0,115200 quiet\nroot=/dev/sda2\n")


# --------------------------------------------------------------------------------------------------
# A card, laid out in a folder
# --------------------------------------------------------------------------------------------------

@pytest.fixture
def card(tmp_path):
    """A bookworm card as a host mounts it: rootfs (with the empty boot/firmware mount point) and bootfs."""
    rootfs, boot = tmp_path / "rootfs", tmp_path / "bootfs"
    (rootfs / "usr/lib").mkdir(parents=True)
    (rootfs / "etc").mkdir()
    (rootfs / "boot/firmware").mkdir(parents=True)
    (rootfs / "usr/lib/os-release").write_text('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n')
    (rootfs / "etc/os-release").symlink_to("../usr/lib/os-release")  # as Debian has it
    (rootfs / "etc/rpi-issue").write_text("Raspberry Pi reference 2024-07-04\n")
    boot.mkdir()
    (boot / "config.txt").write_text(BOOKWORM_CONFIG)
    (boot / "cmdline.txt").write_text(BOOKWORM_CMDLINE)
    return rootfs, boot


def test_find_boot_on_a_card_mounted_on_a_host(card):
    rootfs, boot = card
    assert bootfs.is_pi_os_root(rootfs)
    with pytest.raises(UsageError, match="no boot partition under") as err:
        bootfs.find_boot(rootfs)  # boot/firmware is the empty mount point
    assert "/media/$USER/bootfs" in err.value.hint
    assert bootfs.find_boot(rootfs, boot) == boot
    with pytest.raises(UsageError, match="is not a Raspberry Pi OS boot partition"):
        bootfs.find_boot(rootfs, rootfs)


def test_find_boot_inside_a_root_bookworm_and_bullseye(tmp_path):
    for rel in ("boot/firmware", "boot"):
        root = tmp_path / rel.replace("/", "_")
        (root / rel).mkdir(parents=True)
        (root / rel / "config.txt").write_text(BOOKWORM_CONFIG)
        (root / rel / "cmdline.txt").write_text(BOOKWORM_CMDLINE)
        assert bootfs.find_boot(root) == root / rel


def test_find_boot_refuses_a_link_out_of_the_root(tmp_path, card):
    _rootfs, boot = card
    root = tmp_path / "other"
    (root / "boot").mkdir(parents=True)
    (root / "boot/firmware").symlink_to(boot)  # absolute: on a host, that is the host's path
    with pytest.raises(UsageError, match="no boot partition"):
        bootfs.find_boot(root)


def test_is_pi_os_root_wants_both_files_inside(tmp_path, card):
    rootfs, _boot = card
    (rootfs / "etc/rpi-issue").unlink()
    assert not bootfs.is_pi_os_root(rootfs)
    (rootfs / "etc/rpi-issue").symlink_to(tmp_path / "outside")
    (tmp_path / "outside").write_text("x")
    assert not bootfs.is_pi_os_root(rootfs)
    assert not bootfs.is_pi_os_root(tmp_path / "nothing")


def test_a_dtparam_is_set_for_every_model_and_an_off_is_overridden():
    assert bootfs.set_line("dtparam=audio=on\n", "dtparam=uart0=on") == "dtparam=audio=on\ndtparam=uart0=on\n"
    text = "dtparam=uart0=off\n[pi4]\nfoo=1\n"
    assert bootfs.set_line(text, "dtparam=uart0=on") == "dtparam=uart0=on\n[pi4]\nfoo=1\n"
    text = "dtparam=uart0=on\n[pi5]\ndtparam=uart0=off\n"
    out = bootfs.set_line(text, "dtparam=uart0=on")
    assert out == text + "[all]\ndtparam=uart0=on\n" and bootfs.set_line(out, "dtparam=uart0=on") == out
    assert bootfs.set_line("dtparam=uart0_console=on\n", "dtparam=uart0=on").endswith("\ndtparam=uart0=on\n")


def test_an_overlay_is_added_and_other_overlays_are_left_alone():
    out = bootfs.set_line(BOOKWORM_CONFIG, "dtoverlay=disable-bt")
    assert out == BOOKWORM_CONFIG + "dtoverlay=disable-bt\n"  # vc4-kms-v3d and dwc2 untouched
    assert bootfs.set_line(out, "dtoverlay=disable-bt") == out
    assert bootfs.set_line("[pi4]\ndtoverlay=disable-bt\n", "dtoverlay=disable-bt") == \
        "[pi4]\ndtoverlay=disable-bt\n[all]\ndtoverlay=disable-bt\n"


def test_only_the_consoles_named_are_stripped():
    line = "console=serial0,115200 console=ttyAMA0,9600 console=tty1 quiet\n"
    assert bootfs.strip_serial_console(line, ("ttyAMA0",)) == "console=serial0,115200 console=tty1 quiet\n"
    assert bootfs.strip_serial_console(line, ()) == line
    assert bootfs.serial_consoles(line, ("serial0", "ttyAMA10")) == ["console=serial0,115200"]


def test_apply_writes_both_and_says_what_changed(card):
    _rootfs, boot = card
    changes = bootfs.apply(boot, MINI_UART)
    assert changes == [f"{boot / 'config.txt'}: enable_uart=1",
                       f"{boot / 'cmdline.txt'}: removed console=serial0,115200"]
    assert (boot / "config.txt").read_text() == BOOKWORM_CONFIG + "enable_uart=1\n"
    assert (boot / "cmdline.txt").read_text() == STRIPPED_CMDLINE
    assert sorted(p.name for p in boot.iterdir()) == ["cmdline.txt", "config.txt"]  # no temporaries left
    assert bootfs.apply(boot, MINI_UART) == []


def test_apply_keeps_bytes_that_are_not_utf8(card):
    _rootfs, boot = card
    raw = b"# caf\xe9 (latin-1)\r\nenable_uart=0\r\n"
    (boot / "config.txt").write_bytes(raw)
    bootfs.apply(boot, MINI_UART)
    assert (boot / "config.txt").read_bytes() == b"# caf\xe9 (latin-1)\r\nenable_uart=1\r\n"


def test_apply_changes_only_what_needs_it(card):
    _rootfs, boot = card
    (boot / "cmdline.txt").write_text(STRIPPED_CMDLINE)
    assert bootfs.apply(boot, MINI_UART) == [f"{boot / 'config.txt'}: enable_uart=1"]


def snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_no_partial_state_when_the_second_replace_fails(card, monkeypatch):
    _rootfs, boot = card
    before = snapshot(boot)
    real = os.replace
    calls = []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(5, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(bootfs.os, "replace", replace)
    with pytest.raises(DeviceError, match="Input/output error; nothing was changed"):
        bootfs.apply(boot, MINI_UART)
    assert calls[:2] == [boot / "config.txt", boot / "cmdline.txt"]  # config.txt was replaced, then put back
    assert snapshot(boot) == before


def test_no_partial_state_when_a_temporary_cannot_be_written(card, monkeypatch):
    _rootfs, boot = card
    before = snapshot(boot)
    real = bootfs.tempfile.mkstemp
    calls = []

    def mkstemp(**kw):
        calls.append(kw)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(**kw)

    monkeypatch.setattr(bootfs.tempfile, "mkstemp", mkstemp)
    with pytest.raises(DeviceError, match="No space left on device; nothing was changed"):
        bootfs.apply(boot, MINI_UART)
    assert snapshot(boot) == before


def test_apply_refuses_links_and_a_folder_that_is_not_a_boot_partition(tmp_path, card):
    _rootfs, boot = card
    outside = tmp_path / "outside.txt"
    outside.write_text(BOOKWORM_CMDLINE)
    (boot / "cmdline.txt").unlink()
    (boot / "cmdline.txt").symlink_to(outside)
    with pytest.raises(InputError, match="is a symbolic link"):
        bootfs.apply(boot, MINI_UART)
    assert outside.read_text() == BOOKWORM_CMDLINE and (boot / "config.txt").read_text() == BOOKWORM_CONFIG
    with pytest.raises(UsageError, match="not a Raspberry Pi OS boot partition"):
        bootfs.apply(tmp_path / "rootfs", MINI_UART)
