"""The real runner (host build) behind a seeded man-in-the-middle that damages the link and tells lies.

Every injected fault must end in FAIL with a reason, or in a retried, fully validated PASS whose
tokens are exactly what the honest board sends: a PASS on any other tokens is a false PASS, and
there must be none. The lies are protocol-valid (right CRCs, right sequence numbers), so only the
verdict can catch them.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from judges import twin_judge

from toolchain import api, boards
from toolchain.deploy import local
from toolchain.deploy.bringup import bring_up
from toolchain.errors import DeviceError
from toolchain.link import faults
from toolchain.link import protocol as P
from toolchain.link.session import Timeouts
from toolchain.model.tokenizer import ByteTokenizer

pytestmark = pytest.mark.slow

SEED = 20261129
TOKENS = 40
MIN_FAULTED_TOKENS = 2000
FAST = Timeouts(hello_s=60, first_token_s=3.0, token_s=2.0, quiet_s=0.3)
PROMPTS = ["Once upon a time", "The board", "A model waited", "On the desk", "Tokens flow"]


@pytest.fixture(scope="module")
def rig(hil_workdir, tmp_path_factory):
    exported, _ = api.cached_export("tiny", hil_workdir, quant="8da4w")
    bundle, _ = api.cached_build("host", exported.pte, hil_workdir)
    folder = tmp_path_factory.mktemp("faults")
    target = local.create("local", boards.get("host"), folder / "targets")
    link = faults.RelayedLink(folder, SEED)
    reference = twin_judge(exported.pte, hil_workdir)
    eos = tuple(exported.manifest["tokens"]["eos_token_ids"])
    try:
        with reference, bring_up(target, bundle, open_transport=link, timeouts=FAST) as up:
            yield up, link, reference, eos
    finally:
        link.close()


def _requests(eos):
    tok, out = ByteTokenizer(), []
    for i, text in enumerate(PROMPTS * 4):
        sampled = i % 2 == 1
        out.append(P.Request(prompt=(1, *tok.encode(text)), max_new_tokens=TOKENS, stop=eos, ignore_eos=i % 3 != 0,
                             temperature=0.8 if sampled else 0.0, top_k=40 if sampled else 0,
                             top_p=0.95 if sampled else 1.0, seed=1000 + i, report_logits=True))
    return out


def _serve(up, request, reference, retries=2):
    try:
        return api.serve_and_validate(up, request, reference, retries=retries)
    except DeviceError as exc:
        up.session.resync()
        return exc


def test_every_fault_ends_in_fail_or_a_validated_pass(rig, tmp_path):
    up, link, reference, eos = rig
    requests = _requests(eos)
    golden = {}
    for req in requests:  # the honest board, untouched
        served = _serve(up, req, reference, retries=0)
        assert not isinstance(served, Exception) and served.verdict.passed, served
        golden[req] = tuple(served.collected.tokens)
    rng = random.Random(SEED)
    plan = []
    for kind in faults.BYTE_FAULTS:
        for direction in (faults.TO_HOST, faults.TO_BOARD):
            plan += [faults.Fault(kind, at=0 if direction == faults.TO_BOARD else rng.randrange(1, 12),  # REQUEST
                                  direction=direction, size=rng.choice([1, 3, 300] if kind in ("delay", "cut")
                                                                       else [1, 2, 5]))
                     for _ in range(2 if direction == faults.TO_BOARD else 4)]
    for kind in faults.LIES:
        plan += [faults.Fault(kind, at=rng.randrange(0, TOKENS + 4), size=rng.randrange(1, 4)) for _ in range(4)]
    rows, faulted_tokens, false_pass = [], 0, []
    for i, fault in enumerate(plan):
        req = requests[i % len(requests)]
        link.relay.arm(fault)
        before = len(link.relay.mangler.fired)
        out = _serve(up, req, reference)
        fired = len(link.relay.mangler.fired) > before
        if isinstance(out, Exception):
            outcome, reason, attempts, n = "FAIL", str(out), None, 0
        else:
            n = len(out.collected.tokens)
            outcome, reason, attempts = out.verdict.verdict, out.verdict.reason, out.attempts
            if out.verdict.passed and tuple(out.collected.tokens) != golden[req]:
                false_pass.append((fault, out.collected.tokens))
            if out.verdict.passed and fault.is_lie and fired:
                assert attempts > 1, f"{fault}: a lie was told and the stream it was in passed"
        faulted_tokens += n
        rows.append({"fault": fault.kind, "direction": fault.direction, "at": fault.at, "size": fault.size,
                     "fired": fired, "outcome": outcome, "attempts": attempts, "tokens": n, "reason": reason})
        assert outcome == "PASS" or reason, f"{fault}: FAIL without a reason"
    by_kind = Counter((r["fault"], r["outcome"]) for r in rows)
    summary = {"trials": len(rows), "faulted_tokens": faulted_tokens, "false_pass": len(false_pass),
               "by_kind": {f"{k}:{o}": c for (k, o), c in sorted(by_kind.items())}, "rows": rows}
    out_dir = Path(__file__).resolve().parents[2] / "out"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "fault-injection.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=1))
    assert not false_pass, f"false PASS: {false_pass}"
    assert all(r["fired"] for r in rows if r["fault"] not in faults.LIES), [r for r in rows if not r["fired"]]
    for kind in faults.LIES:  # every lie was told, and caught
        told = [r for r in rows if r["fault"] == kind and r["fired"]]
        assert told and all(r["outcome"] == "FAIL" or (r["attempts"] or 0) > 1 for r in told), kind
    for kind in faults.BYTE_FAULTS:  # the link's damage was survived by asking again
        assert any(r["outcome"] == "PASS" for r in rows if r["fault"] == kind), kind
    assert faulted_tokens >= MIN_FAULTED_TOKENS
    # the board is still fine afterwards
    last = _serve(up, requests[0], reference, retries=0)
    assert not isinstance(last, Exception) and last.verdict.passed
    assert tuple(last.collected.tokens) == golden[requests[0]]
