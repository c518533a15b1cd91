"""Speculative decoding with a draft model: `edgelm export --draft-model` carries a second, smaller
model as the program's ``draft`` method; the runner drafts with it and the model verifies. Whatever the
draft says, the tokens are plain decoding's; a draft that is the model itself is (almost) always right,
which only holds if the draft's state follows the sequence and is rolled back with it; a runner that
takes the draft on trust fails the verdict; a draft of another vocabulary or tokenizer is refused."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from judges import twin_judge
from runner_io import TIMEOUTS, lying_bundle, serve

from toolchain import api, boards
from toolchain.deploy import local
from toolchain.deploy.bringup import bring_up
from toolchain.errors import UsageError
from toolchain.export import lower
from toolchain.link import protocol as P
from toolchain.model import checkpoint
from toolchain.model.config import LAYER_ATTENTION, LAYER_CONV, Lfm2Config
from toolchain.model.tokenizer import ByteTokenizer
from toolchain.validate.reference import ProgramRunner

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

# Free text from a prompt that does not repeat itself: few drafts from the context.
PROMPT = [1, *ByteTokenizer().encode("Once upon a time, a small board")]


@pytest.fixture(scope="module")
def self_drafted(hil_workdir):
    """tiny (fp32) drafting for itself."""
    exported, _ = api.cached_export("tiny", hil_workdir, quant="fp32", draft_model="tiny")
    bundle, _ = api.cached_build("host", exported.pte, hil_workdir)
    return exported, bundle


@pytest.fixture(scope="module")
def wrong_draft(tmp_path_factory):
    """A confident draft model that knows nothing: random weights of the tiny vocabulary, scaled up."""
    folder = tmp_path_factory.mktemp("wrong-draft")
    cfg = Lfm2Config(vocab_size=259, hidden_size=32, intermediate_size=96, num_attention_heads=2,
                     num_key_value_heads=1, layer_types=(LAYER_CONV, LAYER_ATTENTION), block_multiple_of=32,
                     max_position_embeddings=1024, rope_theta=10000.0)
    torch.manual_seed(7)
    hf = transformers.Lfm2ForCausalLM(transformers.Lfm2Config(
        **{k: v for k, v in cfg.to_hf_dict().items() if k != "architectures"})).eval()
    with torch.no_grad():
        hf.model.embed_tokens.weight.mul_(40.0)  # peaked logits: it drafts, and is wrong
    hf.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def wrongly_drafted(hil_workdir, wrong_draft):
    exported, _ = api.cached_export("tiny", hil_workdir, quant="8da4w", draft_model=str(wrong_draft))
    bundle, _ = api.cached_build("host", exported.pte, hil_workdir)
    return exported, bundle


def test_the_program_carries_the_draft_method(self_drafted):
    exported, _ = self_drafted
    draft = exported.manifest["draft"]
    assert draft["method"] == lower.DRAFT_METHOD and draft["model"]["name"] == "tiny"
    assert draft["delegation"]["decoder_layers_fully_delegated"]
    # the host reference serves the forward method, exactly as without a draft
    assert ProgramRunner(exported.pte).max_rows == 8
    # `edgelm export --json` and `edgelm inspect` name it
    assert exported.summary()["draft_model"] == "tiny"
    shown = subprocess.run([sys.executable, "-m", "toolchain.cli", "inspect", str(exported.pte)], capture_output=True,
                           text=True, timeout=300, env={**os.environ, "COLUMNS": "250"})
    assert shown.returncode == 0 and "method 'draft': tiny (" in shown.stdout, shown.stdout + shown.stderr


def test_a_draft_that_is_the_model_is_right(self_drafted):
    _, bundle = self_drafted
    req = P.Request(tuple(PROMPT), max_new_tokens=48, ignore_eos=True, report_logits=True)
    plain, plain_stats = serve(bundle, P.Request(**{**req.__dict__, "draft": False}))
    spec, stats = serve(bundle, req, "--draft-from", "model")  # no drafts from the context: only the model's
    assert [t.token for t in spec] == [t.token for t in plain]
    assert plain_stats.decode_calls == 47 and plain_stats.drafted == 0
    # Only a draft state that is fed every token the model emitted (its accepted drafts and the
    # model's own picks after them) keeps agreeing with the model: a stale one drafts wrong tokens
    # (a runner that fed it only the newest token got 31 of 93 accepted here).
    assert stats.drafted >= 30 and stats.accepted >= 0.9 * stats.drafted, stats
    assert stats.decode_calls == 47 - stats.accepted <= 16
    assert stats.draft_model_calls >= stats.drafted  # one call per draft token, and one to catch up
    both, both_stats = serve(bundle, req)  # the context first, then the model: the same tokens
    assert [t.token for t in both] == [t.token for t in plain] and both_stats.draft_model_calls > 0
    context, context_stats = serve(bundle, req, "--draft-from", "context")
    assert [t.token for t in context] == [t.token for t in plain] and context_stats.draft_model_calls == 0


@pytest.mark.parametrize("sampling", [{}, {"temperature": 0.9, "top_k": 4, "seed": 5}], ids=["greedy", "sampled"])
def test_a_wrong_draft_changes_no_token(wrongly_drafted, host_bundle, sampling):
    _, bundle = wrongly_drafted
    req = P.Request(tuple(PROMPT), max_new_tokens=48, ignore_eos=True, report_logits=True, **sampling)
    plain, _ = serve(host_bundle, P.Request(**{**req.__dict__, "draft": False}))  # the same tiny 8da4w
    spec, stats = serve(bundle, req)
    assert [t.token for t in spec] == [t.token for t in plain]
    assert max(abs(a.logit - b.logit) for a, b in zip(spec, plain, strict=True)) < 1e-3
    assert stats.drafted > 10 and stats.accepted < stats.drafted / 4, stats


def test_the_verdict_fails_a_runner_that_takes_the_draft_model_on_trust(wrongly_drafted, hil_workdir, tmp_path):
    exported, _ = wrongly_drafted
    liar = lying_bundle(exported.pte, tmp_path / "liar")
    target = local.create("local", boards.get("host"), tmp_path / "targets")
    req = P.Request(tuple(PROMPT), 48, ignore_eos=True, report_logits=True)
    with twin_judge(exported.pte, hil_workdir) as judge, bring_up(target, liar, timeouts=TIMEOUTS) as up:
        served = api.serve_and_validate(up, req, judge)
        assert not served.verdict.passed and served.collected.stats.drafted > 0
        honest = api.serve_and_validate(up, P.Request(**{**req.__dict__, "draft": False}), judge)
        assert honest.verdict.passed, honest.verdict.reason


def test_edgelm_run_with_a_draft_model_passes(self_drafted, hil_workdir):
    report = api.run_job(api.RunRequest(board="host", model="tiny", prompt="Once upon a time", tokens=40,
                                        quant="fp32", ignore_eos=True, draft_model="tiny", workdir=hil_workdir))
    assert report.passed
    assert report.board_stats["draft_model_calls"] > 0 and report.board_stats["accepted"] > 0


def test_a_draft_of_another_vocabulary_is_refused(tmp_path):
    with pytest.raises(UsageError, match="vocabulary of 259 tokens.*2048.*share the model's tokenizer"):
        api.export_model("fortune", tmp_path / "out", draft_model="tiny")
    assert not (tmp_path / "out").exists()


def test_a_draft_of_another_tokenizer_is_refused(tmp_path):
    other = tmp_path / "other-draft"
    shutil.copytree(checkpoint.folder_of("fortune-draft"), other)
    tok = json.loads((other / "tokenizer.json").read_text())
    merges = tok["model"]["merges"]
    merges[0], merges[1] = merges[1], merges[0]  # same vocabulary size, another tokenizer
    (other / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(UsageError, match="another tokenizer than fortune"):
        api.export_model("fortune", tmp_path / "out", draft_model=str(other))
    assert not (tmp_path / "out").exists()


def test_the_runner_refuses_an_unknown_draft_source(self_drafted):
    import subprocess

    _, bundle = self_drafted
    proc = subprocess.run([str(bundle.root / "runner"), "--model", str(bundle.root / "model.pte"), "--serial", "-",
                           "--draft-from", "oracle"], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "edgelm-runner: --draft-from oracle is not one of context, model, both"
