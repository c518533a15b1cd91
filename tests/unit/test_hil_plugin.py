"""The pytest plugin as another project sees it (pytester), where no board is reached: a test that
needs a board nobody configured, or one this machine cannot reach, is skipped with the reason and
never passed; ``--edgelm-require`` makes that a failure. (tests/hil/test_plugin_board.py runs it
against a board.)"""

import pytest

NEEDS_A_BOARD = """
def test_needs_a_board(edgelm_board):
    edgelm_board.generate("hi", tokens=2)
"""


@pytest.fixture
def project(pytester):
    pytester.makepyfile(NEEDS_A_BOARD)
    return pytester


def test_without_a_board_the_test_is_skipped_with_the_reason(project):
    r = project.runpytest_subprocess("-rs")
    r.assert_outcomes(skipped=1)
    r.stdout.fnmatch_lines(["*no board configured: give --edgelm-board BOARD*"])


def test_an_ssh_board_nobody_answers_for_is_skipped_not_passed(project):
    r = project.runpytest_subprocess("-rs", "--edgelm-board", "rpi5", "--edgelm-target", "ssh://nobody@127.0.0.1:1")
    r.assert_outcomes(skipped=1)
    r.stdout.fnmatch_lines(["*rpi5:ssh://nobody@127.0.0.1:1: this machine lacks an SSH server that lets us in*"])


def test_a_farm_place_whose_coordinator_does_not_answer_is_skipped_not_passed(project):
    r = project.runpytest_subprocess("-rs", "--edgelm-board", "rpi5:labgrid://127.0.0.1:1/rpi5")
    r.assert_outcomes(skipped=1)
    r.stdout.fnmatch_lines(["*this machine lacks labgrid place rpi5 at 127.0.0.1:1 (the labgrid coordinator at "
                            "127.0.0.1:1 does not answer*"])


def test_with_require_an_unreachable_board_fails(project):
    r = project.runpytest_subprocess("--edgelm-board", "rpi5:ssh://nobody@127.0.0.1:1", "--edgelm-require")
    r.assert_outcomes(errors=1)
    r.stdout.fnmatch_lines(["*this machine lacks an SSH server*"])


def test_missing_emulator_and_socat_are_named(project, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    r = project.runpytest_subprocess("-rs", "--edgelm-board", "rpi5:qemu")
    r.assert_outcomes(skipped=1)
    r.stdout.fnmatch_lines(["*rpi5:qemu: this machine lacks qemu-aarch64 (Debian's qemu-user); socat*"])


def test_a_card_target_cannot_serve_a_test(project, tmp_path):
    card = tmp_path / "card"
    card.mkdir()
    r = project.runpytest_subprocess("-rs", "--edgelm-board", f"rpi5:dir:{card}")
    r.assert_outcomes(skipped=1)
    r.stdout.fnmatch_lines(["*lacks a way to start a runner and talk to it*"])


def test_the_board_and_target_come_from_the_ini_file(project):
    project.makeini("[pytest]\nedgelm_board = rpi5\nedgelm_target = ssh://nobody@127.0.0.1:1\n")
    r = project.runpytest_subprocess("-rs")
    r.assert_outcomes(skipped=1)
    r.stdout.fnmatch_lines(["*rpi5:ssh://nobody@127.0.0.1:1: this machine lacks*"])


def test_the_command_line_wins_over_the_ini_file(project, monkeypatch, tmp_path):
    project.makeini("[pytest]\nedgelm_board = rpi5:ssh://nobody@127.0.0.1:1\n")
    monkeypatch.setenv("PATH", str(tmp_path))
    r = project.runpytest_subprocess("-rs", "--edgelm-board", "rpi4:qemu")
    r.assert_outcomes(skipped=1)
    r.stdout.fnmatch_lines(["*rpi4:qemu: this machine lacks qemu-aarch64*"])


def test_each_board_runs_the_test_once(project, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    r = project.runpytest_subprocess("-v", "--edgelm-board", "rpi5:qemu", "--edgelm-board", "rpi4:qemu")
    r.assert_outcomes(skipped=2)
    r.stdout.fnmatch_lines(["*test_needs_a_board?rpi5:qemu?*SKIPPED*", "*test_needs_a_board?rpi4:qemu?*SKIPPED*"])


@pytest.mark.parametrize("args, line", [
    (["--edgelm-board", "rpi9"], "*edgelm: rpi9: unknown board 'rpi9'*"),
    (["--edgelm-board", "rpi5:telnet://x"], "*edgelm: rpi5:telnet://x: unknown target 'telnet://x'*"),
    (["--edgelm-board", "rpi5:qemu", "--edgelm-max-seq-len", "many"],
     "*edgelm: --edgelm-max-seq-len 'many' is not a whole number*"),
])
def test_a_misconfigured_board_is_an_error_not_a_skip(project, args, line):
    r = project.runpytest_subprocess(*args)
    r.assert_outcomes(errors=1)
    r.stdout.fnmatch_lines([line])


CHANGED_KEY = """@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!
Host key for rpi5 has changed and you have requested strict checking.
Host key verification failed."""
DENIED = "pi@rpi5: Permission denied (publickey,password)."
UNKNOWN_KEY = """No ED25519 host key is known for rpi5 and you have requested strict checking.
Host key verification failed."""


def fake_ssh(folder, stderr):
    """An ``ssh`` that fails as OpenSSH does (exit status 255) with ``stderr``."""
    folder.mkdir()
    ssh = folder / "ssh"
    ssh.write_text("#!/bin/sh\ncat >&2 <<'EOF'\n" + stderr + "\nEOF\nexit 255\n")
    ssh.chmod(0o755)
    return folder


@pytest.mark.parametrize("stderr, line", [
    (CHANGED_KEY, "*rpi5:ssh://pi@rpi5: *the host key of rpi5 (port 22) has changed*"),
    (DENIED, "*rpi5:ssh://pi@rpi5: *pi@rpi5 refused our keys (Permission denied (publickey,password))*"),
    (UNKNOWN_KEY, "*rpi5:ssh://pi@rpi5: *the host key of rpi5 is not in known_hosts*"),
])
def test_a_board_that_answers_but_refuses_us_is_an_error_not_a_skip(project, monkeypatch, tmp_path, stderr, line):
    """A changed host key (a reinstalled board, or someone in between) or a login the board refuses is a
    misconfiguration or an attack: CI must not go green on it, --edgelm-require or not."""
    import os

    bin_dir = fake_ssh(tmp_path / "bin", stderr)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    r = project.runpytest_subprocess("-rs", "--edgelm-board", "rpi5:ssh://pi@rpi5")
    r.assert_outcomes(errors=1)
    r.stdout.fnmatch_lines([line])


@pytest.mark.parametrize("stderr, misconfigured", [
    (CHANGED_KEY, True), (DENIED, True), (UNKNOWN_KEY, True),
    ("ssh: connect to host rpi5 port 22: Connection refused", False),
    ("ssh: connect to host rpi5 port 22: Connection timed out", False),
    ("ssh: Could not resolve hostname rpi5: Name or service not known", False),
    ("ssh: connect to host rpi5 port 22: No route to host", False),
])
def test_which_ssh_failures_are_a_misconfiguration(stderr, misconfigured):
    """As ssh's own words reach the plugin through the target's reasons for being unreachable."""
    from toolchain.deploy.sshclient import SshSpec, ssh_failure
    from toolchain.hil import plugin

    spec = SshSpec.parse("ssh://pi@rpi5")
    why = f"an SSH server that lets us in at {spec} ({ssh_failure(spec, stderr, 10).message})"
    assert plugin.misconfigured(why) is misconfigured


def test_the_plugin_works_without_pytests_cache(pytester):
    """-p no:cacheprovider (read-only trees, some CI set-ups): the workdir is a session folder instead."""
    pytester.makepyfile("""
def test_workdir(edgelm_workdir):
    assert edgelm_workdir.is_dir()
""")
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    r.assert_outcomes(passed=1)
