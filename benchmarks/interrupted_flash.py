"""Interrupt real `edgelm flash` runs at random points and count what was left serving.

Each trial: a fresh workdir on the ``local`` target (the host board, a stand-in runner that says
HELLO on its pseudo-terminal: tests/unit/standin.py), release A flashed and serving; then
`edgelm flash B` is started and sent SIGKILL or SIGTERM after a random delay within the time an
uninterrupted flash takes. Afterwards (once the flash has exited, and a settling second) the trial
is classified by what `current` names and what serves: a runner that still runs, of that release,
whose link (socat) still runs and whose log says it sent its HELLO. With --lease-wait, a trial
where nothing serves then is watched that much longer: a stop for a switch is a lease, after which
the guard it left starts the current release again by itself.

    .venv/bin/python benchmarks/interrupted_flash.py --trials 20 --signal both
    .venv/bin/python benchmarks/interrupted_flash.py --trials 20 --code /tmp/orig   # another checkout's edgelm

Prints one line per trial and a JSON summary (--json FILE writes it too).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "unit")]

import standin  # noqa: E402
from standin import kill_leftovers, make_bundle, runs  # noqa: E402

STATE = Path("targets") / "local-host"


def edgelm(code: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(code), PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "toolchain.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=code, env=env)


def serving(work: Path) -> tuple[str | None, str | None]:
    """(the release `current` names, the release whose runner serves with HELLO), each None if none."""
    state = work / STATE
    link = state / "current"
    current = os.readlink(link).removeprefix("releases/") if link.is_symlink() else None
    try:
        info = json.loads((state / "running.json").read_text())
    except (OSError, ValueError):
        return current, None
    procs = info.get("processes") or {}
    alive = all(role in procs and runs(procs[role]) for role in ("runner", "socat"))
    try:
        said_hello = "HELLO sent" in (state / "runner.log").read_text(errors="replace")
    except OSError:
        said_hello = False
    return current, info.get("release") if alive and said_hello else None


def trial(code: Path, bundles: dict[str, Path], ids: dict[str, str], sig: signal.Signals, delay: float,
          root: Path, n: int, lease_wait: float = 0.0) -> dict:
    work = root / f"trial-{n}"
    try:
        first = edgelm(code, "flash", str(bundles["a"]), "--target", "local", "--workdir", str(work), "--json")
        assert first.returncode == 0, first.stderr
        env = dict(os.environ, PYTHONPATH=str(code), PYTHONUNBUFFERED="1")
        proc = subprocess.Popen([sys.executable, "-m", "toolchain.cli", "flash", str(bundles["b"]), "--target",
                                 "local", "--workdir", str(work)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, cwd=code, env=env)
        time.sleep(delay)
        proc.send_signal(sig)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        time.sleep(1.0)
        current, served = serving(work)
        at_once = served is not None and served == current
        recovered_s = None
        if not at_once and lease_wait > 0:  # what the board (its service, the guard of a stop) does by itself
            t0 = time.monotonic()
            while time.monotonic() - t0 < lease_wait:
                time.sleep(1.0)
                current, served = serving(work)
                if served is not None and served == current:
                    recovered_s = round(time.monotonic() - t0 + 1.0, 1)
                    break
        names = {v: k for k, v in ids.items()}
        outcome = ("serving " + names.get(served, "?")) if served is not None and served == current else \
            f"current {names.get(current, current)}, serving {names.get(served, served)}"
        if recovered_s is not None:
            outcome += f" (after {recovered_s:.0f} s)"
        return {"signal": sig.name, "delay_s": round(delay, 3), "exit": proc.returncode, "current": names.get(current),
                "serving": names.get(served), "ok": served is not None and served == current, "at_once": at_once,
                "recovered_after_s": recovered_s, "outcome": outcome,
                "error": err.strip().splitlines()[-1] if err.strip() else ""}
    finally:
        edgelm(code, "stop", "--board", "host", "--target", "local", "--workdir", str(work))
        kill_leftovers(work)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20, help="per signal")
    ap.add_argument("--signal", choices=["KILL", "TERM", "both"], default="both")
    ap.add_argument("--seed", type=int, default=23)
    ap.add_argument("--code", type=Path, default=REPO, help="the checkout whose edgelm is interrupted")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--hello-delay", type=float, default=0.0, help="seconds the stand-in runner loads before HELLO")
    ap.add_argument("--lease-wait", type=float, default=0.0,
                    help="seconds to wait, when nothing serves right after, for the board to serve by itself "
                         "(the lease of a stop for a switch: 120 s)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    sigs = [signal.SIGKILL, signal.SIGTERM] if args.signal == "both" else [signal.Signals["SIG" + args.signal]]
    with tempfile.TemporaryDirectory(prefix="edgelm-interrupt-") as tmp:
        root = Path(tmp)
        if args.hello_delay > 0:  # a runner that loads for a while before its HELLO, as a real one does
            standin.SERVING = standin.SERVING.replace("tty.setraw(fd)\n",
                                                      f"tty.setraw(fd)\ntime.sleep({args.hello_delay!r})\n")
        bundles = {name: make_bundle(root / "bundles", name) for name in ("a", "b")}
        ids = {name: json.loads((path / "bundle.json").read_text()) for name, path in bundles.items()}
        from toolchain.bundle.package import release_id

        ids = {name: release_id(info["files"]) for name, info in ids.items()}
        # how long an uninterrupted flash of B over A takes: the window the signals are spread over
        cal = root / "calibrate"
        assert edgelm(args.code, "flash", str(bundles["a"]), "--target", "local", "--workdir", str(cal)).returncode == 0
        t0 = time.monotonic()
        done = edgelm(args.code, "flash", str(bundles["b"]), "--target", "local", "--workdir", str(cal))
        window = time.monotonic() - t0
        assert done.returncode == 0, done.stderr
        edgelm(args.code, "stop", "--board", "host", "--target", "local", "--workdir", str(cal))
        kill_leftovers(cal)
        results = []
        for sig in sigs:
            for _ in range(args.trials):
                r = trial(args.code, bundles, ids, sig, rng.uniform(0.0, window), root, len(results),
                          args.lease_wait)
                results.append(r)
                print(f"{r['signal']:8} at {r['delay_s']:6.3f} s: {r['outcome']:28} exit {r['exit']}"
                      + (f"  ({r['error'][:90]})" if r["error"] else ""), flush=True)
    summary = {"code": str(args.code), "window_s": round(window, 3), "trials": len(results),
               "by_signal": {s.name: dict(Counter(r["outcome"] for r in results if r["signal"] == s.name))
                             for s in sigs},
               "left_serving_with_hello": {s.name: f"{sum(r['ok'] for r in results if r['signal'] == s.name)}/"
                                                   f"{sum(r['signal'] == s.name for r in results)}" for s in sigs},
               "serving_at_once": {s.name: f"{sum(r['at_once'] for r in results if r['signal'] == s.name)}/"
                                           f"{sum(r['signal'] == s.name for r in results)}" for s in sigs},
               "results": results}
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
