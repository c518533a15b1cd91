"""The SSH client's pure parts: the target's address, the ssh command line, ssh's failures, sha256sum."""

import shlex
import subprocess

import pytest

from toolchain.deploy import sshclient
from toolchain.deploy.sshclient import Ssh, SshSpec
from toolchain.errors import DeviceError, UsageError

HOSTILE_ARGS = ["; touch /tmp/pwned", "$(id)", "`id`", "a\nb", "it's", '"q"', "two words", "-n", "--", "*", "~",
                "\\", "", "${HOME}", "a|b&c>d<e", "\t", "é"]


@pytest.mark.parametrize("text, host, user, port", [
    ("ssh://rpi5", "rpi5", None, None),
    ("ssh://pi@rpi5.local", "rpi5.local", "pi", None),
    ("ssh://root@10.0.0.7:2222", "10.0.0.7", "root", 2222),
    ("ssh://a.b-c_d@board-1.lab.example.com:22", "board-1.lab.example.com", "a.b-c_d", 22),
    ("ssh://[::1]", "::1", None, None),
    ("ssh://u@[fe80::1%eth0]:65535", "fe80::1%eth0", "u", 65535),
    ("ssh://h:1", "h", None, 1),
])
def test_good_specs_parse_and_print_back(text, host, user, port):
    spec = SshSpec.parse(text)
    assert (spec.host, spec.user, spec.port) == (host, user, port)
    assert str(spec) == text
    assert SshSpec.parse(str(spec)) == spec


@pytest.mark.parametrize("text, why", [
    ("rpi5", "does not start with ssh://"),
    ("ssh:/rpi5", "does not start with ssh://"),
    ("ssh://", "the host is empty"),
    ("ssh://-oProxyCommand=x", "not a host name"),
    ("ssh://-oProxyCommand=touch%20x@h", "not a user name"),
    ("ssh://u@-h", "not a host name"),
    ("ssh://a b", "' '"),
    ("ssh://h:0", "not a number in 1..65535"),
    ("ssh://h:65536", "not a number in 1..65535"),
    ("ssh://h:022", "not a number in 1..65535"),
    ("ssh://h:+22", "not a number in 1..65535"),
    ("ssh://h:", "not a number in 1..65535"),
    ("ssh://h:22x", "not a number in 1..65535"),
    ("ssh://u@h/;rm", "'/'"),
    ("ssh://h/path", "'/'"),
    ("ssh://h?x=1", "'?'"),
    ("ssh://h#frag", "'#'"),
    ("ssh://h\n", "'\\n'"),
    ("ssh://h;id", "not a host name"),
    ("ssh://$(id)", "not a host name"),
    ("ssh://@h", "not a user name"),
    ("ssh://u@v@h", "not a host name"),
    ("ssh://-l@h", "not a user name"),
    ("ssh://::1", "must be in brackets"),
    ("ssh://[::1", "without a closing"),
    ("ssh://[h]", "brackets are for IPv6 only"),
    ("ssh://[::1]x", "expected :port"),
    ("ssh://[::g]", "not an IPv6 address"),
    ("ssh://[fe80::1%e;x]", "not an interface name"),
    ("ssh://300.1.1.1", "not an IPv4 address"),
    ("ssh://h-.x", "not a host name"),
    ("ssh://" + "a" * 64, "not a host name"),
])
def test_bad_specs_are_refused_naming_the_problem(text, why):
    with pytest.raises(UsageError) as err:
        SshSpec.parse(text)
    assert why in str(err.value)
    assert "\n" not in str(err.value) and err.value.hint


def test_a_spec_built_directly_is_checked_too():
    with pytest.raises(UsageError, match="not a host name"):
        SshSpec("-oProxyCommand=x")
    with pytest.raises(UsageError, match="not a user name"):
        SshSpec("h", user="-l")
    with pytest.raises(UsageError, match="not in 1..65535"):
        SshSpec("h", port=0)


def _ssh(**kw) -> Ssh:
    return Ssh(SshSpec.parse("ssh://pi@rpi5.local:2222"), multiplex=False, **kw)


def test_argv_puts_options_before_the_host_and_the_remote_command_last_as_one_quoted_word():
    argv = _ssh().argv(["sha256sum", "--", "releases/r-1/model.pte"])
    assert argv[0] == "ssh"
    assert argv[-3:] == ["--", "rpi5.local", "sha256sum -- releases/r-1/model.pte"]
    opts = argv[:-3]
    assert ["-o", "BatchMode=yes"] == opts[1:3]
    assert "StrictHostKeyChecking=yes" in opts and "-T" in opts
    assert opts[opts.index("-p") + 1] == "2222" and opts[opts.index("-l") + 1] == "pi"
    assert "-F" not in opts and not any(o.startswith("ControlPath=") for o in opts)


def test_argv_with_a_config_multiplexing_and_accepting_new_host_keys(tmp_path):
    with Ssh(SshSpec.parse("ssh://h"), config=tmp_path / "cfg", accept_new_host_key=True,
             connect_timeout_s=3) as ssh:
        argv = ssh.argv(["true"])
        assert argv[1:3] == ["-F", str(tmp_path / "cfg")]
        assert "StrictHostKeyChecking=accept-new" in argv and "ConnectTimeout=3" in argv
        assert "ControlMaster=auto" in argv and "ControlPersist=30" in argv
        assert "-p" not in argv and "-l" not in argv
        assert argv[-3:] == ["--", "h", "true"]
    # close() without a connection: nothing to end, the socket folder is gone
    path = next(a for a in argv if a.startswith("ControlPath=")).split("=", 1)[1]
    assert not (tmp_path / path).parent.exists()


def test_hostile_remote_arguments_are_one_quoted_word_each_and_parse_back_exactly():
    remote = ["printf", "%s", *HOSTILE_ARGS]
    command = _ssh().argv(remote)[-1]
    assert shlex.split(command) == remote
    # what a POSIX shell on the board makes of it: the same words, nothing run
    out = subprocess.run(["sh", "-c", 'printf "%s\\0" "$@"', "sh"] + shlex.split(command)[2:],
                         capture_output=True, check=True).stdout
    assert out.split(b"\0")[:-1] == [a.encode() for a in HOSTILE_ARGS]
    assert subprocess.run(["sh", "-c", command], capture_output=True, check=True).stdout == \
        "".join(HOSTILE_ARGS).encode()


def test_the_remote_command_must_be_an_argv_list():
    ssh = _ssh()
    with pytest.raises(TypeError):
        ssh.argv("rm -rf /")
    with pytest.raises(TypeError):
        ssh.argv([])
    with pytest.raises(UsageError, match="NUL"):
        ssh.argv(["echo", "a\0b"])


def test_scripts_are_run_by_sh_with_their_arguments_quoted():
    argv = sshclient.sh('printf "%s" "$1"', "; touch /tmp/pwned")
    assert argv == ["sh", "-c", 'printf "%s" "$1"', "sh", "; touch /tmp/pwned"]
    command = _ssh().argv(argv)[-1]
    assert subprocess.run(["sh", "-c", command], capture_output=True, check=True).stdout == b"; touch /tmp/pwned"


SPEC = SshSpec.parse("ssh://pi@rpi5:2222")


@pytest.mark.parametrize("stderr, expect", [
    ("No ED25519 host key is known for [rpi5]:2222 and you have requested strict checking.\n"
     "Host key verification failed.\n",
     "the host key of rpi5 is not in known_hosts; check it (ssh-keyscan -p 2222 rpi5 | ssh-keygen -lf -) "
     "and pass --accept-new-host-key"),
    ("@@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n@@@@@@\nIT IS POSSIBLE...\n"
     "Host key verification failed.\n", "REMOTE HOST IDENTIFICATION HAS CHANGED; refusing"),
    ("pi@rpi5: Permission denied (publickey).\n", "pi@rpi5 refused our keys (Permission denied (publickey))"),
    ("ssh: connect to host rpi5 port 2222: Connection refused\n", "rpi5 refused the connection on port 2222"),
    ("ssh: Could not resolve hostname rpi5: Name or service not known\n", "cannot resolve the host name rpi5"),
    ("ssh: connect to host rpi5 port 2222: Connection timed out\n", "did not answer within 10 s"),
    ("Connection timed out during banner exchange\n", "did not answer within 10 s"),
    ("ssh: connect to host rpi5 port 2222: No route to host\n", "rpi5 is unreachable"),
    ("kex_exchange_identification: read: Connection reset by peer\n", "ssh to ssh://pi@rpi5:2222 failed: kex_"),
])
def test_ssh_failures_are_one_line_each(stderr, expect):
    err = sshclient.ssh_failure(SPEC, stderr, 10)
    assert isinstance(err, DeviceError)
    assert expect in str(err) and "\n" not in str(err)


def test_a_changed_host_key_is_never_reported_as_an_unknown_one():
    err = sshclient.ssh_failure(SPEC, "WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!\nHost key verification "
                                      "failed.\n", 10)
    assert "accept-new" not in str(err) and "accept-new" not in (err.hint or "")


def test_a_remote_command_exiting_255_is_not_an_ssh_failure():
    assert sshclient.ssh_failure(SPEC, "runner: something of its own\n", 10) is None
    assert sshclient.ssh_failure(SPEC, "mkdir: cannot create directory 'x': Permission denied\n", 10) is None
    assert sshclient.ssh_failure(SPEC, "curl: Connection refused; Host key verification failed\n", 10) is None


def test_sha256sum_output_is_parsed_strictly():
    a, b = "a" * 64, "b" * 64
    assert sshclient.parse_sha256sum(f"{a}  x/runner\n{b} *x/model.pte\n", ["x/runner", "x/model.pte"]) == \
        {"x/runner": a, "x/model.pte": b}
    for bad in (f"{a}  x/runner\n", f"{a}  x/other\n{b}  x/model.pte\n", f"{a[:-1]}  x/runner\n{b}  x/model.pte\n",
                f"{a.upper()}  x/runner\n{b}  x/model.pte\n", f"\\{a}  x/runner\n{b}  x/model.pte\n"):
        with pytest.raises(DeviceError):
            sshclient.parse_sha256sum(bad, ["x/runner", "x/model.pte"])


def test_put_refuses_names_that_are_not_plain_and_files_that_are_not_regular(tmp_path):
    ssh = _ssh()
    f = tmp_path / "f"
    f.write_bytes(b"x")
    for name in ("../x", "a/b", ".", "..", "-rf", "", "a b", "x" * 101):
        with pytest.raises(UsageError):
            ssh.put({name: f}, "dest")
    with pytest.raises(UsageError, match="not a regular file"):
        ssh.put({"d": tmp_path}, "dest")
    with pytest.raises(UsageError):
        ssh.put({"missing": tmp_path / "missing"}, "dest")
    with pytest.raises(UsageError):
        ssh.put({}, "dest")
    with pytest.raises(UsageError):
        ssh.sha256(["a\nb"])
