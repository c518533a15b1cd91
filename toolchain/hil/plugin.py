"""pytest plugin: hardware-in-the-loop tests that get a board already serving a model.

Loaded by the ``pytest11`` entry point once edgelm is installed. In anyone's tests:

    def test_it_speaks(edgelm_board):
        report = edgelm_board.generate("Once upon a time", tokens=32)
        assert_validates(report)              # from toolchain.hil import assert_validates, ...

    pytest --edgelm-board rpi5 --edgelm-target qemu              # the emulated Pi 5
    pytest --edgelm-board rpi5:ssh://pi@raspberrypi.local        # a real one on the network
    pytest --edgelm-board rpi5:ssh://pi@rpi5 --edgelm-port usb:0403:6001   # ...its UART on a USB adapter

Every option is also an ini setting (``edgelm_board``, ``edgelm_target``, ``edgelm_model``, ...) in
``pytest.ini`` or ``[tool.pytest.ini_options]``; the command line wins. ``--edgelm-board`` may be
given more than once (``edgelm_board`` one per line): board fixtures then run once per board.

The board is brought up once per session and board, through the one bring-up routine
(:func:`toolchain.deploy.bringup.bring_up`), with a program and runner from edgelm's one cache
(toolchain/cache.py, shared with the CLI: keyed by model, quantization, board and the toolchain's sources);
the target's state is kept in the pytest cache folder unless ``--edgelm-workdir``. A test that needs a
board nobody configured, or one this machine cannot reach (qemu, socat, an SSH server that answers), is
skipped with the reason; with ``--edgelm-require`` it fails instead. A board whose SSH host key changed
(or is not known yet), or that refuses our login, is an error, never a skip: a misconfiguration, or someone in between.
Each generation is recorded in the JUnit XML (``record_property``), in the test's report (a section
"edgelm board": each stream's text and verdict, and the runner's log where the target keeps one on
this machine) and in ``--edgelm-report FILE.html`` (or ``.json``), which leads with every test's
outcome. The first bring-up's steps (export, build, deploy, HELLO) print as they happen. A board that
trusts keys (`edgelm trust`) gets bundles signed with ``--edgelm-sign-key``.

Lower-level fixtures for edgelm's own tests: ``hil_board`` (the selected BOARD:TARGET),
``hil_workdir``, ``hil_options`` and ``hil_up(bundle)``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# name -> (help, ini type, metavar or None for a flag, default)
OPTIONS: dict[str, tuple[str, str, str | None, Any]] = {
    "board": ("board profile, or BOARD:TARGET (repeatable; ini: one per line)", "linelist", "BOARD[:TARGET]", []),
    "target": ("target spec for boards given without one (qemu, local, ssh://user@host, ...; default: the board "
               "profile's)", "string", "SPEC", None),
    "model": ("model: a preset, a shipped model or a Hugging Face checkpoint folder", "string", "MODEL", "tiny"),
    "quant": ("quantization scheme (default: the board profile's)", "string", "SCHEME", None),
    "max-seq-len": ("the program's context length", "string", "N", "128"),
    "port": ("the host's serial port wired to the board's UART (a path, URL or usb:VID:PID[:SERIAL])", "string",
             "PORT", None),
    "board-port": ("the board's serial device", "string", "DEV", None),
    "ssh-config": ("an ssh_config file for ssh:// targets", "string", "FILE", None),
    "accept-new-host-key": ("trust an SSH host key seen for the first time", "bool", None, False),
    "workdir": ("where target state is kept (default: the pytest cache folder)", "string",
                "DIR", None),
    "require": ("a configured board this machine cannot reach fails the test instead of skipping it", "bool", None,
                False),
    "report": ("write every generation of the session to FILE: .html (self-contained, with plots) or .json",
               "string", "FILE", None),
    "sign-key": ("sign the bundle with this ed25519 private key (edgelm keygen): a board that trusts keys "
                 "accepts only signed bundles", "string", "FILE", None),
    "security-counter": ("with --edgelm-sign-key: the bundle's security counter (anti-rollback)", "string", "N",
                         None),
}


def _ini(name: str) -> str:
    return "edgelm_" + name.replace("-", "_")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("edgelm", "edgelm hardware-in-the-loop")
    for name, (text, kind, metavar, default) in OPTIONS.items():
        if metavar is None:
            group.addoption(f"--edgelm-{name}", dest=_ini(name), action="store_true", default=None, help=text)
        elif kind == "linelist":
            group.addoption(f"--edgelm-{name}", dest=_ini(name), action="append", default=None, metavar=metavar,
                            help=text)
        else:
            group.addoption(f"--edgelm-{name}", dest=_ini(name), default=None, metavar=metavar, help=text)
        parser.addini(_ini(name), f"edgelm: {text}", type=kind, default=default)  # type: ignore[arg-type]


def option(config: pytest.Config, name: str) -> Any:
    """``--edgelm-NAME`` if given, else the ini setting ``edgelm_NAME``, else its default."""
    given = config.getoption(_ini(name))
    return given if given is not None else config.getini(_ini(name))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "hil: board-in-the-loop test; runs once per --edgelm-board")
    config.stash[_RUNS] = []
    config.stash[_OUTCOMES] = {}
    config.pluginmanager.register(_Outcomes(config.stash[_OUTCOMES]), "edgelm-outcomes")


def say(config: pytest.Config, line: str) -> None:
    """One line on pytest's terminal now, even while output is captured (a bring-up takes minutes)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    capture = config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        reporter.ensure_newline()
        reporter.write_line(line)


@dataclass(frozen=True)
class HilBoard:
    board: str
    target: str | None  # None: the board profile's default target

    def __str__(self) -> str:
        return f"{self.board}:{self.target}" if self.target else self.board


def selected(config: pytest.Config) -> list[HilBoard]:
    out = []
    default_target = option(config, "target")
    for spec in option(config, "board"):
        board, _, target = spec.strip().partition(":")
        if not board:
            raise pytest.UsageError(f"--edgelm-board {spec!r}: expected BOARD or BOARD:TARGET, e.g. rpi5:qemu")
        out.append(HilBoard(board, target or default_target))
    return out


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "edgelm_spec" in metafunc.fixturenames:
        boards: list[HilBoard | None] = list(selected(metafunc.config)) or [None]
        metafunc.parametrize("edgelm_spec", boards, ids=[str(b) if b else "no-board" for b in boards],
                             scope="session")


NO_BOARD = ("no board configured: give --edgelm-board BOARD[:TARGET] (or edgelm_board in pytest.ini), "
            "e.g. --edgelm-board rpi5 --edgelm-target qemu")

# What OpenSSH says (toolchain.deploy.sshclient.ssh_failure's lines) when the board answered and we may not
# use it: its host key changed, or is unknown (--edgelm-accept-new-host-key), or it refused our keys.
_REFUSALS = ("REMOTE HOST IDENTIFICATION HAS CHANGED", "is not in known_hosts", "refused our keys (Permission denied")


def misconfigured(why: str) -> bool:
    """Whether a reason a target gives for being out of reach is one that must fail, not skip, a test: the
    board answered, and its host key or its login says it is not the board we know, or not ours to use."""
    return any(text in why for text in _REFUSALS)


@pytest.fixture(scope="session")
def hil_board(edgelm_spec: HilBoard | None) -> HilBoard:
    """The board and target this test runs against (one per ``--edgelm-board``)."""
    if edgelm_spec is None:
        pytest.skip(NO_BOARD)
    return edgelm_spec


@pytest.fixture(scope="session")
def hil_workdir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """edgelm's own tests: a fresh folder per session (or --edgelm-workdir)."""
    given = option(request.config, "workdir")
    return Path(given).expanduser().resolve() if given else tmp_path_factory.mktemp("edgelm-hil")


@pytest.fixture(scope="session")
def edgelm_workdir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where ``edgelm_board`` keeps its target state (exports and builds are in edgelm's cache):
    --edgelm-workdir, else the pytest cache folder."""
    given = option(request.config, "workdir")
    if given:
        return Path(given).expanduser().resolve()
    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider (read-only trees)
    return cache.mkdir("edgelm") if cache is not None else tmp_path_factory.mktemp("edgelm-hil")


@pytest.fixture(scope="session")
def hil_options(request: pytest.FixtureRequest) -> Any:
    """The TargetOptions the options gave for the boards in the loop."""
    from toolchain.deploy.registry import TargetOptions

    cfg = option(request.config, "ssh-config")
    return TargetOptions(port=option(request.config, "port"), board_port=option(request.config, "board-port"),
                         ssh_config=Path(cfg).expanduser() if cfg else None,
                         accept_new_host_key=bool(option(request.config, "accept-new-host-key")))


@pytest.fixture()
def hil_up(hil_board: HilBoard, hil_workdir: Path, hil_options: Any) -> Callable[..., AbstractContextManager[Any]]:
    """``with hil_up(bundle, **bring_up_options) as up:`` the selected board serving ``bundle``."""
    from toolchain import api
    from toolchain.deploy.bringup import bring_up

    def up(bundle: Any, **kw: Any) -> AbstractContextManager[Any]:
        target = api.target_for(hil_board.board, hil_board.target, hil_workdir, hil_options)
        return bring_up(target, bundle, **kw)

    return up


_RUNS = pytest.StashKey[list]()
_OUTCOMES = pytest.StashKey[dict]()  # nodeid -> (outcome, reason): the report's summary table
_SECTION = pytest.StashKey[list]()  # the lines of a test's "edgelm board" section
_LOG_TAIL_BYTES = 16 * 1024
_LOG = pytest.StashKey[tuple]()  # (the runner's log on this machine, its size when the test began)


@pytest.fixture(scope="session")
def _edgelm_session_board(hil_board: HilBoard, edgelm_workdir: Path, hil_options: Any,
                          request: pytest.FixtureRequest) -> Any:
    from toolchain import api
    from toolchain.deploy.base import Capability
    from toolchain.deploy.bringup import bring_up
    from toolchain.errors import EdgelmError
    from toolchain.hil.board import BoardUnderTest

    config = request.config
    base = api.RunRequest(board=hil_board.board, target=hil_board.target, model=option(config, "model"), prompt="",
                          tokens=1, quant=option(config, "quant"), workdir=edgelm_workdir, target_options=hil_options,
                          fidelity=False)
    seq = str(option(config, "max-seq-len"))
    if not seq.isdigit():
        pytest.fail(f"edgelm: --edgelm-max-seq-len {seq!r} is not a whole number", pytrace=False)
    base.max_seq_len = int(seq)
    key = option(config, "sign-key")
    counter = option(config, "security-counter")
    if counter is not None and not str(counter).isdigit():
        pytest.fail(f"edgelm: --edgelm-security-counter {counter!r} is not a whole number", pytrace=False)
    base.sign_key = Path(key).expanduser() if key else None
    base.security_counter = int(counter) if counter is not None else None
    try:
        target = api.target_for(base.board, base.target, edgelm_workdir, hil_options)
    except EdgelmError as exc:
        pytest.fail(f"edgelm: {hil_board}: {exc}", pytrace=False)
    lacks = target.missing()
    refused = [why for why in lacks if misconfigured(why)]
    if refused:  # the board answered: not a board that is away, so never a skip
        pytest.fail(f"edgelm: {hil_board}: {'; '.join(refused)} (a misconfiguration, or someone in between: "
                    "an error, not a skip)", pytrace=False)
    if not {Capability.START, Capability.LINK} <= target.capabilities:
        lacks.append(f"a way to start a runner and talk to it ({target.spec} only stores releases)")
    if lacks:
        why = f"{hil_board}: this machine lacks " + "; ".join(lacks)
        if option(config, "require"):
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    stack = ExitStack()
    request.addfinalizer(stack.close)

    def progress(step: str, detail: str) -> None:
        say(config, f"edgelm {hil_board}: {step}: {detail}")

    try:
        prep = api.prepare_run(base, progress=progress)
        stack.callback(prep.close)  # the twin, after the board
        up = stack.enter_context(bring_up(prep.target, prep.bundle, threads=base.threads, progress=progress))
    except EdgelmError as exc:
        advise = getattr(exc, "advise", None)  # a board's refusal of the bundle: what to do, in pytest's words
        hint = advise("pytest") if callable(advise) else exc.hint
        pytest.fail(f"edgelm: {hil_board}: {exc}" + (f" (hint: {hint})" if hint else ""), pytrace=False)
    say(config, f"edgelm {hil_board}: serving release {up.release.id} (HELLO said)")
    return BoardUnderTest(prep, up, base)


@pytest.fixture()
def edgelm_board(_edgelm_session_board: Any, request: pytest.FixtureRequest) -> Any:
    """The board, serving the model (``toolchain.hil.board.BoardUnderTest``); each generation is
    recorded for this test."""
    runs = request.config.stash[_RUNS]
    node = request.node
    section = node.stash.setdefault(_SECTION, [])
    log = Path(_edgelm_session_board._prep.target.state) / "runner.log"  # where a target keeps one here
    try:
        log_from = log.stat().st_size
    except OSError:
        log_from = None
    node.stash[_LOG] = (log, log_from)

    def record(report: Any) -> None:
        section.append(f"{report.validation['verdict']} {report.board} {report.target}: "
                       f"{len(report.generated_token_ids)} tokens: {report.text!r}")
        s = report.board_stats
        node.user_properties.append(("edgelm", json.dumps({
            "board": report.board, "target": report.target, "verdict": report.validation["verdict"],
            "generated": len(report.generated_token_ids), "decode_tok_s": s.get("decode_tok_s"),
            "ttft_ms": s.get("ttft_ms")})))
        runs.append({"test": node.nodeid, "report": report.to_dict()})

    return _edgelm_session_board.bound(record)


def _log_since(log: Path, start: int | None) -> str:
    """What the runner wrote to ``log`` since ``start`` (its last 16 KiB); '' when there is none."""
    try:
        with log.open("rb") as f:
            size = f.seek(0, 2)
            begin = 0 if start is None or start > size else start  # restarted: the new log whole
            f.seek(max(begin, size - _LOG_TAIL_BYTES))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report = outcome.get_result()
    lines = item.stash.get(_SECTION, None)
    if lines is None or report.when != "call" and not (report.when == "setup" and report.failed):
        return
    text = "\n".join(lines) or "no stream was generated"
    log, start = item.stash.get(_LOG, (None, None))
    tail = _log_since(log, start) if log is not None else ""
    report.sections.append(("edgelm board", text + (f"\n--- runner log ---\n{tail}" if tail else "")))


class _Outcomes:
    """Each test's outcome for the report's summary table: the call's, or a set-up's skip or error, or a
    teardown's error."""

    def __init__(self, outcomes: dict[str, tuple[str, str]]):
        self.outcomes = outcomes

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or (report.when == "setup" and not report.passed) or \
                (report.when == "teardown" and report.failed):
            reason = ""
            if report.skipped and isinstance(report.longrepr, tuple):
                reason = str(report.longrepr[2]).removeprefix("Skipped: ")
            elif report.failed:
                crash = getattr(report.longrepr, "reprcrash", None)  # the exception's own line
                last = (report.longreprtext or "").strip().splitlines()
                reason = str(crash.message) if crash is not None else (last[-1] if last else "")
            outcome = "error" if report.failed and report.when != "call" else report.outcome
            self.outcomes[report.nodeid] = (outcome, reason[:300])


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = option(session.config, "report")
    if not path:
        return
    from toolchain import api

    out = Path(path).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = session.config.stash.get(_RUNS, [])
    if out.suffix.lower() in (".html", ".htm"):
        from toolchain.validate import html

        html.write(out, [(run["test"], run["report"]) for run in runs], title="edgelm hardware-in-the-loop tests",
                   versions=api.versions(), outcomes=session.config.stash.get(_OUTCOMES, {}))
    else:
        out.write_text(json.dumps({"edgelm": api.versions(), "outcomes": session.config.stash.get(_OUTCOMES, {}),
                                   "runs": runs}, indent=1))
