"""Interrupt real `edgelm flash` runs at every step and count what was left serving (issue 23).

One board per target kind, brought up the way the tests bring it up, with real components:

    local        this machine (the host board), the runner on a pseudo-terminal pair (socat)
    ssh          a real OpenSSH server on 127.0.0.1 (tests/sshd.py, an unprivileged board user); the
                 link is the SSH channel (the runner serves on its stdin/stdout)
    ssh-port     the same sshd; the link is a serial line given with --port: a null-modem pty pair
                 (socat, tests/sshd.py: null_modem), the runner left serving in the background on it
    qemu-system  the rpi5 board image (`edgelm image`) booted under qemu-system-aarch64: releases over
                 SSH into the guest, its edgelm-service serving on the PL011 UART
    dir          a folder laid out like a Raspberry Pi OS card (tests/unit/test_sdcard.py: make_card),
                 flashed with dir:PATH; the card "boots": its releases folder becomes the data disk of
                 the rpi5 image under qemu-system (the image's edgelm-service, which runs the same
                 checks as the card's edgelm-serve, serves what it finds)

local and ssh/ssh-port flash the real host runner (tiny 8da4w / 8da8w, built in --hw-workdir);
qemu-system and dir the real rpi5 runner. Three releases rotate (A, B, and A with bytes appended to
its runner: another release id): each trial flashes the one that is neither current nor previous,
its folder removed from the board first, so every flash uploads, verifies, stops, switches, starts.

Each trial sends SIGKILL or SIGTERM (alternating) after a delay drawn step by step: an uninterrupted
flash is timed first (its progress steps and log lines, tapped from the real CLI: TAP below), and
each trial picks one of those steps in turn (shuffled) and a uniform delay within it, so that every
step is hit. The step the flash was really in when the signal came is read from its own tapped
output (the last step it had begun). Afterwards (the flash has exited):

    current    what the board's `current` names (read from the board, not through edgelm)
    served     the release whose runner runs and serves, whose log says it sent its HELLO, and whose
               link answers a REQUEST with TOKEN and STATS (local, ssh-port, qemu-system, dir);
               ssh: nothing is left serving by design (a runner on the SSH channel ends with it), so
               `current` is started over the channel as `run` would, and must say HELLO
    verifies   the served release's files on the board hash to those of the bundle it came from
               (hashed here, or by sha256sum in the guest), bundle.json included

Where nothing serves right after, the board is watched --lease-wait seconds longer: a stop for a
switch is a lease (120 s), after which the board serves its current release by itself.

--power-cut (qemu-system): each trial flashes to completion (exit 0), then kills QEMU at once (a
power cut; --cut-at during: at a random point of the flash instead), boots the board again and
checks what its service serves: the release it serves must verify.

    .venv/bin/python benchmarks/interrupted_flash.py --kind ssh-port --trials 30
    .venv/bin/python benchmarks/interrupted_flash.py --kind qemu-system --power-cut --trials 20
    .venv/bin/python benchmarks/interrupted_flash.py --summarize     # the table of every results file

Raw records go to benchmarks/results/interrupted_flash_<kind>.json (--json FILE elsewhere).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "tests" / "unit")]
RESULTS = REPO / "benchmarks" / "results"
KINDS = ("local", "ssh", "ssh-port", "qemu-system", "dir")
LEASE_WAIT_S = 150.0  # the switch lease is 120 s; the guard or the service then starts the runner

# The real CLI, with a tap: every progress step and toolchain log line goes to stderr with the time
# it happened (flushed at once: a SIGKILL loses none). Nothing else changes.
TAP = r"""
import logging, sys, time
from toolchain import cli

def _emit(kind, text):
    sys.stderr.write("@@%s %.6f %s\n" % (kind, time.time(), " ".join(str(text).split())[:400]))
    sys.stderr.flush()

_step = cli.StepProgress.__call__
def _tap_step(self, step, detail):
    _emit("step", "%s %s" % (step, detail))
    return _step(self, step, detail)
cli.StepProgress.__call__ = _tap_step

class _Tap(logging.Handler):
    def emit(self, record):
        _emit("log", "%s %s" % (record.name, record.getMessage()))

_quiet = cli._quiet_libraries
def _quiet_tapped(verbose):
    _quiet(verbose)
    logger = logging.getLogger("toolchain")
    logger.setLevel(logging.INFO)
    logger.addHandler(_Tap())
    logger.propagate = verbose
cli._quiet_libraries = _quiet_tapped
sys.argv = ["edgelm", *sys.argv[1:]]
cli.main(prog_name="edgelm")
"""


# ----------------------------------------------------------------------------------------------
# What a flash said, and when
# ----------------------------------------------------------------------------------------------

def event_label(kind: str, text: str) -> str | None:
    """The step an event of the tapped output begins (None: not one)."""
    if kind == "step":
        return text.split(" ", 1)[0] or None
    if "deployed r-" in text:
        return "deployed"  # copied and verified, not yet current
    if "current release is now" in text:
        return "switched"
    if re.search(r"current release is (r-\S+|none) again", text):
        return "restored"
    return None


def parse_events(lines: list[str]) -> list[tuple[float, str, str]]:
    """(time, label, text) of each tapped line that begins a step."""
    out = []
    for line in lines:
        m = re.match(r"@@(step|log) ([0-9.]+) (.*)", line)
        if not m:
            continue
        label = event_label(m.group(1), m.group(3))
        if label:
            out.append((float(m.group(2)), label, m.group(3)))
    return out


def step_at(events: list[tuple[float, str, str]], when: float | None) -> str:
    """The step the flash was in at ``when``: the last one it had begun ('startup' before any)."""
    if when is None:
        return "finished"
    label = "startup"
    for t, name, _ in events:
        if t <= when:
            label = name
    return label


def segments(events: list[tuple[float, str, str]], started: float, ended: float) -> list[tuple[str, float, float]]:
    """The steps of an uninterrupted flash as (label, from, to) in seconds after it started."""
    marks = [("startup", 0.0)] + [(name, t - started) for t, name, _ in events]
    total = ended - started
    segs = []
    for i, (name, t0) in enumerate(marks):
        t1 = marks[i + 1][1] if i + 1 < len(marks) else total
        if t1 > t0:
            segs.append((name, t0, t1))
    return segs


class Schedule:
    """Where to interrupt, so that every step is hit: each round visits the calibrated steps in a
    shuffled order; the signal goes a uniform time into the step, counted from the moment the flash
    itself says it begins it (a fixed delay from the start would mostly land in Python's start-up,
    whose length varies). The last step stops short of its end, so the signal lands."""

    def __init__(self, segs: list[tuple[str, float, float]], rng: random.Random):
        self.segs = segs
        self.rng = rng
        self.order: list[int] = []

    def next(self) -> tuple[str, float]:
        """(the step, seconds into it)."""
        if not self.order:
            self.order = list(range(len(self.segs)))
            self.rng.shuffle(self.order)
        i = self.order.pop()
        name, t0, t1 = self.segs[i]
        span = t1 - t0
        if i == len(self.segs) - 1:
            span *= 0.8
        return name, round(self.rng.uniform(0.0, span), 3)


# ----------------------------------------------------------------------------------------------
# Verdicts (pure: a record in, a word out; tests/unit/test_interrupted_flash_bench.py)
# ----------------------------------------------------------------------------------------------

SERVING, NOTHING, UNVERIFIED, NO_ANSWER = "serving", "nothing serving", "unverified served", "HELLO, no answer"


def verdict(r: dict[str, Any]) -> str:
    """What a trial left: a release that serves (HELLO, and its link answers where it is probed),
    nothing, or a release served whose files do not verify."""
    if r.get("served") is None or not r.get("hello"):
        return NOTHING
    if not r.get("served_verifies"):
        return UNVERIFIED
    if r.get("probe") is not None and not r["probe"].get("answered"):
        return NO_ANSWER
    return SERVING


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for sig in sorted({r["signal"] for r in records}):
        mine = [r for r in records if r["signal"] == sig]
        out[sig] = {
            "trials": len(mine),
            # signalled while it ran, and it did not end as a finished flash does (exit 0)
            "interrupted": sum(not r.get("finished_before_signal") and r.get("exit") != 0 for r in mine),
            "serving_with_hello": sum(r["verdict"] == SERVING for r in mine),
            "at_once": sum(bool(r.get("at_once")) and r["verdict"] == SERVING for r in mine),
            "after_lease": sum(r.get("recovered_after_s") is not None for r in mine),
            "nothing_serving": sum(r["verdict"] == NOTHING for r in mine),
            "unverified_served": sum(r["verdict"] == UNVERIFIED for r in mine),
            "hello_no_answer": sum(r["verdict"] == NO_ANSWER for r in mine),
            "served_current": sum(r.get("served") is not None and r.get("served") == r.get("current") for r in mine),
            "steps": dict(Counter(r.get("step") for r in mine)),
            "served": dict(Counter(r.get("served_name") or "-" for r in mine)),
        }
    return out


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------

def sha256_file(path: Path) -> str:
    from toolchain.export.manifest import sha256_file as sha

    return sha(path)


@dataclass
class Rel:
    key: str  # a, b, c
    root: Path  # the bundle on this machine
    id: str
    model_sha256: str
    files: dict[str, str]  # name -> sha256 of every file the release holds on the board, bundle.json included


def releases(board: str, hw: Path, folder: Path, given: list[Path] | None = None) -> dict[str, Rel]:
    """A (tiny 8da4w), B (tiny 8da8w) and C (A with bytes appended to its runner: another release).
    ``given``: A's and B's bundle folders (else the cached export and build, made if missing: the
    cache key holds a hash of the toolchain's sources, so an edit there means a new export)."""
    from toolchain import api
    from toolchain.bundle import package

    roots: dict[str, Path] = {}
    for key, quant in (("a", "8da4w"), ("b", "8da8w")):
        if given:
            roots[key] = given[0 if key == "a" else 1].resolve()
            continue
        exported, _ = api.cached_export("tiny", hw, quant=quant)
        bundle, _ = api.cached_build(board, exported.pte, hw)
        roots[key] = bundle.root
    c = folder / f"{board}-c"
    shutil.rmtree(c, ignore_errors=True)
    shutil.copytree(roots["a"], c, symlinks=True)
    with open(c / package.RUNNER, "ab") as f:
        f.write(b"\0release c of the interrupted-flash benchmark\0")
    info = json.loads((c / package.BUNDLE_FILE).read_text())
    info["files"][package.RUNNER] = sha256_file(c / package.RUNNER)
    (c / package.BUNDLE_FILE).write_text(json.dumps(info, indent=2) + "\n")
    roots["c"] = c
    out = {}
    for key, root in roots.items():
        b = package.read_bundle(root)
        names = [*b.files, package.BUNDLE_FILE]
        out[key] = Rel(key, root, b.release_id, b.info["model_sha256"], {n: sha256_file(root / n) for n in names})
    assert len({r.id for r in out.values()}) == 3
    return out


def proc_alive(pid: int, start: str | None = None) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    fields = text[text.rindex(b")") + 2:].split()
    return fields[0] != b"Z" and (start is None or fields[19].decode() == start)


def processes(match: bytes, user_uid: int | None = None) -> list[dict[str, Any]]:
    """Processes whose command line holds ``match`` (and, if given, run as ``user_uid``)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
            uid = int(next(x for x in (d / "status").read_text().splitlines() if x.startswith("Uid:")).split()[1])
        except (OSError, StopIteration, ValueError):
            continue
        if match in cmd and (user_uid is None or uid == user_uid) and proc_alive(int(d.name)):
            found.append({"pid": int(d.name), "cmd": cmd.replace(b"\0", b" ").decode(errors="replace")[:200]})
    return found


def end(pids: Any) -> None:
    """SIGTERM, then SIGKILL after 5 s. A runner killed outright keeps its exclusive hold (TIOCEXCL) on
    a pty slave whose master stays open (the null modem's socat): later runners get EBUSY there."""
    pids = list(pids)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + 5
    while any(proc_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if proc_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def probe(port: str, baud: int, timeout_s: float) -> dict[str, Any]:
    """A REQUEST on the link of a runner that serves: the frames that come back (TOKEN and STATS: it
    answers), and a HELLO if one was still waiting there unread."""
    from toolchain.errors import EdgelmError
    from toolchain.link import framing, ports, protocol
    from toolchain.link.session import BoardSession
    from toolchain.link.transport import Deadline

    try:
        transport = ports.open_port(port, baud)
    except EdgelmError as exc:
        return {"answered": False, "frames": [], "error": str(exc)[:200]}
    seen: list[str] = []
    hello = None
    try:
        session = BoardSession(transport)
        session.send(protocol.REQUEST, protocol.Request(prompt=(1, 2, 3), max_new_tokens=2, ignore_eos=True).pack())
        for frame, msg in session.frames(Deadline(timeout_s)):
            if isinstance(frame, framing.FrameError):
                seen.append("GARBLED")
                continue
            seen.append(protocol.NAMES.get(frame.type, hex(frame.type)))
            if frame.type == protocol.HELLO and msg is not None and hasattr(msg, "model_sha256"):
                hello = msg.model_sha256
            if frame.type in (protocol.STATS, protocol.ERROR):
                break
    except Exception as exc:  # noqa: BLE001 - a link that fails is what is measured
        return {"answered": False, "frames": seen, "error": f"{type(exc).__name__}: {exc}"[:200]}
    finally:
        transport.close()
    return {"answered": "TOKEN" in seen and "STATS" in seen, "frames": seen, "hello_model_sha256": hello}


@dataclass
class FlashRun:
    exit: int | None
    lines: list[str]
    started: float
    ended: float
    signalled_at: float | None = None
    killed_after_s: float | None = None  # it did not end within the wait after the signal: SIGKILLed then

    @property
    def events(self) -> list[tuple[float, str, str]]:
        return parse_events(self.lines)

    @property
    def error(self) -> str:
        plain = [x for x in self.lines if x.strip() and not x.startswith("@@")]
        return plain[-1].strip()[:200] if plain else ""


def run_flash(code: Path, args: list[str], *, sig: signal.Signals | None = None, step: str = "startup",
              delay: float = 0.0, wait_s: float = 600.0, at_signal: Any = None) -> FlashRun:
    """`edgelm flash ARGS` (tapped); ``sig`` ``delay`` seconds after it begins ``step`` (by its own
    clock; "startup": after it was started), or ``at_signal()`` called then instead (a power cut).
    Waits for it to end (``wait_s``, then SIGKILL)."""
    env = dict(os.environ, PYTHONPATH=str(code), PYTHONUNBUFFERED="1")
    env.pop("EDGELM_DEBUG", None)
    lines: list[str] = []
    began: dict[str, float] = {}
    seen = threading.Event()
    started = time.time()
    proc = subprocess.Popen([sys.executable, "-c", TAP, "flash", *args], cwd=code, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, errors="replace")

    def read() -> None:
        assert proc.stderr is not None
        for text in proc.stderr:
            lines.append(text.rstrip("\n"))
            for t, label, _ in parse_events([lines[-1]]):
                began.setdefault(label, t)
                if label == step:
                    seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    run = FlashRun(None, lines, started, started)
    if sig is not None or at_signal is not None:
        if step == "startup":
            began[step] = started
            seen.set()
        while not seen.wait(0.01) and proc.poll() is None:
            pass
        if seen.is_set():
            pause = began[step] + delay - time.time()
            if pause > 0:
                try:
                    proc.wait(timeout=pause)
                except subprocess.TimeoutExpired:
                    pass
        if proc.poll() is None:
            run.signalled_at = time.time()
            if at_signal is not None:
                at_signal()
            else:
                assert sig is not None
                proc.send_signal(sig)
    try:
        proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        run.killed_after_s = wait_s
    reader.join(10)
    run.exit = proc.returncode
    run.ended = time.time()
    return run


# ----------------------------------------------------------------------------------------------
# The kinds of board
# ----------------------------------------------------------------------------------------------

class Board:
    """One board of a kind: set up, flashed, looked at."""

    name = ""
    board = "host"
    has_lease = True  # a stop for a switch leaves a lease after which the board serves by itself
    settle_s = 1.0  # after the flash ends, how long a release may take to be serving (a start in flight)
    wait_s = 180.0  # how long a signalled flash may take to end (SIGTERM: it restores and restarts)
    baud = 921600

    def __init__(self, root: Path, code: Path, hw: Path):
        self.root = root
        self.code = code
        self.hw = hw
        self.rels: dict[str, Rel] = {}
        self.by_id: dict[str, Rel] = {}

    # to fill in
    def setup(self) -> None: ...

    def target_args(self) -> list[str]: ...

    def links(self) -> dict[str, str | None]:
        """{"current": id, "previous": id} as the board has them (None: no such link)."""
        ...

    def remove_release(self, rid: str) -> None: ...

    def look(self) -> dict[str, Any]:
        """What serves now: served (id or None), hello (bool), how, probe, served_verifies, notes."""
        ...

    def teardown(self) -> None: ...

    def after_trial(self, record: dict[str, Any]) -> None:
        """Clean what a trial left that would disturb the next one (recorded in ``record``)."""

    ssh_config: Path | None = None  # the ssh client config the flash uses to reach the board, if any

    def in_flight(self) -> list[dict[str, Any]]:
        """The killed flash's ssh commands still running (not the connection masters): the board goes
        on with each (a stop, a start) whatever became of edgelm, so it is looked at once they end."""
        if self.ssh_config is None:
            return []
        return [p for p in processes(str(self.ssh_config).encode()) if "[mux]" not in p["cmd"]]

    # common
    bundles: list[Path] | None = None  # --bundles

    def load_releases(self) -> None:
        self.rels = releases(self.board, self.hw, self.root / "bundles", self.bundles)
        self.by_id = {r.id: r for r in self.rels.values()}

    def flash_args(self, rel: Rel) -> list[str]:
        return [str(rel.root), *self.target_args()]

    def next_release(self) -> Rel:
        """The release that is neither current nor previous, its folder removed from the board."""
        links = self.links()
        rel = next(r for r in self.rels.values() if r.id not in links.values())
        self.remove_release(rel.id)
        return rel

    def flash(self, rel: Rel) -> FlashRun:
        run = run_flash(self.code, self.flash_args(rel), wait_s=self.wait_s)
        if run.exit != 0:
            raise RuntimeError(f"flash of {rel.key} to {self.name} failed: {run.error}")
        return run

    def name_of(self, rid: str | None) -> str | None:
        return self.by_id[rid].key if rid in self.by_id else rid


def _hash_local(folder: Path, want: dict[str, str]) -> bool:
    try:
        return all(sha256_file(folder / n) == digest for n, digest in want.items())
    except OSError:
        return False


class LocalBoard(Board):
    name = "local"

    def setup(self) -> None:
        self.load_releases()
        self.work = self.root / "work"
        self.state = self.work / "targets" / "local-host"
        for key in ("a", "b"):
            self.flash(self.rels[key])

    def target_args(self) -> list[str]:
        return ["--target", "local", "--workdir", str(self.work)]

    def links(self) -> dict[str, str | None]:
        out = {}
        for n in ("current", "previous"):
            link = self.state / n
            out[n] = os.readlink(link).removeprefix("releases/") if link.is_symlink() else None
        return out

    def remove_release(self, rid: str) -> None:
        shutil.rmtree(self.state / "releases" / rid, ignore_errors=True)

    def look(self) -> dict[str, Any]:
        try:
            info = json.loads((self.state / "running.json").read_text())
        except (OSError, ValueError):
            return {"served": None, "hello": False, "how": "no running.json"}
        procs = info.get("processes") or {}
        alive = all(role in procs and proc_alive(procs[role]["pid"], str(procs[role]["start_time"]))
                    for role in ("runner", "socat"))
        if not alive:
            return {"served": None, "hello": False, "how": f"running.json names {info.get('release')}, not running"}
        try:
            hello = "HELLO sent" in (self.state / "runner.log").read_text(errors="replace")
        except OSError:
            hello = False
        rid = info.get("release")
        rel = self.by_id.get(rid)
        return {"served": rid, "hello": hello, "how": "runner.log: HELLO sent" if hello else "no HELLO in runner.log",
                "served_verifies": rel is not None and _hash_local(self.state / "releases" / rid, rel.files),
                "probe": probe(info["port"], self.baud, 30)}

    def teardown(self) -> None:
        subprocess.run([sys.executable, "-m", "toolchain.cli", "stop", "--board", "host", "--target", "local",
                        "--workdir", str(self.work)], cwd=self.code, capture_output=True,
                       env=dict(os.environ, PYTHONPATH=str(self.code)))
        from standin import kill_leftovers

        kill_leftovers(self.work)


class SshBoard(Board):
    """ssh://: a real sshd (tests/sshd.py) and its unprivileged board user; ``port``: the link is a
    null-modem pty pair given with --port, else the SSH channel."""

    settle_s = 2.0

    def __init__(self, root: Path, code: Path, hw: Path, port: bool):
        super().__init__(root, code, hw)
        self.port = port
        self.name = "ssh-port" if port else "ssh"
        self.has_lease = port  # on the channel nothing is left serving: there is nothing to lease

    def setup(self) -> None:
        import sshd

        self.load_releases()
        self.server = sshd.start_sshd(self.root / "ssh-client")
        self.data = self.server.data / "edgelm" / "host"
        shutil.rmtree(self.data, ignore_errors=True)
        self.work = self.root / "work"
        self.ssh_config = self.server.config
        self.nm = None
        if self.port:
            self.nm, self.host_end, self.board_end = sshd.null_modem(self.root / "null-modem", self.server.user)
        for key in ("a", "b"):
            self.flash(self.rels[key])

    def target_args(self) -> list[str]:
        args = ["--target", self.server.spec, "--ssh-config", str(self.server.config), "--workdir", str(self.work)]
        if self.port:
            args += ["--port", self.host_end, "--board-port", self.board_end]
        return args

    def links(self) -> dict[str, str | None]:
        out = {}
        for n in ("current", "previous"):
            link = self.data / n
            out[n] = os.readlink(link).removeprefix("releases/") if link.is_symlink() else None
        return out

    def remove_release(self, rid: str) -> None:
        shutil.rmtree(self.data / "releases" / rid, ignore_errors=True)

    def _background(self) -> tuple[str | None, int | None]:
        """The release and pid of the runner.pid on the board, if that process runs."""
        try:
            pid, start, rid = (self.data / "runner.pid").read_text().split()[:3]
        except (OSError, ValueError):
            return None, None
        return (rid, int(pid)) if pid.isdigit() and proc_alive(int(pid), start) else (None, None)

    def _runners(self) -> list[dict[str, Any]]:
        """Runners of this board's data folder (another board user's folder is another board)."""
        mark = f"{self.data}/releases/".encode()
        return [p for p in processes(b"/runner\0--model", self.server.uid) if mark in p["cmd"].encode()]

    def look(self) -> dict[str, Any]:
        rid, pid = self._background()
        others = [p for p in self._runners() if p["pid"] != pid]
        if self.port:
            if rid is None:
                lease = (self.data / "lease").exists()
                how = "no runner runs" + (" (a lease is armed)" if lease else "")
                return {"served": None, "hello": False, "how": how,
                        "other_runners": others}
            try:
                hello = "HELLO sent" in (self.data / "runner.log").read_text(errors="replace")
            except OSError:
                hello = False
            rel = self.by_id.get(rid)
            return {"served": rid, "hello": hello, "how": "board's runner.log: HELLO sent" if hello else
                    "no HELLO in the board's runner.log",
                    "served_verifies": rel is not None and _hash_local(self.data / "releases" / rid, rel.files),
                    "probe": probe(self.host_end, self.baud, 30), "other_runners": others}
        # the SSH channel: nothing is left serving; the current release is started over it as `run` does
        notes = {"other_runners": others, "background_runner": rid}
        current = self.links()["current"]
        if current is None:
            return {"served": None, "hello": False, "how": "nothing is current", **notes}
        rel = self.by_id.get(current)
        verifies = rel is not None and _hash_local(self.data / "releases" / current, rel.files)
        from toolchain import api
        from toolchain.deploy import bringup
        from toolchain.deploy.registry import TargetOptions
        from toolchain.errors import EdgelmError
        from toolchain.link import protocol

        target = api.target_for("host", self.server.spec, self.root / "check-work",
                                TargetOptions(ssh_config=self.server.config))
        release = target.store.current()
        try:
            up = bringup._serve(target, release, open_transport=None, timeouts=target.timeouts, threads=None,
                                progress=lambda s, d: None)
        except EdgelmError as exc:
            return {"served": None, "hello": False, "how": f"started over the channel: {exc}"[:300],
                    "served_verifies": verifies, **notes}
        try:
            got = up.session.collect(protocol.Request(prompt=(1, 2, 3), max_new_tokens=2, ignore_eos=True))
            answer = {"answered": len(got.tokens) == 2 and got.stats is not None, "frames": ["TOKEN"] * len(got.tokens)
                      + (["STATS"] if got.stats is not None else [])}
        except EdgelmError as exc:
            answer = {"answered": False, "frames": [], "error": str(exc)[:200]}
        finally:
            bringup._tear_down(up, False)
        ok = up.hello.model_sha256 == (rel.model_sha256 if rel else None)
        return {"served": current, "hello": ok, "how": "current started over the SSH channel: HELLO with its program",
                "served_verifies": verifies, "probe": answer, **notes}

    def after_trial(self, record: dict[str, Any]) -> None:
        _, pid = self._background()
        stray = [p for p in self._runners() if p["pid"] != pid]
        if stray:
            record.setdefault("notes", []).append(f"{len(stray)} other runner(s) on the board: "
                                                  + "; ".join(p["cmd"][:80] for p in stray))
            end(p["pid"] for p in stray)

    def teardown(self) -> None:
        end(p["pid"] for p in self._runners())
        for p in processes(str(self.root).encode()):
            try:
                os.kill(p["pid"], signal.SIGKILL)
            except OSError:
                pass
        if self.nm is not None:
            self.nm.terminate()
            self.nm.wait()
        self.server.stop()


def _status_of(text: str) -> tuple[str | None, str]:
    """edgelm-service status -> (release it runs, the status line)."""
    m = re.match(r"running ([0-9]+) (r-[0-9a-f]{16})\s*$", text.strip())
    return (m.group(2) if m else None), text.strip()


class QemuSystemBoard(Board):
    """The rpi5 image booted under qemu-system (tests/integration/test_image.py)."""

    name = "qemu-system"
    board = "rpi5"
    settle_s = 20.0
    wait_s = 400.0
    DATA = "/root/.local/share/edgelm/rpi5"

    def setup(self) -> None:
        from toolchain import api

        self.load_releases()
        self.image = self.root / "image"
        self.work = self.root / "work"
        api.image(self.board, self.image, bundle_dir=self.rels["a"].root, workdir=self.hw)
        self.spec = f"qemu-system:{self.image}"
        self.target = api.target_for(self.board, self.spec, self.work)
        self.ssh_config = self.target.state / "ssh_config"
        api.power(self.board, "on", self.spec, self.work)
        self.flash(self.rels["b"])
        self.baud = self.target.board.baud

    def target_args(self) -> list[str]:
        return ["--target", self.spec, "--workdir", str(self.work)]

    def ssh(self, argv: list[str], timeout_s: float = 60) -> subprocess.CompletedProcess:
        return self.target.store.ssh.run(argv, timeout_s=timeout_s)

    def links(self) -> dict[str, str | None]:
        out = {}
        for n in ("current", "previous"):
            p = self.ssh(["readlink", f"{self.DATA}/{n}"])
            out[n] = p.stdout.decode().strip().removeprefix("releases/") if p.returncode == 0 else None
        return out

    def remove_release(self, rid: str) -> None:
        self.ssh(["rm", "-rf", f"{self.DATA}/releases/{rid}"])

    def machine(self) -> dict[str, Any] | None:
        return self.target.power.record()

    def guest_verifies(self, rid: str) -> bool:
        rel = self.by_id.get(rid)
        if rel is None:
            return False
        p = self.ssh(["sha256sum", *[f"{self.DATA}/releases/{rid}/{n}" for n in sorted(rel.files)]], timeout_s=300)
        got = {}
        for line in p.stdout.decode(errors="replace").splitlines():
            digest, _, path = line.partition("  ")
            got[path.rsplit("/", 1)[-1]] = digest
        return p.returncode == 0 and all(got.get(n) == d for n, d in rel.files.items())

    def console_hello(self, rid: str) -> tuple[bool, str]:
        """Whether the console shows the runner of ``rid`` started last saying HELLO (with its program)."""
        text = (self.target.state / "console.log").read_bytes().decode(errors="replace")
        at = text.rfind(f"edgelm-service: starting runner of {rid}")
        if at < 0:
            return False, f"no start of {rid} on the console"
        after = text[at:]
        nxt = after.find("edgelm-service: starting runner of ", 10)
        if nxt > 0:
            after = after[:nxt]
        m = re.search(r"loaded \./model\.pte \(sha256 ([0-9a-f]{64})\)", after)
        rel = self.by_id.get(rid)
        if "edgelm-runner: HELLO sent" not in after:
            return False, "console: started, no HELLO sent"
        if m is None or rel is None or m.group(1) != rel.model_sha256:
            return False, "console: HELLO of another program"
        return True, "console: HELLO sent by the runner the service started last, with its program"

    def look(self) -> dict[str, Any]:
        rec = self.machine()
        if rec is None:
            return {"served": None, "hello": False, "how": "the emulated board is off"}
        p = self.ssh(["edgelm-service", "status"])
        rid, status = _status_of(p.stdout.decode(errors="replace"))
        if rid is None:
            return {"served": None, "hello": False, "how": f"edgelm-service status: {status}"}
        hello, how = self.console_hello(rid)
        return {"served": rid, "hello": hello, "how": f"edgelm-service status: {status}; {how}",
                "served_verifies": self.guest_verifies(rid),
                "probe": probe(f"socket://127.0.0.1:{rec['uart_port']}", self.baud, 120)}

    def teardown(self) -> None:
        from toolchain import api

        api.power(self.board, "off", self.spec, self.work)


class DirBoard(QemuSystemBoard):
    """A card folder (Raspberry Pi OS layout) flashed with dir:; each look boots it: its
    opt/edgelm/rpi5 becomes the data disk of the rpi5 image under qemu-system."""

    name = "dir"
    has_lease = False
    settle_s = 0.0
    wait_s = 120.0

    def setup(self) -> None:
        from test_sdcard import make_card

        from toolchain import api

        self.load_releases()
        self.base = self.root / "base-image"
        api.image(self.board, self.base, workdir=self.hw)  # no release: its kernel and initramfs
        self.card = make_card(self.root / "card")
        self.store_dir = self.card / "opt" / "edgelm" / self.board
        self.work = self.root / "work"
        self.boot_image = self.root / "boot-image"
        self.spec = f"qemu-system:{self.boot_image}"
        self.boot_work = self.root / "boot-work"
        for key in ("a", "b"):
            self.flash(self.rels[key])

    def target_args(self) -> list[str]:
        return ["--target", f"dir:{self.card}", "--workdir", str(self.work)]

    def links(self) -> dict[str, str | None]:
        out = {}
        for n in ("current", "previous"):
            link = self.store_dir / n
            out[n] = os.readlink(link).removeprefix("releases/") if link.is_symlink() else None
        return out

    def remove_release(self, rid: str) -> None:
        shutil.rmtree(self.store_dir / "releases" / rid, ignore_errors=True)

    def card_files(self) -> dict[str, Any]:
        """What a boot needs besides the release: the unit, its enabling link, the start script, the UART."""
        from toolchain.deploy import service

        unit = self.card / "etc/systemd/system" / service.UNIT_NAME
        wants = self.card / "etc/systemd/system/multi-user.target.wants" / service.UNIT_NAME
        serve = self.store_dir / service.SERVE_SCRIPT
        config = (self.card / "boot/firmware/config.txt").read_text()
        return {"unit": unit.is_file() and "ExecStart=/opt/edgelm/rpi5/edgelm-serve" in unit.read_text(),
                "enabled": wants.is_symlink(),
                "serve_script": serve.is_file() and serve.read_text() == service.serve_script(),
                "uart_on": "enable_uart=1" in config or "dtparam=uart0=on" in config}

    def boot(self) -> dict[str, Any]:
        """The card's store as the data disk of a fresh rpi5 image; powered on; what the board said."""
        from toolchain import api
        from toolchain.image import builder

        shutil.rmtree(self.boot_image, ignore_errors=True)
        (self.boot_image / "boot").mkdir(parents=True)
        for name in (builder.KERNEL_FILE, builder.INITRAMFS_FILE, "boot/config.txt", "boot/cmdline.txt"):
            if (self.base / name).exists():
                os.link(self.base / name, self.boot_image / name)
        for name in (builder.IMAGE_FILE, builder.MARKER):
            shutil.copy2(self.base / name, self.boot_image / name)
        staging = self.root / "staging"
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "etc" / "dropbear").mkdir(parents=True)
        shutil.copytree(self.store_dir, staging / "edgelm" / self.board, symlinks=True)
        builder._data_disk(staging, self.boot_image / builder.DATA_FILE, 1 << 30)
        shutil.rmtree(staging, ignore_errors=True)
        self.target = api.target_for(self.board, self.spec, self.boot_work)
        return api.power(self.board, "on", self.spec, self.boot_work)

    def look(self) -> dict[str, Any]:
        from toolchain import api

        card = self.card_files()
        try:
            on = self.boot()
        except Exception as exc:  # noqa: BLE001 - a card that does not boot is what is measured
            return {"served": None, "hello": False, "how": f"did not boot: {exc}"[:300], "card": card}
        try:
            seen = super().look()
            seen["how"] += f"; boot HELLO {str(on.get('boot_hello_model_sha256'))[:12]}"
            if seen.get("served") is not None:
                rel = self.by_id.get(seen["served"])
                seen["served_verifies_on_card"] = rel is not None and _hash_local(
                    self.store_dir / "releases" / seen["served"], rel.files)
                seen["boot_hello"] = rel is not None and on.get("boot_hello_model_sha256") == rel.model_sha256
            seen["card"] = card
            seen["boot_s"] = on.get("boot_s")
            return seen
        finally:
            api.power(self.board, "off", self.spec, self.boot_work)

    def teardown(self) -> None:
        from toolchain import api

        if self.boot_image.exists():
            api.power(self.board, "off", self.spec, self.boot_work)


def make_board(kind: str, root: Path, code: Path, hw: Path) -> Board:
    if kind == "local":
        return LocalBoard(root, code, hw)
    if kind in ("ssh", "ssh-port"):
        return SshBoard(root, code, hw, port=kind == "ssh-port")
    if kind == "qemu-system":
        return QemuSystemBoard(root, code, hw)
    if kind == "dir":
        return DirBoard(root, code, hw)
    raise SystemExit(f"unknown kind {kind}")


# ----------------------------------------------------------------------------------------------
# Trials
# ----------------------------------------------------------------------------------------------

def interrupted_trial(b: Board, n: int, sig: signal.Signals, planned: str, delay: float,
                      lease_wait: float) -> dict[str, Any]:
    t_start = time.monotonic()
    before = b.links()
    rel = b.next_release()
    run = run_flash(b.code, b.flash_args(rel), sig=sig, step=planned, delay=delay, wait_s=b.wait_s)
    finished_first = run.signalled_at is None
    t_flight = time.monotonic()
    while b.in_flight() and time.monotonic() - t_flight < 60:
        time.sleep(0.1)
    in_flight_s = round(time.monotonic() - t_flight, 1)
    events = run.events
    step = step_at(events, run.signalled_at)
    seen: dict[str, Any] = {}
    deadline = time.monotonic() + b.settle_s
    while True:
        seen = b.look()
        ok = verdict(seen) == SERVING
        if ok or time.monotonic() >= deadline:
            break
        time.sleep(2.0)
    at_once = ok
    recovered = None
    if not ok and b.has_lease and lease_wait > 0:
        t0 = time.monotonic()
        while time.monotonic() - t0 < lease_wait:
            time.sleep(3.0)
            seen = b.look()
            if verdict(seen) == SERVING:
                recovered = round(time.monotonic() - t0, 1)
                break
    links = b.links()
    record = {
        "trial": n, "kind": b.name, "signal": sig.name, "planned_step": planned, "delay_s": delay,
        "step": step, "finished_before_signal": finished_first,
        "events": [(round(t - run.started, 3), label) for t, label, _ in events],
        "flash": {"release": rel.key, "id": rel.id, "before": {k: b.name_of(v) for k, v in before.items()}},
        "exit": run.exit, "flash_error": run.error, "flash_killed_after_s": run.killed_after_s,
        "remote_in_flight_s": in_flight_s,
        "current": links.get("current"), "current_name": b.name_of(links.get("current")),
        "previous_name": b.name_of(links.get("previous")),
        **{k: v for k, v in seen.items()},
        "served_name": b.name_of(seen.get("served")),
        "at_once": at_once, "recovered_after_s": recovered,
    }
    record["verdict"] = verdict(record)
    b.after_trial(record)
    record["duration_s"] = round(time.monotonic() - t_start, 1)
    return record


def power_cut_trial(b: QemuSystemBoard, n: int, cut_at: str, schedule: Schedule) -> dict[str, Any]:
    """Flash, cut the power (QEMU SIGKILLed) right after it exits 0 (or at a random point of it), boot
    again, and look at what the service serves."""
    from toolchain import api

    t_start = time.monotonic()
    before = b.links()
    rel = b.next_release()
    qemu_pid = b.machine()["process"]["pid"]

    def cut() -> None:
        os.kill(qemu_pid, signal.SIGKILL)

    planned = None
    if cut_at == "after":
        run = run_flash(b.code, b.flash_args(rel), wait_s=b.wait_s)
        cut_t = time.time()
        cut()
        delay = None
    else:
        planned, delay = schedule.next()
        run = run_flash(b.code, b.flash_args(rel), step=planned, delay=delay, wait_s=b.wait_s, at_signal=cut)
        cut_t = run.signalled_at
    try:
        os.waitpid(qemu_pid, 0)
    except ChildProcessError:
        pass
    time.sleep(0.5)
    on = api.power(b.board, "on", b.spec, b.work)
    seen = b.look()
    links = b.links()
    current = links.get("current")
    record = {
        "trial": n, "kind": "qemu-system", "mode": f"power cut {cut_at} the flash", "signal": "power cut",
        "planned_step": planned, "delay_s": delay,
        "step": step_at(run.events, cut_t) if cut_at == "during" else "after exit",
        "flash": {"release": rel.key, "id": rel.id, "before": {k: b.name_of(v) for k, v in before.items()}},
        "exit": run.exit, "flash_error": run.error,
        "boot": {k: on.get(k) for k in ("boot_s", "boot_to_hello_s", "boot_hello_model_sha256", "boot_error")},
        "current": current, "current_name": b.name_of(current), "previous_name": b.name_of(links.get("previous")),
        "current_verifies": b.guest_verifies(current) if current else None,
        **seen, "served_name": b.name_of(seen.get("served")),
        "served_flashed": seen.get("served") == rel.id,
    }
    rel_served = b.by_id.get(seen.get("served") or "")
    record["boot_hello"] = rel_served is not None and on.get("boot_hello_model_sha256") == rel_served.model_sha256
    record["verdict"] = verdict(record)
    record["duration_s"] = round(time.monotonic() - t_start, 1)
    return record


def calibrate(b: Board) -> tuple[list[tuple[str, float, float]], float]:
    rel = b.next_release()
    run = b.flash(rel)
    segs = segments(run.events, run.started, run.ended)
    return segs, run.ended - run.started


def line(r: dict[str, Any]) -> str:
    served = r.get("served_name") or "-"
    extra = f" after {r['recovered_after_s']:.0f} s" if r.get("recovered_after_s") is not None else ""
    at = f"at {r['delay_s']:.3f} s" if r.get("delay_s") is not None else ""
    return (f"#{r['trial']:<3} {r['signal']:8} {at:12}"
            f" step {r.get('step', '?'):9} exit {str(r['exit']):4} current {r.get('current_name') or '-':2} "
            f"served {served:2} hello {str(bool(r.get('hello'))):5} -> {r['verdict']}{extra}  [{r['duration_s']} s]"
            + (f"  ({r['flash_error'][:70]})" if r.get("flash_error") else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=KINDS, default="local")
    ap.add_argument("--trials", type=int, default=30, help="in all (the signals alternate)")
    ap.add_argument("--signal", choices=["KILL", "TERM", "both"], default="both")
    ap.add_argument("--seed", type=int, default=23)
    ap.add_argument("--code", type=Path, default=REPO, help="the checkout whose edgelm is interrupted")
    ap.add_argument("--hw-workdir", type=Path, default=Path("/tmp/hw"),
                    help="where the tiny model's exports and builds are cached (built there if missing)")
    ap.add_argument("--bundles", type=Path, nargs=2, metavar=("A", "B"),
                    help="the two bundles to flash (tiny 8da4w and 8da8w for the kind's board); default: the cached "
                         "export and build in --hw-workdir")
    ap.add_argument("--json", type=Path, help="default: benchmarks/results/interrupted_flash_<kind>.json")
    ap.add_argument("--lease-wait", type=float, default=LEASE_WAIT_S,
                    help="seconds to watch a board where nothing serves right after (the lease is 120 s)")
    ap.add_argument("--power-cut", action="store_true", help="qemu-system: power cuts after (or during) flashes")
    ap.add_argument("--cut-at", choices=["after", "during"], default="after")
    ap.add_argument("--summarize", action="store_true", help="print the table of every results file and write "
                                                             "benchmarks/results/interrupted_flash.md")
    args = ap.parse_args()

    def stopped(signum: int, frame: Any) -> None:  # SIGTERM (and SIGINT, ignored in a background job): tear down
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stopped)
    signal.signal(signal.SIGINT, stopped)
    if args.summarize:
        print(write_summary())
        return
    if args.power_cut and args.kind != "qemu-system":
        raise SystemExit("--power-cut is for --kind qemu-system (a real power cut of the emulated board)")
    rng = random.Random(args.seed)
    sigs = [signal.SIGKILL, signal.SIGTERM] if args.signal == "both" else [signal.Signals["SIG" + args.signal]]
    name = f"{args.kind}-powercut-{args.cut_at}" if args.power_cut else args.kind
    out = args.json or RESULTS / f"interrupted_flash_{name}.json"
    results: list[dict[str, Any]] = []
    t_all = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"edgelm-interrupt-{args.kind}-") as tmp:
        b = make_board(args.kind, Path(tmp), args.code.resolve(), args.hw_workdir.resolve())
        b.bundles = args.bundles
        try:
            t0 = time.monotonic()
            b.setup()
            setup_s = round(time.monotonic() - t0, 1)
            segs, window = calibrate(b)
            print(f"{b.name}: set up in {setup_s} s; an uninterrupted flash takes {window:.2f} s: "
                  + ", ".join(f"{n} {t0:.2f}-{t1:.2f}" for n, t0, t1 in segs), flush=True)
            # one schedule per signal: each signal is sent in every step, round after round
            schedules = {s: Schedule(segs, random.Random(f"{args.seed}-{s.name}")) for s in sigs}
            schedule = Schedule(segs, rng)
            for n in range(args.trials):
                if args.power_cut:
                    r = power_cut_trial(b, n, args.cut_at, schedule)  # type: ignore[arg-type]
                else:
                    sig = sigs[n % len(sigs)]
                    planned, delay = schedules[sig].next()
                    r = interrupted_trial(b, n, sig, planned, delay, args.lease_wait)
                results.append(r)
                print(line(r), flush=True)
                save(out, args, b, window, segs, results, time.monotonic() - t_all)
        finally:
            b.teardown()
    print(json.dumps(summarize(results), indent=2))


def save(out: Path, args: argparse.Namespace, b: Board, window: float, segs: list, results: list[dict[str, Any]],
         wall_s: float) -> None:
    doc = {"kind": b.name, "power_cut": args.power_cut, "cut_at": args.cut_at if args.power_cut else None,
           "code": str(args.code), "seed": args.seed, "lease_wait_s": args.lease_wait,
           "runner": f"real: the {b.board} bundle of tiny (8da4w, 8da8w, 8da4w with bytes appended)",
           "releases": {k: r.id for k, r in b.rels.items()},
           "uninterrupted_flash_s": round(window, 3), "steps": [(n, round(t0, 3), round(t1, 3)) for n, t0, t1 in segs],
           "wall_s": round(wall_s, 1), "summary": summarize(results), "results": results}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(out)


def write_summary() -> str:
    rows = ["| kind | signal | trials | interrupted | serving + HELLO (at once / after the lease) | nothing serving "
            "| unverified served | one trial (median s) |", "|---|---|---|---|---|---|---|---|"]
    for path in sorted(RESULTS.glob("interrupted_flash_*.json")):
        doc = json.loads(path.read_text())
        if doc.get("power_cut"):
            continue  # the second table
        for sig, s in summarize(doc["results"]).items():
            durations = sorted(r["duration_s"] for r in doc["results"] if r["signal"] == sig)
            med = durations[len(durations) // 2] if durations else 0
            rows.append(f"| {doc['kind']} | {sig} | {s['trials']} | {s['interrupted']} | {s['serving_with_hello']} "
                        f"({s['at_once']} / {s['after_lease']}) | {s['nothing_serving']} | {s['unverified_served']} "
                        f"| {med} |")
    cuts = ["| power cut | trials | serving + HELLO, verified | of which the flashed release | another release "
            "| nothing serving | unverified served | one trial (median s) |", "|---|---|---|---|---|---|---|---|"]
    for path in sorted(RESULTS.glob("interrupted_flash_*powercut*.json")):
        doc = json.loads(path.read_text())
        rs = doc["results"]
        ok = [r for r in rs if r["verdict"] == SERVING]
        durations = sorted(r["duration_s"] for r in rs)
        flashed = sum(r["served_flashed"] for r in ok)
        median = durations[len(durations) // 2] if rs else 0
        cuts.append(f"| {doc['cut_at']} the flash | {len(rs)} | {len(ok)} | {flashed} "
                    f"| {len(ok) - flashed} | {sum(r['verdict'] == NOTHING for r in rs)} "
                    f"| {sum(r['verdict'] == UNVERIFIED for r in rs)} | {median} |")
    text = "\n".join(rows) + "\n\n" + "\n".join(cuts) + "\n"
    (RESULTS / "interrupted_flash.md").write_text("# Interrupted flashes (issue 23)\n\nFrom "
                                                  "`benchmarks/interrupted_flash.py`; raw records in "
                                                  "`interrupted_flash_<kind>.json`.\n\n" + text)
    return text


if __name__ == "__main__":
    main()
