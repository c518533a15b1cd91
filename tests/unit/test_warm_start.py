"""Issue 25: a warm run starts at once. Naming a model, reading its manifest, finding the cached export and build
import no torch; the host reference loads in the background, without the export stack (executorch.exir)."""

import subprocess
import sys
import threading
import time

import pytest

from toolchain import api

NO_TORCH = """
import sys
from toolchain import api
from toolchain.model import checkpoint, tokenizer
from toolchain.export import manifest
from toolchain.bundle import package, render, sdk
from toolchain.deploy import bringup, registry
from toolchain.validate import compare, judge
assert checkpoint.is_preset("tiny") and not checkpoint.is_preset("fortune")
api._model_identity("fortune")
api.tokenizer_path(api.RunRequest(board="host", model="fortune", prompt="x"))
heavy = sorted(m for m in ("torch", "executorch", "torchao") if m in sys.modules)
assert not heavy, heavy
"""


def test_what_a_warm_run_does_before_the_board_imports_no_torch():
    proc = subprocess.run([sys.executable, "-c", NO_TORCH], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_later_hands_over_the_value_or_the_error_of_its_thread():
    gate = threading.Event()
    later = api.Later(lambda: gate.wait(5) and 42, "test")
    assert not later.ready
    gate.set()
    assert later.get() == 42 and later.ready

    def fails():
        raise ValueError("no program")

    with pytest.raises(ValueError, match="no program"):
        api.Later(fails, "test").get()


def test_a_loading_reference_says_once_that_it_is_waited_for(monkeypatch):
    import toolchain.validate.reference as reference

    class Slow:
        def __init__(self, pte):
            time.sleep(0.3)
            self.max_seq_len = 64

        def step(self, tokens, pos):
            return "logits"

    monkeypatch.setattr(reference, "ProgramRunner", Slow)
    loading = threading.Event()  # the runtime's imports still under way when the reference is first used
    monkeypatch.setattr(reference, "_runtime", lambda: loading.wait(30))
    told = []
    ref = api.LoadingReference("model.pte", lambda step, detail: told.append((step, detail)))
    threading.Timer(0.3, loading.set).start()
    assert ref.step([1], 0) == "logits" and ref.max_seq_len == 64
    assert told == [("reference", "waiting for the host reference to finish loading")]
    ref.step([1], 0)
    assert len(told) == 1


def test_nothing_loads_beside_a_stream():
    """A stream's timing is judged against this process's clock: the background loads end before it starts."""
    gate = threading.Event()
    later = api.Later(lambda: gate.wait(5), "slow load")
    prep = api.Prepared(*[None] * 10, fp32=later)
    told = []
    threading.Timer(0.3, gate.set).start()
    prep.settle(lambda step, detail: told.append(step))
    assert later.ready and told == ["reference"]
    prep.settle(lambda step, detail: told.append(step))
    assert told == ["reference"]  # nothing to wait for: nothing said
