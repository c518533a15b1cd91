"""A board on the network: ``ssh://[user@]host[:port]`` (OpenSSH: ~/.ssh/config, keys, the agent,
known_hosts; an unknown host key is refused unless ``--accept-new-host-key``).

On the board, under the login user's data folder (``${XDG_DATA_HOME:-~/.local/share}/edgelm/<board>``):

    releases/<id>/            verified releases; releases/.incoming-<id>/ while one is uploaded
    current -> releases/<id>  switched in one rename, after every file's sha256 was checked there
    previous -> releases/<id> the one before (``edgelm flash --rollback``)
    runner.pid, runner.log    a runner left serving in the background (pid, start time, release)
    trusted_keys/<fp>.pub     the keys the board accepts bundle signatures from (``edgelm trust``)
    security_counter          the highest security counter of a signed release it confirmed
    lock/holder               the job that holds the board (:class:`BoardLock`): whoever flashes it,
                              from whichever host or --workdir, waits for no one and is refused at once

Trust is the board's: every host and --workdir reads the same keys and counter from the board, and a
board that trusts keys refuses (before anything is sent) an unsigned bundle, one signed by another
key, and a signed one whose security counter is below the board's.

The link is either the SSH channel itself (the runner serves the framed protocol on its stdin and
stdout: nothing but a network cable is needed) or, with ``--port``, a serial port on this machine
wired to the board's UART, the runner then serving on the board's serial device. Every remote
command is an argv list quoted word by word, or a constant script of this module with quoted
arguments: no text from a user, a bundle or the board reaches a remote shell unquoted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from toolchain import interrupts
from toolchain.boards import Board
from toolchain.bundle import signing
from toolchain.bundle.package import (
    BUNDLE_FILE,
    RUNNER,
    SIGNATURE_FILE,
    Bundle,
    parse_info,
    release_id,
    security_counter,
)
from toolchain.deploy import lock as lock_mod
from toolchain.deploy import preflight, service
from toolchain.deploy.base import Progress, Release, Target, TargetOptions, missing_tools, no_progress
from toolchain.deploy.sshclient import Ssh, SshSpec
from toolchain.deploy.store import (
    CURRENT,
    INCOMING_PREFIX,
    KEY_FILE_MAX,
    PREVIOUS,
    RELEASES,
    TRUST_DIR,
    TrustedKey,
    TrustState,
    check_counter,
    key_file_name,
    migrate_legacy,
    parse_counter,
    parse_key,
    source_bundle,
)
from toolchain.errors import DeviceError, EdgelmError, InputError, UsageError
from toolchain.export.manifest import PROGRAM_FILE, sha256_file
from toolchain.link import ports
from toolchain.link.session import Timeouts
from toolchain.link.transport import Deadline, PipeTransport, Transport

log = logging.getLogger(__name__)

RUNNER_PID = "runner.pid"
RUNNER_LOG = "runner.log"
VERIFY_TIMEOUT_S = 120.0  # sha256sum of a 350M program on a Pi Zero's SD card
STOP_TIMEOUT_S = 5.0
BUNDLE_JSON_MAX = 1 << 20
_RELEASE_ID = re.compile(r"r-[0-9a-f]{16}\Z")
_SAFE_PATH = re.compile(r"/[A-Za-z0-9._/+-]*\Z")  # what a data folder on the board may be
_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,80}\.pub\Z")  # a trusted key's file on the board
LOCK_DIR = "lock"
LOCK_LEASE_S = 120  # a board lock its holder has not refreshed for this long is stale (the holder is gone or cut off)
LOCK_REFRESH_S = 20.0  # how often a holder refreshes it
LOCK_BREAK_STALE_S = 60  # a lock.break a breaker left (the board lost power mid-script) is removed after this

# Remote scripts: constants, run as `sh -c SCRIPT sh ARGS...` with every argument quoted.
DATA_SCRIPT = 'printf "%s\\n" "${XDG_DATA_HOME:-$HOME/.local/share}/edgelm/$1"'
LINKS_SCRIPT = ('cd -- "$1" 2>/dev/null || exit 0; for n in current previous; do '
                't=$(readlink -- "$n" 2>/dev/null) || continue; printf "%s %s\\n" "$n" "$t"; done')
CLEAN_SCRIPT = 'mkdir -p -- "$1/releases" && rm -rf -- "$1/releases/.incoming-"* "$1/releases/.old-"*'
# What an upload that failed or was cut left, removed before the preflight counts the free space.
LEFTOVERS_SCRIPT = 'cd -- "$1/releases" 2>/dev/null || exit 0; rm -rf -- .incoming-* .old-*'
COMMIT_SCRIPT = ('set -e; cd -- "$1/releases"; rm -rf -- ".old-$2"; '
                 'if [ -e "$2" ] || [ -L "$2" ]; then mv -- "$2" ".old-$2"; fi; mv -- ".incoming-$2" "$2"; '
                 'rm -rf -- ".old-$2"')
# A link is replaced by renaming a new one over it (mv -T: one step). Where mv has no -T, or takes the
# link for the folder it names (BusyBox), the old link is removed and the new one made (a link or
# nothing is there; a real folder in its place is an error). Before a link names a release, every
# file of it, its folder and releases/ are synced (`sync FILE...` fsyncs each; where sync takes no
# files, all of them); after the switch, the data folder: a power cut keeps the switch and the files.
_LINK_FUNCTIONS = ('put_link() { ln -sfn -- "$2" ".$1.tmp"; mv -Tf -- ".$1.tmp" "$1" 2>/dev/null || '
                   '{ rm -f -- ".$1.tmp" "$1"; ln -s -- "$2" "$1"; }; }; '
                   'sync_release() { sync -- "releases/$1"/* "releases/$1" releases 2>/dev/null || sync; }; ')
SWITCH_SCRIPT = ('set -e; cd -- "$1"; old=$(readlink -- current 2>/dev/null || true); ' + _LINK_FUNCTIONS
                 + 'sync_release "$2"; put_link current "releases/$2"; '
                 'if [ -n "$old" ] && [ "$old" != "releases/$2" ]; then put_link previous "$old"; fi; '
                 'sync -- . 2>/dev/null || sync')
# $1 data folder, $2 the release to make current again ("": none), $3 the one `previous` names again ("": none)
RESTORE_SCRIPT = ('set -e; cd -- "$1"; ' + _LINK_FUNCTIONS
                  + 'if [ -n "$2" ]; then sync_release "$2"; put_link current "releases/$2"; '
                  'else rm -f -- current; fi; '
                  'if [ -n "$3" ]; then put_link previous "releases/$3"; else rm -f -- previous; fi; '
                  'sync -- . 2>/dev/null || sync')
# $1 data folder, $2 release id, then the runner's argv. The pid and the process's start time (field
# 22 of /proc/PID/stat) are recorded, so `stop` never signals a pid that now names another process.
# A lease a stop left (below) has done its job: it is removed first.
START_SCRIPT = ('set -e; d=$1; id=$2; shift 2; rm -f -- "$d/lease"; cd -- "$d/releases/$id"; '
                'nohup "$@" >"$d/runner.log" 2>&1 </dev/null & pid=$!; '
                'st=$(sed "s/.*) //" "/proc/$pid/stat" | cut -d" " -f20); '
                'printf "%s %s %s\\n" "$pid" "$st" "$id" >"$d/runner.pid.tmp"; '
                'mv -f -- "$d/runner.pid.tmp" "$d/runner.pid"; '
                'echo "$pid"')
# $1 data folder: prints "running PID ID" or "stopped ID: last log line" or "none"
STATUS_SCRIPT = ('f="$1/runner.pid"; [ -r "$f" ] || { echo none; exit 0; }; read pid st id <"$f" || true; '
                 'case $pid in ""|*[!0-9]*) pid=none ;; esac; '
                 'now=$(sed "s/.*) //" "/proc/$pid/stat" 2>/dev/null | cut -d" " -f20); '
                 'state=$(sed "s/.*) //" "/proc/$pid/stat" 2>/dev/null | cut -d" " -f1); '
                 'if [ -n "$now" ] && [ "$now" = "$st" ] && [ "$state" != Z ]; then echo "running $pid $id"; '
                 'else echo "stopped $id: $(tail -n 1 "$1/runner.log" 2>/dev/null)"; fi')
# A stop for a switch leaves a lease: $d/lease (a token, the serial device) and a guard in the background
# on the board that, once the lease has run out, starts the current release's runner the way START_SCRIPT
# does, unless the lease was taken back (a start removes it, a stop for good too) or a runner runs. An
# edgelm killed between its stop and its start (SIGKILL) leaves the board serving all the same.
# $1 data folder, $2 seconds, $3 token
GUARD_SCRIPT = ('d=$1; sleep "$2"; read tok dev <"$d/lease" 2>/dev/null || exit 0; [ "$tok" = "$3" ] || exit 0; '
                'rm -f -- "$d/lease"; '
                'if [ -r "$d/runner.pid" ]; then read pid st id <"$d/runner.pid" || true; '
                'case $pid in ""|*[!0-9]*) pid=none ;; esac; '
                'now=$(sed "s/.*) //" "/proc/$pid/stat" 2>/dev/null | cut -d" " -f20); '
                'state=$(sed "s/.*) //" "/proc/$pid/stat" 2>/dev/null | cut -d" " -f1); '
                '[ -n "$now" ] && [ "$now" = "$st" ] && [ "$state" != Z ] && exit 0; fi; '
                'rel=$(readlink -- "$d/current") || exit 0; id=${rel#releases/}; '
                'case $id in r-*) ;; *) exit 0 ;; esac; cd -- "$d/releases/$id" || exit 0; '
                'nohup "$d/releases/$id/runner" --model "$d/releases/$id/model.pte" --serial "$dev" '
                '>"$d/runner.log" 2>&1 </dev/null & pid=$!; '
                'st=$(sed "s/.*) //" "/proc/$pid/stat" | cut -d" " -f20); '
                'printf "%s %s %s\\n" "$pid" "$st" "$id" >"$d/runner.pid.tmp"; '
                'mv -f -- "$d/runner.pid.tmp" "$d/runner.pid"')
# $1 data folder, $2 seconds, then for a stop for a switch: $3 lease seconds, $4 the serial device, $5
# GUARD_SCRIPT: the lease is armed when a runner runs (else, and for a stop for good, one a stop left
# is taken back). TERM, then KILL, only if the pid is still the recorded process ("stopped").
STOP_SCRIPT = ('f="$1/runner.pid"; pid=none; st=; if [ -r "$f" ]; then read pid st id <"$f" || true; fi; '
               'case $pid in ""|*[!0-9]*) pid=none ;; esac; '
               'same() { now=$(sed "s/.*) //" "/proc/$pid/stat" 2>/dev/null | cut -d" " -f20); '
               '[ -n "$now" ] && [ "$now" = "$st" ]; }; '
               'if [ -n "${3:-}" ] && same; then tok="$$-$(date +%s)"; '
               'printf "%s %s\\n" "$tok" "$4" >"$1/lease.tmp" && mv -f -- "$1/lease.tmp" "$1/lease" && '
               '{ nohup sh -c "$5" sh "$1" "$3" "$tok" >/dev/null 2>&1 </dev/null & }; '
               'else rm -f -- "$1/lease"; fi; '
               '[ -r "$f" ] || exit 0; '
               'if same; then echo stopped; kill -TERM "$pid" 2>/dev/null || true; i=0; '
               'while same && [ $i -lt $(($2 * 10)) ]; do sleep 0.1; i=$((i + 1)); done; '
               'if same; then kill -KILL "$pid" 2>/dev/null || true; fi; fi; rm -f -- "$f"')
# The runner on the SSH channel: $1 release folder, then its argv.
EXEC_SCRIPT = 'cd -- "$1" && shift && exec "$@"'

# Trust ($1 data folder). TRUST_SCRIPT prints the security counter, then each trusted key file as a
# "@@key NAME" line and its text (at most KEY_FILE_MAX + 1 bytes of it).
TRUST_SCRIPT = ('printf "@@counter %s\\n" "$(head -c 64 -- "$1/security_counter" 2>/dev/null | tr -d "\\n")"; '
                'cd -- "$1/trusted_keys" 2>/dev/null || exit 0; '
                'for f in *.pub; do [ -f "$f" ] || continue; printf "@@key %s\\n" "$f"; '
                f'head -c {KEY_FILE_MAX + 1} -- "$f"; echo; done')
# $2 the key's file name (a fingerprint's first 16 hex + .pub): stdin written into it in one rename, synced
ADD_KEY_SCRIPT = ('set -e; k="$1/trusted_keys"; mkdir -p -- "$k"; cat >"$k/.$2.tmp"; '
                  'sync -- "$k/.$2.tmp" 2>/dev/null || sync; mv -f -- "$k/.$2.tmp" "$k/$2"; '
                  'sync -- "$k" 2>/dev/null || sync')
REMOVE_KEY_SCRIPT = 'set -e; rm -f -- "$1/trusted_keys/$2"; sync -- "$1/trusted_keys" 2>/dev/null || sync'
# $2 the counter (digits): written in one rename, synced
COUNTER_SCRIPT = ('set -e; mkdir -p -- "$1"; printf "%s\\n" "$2" >"$1/.security_counter.tmp"; '
                  'sync -- "$1/.security_counter.tmp" 2>/dev/null || sync; '
                  'mv -f -- "$1/.security_counter.tmp" "$1/security_counter"; sync -- "$1" 2>/dev/null || sync')

# The board lock ($1 data folder, $2 our token, $3 our note: one line of JSON, $4 the lease in seconds,
# $5 the token of a holder known to be gone: "" for none). `mkdir lock` is atomic: the one that makes
# it holds the board, writing its token and note into lock/holder. A holder refreshes the file's
# time; one whose file is older than the lease (on the board's own clock), or the holder named by $5,
# is broken, under lock.break so that two breakers never both take it. Prints "taken", "broke" and
# the broken holder's file, or "busy AGE" and the holder's file.
LOCK_SCRIPT = ('d=$1; tok=$2; note=$3; lease=$4; gone=$5; mkdir -p -- "$d" || exit 2; '
               'take() { mkdir -- "$d/lock" 2>/dev/null || return 1; '
               'printf "%s\\n%s\\n" "$tok" "$note" >"$d/lock/holder"; }; '
               'holder() { head -n 1 -- "$d/lock/holder" 2>/dev/null; }; '
               'age() { m=$(stat -c %Y -- "$d/lock/holder" 2>/dev/null || stat -c %Y -- "$d/lock" 2>/dev/null) '
               '|| m=$(date +%s); echo $(( $(date +%s) - m )); }; '
               'stale() { { [ -n "$gone" ] && [ "$1" = "$gone" ]; } || [ "$(age)" -gt "$lease" ]; }; '
               'if take; then echo taken; exit 0; fi; '
               'old=$(holder); '
               'if stale "$old"; then '
               'if mkdir -- "$d/lock.break" 2>/dev/null; then '
               'was=$(head -c 4096 -- "$d/lock/holder" 2>/dev/null); now=$(holder); '
               'if [ "$now" = "$old" ] && stale "$now"; then rm -rf -- "$d/lock"; fi; '
               'if take; then rmdir -- "$d/lock.break"; echo broke; printf "%s\\n" "$was"; exit 0; fi; '
               'rmdir -- "$d/lock.break"; '
               'else b=$(stat -c %Y -- "$d/lock.break" 2>/dev/null) && '
               f'[ $(( $(date +%s) - b )) -gt {LOCK_BREAK_STALE_S} ] && rmdir -- "$d/lock.break" 2>/dev/null; fi; '
               'fi; '
               'echo "busy $(age)"; head -c 4096 -- "$d/lock/holder" 2>/dev/null; exit 0')
# $1 data folder, $2 our token: the holder file's time refreshed while it is ours ("ok"), else "lost"
REFRESH_SCRIPT = ('[ "$(head -n 1 -- "$1/lock/holder" 2>/dev/null)" = "$2" ] || { echo lost; exit 0; }; '
                  'touch -- "$1/lock/holder"; echo ok')
UNLOCK_SCRIPT = '[ "$(head -n 1 -- "$1/lock/holder" 2>/dev/null)" = "$2" ] || exit 0; rm -rf -- "$1/lock"'


def _remote_release_path(data: str, rid: str) -> str:
    return f"{data}/{RELEASES}/{rid}"


class SshStore:
    """Releases on the board, under the login user's data folder (see the module's docstring), and
    the board's trust beside them. ``legacy_trust``: where an older edgelm kept this board's trusted
    keys on this machine; they move onto the board the first time its trust is read."""

    def __init__(self, ssh: Ssh, board: Board, where: str, verify_timeout_s: float = VERIFY_TIMEOUT_S,
                 legacy_trust: Path | None = None):
        self.ssh = ssh
        self.verify_timeout_s = verify_timeout_s
        self.board = board
        self.where = where
        self.legacy_trust = legacy_trust
        self._data: str | None = None

    @property
    def data(self) -> str:
        """The data folder on the board, asked once; refused unless an absolute path of plain characters."""
        if self._data is None:
            out = self.ssh.script(DATA_SCRIPT, [self.board.name], what="finding the data folder").stdout
            path = out.decode(errors="replace").strip()
            if not _SAFE_PATH.match(path) or "/../" in f"{path}/" or "//" in path:
                raise DeviceError(f"the data folder on {self.where} would be {path[:120]!r}: not a plain absolute "
                                  "path", hint="set the board user's HOME (or XDG_DATA_HOME) to a plain folder")
            self._data = path
        return self._data

    # reading ------------------------------------------------------------------------------------

    def _read(self, rid: str, name: str) -> bytes | None:
        """A small file of release ``rid`` on the board (at most BUNDLE_JSON_MAX bytes); None if unreadable."""
        path = f"{_remote_release_path(self.data, rid)}/{name}"
        proc = self.ssh.run(["head", "-c", str(BUNDLE_JSON_MAX), "--", path])
        return proc.stdout if proc.returncode == 0 else None

    def _info(self, rid: str) -> dict[str, Any] | None:
        data = self._read(rid, BUNDLE_FILE)
        if data is None:
            return None
        try:
            return parse_info(data, f"{self.where} {rid}/{BUNDLE_FILE}")
        except InputError as exc:
            log.warning("%s", exc)
            return None

    def _links(self) -> dict[str, str]:
        out = self.ssh.script(LINKS_SCRIPT, [self.data], what="reading the current release").stdout
        found = {}
        for line in out.decode(errors="replace").splitlines():
            name, _, target = line.partition(" ")
            rid = target.removeprefix(f"{RELEASES}/")
            if name in (CURRENT, PREVIOUS) and target.startswith(f"{RELEASES}/") and _RELEASE_ID.match(rid):
                found[name] = rid
            else:
                log.warning("%s: ignoring %s -> %r (not a release)", self.where, name, target[:80])
        return found

    def _release(self, rid: str) -> Release:
        info = self._info(rid)
        return Release(rid, _remote_release_path(self.data, rid), self.board.name,
                       info["model_sha256"] if info else "")

    def current(self) -> Release | None:
        rid = self._links().get(CURRENT)
        return self._release(rid) if rid else None

    def previous(self) -> Release | None:
        rid = self._links().get(PREVIOUS)
        return self._release(rid) if rid else None

    # trust --------------------------------------------------------------------------------------

    def trust_state(self) -> TrustState:
        """The keys and the security counter the board holds, read in one command."""
        if self.legacy_trust is not None:
            legacy, self.legacy_trust = self.legacy_trust, None
            migrate_legacy(legacy, self._add, self.where)
        out = self.ssh.script(TRUST_SCRIPT, [self.data], what="reading the board's trusted keys").stdout
        counter = 0
        keys: list[TrustedKey] = []
        name: str | None = None
        body: list[str] = []

        def done() -> None:
            if name is not None:
                keys.append(parse_key("\n".join(body).encode(), name, self.where))

        for line in out.decode(errors="replace").split("\n"):
            if line.startswith("@@counter ") and name is None:
                counter = parse_counter(line[len("@@counter "):], self.where)
            elif line.startswith("@@key "):
                done()
                name, body = line[len("@@key "):], []
                if not _KEY_NAME.match(name):
                    raise InputError(f"a trusted key file on {self.where} is named {name[:40]!r}, not KEY.pub",
                                     hint=f"remove it from {self.data}/{TRUST_DIR} on the board")
            elif name is not None:
                body.append(line)
        done()
        return TrustState(tuple(keys), counter)

    def _add(self, public_key_pem: bytes) -> str:
        key = signing.parse_public_key(public_key_pem, "the public key")
        fp = signing.fingerprint(key)
        self.ssh.script(ADD_KEY_SCRIPT, [self.data, key_file_name(fp)], input=signing.public_pem(key),
                        what="writing the trusted key")
        return fp

    def trust(self, public_key_pem: bytes) -> str:
        signing.parse_public_key(public_key_pem, "the public key")  # refused before the board is asked
        self.trust_state()  # older keys moved onto the board first
        return self._add(public_key_pem)

    def trusted(self) -> list[dict[str, str]]:
        return self.trust_state().listing()

    def untrust(self, fingerprint: str) -> None:
        for key in self.trust_state().keys:
            if key.fingerprint == fingerprint:
                self.ssh.script(REMOVE_KEY_SCRIPT, [self.data, key.name], what=f"removing key {fingerprint[:16]}")

    def security_counter(self) -> int:
        return self.trust_state().counter

    def confirm(self, release: Release) -> int:
        """See LocalStore.confirm."""
        trust = self.trust_state()
        if not trust.keys:
            return trust.counter
        info = self._info(release.id)
        counter = security_counter(info) if info is not None else 0
        if counter > trust.counter:
            self.ssh.script(COUNTER_SCRIPT, [self.data, str(counter)], what="recording the security counter")
            log.info("%s: security counter is now %d (release %s)", self.where, counter, release.id)
            return counter
        return trust.counter

    # checking and switching ---------------------------------------------------------------------

    def _hashes(self, folder: str, names: list[str]) -> dict[str, str]:
        got = self.ssh.sha256([f"{folder}/{n}" for n in names], timeout_s=self.verify_timeout_s)
        return {n: got[f"{folder}/{n}"] for n in names}

    def verify(self, release: Release, *, counter: bool = True) -> None:
        """See ReleaseStore.verify; ``counter``: also refuse a release below the board's security
        counter (not when putting back the release that was current: ``restore``)."""
        if not _RELEASE_ID.match(release.id) or release.path != _remote_release_path(self.data, release.id):
            raise UsageError(f"release {release.id[:40]} is not one of {self.where}'s")
        info = self._info(release.id)
        if info is None:
            raise InputError(f"release {release.id} on {self.where} has no readable {BUNDLE_FILE}")
        if release_id(info["files"]) != release.id:  # the id is the hash of the file map: it cannot be edited
            raise InputError(f"release {release.id} on {self.where}: its {BUNDLE_FILE} lists other files")
        try:
            got = self._hashes(release.path, sorted(info["files"]))
        except DeviceError as exc:
            raise InputError(f"release {release.id} on {self.where} does not verify: {exc}") from None
        bad = sorted(n for n, digest in info["files"].items() if got[n] != digest)
        if bad:
            raise InputError(f"release {release.id} on {self.where} does not verify: {bad[0]} does not match its "
                             f"sha256" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""),
                             hint="flash the bundle again")
        trust = self.trust_state()
        if trust.keys:  # a rollback to a release signed by no trusted key is refused, as a deploy of it would be
            data, sig = self._read(release.id, BUNDLE_FILE), self._read(release.id, SIGNATURE_FILE)
            if data is None or sig is None:
                raise signing.Refused(f"{self.where} accepts only signed releases, and {release.id} has no "
                                      f"{SIGNATURE_FILE}", "unsigned")
            signing.verify(data, sig, trust.public_keys, f"{self.where} {release.id}/{SIGNATURE_FILE}")
            if counter:
                check_counter(parse_info(data, f"{self.where} {release.id}/{BUNDLE_FILE}"), trust,
                              f"release {release.id}", self.where, current=True)

    def activate(self, release: Release, *, verify: bool = True) -> None:
        if verify:
            self.verify(release)
        self.ssh.script(SWITCH_SCRIPT, [self.data, release.id], what=f"switching to {release.id}")
        log.info("%s: current release is now %s", self.where, release.id)

    def restore(self, current: Release | None, previous: Release | None) -> None:
        if current is not None:
            self.verify(current, counter=False)
        for r in (current, previous):
            if r is not None and not _RELEASE_ID.match(r.id):
                raise UsageError(f"release {r.id[:40]} is not one of {self.where}'s")
        self.ssh.script(RESTORE_SCRIPT, [self.data, current.id if current else "", previous.id if previous else ""],
                        what=f"making {current.id if current else 'no release'} current again")
        log.info("%s: current release is %s again", self.where, current.id if current else "none")

    def clean(self) -> None:
        self.ssh.script(LEFTOVERS_SCRIPT, [self.data], what="removing what an unfinished upload left")

    # deploying ----------------------------------------------------------------------------------

    def deploy(self, bundle: Bundle, *, activate: bool = True, progress: Progress = no_progress) -> Release:
        source, _, names = source_bundle(bundle, self.board, self.trust_state(), self.where)
        rid = source.release_id
        final = _remote_release_path(self.data, rid)
        local = {name: source.root / name for name in names}
        want = {name: sha256_file(path) for name, path in local.items()}
        if self._info(rid) is not None:
            try:
                if self._hashes(final, sorted(want)) == want:
                    release = Release(rid, final, self.board.name, source.info["model_sha256"])
                    if activate:
                        self.activate(release)
                    return release  # the same release is there already, and it verifies
            except DeviceError as exc:
                log.warning("the copy of %s on %s does not verify (%s); uploading it again", rid, self.where, exc)
        self.ssh.script(CLEAN_SCRIPT, [self.data], what="clearing unfinished uploads")
        incoming = f"{self.data}/{RELEASES}/{INCOMING_PREFIX}{rid}"
        total = sum(p.stat().st_size for p in local.values())
        progress("upload", f"{total:,} bytes to {self.where}")
        current = self._links().get(CURRENT)
        now = f"release {current} is still current" if current else "nothing is deployed"
        try:
            self.ssh.put(local, incoming)
        except DeviceError as exc:
            raise DeviceError(f"deploy to {self.where} failed: {exc}; {now}") from None
        progress("verify", f"sha256 of {len(want)} files on {self.where}")
        got = self._hashes(incoming, sorted(want))
        bad = sorted(n for n in want if got[n] != want[n])
        if bad:
            raise DeviceError(f"deploy to {self.where} failed: {bad[0]} arrived with another sha256; {now}",
                              hint="flash again; if it repeats, check the board's storage")
        self.ssh.script(COMMIT_SCRIPT, [self.data, rid], what=f"storing release {rid}")
        release = Release(rid, final, self.board.name, source.info["model_sha256"])
        log.info("deployed %s to %s (hashes verified on the board)", rid, self.where)
        if activate:
            self.activate(release)
        return release


def machine_id() -> str:
    """This machine, for a lock's note: a hash of its machine-id (and host name), so that a holder on
    this machine can be told gone by its pid; another machine's pid means nothing here."""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text:
            return hashlib.sha256(f"{text}/{socket.gethostname()}".encode()).hexdigest()[:16]
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:16]


def _holder_note(text: str) -> tuple[str, dict[str, Any] | None]:
    """(token, note) of a lock's holder file as the board printed it (anything: checked, never trusted)."""
    token, _, rest = text.partition("\n")
    try:
        note = json.loads(rest.strip().splitlines()[0]) if rest.strip() else None
    except (ValueError, RecursionError, IndexError):
        note = None
    return token.strip()[:64], note if isinstance(note, dict) else None


class BoardLock:
    """One edgelm job at a time per board, on the board itself (``DATA/lock``): two flashes from two
    hosts or two --workdirs exclude each other, and an upload folder is never cleaned away under
    the job that writes it. The holder's token and note (host, pid, what, command, since) are in
    ``lock/holder``; a job that finds the board held is refused at once, naming the holder.

    The holder refreshes the file's time every LOCK_REFRESH_S; a lock not refreshed for LOCK_LEASE_S
    (on the board's clock) is stale and broken, and so is one whose holder ran on this machine and
    is gone (its pid no longer names the process that wrote it). Within one process the lock nests,
    as the host's lock does (:mod:`toolchain.deploy.lock`)."""

    _held: dict[tuple[str, str], list[Any]] = {}  # (ssh spec, board) -> [depth, token, stop event]

    def __init__(self, ssh: Ssh, store: SshStore, notes: list[str]):
        self.ssh = ssh
        self.store = store
        self.notes = notes
        self.key = (str(ssh.spec), store.board.name)

    def _take(self, token: str, note: str, gone: str) -> tuple[str, str]:
        out = self.ssh.script(LOCK_SCRIPT, [self.store.data, token, note, str(int(LOCK_LEASE_S)), gone],
                              what="taking the board's lock").stdout.decode(errors="replace")
        word, _, rest = out.partition("\n")
        return word.strip(), rest

    @staticmethod
    def _gone_here(note: dict[str, Any] | None) -> bool:
        """The holder ran on this machine and its process is gone."""
        if not note or note.get("machine") != machine_id():
            return False
        pid = note.get("pid")
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            return False
        return lock_mod.process_start(pid) != note.get("start")

    @contextlib.contextmanager
    def hold(self, what: str) -> Iterator[None]:
        held = self._held.get(self.key)
        if held is not None:  # this process holds it already: a nested job
            held[0] += 1
            try:
                yield
            finally:
                held[0] -= 1
            return
        token = hashlib.sha256(f"{machine_id()}-{time.time_ns()}-{id(self)}".encode()).hexdigest()[:16]
        note = json.dumps({"host": socket.gethostname(), "machine": machine_id(), **lock_mod.note(what)})
        word, rest = self._take(token, note, "")
        why = f"it was not heard of for more than {LOCK_LEASE_S} s"
        if word.startswith("busy"):
            holder_token, holder = _holder_note(rest)
            if holder_token and self._gone_here(holder):
                why = "its process on this machine is gone"
                word, rest = self._take(token, note, holder_token)
        if word.startswith("busy"):
            _, holder = _holder_note(rest)
            raise DeviceError(f"{self.store.where} is busy: held by {lock_mod.describe(holder)}",
                              hint="wait for it to finish, or end that process (a holder that is gone is "
                                   f"broken once it has not been heard of for {LOCK_LEASE_S} s)")
        if word == "broke":
            _, holder = _holder_note(rest)
            self.notes.append(f"broke the lock on {self.store.where} that {lock_mod.describe(holder)} left: {why}")
            log.warning("%s", self.notes[-1])
        elif word != "taken":
            raise DeviceError(f"taking the lock on {self.store.where} failed: it answered {word[:40]!r}")
        stop = threading.Event()
        self._held[self.key] = [1, token, stop]
        refresher = threading.Thread(target=self._refresh, args=(token, stop), daemon=True,
                                     name=f"edgelm-board-lock-{self.store.board.name}")
        refresher.start()
        try:
            yield
        finally:
            del self._held[self.key]
            stop.set()
            refresher.join(timeout=5)
            try:
                self.ssh.script(UNLOCK_SCRIPT, [self.store.data, token], what="releasing the board's lock")
            except EdgelmError as exc:  # it goes stale by itself; the error that ended the job is the one to report
                log.warning("releasing the lock on %s: %s (it expires in %d s)", self.store.where, exc, LOCK_LEASE_S)

    def _refresh(self, token: str, stop: threading.Event) -> None:
        while not stop.wait(LOCK_REFRESH_S):
            try:
                out = self.ssh.script(REFRESH_SCRIPT, [self.store.data, token], what="refreshing the board's lock")
            except EdgelmError as exc:
                log.warning("refreshing the lock on %s failed: %s", self.store.where, exc)
                continue
            if out.stdout.strip() != b"ok":
                log.error("the lock on %s was broken by another job (this one was not heard of for %d s)",
                          self.store.where, LOCK_LEASE_S)
                return


def runner_argv(release: Release, device: str, threads: int | None) -> list[str]:
    argv = [f"{release.path}/{RUNNER}", "--model", f"{release.path}/{PROGRAM_FILE}", "--serial", device]
    if threads:
        argv += ["--threads", str(threads)]
    return argv


class ChannelTransport:
    """The host's end of a runner serving on the SSH channel: bound to the channel once it starts."""

    def __init__(self, name: str):
        self.name = name
        self.pipe: PipeTransport | None = None

    def read(self, deadline: Deadline) -> bytes:
        if self.pipe is None:
            time.sleep(min(0.05, deadline.remaining))
            return b""
        return self.pipe.read(deadline)

    def write(self, data: bytes) -> None:
        if self.pipe is None:
            raise DeviceError(f"{self.name}: the runner has not started")
        self.pipe.write(data)

    def close(self) -> None:
        if self.pipe is not None:
            self.pipe.close()


class SshChannel:
    """Runner control and link in one: the runner started through ssh, serving on its stdin and
    stdout, which are the SSH channel. It cannot go on serving once we disconnect. A runner an
    earlier ``flash --port`` left serving in the background on the board is seen (``running``)
    and stopped with it: two runners would compete for the board's memory."""

    keeps_serving = False
    board_device = "-"

    def __init__(self, ssh: Ssh, state: Path, where: str, left: SshDaemon | None = None):
        self.ssh = ssh
        self.state = state
        self.where = where
        self.left = left  # the background runner's control (runner.pid on the board)
        self._transport: ChannelTransport | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = state / RUNNER_LOG

    def connect(self) -> str:
        return f"{self.ssh.spec} (SSH channel)"

    def open(self, port: str) -> Transport:
        self._transport = ChannelTransport(port)
        return self._transport

    def start(self, release: Release, *, device: str, threads: int | None = None) -> None:
        if self._transport is None:
            raise DeviceError("open the link before starting the runner")
        self.state.mkdir(parents=True, exist_ok=True)
        with self._log.open("wb") as logf:
            self._proc = self.ssh.popen(["sh", "-c", EXEC_SCRIPT, "sh", release.path,
                                         *runner_argv(release, "-", threads)], stderr=logf)
        self._transport.pipe = PipeTransport.of(self._proc, self._transport.name)

    def _tail(self) -> str:
        try:
            lines = [x for x in self._log.read_text(errors="replace").splitlines() if x.strip()]
        except OSError:
            return ""
        return " | ".join(lines[-3:])

    def alive(self) -> str | None:
        if self._proc is None:
            return "not started"
        code = self._proc.poll()
        if code is None:
            return None
        tail = self._tail()
        what = "the SSH connection failed" if code == 255 else f"runner exited with status {code}"
        return what + (f": {tail}" if tail else "")

    def stop(self, *, lease_s: float | None = None) -> str | None:
        started = self._proc is not None
        if self._transport is not None:
            self._transport.close()  # the runner sees end of file and exits; ssh is ended after a grace
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        stopped_left = self.left.stop_left(lease_s) if self.left is not None else False
        if started or stopped_left:
            return None
        return (f"{self.where}: nothing runs there (a runner on the SSH channel ends with its connection, and none "
                "was left serving in the background)")

    def running(self) -> dict[str, Any] | None:
        return self.left.running() if self.left is not None else None


class SshDaemon:
    """Runner control for a runner left serving in the background on the board's serial device, and
    the host's serial port wired to it (``--port``)."""

    keeps_serving = True

    def __init__(self, ssh: Ssh, store: SshStore, board: Board, port: str, board_device: str):
        self.ssh = ssh
        self.store = store
        self.board = board
        self.port = port
        self.board_device = board_device

    def connect(self) -> str:
        return self.port

    def open(self, port: str) -> Transport:
        return ports.open_port(port, self.board.baud)

    def start(self, release: Release, *, device: str, threads: int | None = None) -> None:
        # The board runs the script to its end whatever becomes of our ssh: a signal waits for its
        # answer (else the stop that follows races a start still running there, and the board keeps
        # a runner no record names, holding the serial line).
        with interrupts.deferred():
            self.ssh.script(START_SCRIPT, [self.store.data, release.id, *runner_argv(release, device, threads)],
                            what=f"starting the runner of {release.id}")

    def _status(self) -> tuple[str, str]:
        out = self.ssh.script(STATUS_SCRIPT, [self.store.data], what="asking whether the runner runs").stdout
        word, _, rest = out.decode(errors="replace").strip().partition(" ")
        return word, rest

    def alive(self) -> str | None:
        word, rest = self._status()
        if word == "running":
            return None
        return f"runner {rest}" if word == "stopped" else "not started"

    def _unit_active(self) -> bool:
        """Whether the unit an earlier ``flash --service`` installed serves now (no sudo needed to ask)."""
        out = self.ssh.script(UNIT_ACTIVE_SCRIPT, [service.UNIT_NAME], what="asking whether the service runs").stdout
        return out.decode(errors="replace").strip() == "active"

    def _stop_unit(self, lease_s: float | None = None) -> None:
        """``systemctl stop``; with ``lease_s``, a transient timer first starts it again after that
        long unless ``start`` cancels it (a controller that dies in between leaves it serving)."""
        if lease_s is not None:
            for argv in service.cancel_lease_commands():  # one a dead controller armed (fails when there is none)
                self.ssh.run(list(argv), timeout_s=60)
            try:
                self._sudo(service.lease_commands(lease_s), "arming the service's lease")
            except DeviceError as exc:  # still stopped: the bring-up starts it again, unless it is killed
                log.warning("%s; the service stays stopped if edgelm is killed before it starts it again", exc)
        proc = self.ssh.run(["sudo", "-n", "systemctl", "stop", service.UNIT_NAME], timeout_s=60)
        if proc.returncode != 0:
            why = proc.stderr.decode(errors="replace").strip().splitlines()
            raise DeviceError(f"the board serves with {service.UNIT_NAME}, and stopping it failed: "
                              f"{why[-1] if why else 'exit ' + str(proc.returncode)}",
                              hint=f"stop it on the board (sudo systemctl disable --now {service.UNIT_NAME}), "
                                   "or flash with --service again")

    def _sudo(self, commands: tuple[tuple[str, ...], ...], what: str) -> None:
        """Each ``sudo -n`` argv in turn; the first that fails raises, with its last line."""
        for argv in commands:
            proc = self.ssh.run(list(argv), timeout_s=60)
            if proc.returncode != 0:
                why = proc.stderr.decode(errors="replace").strip().splitlines()
                raise DeviceError(f"{what} on {self.ssh.spec} failed at `{' '.join(argv)}`: "
                                  f"{why[-1] if why else 'exit ' + str(proc.returncode)}",
                                  hint="the board user needs passwordless sudo for this")

    def stop_left(self, lease_s: float | None = None, unit_lease_s: float | None = None) -> bool:
        """Stop the background runner, and the service an earlier ``flash --service`` left (both would
        hold the serial device); whether either was running. ``lease_s``: the background runner's
        lease (GUARD_SCRIPT); ``unit_lease_s``: the unit's (``_stop_unit``)."""
        args = [self.store.data, str(int(STOP_TIMEOUT_S))]
        if lease_s is not None:
            args += [str(max(1, int(lease_s))), self.board_device, GUARD_SCRIPT]
        with interrupts.deferred():  # as for a start: a stop the board goes on with must not undo what follows
            out = self.ssh.script(STOP_SCRIPT, args, timeout_s=STOP_TIMEOUT_S + 30, what="stopping the runner").stdout
        stopped = out.decode(errors="replace").strip() == "stopped"
        if self._unit_active():
            self._stop_unit(unit_lease_s)
            stopped = True
        return stopped

    def stop(self, *, lease_s: float | None = None) -> str | None:
        # For a switch the board starts the current release again by itself once the lease runs out,
        # unless we start one first; a unit an earlier `flash --service` left is stopped for good,
        # since this runner serves without it.
        self.stop_left(lease_s)
        return None

    def running(self) -> dict[str, Any] | None:
        word, rest = self._status()
        if word != "running":
            if not self._unit_active():
                return None
            current = self.store.current()
            return {"pid": None, "release": current.id if current else None, "port": self.port,
                    "board_device": self.board_device, "service": service.UNIT_NAME}
        pid, _, rid = rest.partition(" ")  # the board's pid file: a release id only if it is one
        return {"pid": pid, "release": rid if _RELEASE_ID.match(rid) else None, "port": self.port,
                "board_device": self.board_device}


SYSTEMD_SCRIPT = 'if [ -d /run/systemd/system ]; then echo yes; else echo no; fi'
UNIT_ACTIVE_SCRIPT = ('if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet -- "$1" 2>/dev/null; '
                      'then echo active; else echo inactive; fi')
# $1 the file, $2 its mode: stdin written into it in one rename, synced
INSTALL_SCRIPT = ('set -e; cat >"$1.tmp"; chmod "$2" "$1.tmp"; sync -- "$1.tmp" 2>/dev/null || sync; '
                  'mv -f -- "$1.tmp" "$1"')
# $1 the device: prints the login user and the device's group
OWNER_SCRIPT = 'id -un; stat -c %G -- "$1"'


class SshService(SshDaemon):
    """The runner as a systemd service on the board (``flash --service``): it serves after every boot
    and is restarted on failure. Installing needs ``sudo -n`` (passwordless) on the board. Where the
    board has no systemd, it says so and runs the runner in the background instead."""

    def __init__(self, ssh: Ssh, store: SshStore, board: Board, port: str, board_device: str, notes: list[str]):
        super().__init__(ssh, store, board, port, board_device)
        self.notes = notes
        self._systemd: bool | None = None

    @property
    def systemd(self) -> bool:
        if self._systemd is None:
            out = self.ssh.script(SYSTEMD_SCRIPT, [], what="looking for systemd").stdout.decode(errors="replace")
            out = out.strip()
            self._systemd = out == "yes"
        return self._systemd

    def start(self, release: Release, *, device: str, threads: int | None = None) -> None:
        if not self.systemd:
            self.notes.append(f"{self.ssh.spec} has no systemd: the runner was started in the background instead; "
                              "it will not start again after a reboot")
            super().start(release, device=device, threads=threads)
            return
        user, _, group = self.ssh.script(OWNER_SCRIPT, [device], what=f"reading the owner of {device}").stdout \
            .decode(errors="replace").strip().partition("\n")
        data = self.store.data
        unit = service.render_unit(board=self.board, release_dir=f"{data}/current", data_dir=data, device=device,
                                   user=user.strip(), group=group.strip(), threads=threads)
        staged = f"{data}/{service.UNIT_NAME}"
        self.ssh.script(INSTALL_SCRIPT, [f"{data}/{service.SERVE_SCRIPT}", "0755"],
                        input=service.serve_script().encode(), what="writing the service's start script")
        self.ssh.script('cat >"$1"', [staged], input=unit.encode(), what="staging the service unit")
        for argv in service.cancel_lease_commands():  # started now: the lease has done its job
            self.ssh.run(list(argv), timeout_s=60)
        for argv in service.install_commands(staged):
            proc = self.ssh.run(list(argv), timeout_s=60)
            if proc.returncode != 0:
                why = proc.stderr.decode(errors="replace").strip().splitlines()
                raise DeviceError(f"installing {service.UNIT_NAME} on {self.ssh.spec} failed at `{' '.join(argv)}`: "
                                  f"{why[-1] if why else 'exit ' + str(proc.returncode)}",
                                  hint="the board user needs passwordless sudo for this (or install the unit by "
                                       f"hand from {staged})")
        self.notes.append(f"installed and started {service.UNIT_NAME}: the board serves on {device} after every boot")

    def stop(self, *, lease_s: float | None = None) -> str | None:
        """The unit stops; for a switch (``lease_s``) only for that long at most: see ``_stop_unit``
        (where there is no systemd, the background runner's lease: see SshDaemon)."""
        if self.systemd:
            self.stop_left(unit_lease_s=lease_s)
        else:
            self.stop_left(lease_s)
        return None

    def alive(self) -> str | None:
        if not self.systemd:
            return super().alive()
        proc = self.ssh.run(["systemctl", "is-active", service.UNIT_NAME])
        state = proc.stdout.decode(errors="replace").strip()
        return None if state in ("active", "activating") else f"{service.UNIT_NAME} is {state or 'not running'}"


def _state_name(spec: SshSpec, board: Board) -> str:
    host = re.sub(r"[^A-Za-z0-9.-]", "_", spec.host)
    return f"ssh-{spec.user or ''}@{host}-{spec.port or 22}-{board.name}"


def create(text: str, board: Board, state_dir: Path, options: TargetOptions) -> Target:
    spec = SshSpec.parse(text)
    if options.boot is not None:
        raise UsageError("--boot is for dir: targets (a card's boot partition)")
    ssh = Ssh(spec, config=options.ssh_config, accept_new_host_key=options.accept_new_host_key)
    state = state_dir / _state_name(spec, board)
    where = f"{spec}:{board.name}"
    store = SshStore(ssh, board, where, legacy_trust=state / TRUST_DIR)  # an older edgelm's keys move onto the board
    runner: SshChannel | SshDaemon
    notes: list[str] = []
    if options.port is not None:
        ports.parse_port_spec(options.port)  # a malformed port fails here, before any work
        device = options.board_port or board.serial_device
        runner = (SshService(ssh, store, board, options.port, device, notes) if options.service else
                  SshDaemon(ssh, store, board, options.port, device))
    elif options.service:
        raise UsageError("--service serves on the board's serial device: give --port, the host's end of that line, "
                         "so the release is checked by its HELLO there",
                         hint="without a serial line, `edgelm run --target ssh://...` serves over the SSH channel")
    else:
        if options.board_port is not None:
            raise UsageError("--board-port needs --port (the host's end of that serial line)",
                             hint="without --port the link is the SSH channel")
        runner = SshChannel(ssh, state, where, left=SshDaemon(ssh, store, board, "", board.serial_device))
    target = Target(kind="ssh", spec=str(spec), board=board, state=state, store=store, runner=runner, link=runner,
                    timeouts=Timeouts(), notes=notes, board_lock=BoardLock(ssh, store, notes).hold)
    target.preflight = lambda bundle: probe_checks(ssh, store, runner, bundle, board)
    target.missing = lambda: _unreachable(ssh)
    return target


def _unreachable(ssh: Ssh) -> list[str]:
    """[] when a login to the board works (it runs ``true``); else why not, in one phrase."""
    if missing_tools(("ssh", "")):
        return ["ssh (Debian's openssh-client)"]
    try:
        ssh.run(["true"], timeout_s=ssh.connect_timeout_s + 5)
    except EdgelmError as exc:
        return [f"an SSH server that lets us in at {ssh.spec} ({exc.message})"]
    return []


def probe_checks(ssh: Ssh, store: SshStore, runner: SshChannel | SshDaemon, bundle: Bundle, board: Board) -> list:
    """The board's facts, read in one command, judged against the bundle's needs."""
    device = runner.board_device if isinstance(runner, SshDaemon) else ""
    out = ssh.script(preflight.PROBE_SCRIPT, [store.data, device], what="reading the board's facts").stdout
    facts = preflight.parse_facts(out.decode(errors="replace"))
    needs = preflight.needs_for(bundle)
    return [*preflight.judge(facts, needs, board), preflight.fit(board, needs)]

