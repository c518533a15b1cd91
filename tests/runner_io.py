"""Talk to a built runner directly over its stdio: one request, its tokens and its STATS."""

import os
import subprocess

from toolchain import boards
from toolchain.bundle import cross, package, render, sdk
from toolchain.export import manifest
from toolchain.link import protocol as P
from toolchain.link.session import BoardSession, Timeouts
from toolchain.link.transport import PipeTransport

TIMEOUTS = Timeouts(hello_s=60, first_token_s=60, token_s=30)


def serve(bundle, req: P.Request, *runner_args: str, env: dict[str, str] | None = None
          ) -> tuple[list[P.Token], P.Stats]:
    """Start the bundle's runner on `--serial -`, send ``req``, QUIT; the TOKENs and the STATS.
    ``env``: variables added to the runner's environment (e.g. EDGELM_TEST_LIE)."""
    return serve_all(bundle, [req], *runner_args, env=env)[0]


def serve_all(bundle, reqs: list[P.Request], *runner_args: str, env: dict[str, str] | None = None
              ) -> list[tuple[list[P.Token], P.Stats]]:
    """``serve`` for several requests in one runner session, in order (a chat: FLAG_KEEP_STATE)."""
    root = bundle.root
    proc = subprocess.Popen([str(root / "runner"), "--model", str(root / "model.pte"), "--serial", "-", *runner_args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, **env} if env else None)
    link = PipeTransport.of(proc, "runner stdio")
    out = []
    try:
        s = BoardSession(link, TIMEOUTS)
        s.wait_hello()
        for req in reqs:
            got = list(s.generate(req))
            out.append(([m for m in got if isinstance(m, P.Token)], got[-1]))
        s.quit()
        assert proc.wait(30) == 0
    finally:
        link.close()
    return out


def faulty_bundle(pte, folder, fault: str, board_name: str = "host"):
    """A bundle of ``pte`` for a board whose runner is built with a test-only fault (a CMake option, e.g.
    EDGELM_TEST_DRAFT_BUG: it sends its draft tokens as its picks, unchecked against the model). An
    Arm board's (rpi5) is cross-built as api.build_firmware does: its compiler, its executorch runtime."""
    board = boards.get(board_name)
    runtime = sdk.sdk_for(board.arch)
    project = render.render(board, folder / "project")
    runner = cross.configure_and_build(board, project, runtime, cmake_defs={fault: "ON"})
    return package.assemble(board, runner, runtime, pte, folder / "bundle", render.firmware_version(),
                            manifest.read(pte))


def lying_runner_bundle(pte, folder, board_name: str = "host"):
    """A bundle whose runner is built with EDGELM_TEST_LIES (firmware/lies.h): honest until it is started
    with EDGELM_TEST_LIE set, e.g. ``serve(bundle, req, env={"EDGELM_TEST_LIE": "swap:0.5"})``."""
    return faulty_bundle(pte, folder, "EDGELM_TEST_LIES", board_name)


def lying_bundle(pte, folder):
    """A runner that takes its drafts on trust."""
    return faulty_bundle(pte, folder, "EDGELM_TEST_DRAFT_BUG")
