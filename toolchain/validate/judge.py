"""Who judges a board's requests, and how: the twin where one can run, else the host reference.

    judge = Judge.for_board(board, bundle_root, reference, tolerance=..., near_tie=...)
    verdict, logits = judge.judge(collected, hello, cancelled=False)   # one per request, in order
    judge.close()

Every request gets, in order: the stream's shape, the rule's verdict (``compare.compare_twin`` on the
twin's stream, or ``compare.compare`` on the reference's teacher-forced logits), then the board's
STATS and token times against what the host knows (``validate/stats.py``). The twin starts on the
first request (it needs the board's thread count from HELLO) and serves every later request of the
session in the same order, so it keeps the state the board must keep. After a request the twin
could not follow (a cancelled stream, which the twin ran to its end; a FAIL), the caller forgets
what the board holds (``BoardSession.held = None``): the next turn goes without KEEP_STATE to both.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from toolchain.errors import DeviceError, EdgelmError
from toolchain.link import protocol
from toolchain.link.session import Collected
from toolchain.validate import compare, stats
from toolchain.validate.twin import Twin, command

log = logging.getLogger(__name__)


def asked_of(request: protocol.Request, cancelled: bool) -> compare.Asked:
    return compare.Asked(max_new_tokens=request.max_new_tokens, stop_ids=tuple(request.stop),
                         ignore_eos=request.ignore_eos, temperature=request.temperature, top_k=request.top_k,
                         top_p=request.top_p, seed=request.seed, report_logits=request.report_logits,
                         cancelled=cancelled)


def stream_of(c: Collected) -> compare.Stream:
    return compare.Stream(tokens=tuple(c.tokens), logits=tuple(c.logits),
                          stop=c.stats.stop if c.stats is not None else None)


def teacher_forced(reference: Any, prompt: Sequence[int], tokens: Sequence[int]) -> list[Any]:
    """The reference's logits before each of the board's tokens, teacher-forced on them."""
    out = [reference.step(list(prompt), 0).numpy()]
    for i, t in enumerate(tokens[:-1]):
        out.append(reference.step([int(t)], len(prompt) + i).numpy())
    return out


MAX_TWIN_THREADS = 256  # the runner's own bound on --threads


class Judge:
    """Judges the requests of one board session, in order (see the module)."""

    def __init__(self, *, board: Any = None, bundle_root: Path | None = None, reference: Any = None,
                 tolerance: float = 0.75, near_tie: float = compare.DEFAULT_NEAR_TIE,
                 near_tie_fraction: float = compare.DEFAULT_NEAR_TIE_BUDGET, use_twin: bool = True):
        """``board`` + ``bundle_root`` (the host's build of the bundle) make the twin, where
        ``twin.command`` can run the board's binaries here; ``reference`` (a ``ProgramRunner`` of the
        program) judges where no twin can. ``use_twin=False``: the reference rule only."""
        self.board, self.bundle_root, self.reference = board, bundle_root, reference
        self.tolerance, self.near_tie, self.near_tie_fraction = tolerance, near_tie, near_tie_fraction
        self._twin: Twin | None = None
        self.last_logits: list[Any] = []  # the reference's logits of the last request judged by it
        self.last_twin: Collected | None = None  # the twin's stream of the last request judged by it
        prefix, self.how = command(board) if board is not None and bundle_root is not None else (None, "no bundle")
        if not use_twin:
            prefix, self.how = None, "the twin was not asked for"
        self.rule = compare.TWIN if prefix is not None else compare.REFERENCE
        if self.rule == compare.REFERENCE:
            if reference is None:
                raise ValueError("a judge needs a twin or a reference")
            log.info("no twin (%s): judged by the host reference with near-tie %g std", self.how, near_tie)

    @property
    def describe(self) -> str:
        if self.rule == compare.TWIN:
            return f"twin ({self.how}): bit for bit"
        return f"reference (no twin: {self.how}): near-ties within {self.near_tie} std of the host's top two"

    def _twin_for(self, hello: protocol.Hello) -> Twin:
        if self._twin is None:
            assert self.board is not None and self.bundle_root is not None
            if not 1 <= hello.threads <= MAX_TWIN_THREADS:  # the board's word: confined before it runs anything
                raise DeviceError(f"the board says it runs {hello.threads} threads; its twin runs 1 to "
                                  f"{MAX_TWIN_THREADS}")
            self._twin = Twin(self.board, self.bundle_root, hello.threads, model_sha256=hello.model_sha256)
        return self._twin

    def judge(self, c: Collected, hello: protocol.Hello | None, *, cancelled: bool = False) -> compare.Verdict:
        """The verdict on one request ``c`` (collected from a board that said ``hello``)."""
        assert c.request is not None
        asked, stream = asked_of(c.request, cancelled), stream_of(c)
        self.last_logits, self.last_twin = [], None
        shape = compare.check_stream(asked, stream)
        if shape is not None:
            return compare.Verdict(verdict=compare.FAIL, generated=len(stream.tokens), exact_matches=0,
                                   reason=shape, rule=self.rule, judge=self.describe)
        if self.rule == compare.TWIN:
            if hello is None:
                raise EdgelmError("the twin needs the board's HELLO (its threads and program)")
            twin = self._twin_for(hello)
            t = self.last_twin = twin.serve(c.request)
            v = compare.compare_twin(asked, stream, stream_of(t), stats=c.stats, twin_stats=t.stats,
                                     judge=self.describe)
        else:
            logits = self.last_logits = teacher_forced(self.reference, c.request.prompt, stream.tokens)
            v = compare.compare(asked, stream, logits, tolerance=self.tolerance, near_tie=self.near_tie,
                                near_tie_fraction=self.near_tie_fraction, judge=self.describe)
        if v.passed and c.stats is not None:
            why = stats.check_stats(c.request, c.stats, c.tokens, c.times_us, c.expected_kept, c.arrivals_s)
            if why is not None:
                v.verdict, v.reason = compare.FAIL, why
        return v

    def close(self) -> None:
        if self._twin is not None:
            self._twin.close()
            self._twin = None

    def __enter__(self) -> Judge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
