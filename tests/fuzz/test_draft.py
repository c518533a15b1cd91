"""Prompt-lookup drafting (firmware/draft.c) under ASan/UBSan, against a plain Python statement of the
rule: the longest of the context's last 3 or 2 tokens that occurs earlier, its most recent earlier
occurrence, and up to max_k tokens that followed it (one matching token is not enough)."""

import random
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def lookup(ctx: list[int], max_k: int) -> list[int]:
    n = len(ctx)
    for g in (3, 2):
        if n < g + 1:
            continue
        suffix = ctx[n - g:]
        for j in range(n - g - 1, -1, -1):
            if ctx[j:j + g] == suffix:
                return ctx[j + g:j + g + max_k]
    return []


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("draft") / "draft_harness"
    subprocess.run(["gcc", "-std=c11", "-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
                    "-fno-sanitize-recover=all", "-Wall", "-Wextra", "-Werror", f"-I{ROOT / 'firmware'}",
                    str(ROOT / "tests/fuzz/draft_harness.c"), str(ROOT / "firmware/draft.c"), "-o", str(out)],
                   check=True, timeout=120)
    return out


def run(harness: Path, cases: list[tuple[int, list[int]]]) -> list[list[int]]:
    text = "".join(f"{k} {len(ctx)} {' '.join(map(str, ctx))}\n" for k, ctx in cases)
    done = subprocess.run([str(harness)], input=text.encode(), capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    out = []
    for line in done.stdout.decode().splitlines():
        k, *draft = map(int, line.split())
        assert len(draft) == k
        out.append(draft)
    assert len(out) == len(cases)
    return out


def test_the_rule_on_cases_written_out(harness):
    cases = [
        (4, []),                                   # nothing to look up
        (4, [7]),                                  # one token: no earlier copy possible
        (0, [1, 2, 1, 2]),                         # no room for a draft
        (4, [5, 6, 7, 8]),                         # no repeat at all
        (4, [1, 2, 3, 9, 9, 1, 2, 3]),             # 3-gram: what followed it, up to the end
        (2, [1, 2, 3, 9, 8, 7, 1, 2, 3]),          # ... cut at max_k
        (4, [1, 2, 3, 4, 0, 2, 3, 5, 6, 1, 2, 3]),  # the 3-gram copy wins over a later 2-gram one
        (4, [2, 3, 4, 2, 3, 5, 2, 3]),             # the most recent 2-gram copy
        (4, [4, 8, 5, 8]),                         # a single matching token does not draft
        (8, [1, 1, 1, 1, 1]),                      # overlapping copies
        (4, [7, 7, 7]),                            # the 2-gram copy just before the suffix
    ]
    expected = [[], [], [], [], [9, 9, 1, 2], [9, 8], [4, 0, 2, 3], [5, 2, 3], [], [1], [7]]
    assert [lookup(ctx, k) for k, ctx in cases] == expected  # the statement of the rule itself
    assert run(harness, cases) == expected


def test_random_contexts_against_the_rule(harness):
    rng = random.Random(7)
    cases = []
    for _ in range(3000):
        alphabet = rng.choice([2, 3, 5, 50, 2**32 - 1])
        ctx = [rng.randrange(alphabet) if alphabet < 2**32 - 1 else rng.choice([0, 2**32 - 1, 12345])
               for _ in range(rng.randrange(0, 40))]
        cases.append((rng.randrange(0, 10), ctx))
    assert run(harness, cases) == [lookup(ctx, k) for k, ctx in cases]
