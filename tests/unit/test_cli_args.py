"""The CLI's argument handling, in-process: every flag's validation, env vars, exit codes.

No processes are started: each error case fails before anything is created, and the valid
cases are checked through ``build_config`` (what ``launch`` would run with).
"""

from __future__ import annotations

import ipaddress
import platform
import re
import socket
from collections.abc import Mapping
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from cli.launch import (
    DEFAULT_CONN_LIMIT,
    build_config,
    child_environment,
    config_to_argv,
    last_error,
)
from cli.main import main, parse_args
from cli.supervise import (
    BACKOFF_MAX,
    STABLE_AFTER,
    STARTUP_GRACE,
    RestartPolicy,
    describe_exit,
    exit_status,
    parse_argv,
)
from router.config import (
    DEFAULT_API_SOCKET,
    DEFAULT_DB_PATH,
    DEFAULT_LOG_FILE,
    MeshConfig,
    MeshTimings,
    RouterConfig,
)
from router.crypto.ciphers import hardware_aes
from router.dataplane.backend import load_backend
from router.errors import ConfigError
from router.mesh.names import PeerName


def run(argv: list[str], capsys: pytest.CaptureFixture[str],
        env: Mapping[str, str] | None = None) -> tuple[int, str, str]:
    code = main(argv, env or {})
    out, err = capsys.readouterr()
    return code, out, err


def config(*argv: str, env: Mapping[str, str] | None = None) -> RouterConfig:
    return build_config(parse_args(["launch", *argv]), env or {})


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(("argv", "message"), [
    (["--port", "70000"], "--port: 70000 is not a port (1-65535)"),
    (["--port", "0"], "--port: 0 is not a port (1-65535)"),
    (["--port", "http"], "--port: http is not a port (1-65535)"),
    (["--password", ""], "--password: must not be empty"),
    (["--trusted-subnets", "10.0.0.0/8,nonsense"],
     "--trusted-subnets: nonsense is not a CIDR (like 10.0.0.0/8)"),
    (["--trusted-subnets", "10.0.0.1"], "--trusted-subnets: 10.0.0.1 is not a CIDR"),
    (["--trusted-subnets", "10.0.0.0/33"], "--trusted-subnets: 10.0.0.0/33 is not a CIDR"),
    (["--trusted-subnets", "10.0.0.0/8,"], "--trusted-subnets: (empty) is not a CIDR"),
    (["--host", "my-host"], "--host: my-host is not an IP address"),
    (["--host", "10.0.0.300"], "--host: 10.0.0.300 is not an IP address"),
    (["--name", "12:34"], "--name: invalid peer name '12:34'"),
    (["--name", "::1::2"], "--name: invalid peer name '::1::2'"),
    (["--nickname", ""], "--nickname: '' is not 1-64 printable characters without spaces"),
    (["--nickname", "two words"], "--nickname: 'two words' is not 1-64 printable characters"),
    (["--nickname", "x" * 65], f"--nickname: '{'x' * 65}' is not 1-64 printable characters"),
    (["--conn-limit", "-5"], "--conn-limit: -5 is not a number of connections (0-10000)"),
    (["--conn-limit", "many"], "--conn-limit: many is not a number of connections"),
    (["--conn-limit", "10001"], "--conn-limit: 10001 is not a number of connections"),
    (["--http-addr", "127.0.0.1"], "--http-addr: 127.0.0.1 has no port (like 127.0.0.1:6784)"),
    (["--http-addr", "127.0.0.1:99999"], "--http-addr: 99999 is not a port (1-65535)"),
    (["--http-addr", "no host:80"], "--http-addr: no host is not an IP address or host name"),
    (["--http-addr", "[::1"], "--http-addr: [::1 is not HOST[:PORT]"),
    (["--db-path", "/"], "--db-path: / is a directory"),
    (["--db-path", ""], "--db-path: empty path"),
    (["--log-level", "verbose"],
     "--log-level: verbose is not one of debug, info, warning, error"),
    (["--resume", "10.0.0.1"], "--resume: cannot be combined with PEER arguments"),
    (["10.0.0.1:0"], "PEER 10.0.0.1:0: 0 is not a port (1-65535)"),
    (["under_score.example"], "PEER under_score.example: under_score.example is not an IP"),
    (["10.0.0.1", "[fe80::1"], "PEER [fe80::1: [fe80::1 is not HOST[:PORT]"),
    (["host:port"], "PEER host:port: port is not a port (1-65535)"),
])
def test_bad_launch_values_exit_2_with_one_line(
        argv: list[str], message: str, capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    db = tmp_path / "state" / "weave.db"
    log = tmp_path / "logs" / "weave.log"
    extra = [] if "--db-path" in argv else ["--db-path", str(db)]
    code, out, err = run(["launch", *extra, "--log-file", str(log), *argv], capsys)
    assert code == 2
    assert out == ""
    assert err.startswith(f"weave-router: error: {message}")
    assert err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_paths_under_a_file_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run(["launch", "--db-path", str(blocker / "x" / "db")], capsys)
    assert (code, err) == (2, f"weave-router: error: --db-path: {blocker} is not a directory\n")
    code, _, err = run(["launch", "--log-file", str(tmp_path)], capsys)
    assert (code, err) == (2, f"weave-router: error: --log-file: {tmp_path} is a directory\n")


@pytest.mark.parametrize(("env", "message"), [
    ({"WEAVE_PORT": "65536"}, "WEAVE_PORT: 65536 is not a port (1-65535)"),
    ({"WEAVE_HTTP_ADDR": "localhost"},
     "WEAVE_HTTP_ADDR: localhost has no port (like 127.0.0.1:6784)"),
    ({"WEAVE_ROUTER_TIMINGS": "udp_heartbeat_timeout=0"},
     "WEAVE_ROUTER_TIMINGS: udp_heartbeat_timeout=0 is not a positive number"),
    ({"WEAVE_ROUTER_TIMINGS": "udp_heartbeat_slow=20,udp_heartbeat_timeout=10"},
     "WEAVE_ROUTER_TIMINGS: udp_heartbeat_slow must be below udp_heartbeat_timeout"),
])
def test_bad_environment_values_name_the_variable(
        env: dict[str, str], message: str, capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    code, _, err = run(["launch", "--db-path", str(tmp_path / "db")], capsys, env)
    assert (code, err) == (2, f"weave-router: error: {message}\n")


def test_timings_come_from_the_environment() -> None:
    timings = config(env={"WEAVE_ROUTER_TIMINGS": " udp_heartbeat_slow=2, accept_burst=7 "}
                     ).mesh.timings
    assert (timings.udp_heartbeat_slow, timings.accept_burst) == (2.0, 7)
    assert isinstance(timings.accept_burst, int)
    assert timings.udp_heartbeat_timeout == MeshTimings().udp_heartbeat_timeout
    with pytest.raises(ConfigError, match=r"^WEAVE_ROUTER_TIMINGS: 'bogus=1' is not NAME=SECONDS "
                                          r"with NAME one of handshake_timeout, "):
        config(env={"WEAVE_ROUTER_TIMINGS": "bogus=1"})


@pytest.mark.parametrize("argv", [
    ["launch", "--bogus"],
    ["launch", "--port"],
    ["frobnicate"],
    [],
    ["status", "--replace"],
    ["forget"],
    ["report", "-f"],
    ["version", "extra"],
])
def test_usage_errors_exit_2_with_one_line(argv: list[str],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(argv, capsys)
    assert code == 2
    assert out == ""
    assert err.startswith("weave-router: error: ")
    assert err.count("\n") == 1


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["launch", "--help"], capsys)
    assert code == 0
    assert "--conn-limit" in out and "WEAVE_PASSWORD" in out


def test_version_prints_the_version_of_each_part(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["version"], capsys)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "weave-router 0.1.0"
    assert lines[1] == f"python {platform.python_version()}"
    assert lines[2] == f"trio {trio.__version__}"
    assert lines[3] == "dataplane native (compiled router._fastpath), ciphers aes256gcm secretbox"
    assert lines[4] == "dataplane reference (pure Python), ciphers aes256gcm secretbox"
    assert re.fullmatch(r"libsodium \d+\.\d+\.\d+ \(/\S+libsodium\S+\)", lines[5]), lines
    assert re.fullmatch(r"OpenSSL \d+\.\d+\.\d+.* \(/\S+libcrypto\S+\)", lines[6]), lines
    assert lines[7] == f"extension {getattr(load_backend('native'), '__file__', None)}"
    assert lines[8] == ("encryption offers aes256gcm secretbox (this CPU has AES and PCLMULQDQ)"
                        if hardware_aes() else "encryption offers secretbox (no AES in this "
                        "CPU's hardware: AES-256-GCM not offered)")
    assert len(lines) == 9


@pytest.mark.parametrize("argv", [
    ["status"], ["status", "peers"], ["report"], ["report", "-f", "{{.Router.Name}}"],
    ["connect", "10.0.0.1"], ["connect", "--replace"], ["forget", "10.0.0.1"], ["stop"],
])
def test_commands_say_when_the_router_is_not_running(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    code, out, err = run([*argv, "--http-addr", f"127.0.0.1:{port}"], capsys)
    assert (code, out) == (1, "")
    assert err == f"weave-router is not running (no answer on 127.0.0.1:{port})\n"


def test_http_addr_comes_from_the_environment(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    code, _, err = run(["status"], capsys, {"WEAVE_HTTP_ADDR": f"127.0.0.1:{port}"})
    assert (code, err) == (1, f"weave-router is not running (no answer on 127.0.0.1:{port})\n")
    code, _, err = run(["status"], capsys, {"WEAVE_HTTP_ADDR": "127.0.0.1:http"})
    assert (code, err) == (2, "weave-router: error: WEAVE_HTTP_ADDR: http is not a port "
                              "(1-65535)\n")


def test_connect_and_forget_check_peers_before_asking(capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    port = free_port()
    code, _, err = run(["connect", "10.0.0.1:70000", "--http-addr", f"127.0.0.1:{port}"], capsys)
    assert (code, err) == (2, "weave-router: error: PEER 10.0.0.1:70000: 70000 is not a port "
                              "(1-65535)\n")
    code, _, err = run(["forget", "a b", "--http-addr", f"127.0.0.1:{port}"], capsys)
    assert code == 2 and err.startswith("weave-router: error: PEER a b:")


def test_bad_template_fails_before_asking_the_router(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["report", "-f", "{{range .X}}", "--http-addr", "127.0.0.1:1"], capsys)
    assert (code, err) == (1, "weave-router: error: report -f: missing {{end}}\n")


# --- valid launch flags -> RouterConfig ------------------------------------------------

def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "host1")
    assert config() == RouterConfig(
        mesh=MeshConfig(nickname="host1", conn_limit=DEFAULT_CONN_LIMIT),
        db_path=DEFAULT_DB_PATH, log_file=DEFAULT_LOG_FILE, log_level="info",
        http_addr=("127.0.0.1", 6784), api_socket=DEFAULT_API_SOCKET,
    )
    assert config("--foreground").log_file is None  # stderr


def test_every_flag(tmp_path: Path) -> None:
    got = config(
        "--password", "s3cret", "--trusted-subnets", "10.0.0.0/8, 192.168.1.7/24",
        "--host", "192.168.48.11", "--port", "7783", "--name", "::1", "--nickname", "h1",
        "--no-discovery", "--conn-limit", "0", "--http-addr", "[::1]:7784",
        "--db-path", str(tmp_path / "w.db"), "--log-file", str(tmp_path / "w.log"),
        "--log-level", "DEBUG", "--no-restart", "--foreground",
        "192.168.48.12", "host3:7783", "[fe80::1]:7783", "fe80::2",
    )
    assert got == RouterConfig(
        mesh=MeshConfig(
            name=PeerName(1), nickname="h1", host="192.168.48.11", port=7783,
            password=b"s3cret",
            trusted_subnets=(ipaddress.ip_network("10.0.0.0/8"),
                             ipaddress.ip_network("192.168.1.0/24")),
            peers=("192.168.48.12", "host3:7783", "[fe80::1]:7783", "fe80::2"),
            discovery=False, conn_limit=0,
        ),
        db_path=tmp_path / "w.db", log_file=tmp_path / "w.log", log_level="debug",
        http_addr=("::1", 7784), api_socket=tmp_path / "w.sock",
    )


def test_resume_without_peers() -> None:
    assert config("--resume").mesh.resume is True


def test_relative_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    got = config("--db-path", "w.db", "--log-file", "logs/w.log")
    assert (got.db_path, got.log_file) == (tmp_path / "w.db", tmp_path / "logs" / "w.log")


def test_environment_variables() -> None:
    env = {"WEAVE_PASSWORD": "pw", "WEAVE_PORT": "7000", "WEAVE_HTTP_ADDR": "127.0.0.2:7001"}
    got = config(env=env)
    assert (got.mesh.password, got.mesh.port, got.http_addr) == (b"pw", 7000, ("127.0.0.2", 7001))
    flags = config("--password", "other", "--port", "7002", "--http-addr", "127.0.0.1:7003",
                   env=env)
    assert (flags.mesh.password, flags.mesh.port, flags.http_addr) == (
        b"other", 7002, ("127.0.0.1", 7003))
    assert config(env={"WEAVE_PASSWORD": ""}).mesh.password is None


@given(
    password=st.none() | st.text(alphabet="abcXYZ019 !$", max_size=20).map(lambda t: "pw-" + t),
    port=st.integers(1, 65535),
    name=st.none() | st.integers(1, 2**48 - 1).map(PeerName),
    discovery=st.booleans(), resume=st.booleans(),
    conn_limit=st.integers(0, 10_000),
    subnets=st.lists(st.sampled_from(["10.0.0.0/8", "192.168.0.0/16", "fd00::/8"]),
                     max_size=3, unique=True),
    peers=st.lists(st.sampled_from(["10.0.0.1", "h2:6783", "[fe80::1]:1", "-x.example"]),
                   max_size=3),
    level=st.sampled_from(["debug", "info", "warning", "error"]),
    log_file=st.none() | st.just(Path("/var/tmp/w.log")),
)
def test_child_argv_and_environment_rebuild_the_same_config(
        password: str | None, port: int, name: PeerName | None, discovery: bool,
        resume: bool, conn_limit: int, subnets: list[str], peers: list[str], level: str,
        log_file: Path | None) -> None:
    original = RouterConfig(
        mesh=MeshConfig(name=name, nickname="h1", host="0.0.0.0", port=port,
                        password=None if password is None else password.encode(),
                        trusted_subnets=tuple(ipaddress.ip_network(s) for s in subnets),
                        peers=() if resume else tuple(p for p in peers if p != "-x.example"),
                        resume=resume, discovery=discovery, conn_limit=conn_limit),
        db_path=Path("/var/tmp/w.db"), log_file=log_file, log_level=level,
        http_addr=("127.0.0.1", 6784),
    )
    argv = ["launch", "--foreground", *config_to_argv(original)]
    env = child_environment(original, {"WEAVE_PASSWORD": "stale", "OTHER": "kept"})
    assert env["OTHER"] == "kept"
    assert "--password" not in argv
    assert all(password is None or password not in arg for arg in argv)
    assert build_config(parse_args(argv), env) == original


# --- the supervisor --------------------------------------------------------------------

def test_supervisor_arguments() -> None:
    assert parse_argv(["--", "--port", "1", "--", "10.0.0.1"]) == (
        True, ["--port", "1", "--", "10.0.0.1"])
    assert parse_argv(["--no-restart", "--"]) == (False, [])
    with pytest.raises(SystemExit, match="unknown option --what"):
        parse_argv(["--what", "--"])


def test_restart_policy_stops_on_clean_exit_config_error_and_stop_request() -> None:
    assert RestartPolicy().after_exit(0, 100.0, stopping=False) is None
    assert RestartPolicy().after_exit(2, 100.0, stopping=False) is None
    assert RestartPolicy().after_exit(-9, 100.0, stopping=True) is None
    assert RestartPolicy(restart=False).after_exit(-9, 100.0, stopping=False) is None


def test_restart_policy_treats_an_early_first_failure_as_a_failed_launch() -> None:
    assert RestartPolicy().after_exit(1, STARTUP_GRACE / 2, stopping=False) is None
    assert RestartPolicy().after_exit(1, STARTUP_GRACE + 1, stopping=False) == 1.0
    assert RestartPolicy().after_exit(-9, 0.1, stopping=False) == 1.0  # killed: a crash


def test_restart_policy_backs_off_and_resets_after_a_stable_run() -> None:
    policy = RestartPolicy()
    delays = [policy.after_exit(-9, 1.0, stopping=False) for _ in range(8)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, BACKOFF_MAX, BACKOFF_MAX, BACKOFF_MAX]
    assert policy.after_exit(1, STABLE_AFTER, stopping=False) == 1.0
    assert policy.after_exit(1, 1.0, stopping=False) == 2.0


def test_exit_descriptions() -> None:
    assert describe_exit(1) == "exit code 1"
    assert describe_exit(-9) == "signal SIGKILL"
    assert (exit_status(-15), exit_status(3)) == (143, 3)


def test_last_error_finds_the_error_written_after_the_offset(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    log.write_text("2024-01-01 10:00:00,000 ERROR a b: an old error\n")
    offset = log.stat().st_size
    with log.open("a") as f:
        f.write("2024-01-01 10:00:01,000 INFO 5a:00:00:00:00:01(h1) weave-router: starting\n"
                "2024-01-01 10:00:01,001 ERROR 5a:00:00:00:00:01(h1) weave-router: "
                "--db-path: cannot use /x: file is not a database\n"
                "2024-01-01 10:00:01,002 INFO - weave-router.supervisor: not restarting\n")
    assert last_error(log, offset) == "--db-path: cannot use /x: file is not a database"
    with log.open("a") as f:
        f.write("    | OSError: [Errno 98] Address already in use\n")
    assert last_error(log, offset) == "OSError: [Errno 98] Address already in use"
    assert last_error(log, log.stat().st_size) == "no log output"
    assert last_error(tmp_path / "missing.log", 0).startswith("cannot read")


def test_a_restart_resumes_the_persisted_targets_instead_of_the_launch_peers() -> None:
    from cli.supervise import resume_flags

    assert resume_flags(["--port", "6783", "--", "10.0.0.1", "10.0.0.2"]) == [
        "--port", "6783", "--resume"]
    assert resume_flags(["--resume", "--"]) == ["--resume"]


# --- issue 10: -h, commands not in this version, bounds, empty --ipalloc-range ---------

def test_attach_h_is_the_hostname_and_help_stays(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse_args(["attach", "-h", "foo.weave.local", "c1"])
    assert (args.hostname, args.args) == ("foo.weave.local", ["c1"])
    args = parse_args(["attach", "ip:10.32.1.1/12", "c1", "-h", "foo.weave.local"])
    assert (args.hostname, args.args) == ("foo.weave.local", ["ip:10.32.1.1/12", "c1"])
    code, out, _ = run(["attach", "--help"], capsys)
    assert code == 0 and "-h FQDN" in out
    code, out, err = run(["attach", "-h", "not a name!", "c1"], capsys)
    assert (code, out) == (2, "")
    assert err == "weave-router: error: argument -h: 'not a name!' is not a host name (like " \
                  "foo.weave.local)\n"


@pytest.mark.parametrize(("argv", "says"), [
    (["setup"], "setup: "),
    (["env"], "DOCKER_HOST"),
    (["launch-dns"], "DNS is part of launch in Weave 2.x"),
    (["launch-proxy"], "removed in Weave 2.0"),
    (["--http-addr", "127.0.0.1:1", "setup"], "setup: "),
])
def test_weave_commands_not_in_this_version_say_so(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(argv, capsys)
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and says in err, err
    assert "invalid choice" not in err
    assert "not in this version" in err or "not applicable" in err or "instead" in err, err


@pytest.mark.parametrize(("argv", "says"), [
    (["dns-add", "10.32.0.300", "c1"], "'10.32.0.300' is not an IPv4 address"),
    (["dns-add", "10.32.0.1", "-h", "bad name!"], "-h bad name!: not a host name"),
    (["dns-add", "10.32.0.1"], "give a CONTAINER, or -h FQDN"),
    (["dns-remove", "x", "c1"], "'x' is not an IPv4 address"),
])
def test_dns_commands_check_input_before_asking(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run([*argv, "--http-addr", f"127.0.0.1:{free_port()}"], capsys)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and says in err, err


def test_help_command_prints_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["help"], capsys)
    assert code == 0 and "attach" in out and "launch" in out
    code, out, _ = run(["help", "attach"], capsys)
    assert code == 0 and "-h FQDN" in out
    code, out, err = run(["help", "frobnicate"], capsys)
    assert (code, out) == (2, "")
    assert err.startswith("weave-router: error: help: argument COMMAND: invalid choice: "
                          "'frobnicate'"), err
    code, out, _ = run(["help", "launch-proxy"], capsys)
    assert code == 0 and "removed in Weave 2.0" in out
    code, out, _ = run(["help", "dns-add"], capsys)
    assert code == 0 and "-h FQDN" in out
    code, out, _ = run(["help", "expose"], capsys)
    assert code == 0 and "--without-masquerade" in out


def test_http_addr_before_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    code, _, err = run(["--http-addr", f"127.0.0.1:{port}", "status"], capsys)
    assert (code, err) == (1, f"weave-router is not running (no answer on 127.0.0.1:{port})\n")
    assert config_from(["--http-addr", "127.0.0.1:7000", "launch"]).http_addr == \
        ("127.0.0.1", 7000)
    assert config_from(["--http-addr", "127.0.0.1:7000", "launch", "--http-addr",
                        "127.0.0.1:7001"]).http_addr == ("127.0.0.1", 7001)


def config_from(argv: list[str]) -> RouterConfig:
    from cli.main import merge_global_flags

    return build_config(merge_global_flags(parse_args(argv)), {})


@pytest.mark.parametrize(("argv", "message"), [
    (["--ipalloc-init", "consensus=99999999999999999999"],
     "--ipalloc-init: consensus=99999999999999999999 is not a peer count (1-10000)"),
    (["--init-peer-count", "99999999999999999999"],
     "--init-peer-count: 99999999999999999999 is not a count of peers (1-10000)"),
    (["--init-peer-count", "10001"], "--init-peer-count: 10001 is not a count of peers"),
    (["--name", "00:00:00:00:00:00"],
     "--name: 00:00:00:00:00:00 is Weave's unknown-peer name; pick another"),
    (["--name", "::0"], "--name: ::0 is Weave's unknown-peer name; pick another"),
])
def test_out_of_bound_ipam_and_name_values_are_refused(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["launch", "--db-path", str(tmp_path / "db"), *argv], capsys)
    assert (code, out) == (2, "")
    assert err.startswith(f"weave-router: error: {message}"), err
    assert err.count("\n") == 1


def test_empty_ipalloc_range_disables_ipam() -> None:
    cfg = config("--ipalloc-range", "")
    assert cfg.ipalloc_range is None
    assert config_to_argv(cfg)[config_to_argv(cfg).index("--ipalloc-range") + 1] == ""
    assert build_config(parse_args(["launch", *config_to_argv(cfg)]), {}) == cfg
    assert config("--init-peer-count", "10000").ipalloc_init == "consensus=10000"


def test_rmpeer_and_attach_name_what_is_wrong(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    code, _, err = run(["rmpeer", "", "--http-addr", f"127.0.0.1:{port}"], capsys)
    assert (code, err) == (2, "weave-router: error: rmpeer: empty PEER_ID (give a peer name "
                              "or nickname)\n")
    code, _, err = run(["attach", "ip:banana", "c1", "--http-addr", f"127.0.0.1:{port}"], capsys)
    assert code == 2
    assert err == "weave-router: error: address 'ip:banana' is not an IPv4 address with a " \
                  "prefix length, like ip:10.32.1.1/12\n"


def test_no_fastdp_from_the_flag_or_the_environment() -> None:
    assert config().no_fastdp is False
    assert config("--no-fastdp").no_fastdp is True
    assert config(env={"WEAVE_NO_FASTDP": "1"}).no_fastdp is True
    assert config(env={"WEAVE_NO_FASTDP": ""}).no_fastdp is False
    assert "--no-fastdp" in config_to_argv(config("--no-fastdp"))
    assert "--no-fastdp" not in config_to_argv(config())
