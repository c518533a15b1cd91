"""Judges for tests that serve requests by hand: the twin (the host's honest build of the bundle, whatever
runner the board under test runs) or the host reference alone."""

from toolchain import api, boards
from toolchain.validate.judge import Judge
from toolchain.validate.reference import ProgramRunner


def twin_judge(pte, workdir, board: str = "host", tolerance: float = 0.75) -> Judge:
    """The twin of ``board`` for ``pte``: the honest bundle from the build cache (built if missing)."""
    bundle, _ = api.cached_build(board, pte, workdir)
    judge = Judge(board=boards.get(board), bundle_root=bundle.root, reference=ProgramRunner(pte), tolerance=tolerance)
    assert judge.rule == "twin", judge.how
    return judge


def reference_judge(pte, tolerance: float = 0.75, **kw) -> Judge:
    return Judge(reference=ProgramRunner(pte), tolerance=tolerance, use_twin=False, **kw)
