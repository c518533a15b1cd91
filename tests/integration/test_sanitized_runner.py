"""The runner itself built with ASan/UBSan, serving requests and garbage over its serial link."""

import time

import pytest

from toolchain import api, boards
from toolchain.deploy import local
from toolchain.deploy.bringup import bring_up
from toolchain.link import framing
from toolchain.link import protocol as P
from toolchain.link.session import Timeouts
from toolchain.link.transport import Deadline

pytestmark = pytest.mark.slow


def test_sanitized_runner(hil_workdir, tmp_path):
    exported, _ = api.cached_export("tiny", hil_workdir, quant="8da4w")
    bundle = api.build_firmware("host", exported.pte, tmp_path / "asan", sanitize=True)
    target = local.create("local", boards.get("host"), tmp_path / "targets")
    with bring_up(target, bundle, timeouts=Timeouts(hello_s=60, first_token_s=60, token_s=30)) as up:
        s = up.session
        toks = [m.token for m in s.generate(P.Request((1, 82, 114), 24, temperature=0.7, top_k=10, top_p=0.9,
                                                      seed=5, ignore_eos=True)) if isinstance(m, P.Token)]
        assert len(toks) == 24
        s.transport.write(b"\xff" * 100 + b"\x00" + b"\x01" * (framing.MAX_WIRE + 3) + b"\x00")
        s.transport.write(framing.encode(P.REQUEST, 7, b"\x00" * 40))
        errors = [m for _, m in s.frames(Deadline(10)) if isinstance(m, P.Error)]
        assert {e.code for e in errors} >= {P.ERR_BAD_FRAME, P.ERR_TOO_LONG, P.ERR_BAD_REQUEST}
        s.send(P.QUIT)
        deadline = Deadline(30)
        while target.alive() is None and not deadline.expired:
            time.sleep(0.05)
        assert target.alive().startswith("runner exited with status 0")
        log = (target.state / "runner.log").read_text()
        assert "ERROR: AddressSanitizer" not in log and "runtime error:" not in log, log
