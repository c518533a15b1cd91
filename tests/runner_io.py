"""Talk to a built runner directly over its stdio: one request, its tokens and its STATS."""

import subprocess

from toolchain import boards
from toolchain.bundle import cross, package, render, sdk
from toolchain.export import manifest
from toolchain.link import protocol as P
from toolchain.link.session import BoardSession, Timeouts
from toolchain.link.transport import PipeTransport

TIMEOUTS = Timeouts(hello_s=60, first_token_s=60, token_s=30)


def serve(bundle, req: P.Request, *runner_args: str) -> tuple[list[P.Token], P.Stats]:
    """Start the bundle's runner on `--serial -`, send ``req``, QUIT; the TOKENs and the STATS."""
    root = bundle.root
    proc = subprocess.Popen([str(root / "runner"), "--model", str(root / "model.pte"), "--serial", "-", *runner_args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    link = PipeTransport.of(proc, "runner stdio")
    try:
        s = BoardSession(link, TIMEOUTS)
        s.wait_hello()
        got = list(s.generate(req))
        s.quit()
        assert proc.wait(30) == 0
    finally:
        link.close()
    return [m for m in got if isinstance(m, P.Token)], got[-1]


def faulty_bundle(pte, folder, fault: str):
    """A host bundle of ``pte`` whose runner is built with a test-only fault (a CMake option, e.g.
    EDGELM_TEST_DRAFT_BUG: it sends its draft tokens as its picks, unchecked against the model)."""
    board = boards.get("host")
    runtime = sdk.sdk_for(board.arch)
    project = render.render(board, folder / "project")
    runner = cross.configure_and_build(board, project, runtime, cmake_defs={fault: "ON"})
    return package.assemble(board, runner, runtime, pte, folder / "bundle", render.firmware_version(),
                            manifest.read(pte))


def lying_bundle(pte, folder):
    """A runner that takes its drafts on trust."""
    return faulty_bundle(pte, folder, "EDGELM_TEST_DRAFT_BUG")
