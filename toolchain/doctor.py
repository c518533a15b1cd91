"""What this host can do, and what to install for what it cannot (``edgelm doctor``).

The table below is the one place that says which outside tool each capability needs and how to
install it: on Debian and Ubuntu (apt, without recommends), on macOS (Homebrew, where the tool exists
there), or with pip (an extra of the ``edgelm`` package). Every "not installed" error in edgelm takes
its hint from here (:func:`hint`), so a user without the repository (no Makefile) still learns the
exact line. Importing this module imports nothing heavy: torch is described from its files.
"""

from __future__ import annotations

import glob
import importlib.util
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

APT = "sudo apt-get install --no-install-recommends"
NOT_ON_MACOS = ""  # the tool has no macOS build (the capability is Linux only there)


@dataclass(frozen=True)
class Tool:
    """One outside thing edgelm runs or imports. ``kind``: ``command`` (a program on PATH), ``script`` (a
    python package's program: beside this interpreter, else on PATH), ``python`` (a module ``check``
    importable here), ``file`` (a path or glob that must exist)."""

    name: str
    kind: str
    check: str
    apt: str = ""  # the Debian/Ubuntu package(s)
    macos: str = NOT_ON_MACOS  # the macOS install line
    pip: str = ""  # the pip install line (python tools)
    why: str = ""

    def where(self) -> str | None:
        """Where it was found here, or None."""
        if self.kind == "command":
            return shutil.which(self.check)
        if self.kind == "script":
            beside = Path(sys.executable).parent / self.check
            return str(beside) if beside.is_file() else shutil.which(self.check)
        if self.kind == "python":
            try:
                spec = importlib.util.find_spec(self.check)
            except (ImportError, ValueError):
                return None
            return (spec.origin or "(namespace)") if spec is not None else None
        found = sorted(glob.glob(self.check))
        return found[0] if found else None

    def install(self) -> dict[str, str]:
        """The install lines: ``apt`` (Debian and Ubuntu), ``macos``, ``pip`` (those that exist)."""
        lines = {}
        if self.pip:
            lines["pip"] = self.pip
        if self.apt:
            lines["apt"] = f"{APT} {self.apt}"
        if self.macos:
            lines["macos"] = self.macos
        return lines

    def install_text(self) -> str:
        lines = self.install()
        parts = []
        if "pip" in lines:
            parts.append(lines["pip"])
        if "apt" in lines:
            parts.append(f"{lines['apt']} (Debian/Ubuntu)")
        if "macos" in lines:
            parts.append(f"{lines['macos']} (macOS)")
        elif "pip" not in lines:
            parts.append("Linux only")
        return "; ".join(parts)


def _tools(*tools: Tool) -> dict[str, Tool]:
    return {t.name: t for t in tools}


EDGELM = "pip install edgelm"
TOOLS: dict[str, Tool] = _tools(
    # export (pip alone)
    Tool("torch", "python", "torch", pip=EDGELM, why="the model and its export"),
    Tool("executorch", "python", "executorch", pip=EDGELM, why="the program (.pte) and the runner's runtime"),
    Tool("torchao", "python", "torchao", pip=EDGELM, why="quantization"),
    # building a runner
    Tool("cmake", "command", "cmake", apt="cmake", macos="brew install cmake", pip="pip install cmake",
         why="configures the runner's build"),
    Tool("make", "command", "make", apt="make", macos="xcode-select --install", why="cmake's build tool"),
    Tool("g++", "command", "g++", apt="g++", macos="xcode-select --install", why="the host board's runner"),
    Tool("objdump", "command", "objdump", apt="binutils", macos="xcode-select --install",
         why="reads the glibc versions a runner needs"),
    Tool("aarch64-linux-gnu-g++", "command", "aarch64-linux-gnu-g++", apt="g++-aarch64-linux-gnu",
         why="the cross compiler for Arm Linux boards (its sysroot: libc6-arm64-cross)"),
    Tool("aarch64-linux-gnu-objdump", "command", "aarch64-linux-gnu-objdump", apt="binutils-aarch64-linux-gnu",
         why="reads the glibc versions a runner needs"),
    Tool("aarch64 sysroot", "file", "/usr/aarch64-linux-gnu/lib", apt="libc6-arm64-cross",
         why="the Arm board's C library, for qemu-user and the linker"),
    Tool("zig", "python", "ziglang", pip="pip install ziglang", why="links a runner for a board with an older glibc"),
    # running on this machine and on emulated boards
    Tool("socat", "command", "socat", apt="socat", macos="brew install socat",
         why="joins the board's and the host's pseudo-terminals"),
    Tool("qemu-aarch64", "command", "qemu-aarch64", apt="qemu-user",
         why="runs an Arm board's runner here (qemu-user, Linux only)"),
    # SSH boards
    Tool("ssh", "command", "ssh", apt="openssh-client", macos="(part of macOS)", why="reaches ssh:// boards"),
    Tool("ssh-keygen", "command", "ssh-keygen", apt="openssh-client", macos="(part of macOS)",
         why="the board image's SSH key"),
    # board images and the booting emulated board
    Tool("qemu-system-aarch64", "command", "qemu-system-aarch64", apt="qemu-system-arm", macos="brew install qemu",
         why="boots the board image (--target qemu-system)"),
    Tool("mke2fs", "command", "mke2fs", apt="e2fsprogs", macos="brew install e2fsprogs",
         why="makes the image's data disk"),
    Tool("debugfs", "command", "debugfs", apt="e2fsprogs", macos="brew install e2fsprogs",
         why="fixes the data disk's timestamps"),
    Tool("faketime", "file", "/usr/lib/*/faketime/libfaketime.so.1", apt="faketime",
         why="a frozen clock for the data disk (the same bytes every time)"),
    Tool("apt-get", "command", "apt-get", why="downloads the image's Debian arm64 packages (the arm64 architecture "
         "added: sudo dpkg --add-architecture arm64 && sudo apt-get update)"),
    Tool("dpkg-deb", "command", "dpkg-deb", why="unpacks the image's packages"),
    # Arm NPU boards (corstone-300/320)
    Tool("arm-none-eabi-gcc", "command", "arm-none-eabi-gcc", apt="gcc-arm-none-eabi libnewlib-arm-none-eabi",
         macos="brew install --cask gcc-arm-embedded", why="the Cortex-M firmware"),
    Tool("qemu-system-arm", "command", "qemu-system-arm", apt="qemu-system-arm", macos="brew install qemu",
         why="the Cortex-M firmware's self-test (mps3-an547)"),
    Tool("vela", "python", "ethosu.vela", pip="pip install 'edgelm[arm]'", why="Arm's compiler for Ethos-U"),
    Tool("tosa-tools", "python", "tosa_reference_model", pip="pip install --no-deps tosa-tools==2026.8.0",
         why="the TOSA reference model (the Arm export's check; --check-steps 0 skips it)"),
    # board farms
    Tool("labgrid", "python", "labgrid", pip="pip install 'edgelm[labgrid]'", why="labgrid:// boards"),
    # the test suite only
    Tool("labgrid-coordinator", "script", "labgrid-coordinator", pip="pip install 'edgelm[test]'",
         why="the tests' labgrid farm"),
    Tool("labgrid-exporter", "script", "labgrid-exporter", pip="pip install 'edgelm[test]'",
         why="the tests' labgrid farm"),
    Tool("ser2net", "command", "ser2net", apt="ser2net", macos="brew install ser2net",
         why="serves the tests' farm board's serial port (its service is left off)"),
    Tool("sshd", "file", "/usr/sbin/sshd", apt="openssh-server", macos="(part of macOS)",
         why="the tests' throwaway SSH server on 127.0.0.1 (its service is left off)"),
    Tool("chromium", "command", "chromium", apt="chromium", macos="brew install --cask chromium",
         why="opens the HTML report headless in its test (Ubuntu: sudo snap install chromium)"),
    Tool("clang", "command", "clang", apt="clang", macos="brew install llvm", why="make fuzz (libFuzzer)"),
    Tool("libFuzzer", "file", "/usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-*.a", apt="libclang-rt-dev",
         macos="brew install llvm", why="libFuzzer's runtime (make fuzz)"),
    Tool("pytest", "python", "pytest", pip="pip install 'edgelm[test]'", why="the test suite"),
    Tool("pexpect", "python", "pexpect", pip="pip install 'edgelm[test]'", why="drives `edgelm console` in its test"),
    Tool("pillow", "python", "PIL", pip="pip install 'edgelm[test]'", why="reads the report's screenshot"),
    Tool("transformers", "python", "transformers", pip="pip install 'edgelm[test]'",
         why="the tokenizer tests' reference"),
)

# Program names and the tool entry that installs them, for code that knows only the program.
ALIASES = {"x86_64-linux-gnu-g++": "g++", "c++": "g++", "gcc": "g++", "aarch64-linux-gnu-gcc": "aarch64-linux-gnu-g++",
           "chromium-browser": "chromium", "/usr/sbin/sshd": "sshd", "sshd": "sshd", "e2fsprogs": "mke2fs",
           "arm-none-eabi-g++": "arm-none-eabi-gcc", "ethos-u-vela": "vela", "ziglang": "zig",
           "tosa_reference_model": "tosa-tools", "ethosu.vela": "vela", "ethosu": "vela"}


@dataclass(frozen=True)
class Capability:
    name: str
    what: str
    tools: tuple[str, ...]
    linux_only: bool = False


CAPABILITIES: tuple[Capability, ...] = (
    Capability("export", "export a model (pip alone)", ("torch", "executorch", "torchao")),
    Capability("build-host", "build the runner for the host board", ("cmake", "make", "g++", "objdump")),
    Capability("build-arm64", "build the runner for Arm Linux boards (rpi*, jetson)",
               ("cmake", "make", "aarch64-linux-gnu-g++", "aarch64-linux-gnu-objdump", "aarch64 sysroot", "zig")),
    Capability("local", "--target local: the host board, on this machine", ("socat",), linux_only=True),
    Capability("qemu", "--target qemu: an emulated Arm board (qemu-user)", ("qemu-aarch64", "socat", "aarch64 sysroot"),
               linux_only=True),
    Capability("ssh", "ssh:// boards", ("ssh",)),
    Capability("image", "edgelm image and --target qemu-system (a booting emulated board)",
               ("qemu-system-aarch64", "mke2fs", "debugfs", "faketime", "ssh", "ssh-keygen", "apt-get", "dpkg-deb"),
               linux_only=True),
    Capability("arm", "Arm NPU boards (corstone-300/320): --backend ethos-u|tosa, the Cortex-M firmware",
               ("arm-none-eabi-gcc", "qemu-system-arm", "cmake", "vela", "tosa-tools")),
    Capability("farm", "labgrid:// boards", ("labgrid",)),
    Capability("test", "the test suite (make test), beyond the capabilities above",
               ("g++", "labgrid-coordinator", "labgrid-exporter", "ser2net", "sshd", "chromium", "clang", "libFuzzer",
                "pytest", "pexpect", "pillow", "transformers"), linux_only=True),
)
BY_NAME = {c.name: c for c in CAPABILITIES}
TARGET_CAPABILITY = {"local": "local", "qemu": "qemu", "qemu-system": "image", "ssh": "ssh", "labgrid": "farm"}


def tool(name: str) -> Tool:
    return TOOLS[ALIASES.get(name, name)]


def hint(name: str) -> str:
    """The hint for "NAME is not installed": the exact install line, and `edgelm doctor`."""
    key = ALIASES.get(name, name)
    if key not in TOOLS:
        return "`edgelm doctor` says what this host lacks and how to install it"
    return f"install it: {TOOLS[key].install_text()}; `edgelm doctor` lists what each capability needs"


def not_linux() -> str | None:
    """Why this host cannot do what needs Linux (pseudo-terminals, /proc, qemu-user), or None on Linux."""
    if not sys.platform.startswith("linux"):
        return f"this host is {platform.system() or sys.platform}"
    lacks = []
    try:
        import fcntl  # noqa: F401
    except ImportError:
        lacks.append("fcntl")
    try:
        import termios  # noqa: F401
    except ImportError:
        lacks.append("termios")
    from toolchain import procinfo

    if not procinfo.has_proc():
        lacks.append("/proc")
    return f"this host has no {', '.join(lacks)}" if lacks else None


def require_linux(what: str) -> None:
    """Refuse ``what`` in one line on a host that is not Linux."""
    why = not_linux()
    if why is not None:
        from toolchain.errors import UsageError

        raise UsageError(f"{what} needs Linux ({why})",
                         hint="reach a board over ssh:// from here, or run edgelm on a Linux machine")


def torch_build() -> dict[str, Any]:
    """The installed torch, read from its files (no import): version, CPU or CUDA/ROCm build, where."""
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return {"installed": False, "line": "torch: not installed (pip install edgelm)"}
    root = Path(list(spec.submodule_search_locations)[0])
    facts: dict[str, str | None] = {}
    try:
        for raw in (root / "version.py").read_text().splitlines():
            key, sep, value = raw.partition("=")
            key = key.split(":")[0].strip()
            if sep and key in ("__version__", "cuda", "hip", "xpu"):
                facts[key] = value.strip().strip("'\"") if value.strip() != "None" else None
    except OSError:
        pass
    version = facts.get("__version__") or "?"
    if facts.get("cuda"):
        build = f"CUDA {facts['cuda']}"
    elif facts.get("hip"):
        build = f"ROCm {facts['hip']}"
    elif facts.get("xpu"):
        build = f"XPU {facts['xpu']}"
    else:
        build = "CPU"
    line = f"torch {version} ({build} build) from {root}"
    if build != "CPU":
        line += "; edgelm needs only the CPU build: pip install torch --index-url https://download.pytorch.org/whl/cpu"
    return {"installed": True, "version": version, "build": build, "path": str(root), "line": line}


def check(cap: Capability, host_not_linux: str | None) -> dict[str, Any]:
    tools: list[dict[str, Any]] = []
    for name in cap.tools:
        t = TOOLS[name]
        where = t.where()
        tools.append({"name": name, "kind": t.kind, "found": where is not None, "path": where, "why": t.why,
                      "install": t.install()})
    missing = [str(x["name"]) for x in tools if not x["found"]]
    ready = not missing and not (cap.linux_only and host_not_linux)
    if ready:
        line = "ready"
    elif cap.linux_only and host_not_linux:
        line = f"needs Linux ({host_not_linux})"
    else:
        line = "; ".join(f"{n}: {TOOLS[n].install_text()}" for n in missing)
    return {"name": cap.name, "what": cap.what, "ready": ready, "linux_only": cap.linux_only, "missing": missing,
            "line": line, "install": _grouped(missing), "tools": tools}


def _grouped(missing: list[str]) -> dict[str, str]:
    """One install line per package manager for everything ``missing`` (the order kept, no repeats)."""
    apt: list[str] = []
    pip: list[str] = []
    macos: list[str] = []
    for name in missing:
        t = TOOLS[name]
        for pkg in t.apt.split():
            if pkg not in apt:
                apt.append(pkg)
        if t.pip and t.pip not in pip:
            pip.append(t.pip)
        if t.macos and t.macos not in macos:
            macos.append(t.macos)
    out = {}
    if apt:
        out["apt"] = f"{APT} {' '.join(apt)}"
    if pip:
        out["pip"] = " && ".join(pip)
    if macos:
        out["macos"] = " && ".join(macos)
    return out


def wanted(spec: str) -> list[str]:
    """The capabilities ``--for SPEC`` asks for: a capability name, ``run:BOARD[:TARGET]``,
    ``build:BOARD`` or ``all``."""
    from toolchain.errors import UsageError

    if spec == "all":
        return [c.name for c in CAPABILITIES]
    if spec in BY_NAME:
        return [spec] if spec != "test" else [c.name for c in CAPABILITIES]
    verb, _, rest = spec.partition(":")
    if verb not in ("run", "build") or not rest:
        raise UsageError(f"--for {spec}: not a capability, run:BOARD[:TARGET] or build:BOARD",
                         hint=f"capabilities: {', '.join(BY_NAME)}")
    board_name, _, target = rest.partition(":")
    from toolchain import boards

    board = boards.get(board_name)
    if board.bare_metal:  # a Cortex-M board (corstone): the Arm toolchain
        return ["export", "arm"]
    build = "build-arm64" if board.cross_prefix else "build-host"
    if verb == "build":
        return ["export", build]
    if not target:
        target = board.default_target or ("local" if board.arch == platform.machine() else "qemu")
    kind = target.split("://")[0] if "://" in target else target.split(":")[0]
    if kind == "dir":
        return ["export", build]
    if kind not in TARGET_CAPABILITY:
        raise UsageError(f"--for {spec}: unknown target {target!r}", hint="see `edgelm targets`")
    return ["export", build, TARGET_CAPABILITY[kind]]


def report(for_: tuple[str, ...] = ()) -> dict[str, Any]:
    from toolchain import __version__

    asked: list[str] = []
    for spec in for_:
        asked += [n for n in wanted(spec) if n not in asked]
    host_not_linux = not_linux()
    caps = [check(c, host_not_linux) for c in CAPABILITIES]
    every = sorted({n for c in CAPABILITIES for n in c.tools})
    tools = {n: {"found": TOOLS[n].where() is not None, "path": TOOLS[n].where(), "install": TOOLS[n].install()}
             for n in every}
    ready = all(c["ready"] for c in caps if c["name"] in asked)
    return {"edgelm": __version__, "host": f"{platform.system()} {platform.machine()}, Python "
            f"{platform.python_version()}", "linux": host_not_linux is None, "torch": torch_build(),
            "capabilities": caps, "tools": tools, "for": asked, "ready": ready}


def render(data: dict[str, Any]) -> list[str]:
    lines = [f"edgelm {data['edgelm']} on {data['host']}", data["torch"]["line"]]
    width = max(len(c["name"]) for c in data["capabilities"])
    for c in data["capabilities"]:
        mark = "*" if c["name"] in data["for"] else " "
        lines.append(f"{mark}{c['name']:<{width}}  {'ready' if c['ready'] else 'NOT READY: ' + c['line']}")
    if data["for"]:
        lines.append(f"asked for ({', '.join(data['for'])}): {'ready' if data['ready'] else 'not ready'}")
    return lines

