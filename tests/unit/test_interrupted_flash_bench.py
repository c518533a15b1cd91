"""The classification of benchmarks/interrupted_flash.py (issue 23's acceptance): which step a flash
was in when the signal came, and what a trial's record counts as. Pure functions, no board."""

import importlib.util
import random
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "interrupted_flash.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("interrupted_flash_bench", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


LINES = ["@@step 100.5 preflight local:host: arch, glibc",
         "@@step 100.6 flash local:host",
         "@@step 100.7 upload 123 bytes to /x/.incoming-r-0",
         "@@log 100.8 toolchain.deploy.store deployed r-0123456789abcdef to /x (hashes verified)",
         "@@step 100.9 stop the runner of r-1 on local:host",
         "@@step 101.0 switch local:host: current -> r-0123456789abcdef",
         "@@log 101.1 toolchain.deploy.store local:host: current release is now r-0123456789abcdef",
         "@@log 101.15 toolchain.deploy.process starting /x/runner --model /x/model.pte",
         "@@step 101.2 start runner r-0 on local:host",
         "@@step 101.3 link waiting for HELLO on /x/link/host",
         "error: terminated by SIGTERM",
         "@@log 101.4 toolchain.deploy.store local:host: current release is r-1111111111111111 again"]


def test_the_step_is_the_last_one_begun_before_the_signal(bench):
    events = bench.parse_events(LINES)
    assert [e[1] for e in events] == ["preflight", "flash", "upload", "deployed", "stop", "switch", "switched",
                                      "start", "link", "restored"]
    assert bench.step_at(events, 100.0) == "startup"
    assert bench.step_at(events, 100.85) == "deployed"
    assert bench.step_at(events, 101.05) == "switch"
    assert bench.step_at(events, 101.35) == "link"
    assert bench.step_at(events, None) == "finished"


def test_the_schedule_visits_every_step_each_round(bench):
    events = bench.parse_events(LINES[:10])
    segs = bench.segments(events, 100.0, 101.5)
    assert segs[0] == ("startup", 0.0, pytest.approx(0.5)) and segs[-1][0] == "link"
    schedule = bench.Schedule(segs, random.Random(1))
    picked = [schedule.next() for _ in range(len(segs))]
    assert sorted(name for name, _ in picked) == sorted(name for name, _, _ in segs)
    spans = {name: t1 - t0 for name, t0, t1 in segs}
    assert all(0 <= delay <= spans[name] for name, delay in picked)
    assert dict(picked)["link"] <= 0.8 * spans["link"] + 1e-9  # the signal lands before the flash ends


@pytest.mark.parametrize("record, word", [
    ({"served": "r-1", "hello": True, "served_verifies": True, "probe": {"answered": True}}, "serving"),
    ({"served": "r-1", "hello": True, "served_verifies": True, "probe": None}, "serving"),  # not probed (a card)
    ({"served": None, "hello": False}, "nothing serving"),
    ({"served": "r-1", "hello": False, "served_verifies": True}, "nothing serving"),  # runs, never said HELLO
    ({"served": "r-1", "hello": True, "served_verifies": False, "probe": {"answered": True}}, "unverified served"),
    ({"served": "r-1", "hello": True, "served_verifies": True, "probe": {"answered": False}}, "HELLO, no answer"),
])
def test_a_trial_counts_as_what_it_left(bench, record, word):
    assert bench.verdict(record) == word


def test_the_summary_counts_by_signal(bench):
    ok = {"served": "r-1", "current": "r-1", "hello": True, "served_verifies": True, "exit": -9, "step": "stop"}
    records = [dict(ok, signal="SIGKILL", at_once=True), dict(ok, signal="SIGKILL", recovered_after_s=121.0),
               dict(ok, signal="SIGTERM", exit=0), {"signal": "SIGTERM", "served": None, "exit": 143, "step": "link"}]
    for r in records:
        r["verdict"] = bench.verdict(r)
    s = bench.summarize(records)
    assert s["SIGKILL"]["serving_with_hello"] == 2 and s["SIGKILL"]["at_once"] == 1 and s["SIGKILL"]["after_lease"] == 1
    assert s["SIGTERM"]["interrupted"] == 1 and s["SIGTERM"]["nothing_serving"] == 1
