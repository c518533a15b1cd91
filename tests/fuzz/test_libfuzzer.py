"""libFuzzer on the runner's input path (firmware/fuzz/fuzz_link.c, ASan + UBSan): the committed corpus
replays clean and a short coverage-guided run finds nothing. Needs Debian's clang and libclang-rt-dev, which
`make setup` installs: without them these tests fail, they do not skip."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FUZZ = REPO / "firmware" / "fuzz"
CORPUS = FUZZ / "corpus"
MISSING = 3  # build.sh / fuzz.sh exit status when clang or libFuzzer is missing
SETUP_HINT = "run `make setup`: it installs Debian's clang and libclang-rt-dev (libFuzzer's runtime)"
FUZZ_SECONDS = 20
CORPUS_MAX_BYTES = 200_000


def _fail_if_missing(proc: subprocess.CompletedProcess) -> None:
    if proc.returncode == MISSING:
        pytest.fail(f"clang with libFuzzer is not installed: {SETUP_HINT}\n{proc.stderr}")


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("libfuzzer") / "fuzz_link"
    proc = subprocess.run(["bash", str(FUZZ / "build.sh"), str(out)], capture_output=True, text=True, timeout=300)
    _fail_if_missing(proc)
    assert proc.returncode == 0, proc.stderr
    return out


def test_the_corpus_is_small_and_has_the_generated_seeds(tmp_path):
    files = sorted(p for p in CORPUS.iterdir() if p.is_file())
    assert len(files) >= 30
    assert sum(p.stat().st_size for p in files) < CORPUS_MAX_BYTES
    subprocess.run([sys.executable, str(FUZZ / "make_corpus.py"), str(tmp_path)], check=True, timeout=120,
                   capture_output=True)
    generated = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    committed = {p.name: p.read_bytes() for p in files if p.name.startswith("seed-")}
    assert generated.keys() == committed.keys(), "firmware/fuzz/corpus/ is stale: rerun make_corpus.py"
    stale = [name for name in generated if generated[name] != committed[name]]
    assert not stale, f"seeds differ from make_corpus.py's output: {stale}"


def test_the_committed_corpus_replays_clean(fuzzer):
    files = sorted(str(p) for p in CORPUS.iterdir() if p.is_file())
    proc = subprocess.run([str(fuzzer), *files], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stderr.count("Executed ") == len(files)


@pytest.mark.slow
def test_a_short_fuzz_run_finds_no_crash():
    proc = subprocess.run(["bash", str(FUZZ / "fuzz.sh"), str(FUZZ_SECONDS)], capture_output=True, text=True,
                          timeout=FUZZ_SECONDS + 300)
    _fail_if_missing(proc)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = proc.stdout.strip().splitlines()[-1]
    m = re.search(r"(\d+) executions \((\d+) exec/s\), cov (\d+), ft (\d+), .*crashes (\d+)$", summary)
    assert m, summary
    executions, _, cov, ft, crashes = map(int, m.groups())
    assert executions > 0 and cov > 0 and ft > 0, summary
    assert crashes == 0, summary
