"""How every figure of the benchmark is taken: a child process, its wall time and peak RSS, and
whether anything else used the CPU while it ran.

Peak RSS is the largest ``VmHWM`` (the kernel's high-water mark of one process's memory) among
the measured process and its descendants, read while they run: the same counter the edgelm
runner reports and the Python probes read for themselves. Not ``ru_maxrss`` from ``wait4``: it
survives ``execve``, so a child that Popen starts (vfork) from this large Python process would
report this process's size. Idle is judged from
``/proc/stat``: the CPU time the whole machine spent busy during the run, less the CPU time of the
processes that carry the run's tag in their environment (the probe and everything it started).
More than ``MAX_OTHER_CORES`` of other work on average and the run counts as disturbed.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")
MAX_OTHER_CORES = 0.10  # other processes' CPU, in cores, averaged over the run
IDLE_WAIT_S = 120.0
TAG_VAR = "EDGELM_BENCH_TAG"


def machine_busy_s() -> float:
    """CPU seconds the machine has spent busy (all cores), from the first line of /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / TICK


def status_mb(field: str, status: str | None = None) -> float:
    """A size field of /proc/<pid>/status (VmRSS, VmHWM, ...) in MiB; this process's by default."""
    text = Path("/proc/self/status").read_text() if status is None else status
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def tagged(tag: str) -> tuple[float, float]:
    """(CPU seconds, largest VmHWM in MiB) of the live processes that carry ``tag``; the CPU
    seconds count their own and their reaped children's."""
    total, hwm = 0.0, 0.0
    needle = f"{TAG_VAR}={tag}".encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if needle not in Path(entry.path, "environ").read_bytes().split(b"\0"):
                continue
            stat = Path(entry.path, "stat").read_text()
            status = Path(entry.path, "status").read_text()
        except OSError:
            continue  # gone, or not ours to read
        rest = stat.rsplit(")", 1)[1].split()
        total += sum(int(x) for x in rest[11:15]) / TICK  # utime stime cutime cstime
        hwm = max(hwm, status_mb("VmHWM", status))
    return total, hwm


def _self_cpu_s() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def wait_idle(window_s: float = 1.0, limit: float = MAX_OTHER_CORES, wait_s: float = IDLE_WAIT_S) -> float:
    """Wait until the machine is idle over ``window_s``; returns the busy cores of the last window."""
    deadline = time.monotonic() + wait_s
    while True:
        b0, t0 = machine_busy_s(), time.monotonic()
        time.sleep(window_s)
        busy = (machine_busy_s() - b0) / (time.monotonic() - t0)
        if busy <= limit or time.monotonic() > deadline:
            return busy
        time.sleep(2.0)


@dataclass
class Measured:
    argv: list[str]
    rc: int
    wall_s: float
    peak_rss_mb: float
    cpu_s: float
    other_cores: float
    out: str
    err: str
    attempts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def disturbed(self) -> bool:
        return self.other_cores > MAX_OTHER_CORES

    def json(self) -> Any:
        """The last line of stdout that is a JSON object (a probe's result)."""
        for line in reversed(self.out.splitlines()):
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"{self.argv[0]} printed no result (rc {self.rc}): {self.err[-2000:]}")


def measure(argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout_s: float = 3600.0) -> Measured:
    """Run ``argv`` once: wall time, peak RSS (largest VmHWM in the tree), CPU, and the other
    processes' CPU."""
    tag = uuid.uuid4().hex
    child_env = dict(os.environ if env is None else env)
    child_env[TAG_VAR] = tag
    self0 = _self_cpu_s()
    busy0, t0 = machine_busy_s(), time.monotonic()
    proc = subprocess.Popen(argv, env=child_env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outs: dict[str, str] = {}

    def drain(name: str, stream: Any) -> None:
        outs[name] = stream.read()

    threads = [threading.Thread(target=drain, args=(n, s), daemon=True)
               for n, s in (("out", proc.stdout), ("err", proc.stderr))]
    for t in threads:
        t.start()
    last_tree, peak = 0.0, 0.0
    while True:  # wait4, not Popen.poll: poll would reap the child and lose its rusage
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        cpu_now, hwm = tagged(tag)  # the tree's CPU and memory while it lives
        last_tree, peak = max(last_tree, cpu_now), max(peak, hwm)
        if time.monotonic() - t0 > timeout_s:
            proc.kill()
        time.sleep(0.1)
    proc.returncode = rc = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - t0
    busy = machine_busy_s() - busy0
    for t in threads:
        t.join()
    cpu = usage.ru_utime + usage.ru_stime
    own = _self_cpu_s() - self0  # this process: the sampling loop and the pipe readers
    other = max(0.0, busy - max(cpu, last_tree) - own) / max(wall, 1e-6)
    return Measured(argv=list(argv), rc=rc, wall_s=wall, peak_rss_mb=peak, cpu_s=cpu, other_cores=other,
                    out=outs.get("out", ""), err=outs.get("err", ""))


def measure_quiet(argv: list[str], *, tries: int = 3, **kw: Any) -> Measured:
    """``measure`` on an idle machine, again when another process disturbed it (up to ``tries``)."""
    attempts: list[dict[str, Any]] = []
    m: Measured | None = None
    for _ in range(tries):
        before = wait_idle()
        m = measure(argv, **kw)
        attempts.append({"busy_before_cores": round(before, 3), "other_cores": round(m.other_cores, 3),
                         "wall_s": round(m.wall_s, 2)})
        if not m.disturbed or m.rc != 0:
            break
    assert m is not None
    m.attempts = attempts
    return m
