""".ci/apt-install, what `make setup` installs Debian packages with (issue 25): no service left running
or enabled that was not before. Run against stand-ins for apt-get, dpkg and systemctl that act as
Debian's do (a package's postinst enables its unit, and starts it unless policy-rc.d says 101) and
record what they were asked; nothing is installed on this machine."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / ".ci" / "apt-install"
SERVICE_OF = {"openssh-server": "ssh.service", "ser2net": "ser2net.service"}

DPKG = r"""#!/bin/sh
echo "dpkg $*" >> "$FAKE/log"
case "$1" in
  -s) grep -qx "$2" "$FAKE/installed" ;;
  --print-foreign-architectures) cat "$FAKE/arches" 2>/dev/null; true ;;
  --add-architecture) echo "$2" >> "$FAKE/arches" ;;
esac
"""

APT_GET = r"""#!/bin/sh
echo "apt-get $*" >> "$FAKE/log"
[ "$1" = install ] || exit 0
if [ -x "$POLICY" ]; then "$POLICY" ssh start; echo "policy-rc.d answered $?" >> "$FAKE/log"
else echo "no policy-rc.d" >> "$FAKE/log"; fi
[ -f "$FAKE/fail" ] && exit 100
for p in "$@"; do
  case "$p" in -*|install) continue ;; esac
  echo "$p" >> "$FAKE/installed"
  unit=""
  [ "$p" = openssh-server ] && unit=ssh.service
  [ "$p" = ser2net ] && unit=ser2net.service
  if [ -n "$unit" ]; then
    touch "$FAKE/enabled.$unit"                        # deb-systemd-helper enable: policy-rc.d not asked
    if [ -x "$POLICY" ]; then "$POLICY" "$unit" start; rc=$?; else rc=0; fi
    [ "$rc" = 101 ] || touch "$FAKE/active.$unit"      # deb-systemd-invoke start: asks policy-rc.d
  fi
done
"""

SYSTEMCTL = r"""#!/bin/sh
echo "systemctl $*" >> "$FAKE/log"
[ "$1" = --quiet ] && shift
case "$1" in
  is-enabled) if [ -f "$FAKE/enabled.$2" ]; then echo enabled; else echo disabled; exit 1; fi ;;
  is-active) if [ -f "$FAKE/active.$2" ]; then echo active; else echo inactive; exit 3; fi ;;
  disable) u=$2; [ "$u" = --quiet ] && u=$3; rm -f "$FAKE/enabled.$u" ;;
  stop) rm -f "$FAKE/active.$2" ;;
esac
"""

SUDO = """#!/bin/sh
echo "sudo $*" >> "$FAKE/log"
exec "$@"
"""


class Machine:
    def __init__(self, root: Path):
        self.root = root
        self.fake = root / "state"
        self.fake.mkdir()
        (self.fake / "installed").write_text("")
        self.bin = root / "bin"
        self.bin.mkdir()
        self.policy = root / "sbin" / "policy-rc.d"
        self.policy.parent.mkdir()
        for name, text in (("dpkg", DPKG), ("apt-get", APT_GET), ("systemctl", SYSTEMCTL), ("sudo", SUDO)):
            (self.bin / name).write_text(text)
            (self.bin / name).chmod(0o755)

    def install(self, *packages: str, arch: str | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, "PATH": f"{self.bin}:/usr/bin:/bin", "FAKE": str(self.fake),
               "POLICY": str(self.policy), "EDGELM_POLICY_RC_D": str(self.policy)}
        args = (["--arch", arch] if arch else []) + list(packages)
        return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=30)

    def log(self) -> list[str]:
        path = self.fake / "log"
        return path.read_text().splitlines() if path.exists() else []

    def enabled(self, unit: str) -> bool:
        return (self.fake / f"enabled.{unit}").exists()

    def active(self, unit: str) -> bool:
        return (self.fake / f"active.{unit}").exists()


@pytest.fixture
def machine(tmp_path) -> Machine:
    return Machine(tmp_path)


def test_a_fresh_machine_is_left_with_no_sshd_or_ser2net_running_or_enabled(machine):
    proc = machine.install("socat", "openssh-server", "ser2net", arch="arm64")
    assert proc.returncode == 0, proc.stderr
    log = machine.log()
    install = [x for x in log if x.startswith("apt-get install")]
    assert install == ["apt-get install -y -qq --no-install-recommends socat openssh-server ser2net"]
    assert log[log.index(install[0]) + 1] == "policy-rc.d answered 101"  # in place while apt ran
    assert "dpkg --add-architecture arm64" in log and "apt-get update -qq" in log
    assert not machine.policy.exists() and not machine.policy.is_symlink()  # and gone after
    for unit in ("ssh.service", "ser2net.service"):
        assert not machine.enabled(unit) and not machine.active(unit), json.dumps(log)
        assert f"systemctl disable --quiet {unit}" in log
    assert "disabling ssh.service" in proc.stdout


def test_a_service_that_was_enabled_and_running_stays_so(machine):
    (machine.fake / "enabled.ssh.service").touch()
    (machine.fake / "active.ssh.service").touch()
    proc = machine.install("openssh-server", "ser2net")
    assert proc.returncode == 0, proc.stderr
    assert machine.enabled("ssh.service") and machine.active("ssh.service")
    assert not machine.enabled("ser2net.service")
    assert not any(x.startswith(("systemctl disable --quiet ssh", "systemctl stop ssh")) for x in machine.log())


def test_a_policy_rc_d_that_was_there_is_put_back(machine):
    machine.policy.write_text("#!/bin/sh\n# the admin's own\nexit 0\n")
    machine.policy.chmod(0o750)
    proc = machine.install("openssh-server")
    assert proc.returncode == 0, proc.stderr
    assert "policy-rc.d answered 101" in machine.log()
    assert machine.policy.read_text() == "#!/bin/sh\n# the admin's own\nexit 0\n"
    assert machine.policy.stat().st_mode & 0o777 == 0o750
    assert not machine.enabled("ssh.service") and not machine.active("ssh.service")


def test_a_failed_install_still_removes_the_policy(machine):
    (machine.fake / "fail").touch()
    proc = machine.install("openssh-server")
    assert proc.returncode != 0
    assert not machine.policy.exists()


def test_nothing_to_install_runs_no_apt(machine):
    (machine.fake / "installed").write_text("socat\nqemu-user\n")
    proc = machine.install("socat", "qemu-user")
    assert proc.returncode == 0, proc.stderr
    assert not any(x.startswith("apt-get") for x in machine.log())
    assert not machine.policy.exists()


def test_without_the_script_the_stand_ins_would_leave_the_services_on(machine):
    """The stand-ins act as Debian's packages do: a plain apt-get install leaves both services on."""
    env = {**os.environ, "PATH": f"{machine.bin}:/usr/bin:/bin", "FAKE": str(machine.fake),
           "POLICY": str(machine.policy)}
    subprocess.run(["apt-get", "install", "-y", "openssh-server", "ser2net"], env=env, check=True)
    assert machine.enabled("ssh.service") and machine.active("ssh.service") and machine.active("ser2net.service")


def test_make_setup_installs_through_the_script():
    makefile = (REPO / "Makefile").read_text()
    assert ".ci/apt-install" in makefile
    assert "apt-get install" not in makefile.replace("apt-get install -y -qq fortunes", "")
