"""dir:PATH, a Raspberry Pi OS card mounted here: the release layout, the enabled unit and the UART
settings; verified before the switch; nothing current changes on a refusal or a failure."""

import builtins
import errno
import io
import os
import shutil
from pathlib import Path

import pytest

from toolchain import api
from toolchain.deploy import registry, service
from toolchain.errors import DeviceError, InputError, UsageError

EdgelmErrorTypes = (DeviceError, InputError)

CMDLINE = ("console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 fsck.repair=yes rootwait "
           "quiet splash plymouth.ignore-serial-consoles cfg80211.ieee80211_regdom=GB\n")
CONFIG = ("# For more options and information see\n# http://rptl.io/configtxt\ndtparam=audio=on\n\n"
          "[cm4]\notg_mode=1\n\n[all]\narm_64bit=1\n")


def make_card(tmp_path: Path, bookworm: bool = True) -> Path:
    """A folder laid out like a Raspberry Pi OS card's root filesystem, boot partition inside it."""
    root = tmp_path / "rootfs"
    (root / "etc/systemd/system/multi-user.target.wants").mkdir(parents=True)
    (root / "etc/os-release").write_text('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n')
    (root / "etc/rpi-issue").write_text("Raspberry Pi reference 2024-11-19\n")
    boot = root / ("boot/firmware" if bookworm else "boot")
    boot.mkdir(parents=True)
    (boot / "config.txt").write_text(CONFIG)
    (boot / "cmdline.txt").write_text(CMDLINE)
    (root / "home/pi").mkdir(parents=True)
    return root


def spec(root: Path) -> str:
    return f"dir:{root}"


def test_a_card_gets_the_release_the_enabled_unit_and_the_uart(tmp_path, fakes):
    root = make_card(tmp_path)
    bundle = fakes.write_bundle(tmp_path / "b", board="rpi5", info={"arch": "aarch64"})
    result = api.flash(bundle.root, spec(root), tmp_path / "work")
    assert result["started"] is False and result["verified"] is True
    data = root / "opt/edgelm/rpi5"
    assert os.readlink(data / "current") == f"releases/{result['release']}"  # relative: valid when the card boots
    for name in bundle.files:
        assert (data / "releases" / result["release"] / name).read_bytes() == (bundle.root / name).read_bytes()
    unit = (root / "etc/systemd/system" / service.UNIT_NAME).read_text()
    assert "ExecStart=/opt/edgelm/rpi5/edgelm-serve /opt/edgelm/rpi5 --serial /dev/ttyAMA0" in unit
    assert os.access(data / service.SERVE_SCRIPT, os.X_OK)  # what it runs: the release that verifies
    assert (data / service.SERVE_SCRIPT).read_text() == service.serve_script()
    assert "DynamicUser=yes" in unit and "SupplementaryGroups=dialout" in unit
    assert os.readlink(root / "etc/systemd/system/multi-user.target.wants" / service.UNIT_NAME) == \
        f"/etc/systemd/system/{service.UNIT_NAME}"
    boot = root / "boot/firmware"  # a Pi 5's GPIO UART0; serial0 stays on the debug header (ttyAMA10)
    assert (boot / "config.txt").read_text() == CONFIG + "dtparam=uart0=on\n"
    assert (boot / "cmdline.txt").read_text() == CMDLINE
    assert any("dtparam=uart0=on" in n for n in result["notes"])


STRIPPED = CMDLINE.replace("console=serial0,115200 ", "")


@pytest.mark.parametrize(("board", "port", "config_added", "cmdline", "note"), [
    ("rpi5", None, ["dtparam=uart0=on"], CMDLINE, "UART0"),
    ("rpi5", "/dev/ttyAMA10", [], STRIPPED, "debug header"),
    ("rpi4", None, ["enable_uart=1", "dtoverlay=disable-bt"], STRIPPED, "hciuart"),
    ("rpi4", "/dev/ttyS0", ["enable_uart=1"], STRIPPED, "mini UART"),
    ("pizero2w", None, ["enable_uart=1", "dtoverlay=disable-bt"], STRIPPED, "PL011"),
    ("rpi4", "/dev/ttyUSB0", [], CMDLINE, "left as it is"),
])
def test_a_bookworm_card_gets_the_boot_lines_of_its_profiles_uart(tmp_path, fakes, board, port, config_added,
                                                                   cmdline, note):
    root = make_card(tmp_path)
    bundle = fakes.write_bundle(tmp_path / "b", board=board, info={"arch": "aarch64"})
    result = api.flash(bundle.root, spec(root), tmp_path / "work", options=registry.TargetOptions(board_port=port))
    boot = root / "boot/firmware"
    assert (boot / "config.txt").read_text().splitlines() == CONFIG.splitlines() + config_added
    assert (boot / "cmdline.txt").read_text().splitlines() == cmdline.splitlines()
    unit = (root / "etc/systemd/system" / service.UNIT_NAME).read_text()
    assert f"--serial {port or '/dev/ttyAMA0'} " in unit
    assert any(note in n for n in result["notes"]), result["notes"]
    again = api.flash(bundle.root, spec(root), tmp_path / "work", options=registry.TargetOptions(board_port=port))
    assert (boot / "config.txt").read_text().splitlines() == CONFIG.splitlines() + config_added  # idempotent
    assert not any(n.startswith(str(boot / "config.txt")) for n in again["notes"])


def test_a_second_release_then_rollback(tmp_path, fakes):
    root = make_card(tmp_path, bookworm=False)
    one = fakes.write_bundle(tmp_path / "one", board="rpi5", info={"arch": "aarch64"})
    two = fakes.write_bundle(tmp_path / "two", board="rpi5", info={"arch": "aarch64"}, runner=b"#!/bin/sh\nexit 1\n")
    first = api.flash(one.root, spec(root), tmp_path / "work")["release"]
    second = api.flash(two.root, spec(root), tmp_path / "work")["release"]
    data = root / "opt/edgelm/rpi5"
    assert first != second and os.readlink(data / "current") == f"releases/{second}"
    assert os.readlink(data / "previous") == f"releases/{first}"
    back = api.flash(None, spec(root), tmp_path / "work", board="rpi5", rollback=True)
    assert back["release"] == first and os.readlink(data / "current") == f"releases/{first}"
    assert os.readlink(data / "previous") == f"releases/{second}"


def test_a_file_corrupted_on_the_card_makes_the_switch_refuse(tmp_path, fakes):
    root = make_card(tmp_path)
    one = fakes.write_bundle(tmp_path / "one", board="rpi5", info={"arch": "aarch64"})
    two = fakes.write_bundle(tmp_path / "two", board="rpi5", info={"arch": "aarch64"}, runner=b"#!/bin/sh\nexit 1\n")
    api.flash(one.root, spec(root), tmp_path / "work")
    target = api.target_for("rpi5", spec(root), tmp_path / "work")
    staged = target.store.deploy(two, activate=False)  # on the card, verified, not current
    (Path(staged.path) / "model.pte").write_bytes(b"flipped on the card")
    before = fakes.snapshot(root)
    with pytest.raises(InputError, match="does not verify"):
        target.store.activate(staged)
    assert fakes.snapshot(root) == before  # not current, and neither the unit nor the boot files were touched
    # and the rollback verifies too: the previous release, damaged, is not made current
    api.flash(two.root, spec(root), tmp_path / "work")  # a fresh verified copy replaces the damaged one
    first = target.store.previous()
    (Path(first.path) / "runner").write_bytes(b"damaged")
    with pytest.raises(InputError, match="does not verify"):
        api.flash(None, spec(root), tmp_path / "work", board="rpi5", rollback=True)
    assert target.store.current().id == staged.id


def test_a_copy_that_fails_halfway_leaves_the_card_as_it_was(tmp_path, fakes, monkeypatch):
    root = make_card(tmp_path)
    one = fakes.write_bundle(tmp_path / "one", board="rpi5", info={"arch": "aarch64"})
    two = fakes.write_bundle(tmp_path / "two", board="rpi5", info={"arch": "aarch64"}, runner=b"#!/bin/sh\nexit 1\n")
    first = api.flash(one.root, spec(root), tmp_path / "work")["release"]
    before = fakes.snapshot(root)
    real, calls = shutil.copy2, []

    def failing(src, dst, **kw):
        calls.append(src)
        if len(calls) == 3:
            raise OSError(5, "Input/output error", str(dst))  # the card reader gave up
        return real(src, dst, **kw)

    monkeypatch.setattr(shutil, "copy2", failing)
    with pytest.raises(DeviceError, match=f"Input/output error.*release {first} is still current"):
        api.flash(two.root, spec(root), tmp_path / "work")
    assert fakes.snapshot(root) == before


def test_links_on_the_card_are_not_followed_out_of_it(tmp_path, fakes):
    root = make_card(tmp_path)
    outside = tmp_path / "host-etc"
    outside.mkdir()
    shutil.rmtree(root / "etc/systemd/system")
    (root / "etc/systemd/system").symlink_to(outside)  # an absolute link: on this machine it points elsewhere
    bundle = fakes.write_bundle(tmp_path / "b", board="rpi5", info={"arch": "aarch64"})
    with pytest.raises(DeviceError, match="is a symbolic link"):
        api.flash(bundle.root, spec(root), tmp_path / "work")
    assert list(outside.iterdir()) == []
    assert not (root / "opt/edgelm/rpi5/current").exists()


@pytest.mark.parametrize("link", ["opt/edgelm/rpi5", "opt/edgelm/rpi5/releases"])
def test_the_release_store_on_the_card_is_not_followed_out_of_it(tmp_path, fakes, link):
    root = make_card(tmp_path)
    outside = tmp_path / "host-folder"
    outside.mkdir()
    (root / link).parent.mkdir(parents=True, exist_ok=True)
    (root / link).symlink_to(outside)  # an absolute link: on this machine it points elsewhere
    bundle = fakes.write_bundle(tmp_path / "b", board="rpi5", info={"arch": "aarch64"})
    with pytest.raises(DeviceError, match="is a symbolic link"):
        api.flash(bundle.root, spec(root), tmp_path / "work")
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("target", ["current", "releases/../current", "/opt/edgelm/rpi5/releases/r-0"])
def test_a_current_link_that_is_not_a_release_is_one_line(tmp_path, fakes, target):
    root = make_card(tmp_path)
    data = root / "opt/edgelm/rpi5"
    (data / "releases").mkdir(parents=True)
    (data / "current").symlink_to(target)  # a loop, or an absolute link that points elsewhere on this machine
    bundle = fakes.write_bundle(tmp_path / "b", board="rpi5", info={"arch": "aarch64"})
    with pytest.raises(InputError, match="not a release in"):
        api.flash(bundle.root, spec(root), tmp_path / "work")
    assert os.readlink(data / "current") == target


@pytest.fixture
def read_only(monkeypatch):
    """``read_only(folder)``: every write under ``folder`` fails with EROFS, as on a card mounted read-only
    (or one the kernel remounted read-only after an I/O error)."""
    def under(path, dir_fd=None) -> bool:
        return dir_fd is not None or (isinstance(path, (str, os.PathLike)) and os.fspath(path).startswith(top[0]))

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

    def guard(name):
        real = getattr(os, name)

        def call(path, *args, **kw):
            if under(path, kw.get("dir_fd")):
                refuse(path)
            return real(path, *args, **kw)
        monkeypatch.setattr(os, name, call)

    def opening(real, write):
        def call(path, mode="r", *args, **kw):
            if under(path) and write(mode):
                refuse(path)
            return real(path, mode, *args, **kw)
        return call

    top = [""]

    def apply(folder: Path) -> None:
        top[0] = str(folder)
        for name in ("mkdir", "symlink", "replace", "rename", "unlink", "rmdir", "chmod"):
            guard(name)
        writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT
        monkeypatch.setattr(os, "open", opening(os.open, lambda flags: bool(flags & writes)))
        monkeypatch.setattr(builtins, "open", opening(builtins.open, lambda mode: any(c in mode for c in "wax+")))
        monkeypatch.setattr(io, "open", builtins.open)
    return apply


@pytest.mark.parametrize("case", ["empty card", "same release", "other release", "left-over upload", "rollback"])
def test_a_card_mounted_read_only_is_one_line_and_keeps_what_it_had(tmp_path, fakes, read_only, case):
    root = make_card(tmp_path)
    one = fakes.write_bundle(tmp_path / "one", board="rpi5", info={"arch": "aarch64"})
    two = fakes.write_bundle(tmp_path / "two", board="rpi5", info={"arch": "aarch64"}, runner=b"#!/bin/sh\nexit 1\n")
    data = root / "opt/edgelm/rpi5"
    if case != "empty card":
        api.flash(one.root, spec(root), tmp_path / "work")
    if case == "rollback":
        api.flash(two.root, spec(root), tmp_path / "work")
    if case == "left-over upload":
        (data / "releases" / f".incoming-{two.release_id}").mkdir()
    before = fakes.snapshot(root)
    read_only(root)
    with pytest.raises(DeviceError, match="Read-only file system") as err:
        if case == "rollback":
            api.flash(None, spec(root), tmp_path / "work", board="rpi5", rollback=True)
        else:
            api.flash((one if case == "same release" else two).root, spec(root), tmp_path / "work")
    assert "\n" not in str(err.value) and "read-only" in (err.value.hint or "")
    assert fakes.snapshot(root) == before


def test_a_boot_partition_mounted_apart(tmp_path, fakes):
    root = make_card(tmp_path)
    bootfs = tmp_path / "bootfs"
    shutil.move(root / "boot/firmware", bootfs)
    bundle = fakes.write_bundle(tmp_path / "b", board="rpi5", info={"arch": "aarch64"})
    with pytest.raises(UsageError, match="no boot partition"):
        api.flash(bundle.root, spec(root), tmp_path / "work")
    assert not (root / "opt/edgelm/rpi5/current").exists()
    api.flash(bundle.root, spec(root), tmp_path / "work", options=registry.TargetOptions(boot=bootfs))
    assert (bootfs / "config.txt").read_text() == CONFIG + "dtparam=uart0=on\n"


@pytest.mark.parametrize("bad", ["dir:", "dir:/", "dir:/nonexistent-card", "dir:~no-such-user-here/rootfs"])
def test_bad_card_specs(tmp_path, bad):
    with pytest.raises(UsageError):
        api.target_for("rpi5", bad, tmp_path)


def test_a_card_runs_nothing(tmp_path):
    root = make_card(tmp_path)
    assert api.target_for("rpi5", spec(root), tmp_path / "work").capabilities == {"deploy", "trust", "preflight"}
    with pytest.raises(UsageError, match="cannot start a runner"):
        api.stop("rpi5", spec(root), tmp_path / "work")


def test_the_profile_fit_is_checked_before_the_card_is_touched(tmp_path, fakes):
    root = make_card(tmp_path)
    big = fakes.write_bundle(tmp_path / "b", board="rpi5", info={"arch": "aarch64", "size_bytes": 9 << 30})
    before = fakes.snapshot(root)
    with pytest.raises(DeviceError, match=r"RAM: .* needs [\d,]+ bytes"):
        api.flash(big.root, spec(root), tmp_path / "work")
    assert fakes.snapshot(root) == before


def test_targets_are_listed_and_unknown_ones_refused(tmp_path):
    kinds = {t["kind"] for t in api.targets()}
    assert kinds == {"qemu", "qemu-system", "local", "ssh", "dir", "labgrid"}
    with pytest.raises(UsageError, match="unknown target 'telnet://x'"):
        api.target_for("rpi5", "telnet://x", tmp_path)


# Issue 23: the card's trusted keys live on the card -----------------------------------------------------

@pytest.fixture
def key(tmp_path):
    from toolchain.bundle import signing

    private, public, fp = signing.generate(tmp_path / "keys" / "release")
    return private, public, fp


def _card_bundle(tmp_path, name, **kw):
    from fakebundle import write_bundle

    return write_bundle(tmp_path / name, board="rpi5", info={"arch": "aarch64"}, **kw)


def test_a_card_trusted_at_one_mount_path_refuses_unsigned_bundles_at_another_and_from_any_workdir(tmp_path, key):
    from toolchain.bundle import package, signing

    card = make_card(tmp_path / "a")
    api.trust(key[1], "rpi5", spec(card), tmp_path / "work-1")
    assert (card / "opt/edgelm/rpi5/trusted_keys" / f"{key[2][:16]}.pub").is_file()  # on the card itself
    unsigned = _card_bundle(tmp_path, "unsigned")
    with pytest.raises(InputError, match="accepts only signed bundles"):
        api.flash(unsigned.root, spec(card), tmp_path / "work-2")  # another workdir
    moved = tmp_path / "media" / "rootfs"
    moved.parent.mkdir()
    card.rename(moved)  # the same card, mounted at another path
    for work in ("work-1", "work-2"):
        with pytest.raises(InputError, match="accepts only signed bundles"):
            api.flash(unsigned.root, spec(moved), tmp_path / work)
    assert not (moved / "opt/edgelm/rpi5/current").exists()
    package.sign_bundle(unsigned, signing.load_private_key(key[0]))
    assert api.flash(unsigned.root, spec(moved), tmp_path / "work-2")["release"] == unsigned.release_id
    listed = api.trusted("rpi5", spec(moved), tmp_path / "work-3")
    assert [k["fingerprint"] for k in listed["keys"]] == [key[2]]


def test_keys_trusted_by_an_older_edgelm_on_this_machine_move_onto_the_card(tmp_path, key):
    card = make_card(tmp_path)
    work = tmp_path / "work"
    legacy = api.target_for("rpi5", spec(card), work).state / "trusted_keys"
    legacy.mkdir(parents=True)
    (legacy / f"{key[2][:16]}.pub").write_bytes(key[1].read_bytes())  # where `edgelm trust` kept them before
    with pytest.raises(InputError, match="accepts only signed bundles"):
        api.flash(_card_bundle(tmp_path, "unsigned").root, spec(card), work)
    assert (card / "opt/edgelm/rpi5/trusted_keys" / f"{key[2][:16]}.pub").is_file()
    assert not legacy.exists()


@pytest.mark.parametrize("name", ["trusted_keys", "security_counter"])
def test_trust_state_on_the_card_that_is_a_link_is_refused(tmp_path, key, name):
    card = make_card(tmp_path)
    outside = tmp_path / "host-folder"
    outside.mkdir()
    data = card / "opt/edgelm/rpi5"
    data.mkdir(parents=True)
    (data / name).symlink_to(outside / name)
    with pytest.raises(EdgelmErrorTypes, match="is a symbolic link"):
        api.trust(key[1], "rpi5", spec(card), tmp_path / "work")
        api.flash(_card_bundle(tmp_path, "b").root, spec(card), tmp_path / "work")
    assert list(outside.iterdir()) == []
