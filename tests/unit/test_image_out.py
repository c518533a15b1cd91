"""`edgelm image --out`: a folder that is not an image edgelm made is refused before anything is written,
and a rebuild removes and lists only what the image is made of. The Debian packages, the kernel, the
cpio and mke2fs are stood in for (tests/integration/test_image.py builds and boots a real one)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from toolchain import boards
from toolchain.cli import main
from toolchain.errors import UsageError
from toolchain.image import builder

RPI5 = boards.get("rpi5")


class Reached(Exception):
    """The build went on past its checks."""


@pytest.fixture
def fake_debian(monkeypatch, tmp_path):
    """The packages, their unpacking and the disk tools, as stand-ins that write small files."""
    cache = tmp_path / "debs"
    cache.mkdir()

    def fetch(packages, where, progress=None):
        return {name: cache / f"{name}_1_arm64.deb" for name in packages}

    def run(cmd, what, **kw):
        if cmd[0] == "dpkg-deb":
            unpacked = Path(cmd[3])
            (unpacked / "boot").mkdir(parents=True, exist_ok=True)
            (unpacked / "boot" / "vmlinuz-6.1.0-fake-arm64").write_bytes(b"kernel")
            (unpacked / "lib" / "modules" / "6.1.0-fake-arm64").mkdir(parents=True, exist_ok=True)
            dtbs = unpacked / "usr" / "lib" / "linux-image-6.1.0-fake-arm64" / "broadcom"
            dtbs.mkdir(parents=True, exist_ok=True)
            (dtbs / "bcm2712-rpi-5-b.dtb").write_bytes(b"dtb")
        return ""

    def data_disk(staging, out, size):
        out.write_bytes(b"ext4 " + str(sorted(p.name for p in staging.rglob("*"))).encode())

    monkeypatch.setattr(builder, "kernel_package", lambda: "linux-image-6.1.0-fake-arm64")
    monkeypatch.setattr(builder, "fetch", fetch)
    monkeypatch.setattr(builder, "_run", run)
    monkeypatch.setattr(builder, "_initramfs_tree", lambda tree, *a: (tree / "init").parent.mkdir(parents=True))
    monkeypatch.setattr(builder.cpio, "initramfs", lambda tree: b"cpio")
    monkeypatch.setattr(builder, "_data_disk", data_disk)
    monkeypatch.setattr(builder, "authorized_key", lambda key: "ssh-ed25519 " + "A" * 68)
    monkeypatch.setattr(builder, "default_key", lambda: tmp_path / "key")


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def a_folder_of_someone_else(root: Path) -> dict[str, bytes]:
    (root / "boot").mkdir(parents=True)
    (root / "boot" / "config.txt").write_text("my own Pi's settings\n")
    (root / "known_hosts").write_text("rpi5 ssh-ed25519 AAAA\n")
    (root / "notes.txt").write_text("keep me\n")
    return tree(root)


def test_an_image_is_built_into_a_new_or_empty_folder(fake_debian, tmp_path):
    for out in (tmp_path / "new" / "img", tmp_path / "empty"):
        out.mkdir(parents=True) if out.name == "empty" else None
        image = builder.build(RPI5, out)
        assert sorted(image.info["files"]) == ["boot/bcm2712-rpi-5-b.dtb", "boot/cmdline.txt", "boot/config.txt",
                                               "boot/initramfs8", "boot/kernel8.img", "data.img"]
        assert not [p.name for p in out.iterdir() if p.name.startswith(".work")]
        assert builder.read_image(out).board == "rpi5"


@pytest.mark.parametrize("how", ["someone else's", "a file", "the root"])
def test_a_folder_that_is_not_an_edgelm_image_is_refused_and_left_as_it_was(fake_debian, monkeypatch, tmp_path, how):
    def reached(*a, **k):
        raise Reached("went on to the packages")

    monkeypatch.setattr(builder, "kernel_package", reached)  # nothing may be done before the refusal
    if how == "a file":
        out = tmp_path / "afile"
        out.write_text("data\n")
        before, message = out.read_bytes(), "exists and is not a folder"
    elif how == "the root":
        out, before, message = Path("/"), None, "is not empty and not an image `edgelm image` made"
    else:
        out = tmp_path / "img"
        before, message = a_folder_of_someone_else(out), "is not empty and not an image `edgelm image` made"
    with pytest.raises(UsageError, match=message):
        builder.build(RPI5, out)
    if how == "a file":
        assert out.read_bytes() == before
    elif before is not None:
        assert tree(out) == before


def test_rebuilding_an_image_keeps_what_edgelm_did_not_make_and_lists_only_the_image(fake_debian, tmp_path):
    out = tmp_path / "img"
    builder.build(RPI5, out)
    (out / "known_hosts").write_text("[127.0.0.1]:2222 ssh-ed25519 AAAA\n")  # the guest's old keys: replaced
    (out / "notes.txt").write_text("keep me\n")
    (out / "boot" / "overlay.txt").write_text("mine\n")
    image = builder.build(RPI5, out)
    assert (out / "notes.txt").read_text() == "keep me\n" and (out / "boot" / "overlay.txt").read_text() == "mine\n"
    assert not (out / "known_hosts").exists()
    listed = json.loads((out / builder.IMAGE_FILE).read_text())["files"]
    assert sorted(listed) == sorted(image.info["files"]) and "notes.txt" not in listed
    assert "boot/overlay.txt" not in listed


@pytest.mark.parametrize("earlier", [False, True])
def test_a_build_that_stopped_halfway_may_be_built_again(fake_debian, monkeypatch, tmp_path, earlier):
    out = tmp_path / "img"
    if earlier:
        builder.build(RPI5, out)

    def fails(*a, **k):
        raise Reached("the disk tools failed")

    with monkeypatch.context() as m:
        m.setattr(builder, "_data_disk", fails)
        with pytest.raises(Reached):
            builder.build(RPI5, out)
    assert not (out / builder.IMAGE_FILE).exists()  # no image to boot (the qemu-system target builds it again)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".work")]
    builder.build(RPI5, out)  # the folder is edgelm's, as its marker says
    assert builder.read_image(out).board == "rpi5"


def test_the_command_refuses_such_a_folder_in_one_line_before_any_work(fake_debian, monkeypatch, tmp_path):
    from toolchain import api

    def reached(*a, **k):
        raise Reached("went on to export the model")

    monkeypatch.setattr(api, "cached_export", reached)
    out = tmp_path / "img"
    before = a_folder_of_someone_else(out)
    result = CliRunner().invoke(main, ["image", "--board", "rpi5", "--out", str(out), "--model", "tiny",
                                       "--workdir", str(tmp_path / "work")])
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith("error:") and "not an image `edgelm image` made" in lines[0]
    assert tree(out) == before


@pytest.mark.parametrize(("board", "lines"), [("rpi5", ["dtparam=uart0=on"]),
                                              ("rpi4", ["enable_uart=1", "dtoverlay=disable-bt"])])
def test_an_images_config_txt_brings_up_the_profiles_uart0(fake_debian, tmp_path, board, lines):
    builder.build(boards.get(board), tmp_path / "img")
    config = (tmp_path / "img" / "boot" / "config.txt").read_text().splitlines()
    assert [x for x in config if not x.startswith("#")] == ["arm_64bit=1", "kernel=kernel8.img",
                                                            "initramfs initramfs8 followkernel", *lines]


def test_a_board_whose_profile_lacks_the_images_uart_is_refused_before_anything_is_written(fake_debian, tmp_path):
    with pytest.raises(UsageError, match=r"lists no UART /dev/ttyAMA0"):
        builder.build(boards.get("jetson-orin-nano"), tmp_path / "img")
    assert not (tmp_path / "img").exists()
