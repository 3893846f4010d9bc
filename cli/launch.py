"""``weave-router launch``: flags and environment -> :class:`RouterConfig`, then run it.

Every value is checked here, before anything is created: a bad one is a
:class:`~router.errors.ConfigError` whose one-line message names the flag (or the
environment variable) and the value, and the command exits 2.

Before either way, the database is read without changing it (``router/resume.py``):
``--resume`` takes the recorded range, default subnet and encryption; what a relaunch
discards or changes is one line on stderr; a corrupt database is refused in one line.

Two ways to run:

* ``--foreground``: :func:`router.daemon.run` in this process (systemd ``Type=notify``
  units and container images use this). Logs go to stderr unless ``--log-file``.
* detached (the default):

  1. refuse if a router already answers on the API address;
  2. start the supervisor (``python -m cli.supervise``) in a new session, stdin from
     ``/dev/null``, stdout and stderr appended to the log file; it runs
     ``launch --foreground`` with the same (normalised) settings and restarts it after a
     crash unless ``--no-restart``; the password travels in ``WEAVE_PASSWORD``, never on
     a command line;
  3. poll ``GET /status`` until it answers 200 (then print the peer name from
     ``/report`` and exit 0), or the supervisor exits (print the last error of the log,
     exit 1), or :data:`READY_TIMEOUT` passes (stop the supervisor, exit 1).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path

from cli import dns_flags, metrics_flags
from cli.client import (
    ENV_SOCKET,
    ApiClient,
    ApiUnreachable,
    default_http_addr,
    format_addr,
    parse_host,
    parse_port,
    split_host_port,
)
from router.config import (
    DEFAULT_DB_PATH,
    DEFAULT_IPALLOC_RANGE,
    DEFAULT_LOG_FILE,
    DEFAULT_MTU,
    DEFAULT_PORT,
    IPNetwork,
    MeshConfig,
    MeshTimings,
    RouterConfig,
    default_api_socket,
)
from router.dataplane.backend import BACKENDS
from router.errors import ConfigError, RouterError
from router.ipam import parse_init_mode, parse_subnet
from router.mesh.names import PeerName

ENV_PASSWORD = "WEAVE_PASSWORD"
ENV_PORT = "WEAVE_PORT"
ENV_HTTP_ADDR = "WEAVE_HTTP_ADDR"
ENV_MTU = "WEAVE_MTU"
ENV_TIMINGS = "WEAVE_ROUTER_TIMINGS"  # NAME=SECONDS,...: the mesh's timers (docs/cli.md)
ENV_NO_FASTDP = "WEAVE_NO_FASTDP"  # any non-empty value: as --no-fastdp
MIN_MTU, MAX_MTU = 576, 65535  # bytes: IPv4's minimum datagram size; the largest frame
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_CONN_LIMIT = 200
MAX_CONN_LIMIT = 10_000
MAX_NICKNAME = 64  # characters
MAX_PEERS = 10_000  # PEER arguments
MAX_INIT_PEER_COUNT = 10_000  # --init-peer-count / consensus=N: IPAM waits for N/2+1 peers
UNKNOWN_PEER_NAME = 0  # 00:00:00:00:00:00: Weave's "unknown peer" (mesh.UnknownPeerName)

READY_TIMEOUT = 30.0  # seconds a detached launch waits for GET /status to answer 200
POLL_INTERVAL = 0.1  # seconds between polls
PROBE_TIMEOUT = 2.0  # seconds for one poll request
LOG_TAIL_BYTES = 64 * 1024  # how much of the log is searched for the error after a failure
_TRACEBACK_DECORATION = re.compile(r"^[|+\-\s]+")  # exception group tracebacks: "  | Err: x"
_LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d[ T][\d:.,]+\s+(ERROR|CRITICAL)\s+\S+\s+\S+:\s+")


class LaunchError(RouterError):
    """The router could not be started (already running, crashed at start, too slow)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``launch`` (values are validated by :func:`build_config`, not here)."""
    add = parser.add_argument
    add("--password", metavar="P", help=f"encrypt the mesh with this password [{ENV_PASSWORD}]")
    add("--trusted-subnets", metavar="CIDR,...", help="peers here may skip encryption")
    add("--host", metavar="IP", help="address to listen on for peers (default all)")
    add("--port", metavar="PORT", help=f"TCP and UDP port for peers (6783) [{ENV_PORT}]")
    add("--name", metavar="MAC", help="peer name, like 01:23:45:67:89:ab or ::1")
    add("--nickname", metavar="NAME", help="peer nickname (default: the host name)")
    add("--resume", action="store_true", help="connect to the persisted targets")
    add("--no-discovery", action="store_true", help="only connect to the given targets")
    add("--conn-limit", metavar="N", help=f"most connections (default {DEFAULT_CONN_LIMIT})")
    add("--http-addr", metavar="HOST:PORT",
        help=f"control API address (127.0.0.1:6784) [{ENV_HTTP_ADDR}]")
    add("--metrics-addr", "--status-addr", dest="metrics_addr", metavar="HOST:PORT",
        help=metrics_flags.HELP)
    add("--socket", metavar="PATH",
        help="control API unix socket, root only (default /run/weave-router/weave.sock, or "
             f"<db-path without suffix>.sock with --db-path; '' for none) [{ENV_SOCKET}]")
    add("--ipalloc-range", metavar="CIDR",
        help=f"range containers get addresses from (default {DEFAULT_IPALLOC_RANGE})")
    add("--ipalloc-default-subnet", metavar="CIDR",
        help="subnet of `attach` without net: (default: the whole range)")
    add("--ipalloc-init", metavar="MODE",
        help="consensus[=COUNT] (default), seed=NAME,... or observer")
    add("--init-peer-count", metavar="N", help="same as --ipalloc-init consensus=N")
    add("--mtu", metavar="BYTES",
        help=f"MTU of the bridge and containers (default {DEFAULT_MTU}) [{ENV_MTU}]")
    add("--no-fastdp", action="store_true",
        help=f"keep traffic on the sleeve: no kernel VXLAN (fastdp) [{ENV_NO_FASTDP}]")
    add("--dataplane", metavar="NAME", choices=BACKENDS,
        help="'native' (default) or 'reference', the pure-Python twin (~100x slower)")
    dns_flags.add_arguments(parser)
    add("--db-path", metavar="PATH", help=f"database file (default {DEFAULT_DB_PATH})")
    add("--log-file", metavar="PATH",
        help=f"log file (default {DEFAULT_LOG_FILE}; stderr with --foreground)")
    add("--log-level", metavar="LEVEL", help="debug, info (default), warning or error")
    add("--no-restart", action="store_true", help="do not restart the router after a crash")
    add("--foreground", action="store_true", help="run in this process (systemd, containers)")
    add("peers", nargs="*", metavar="PEER", help="HOST[:PORT] of peers to connect to")


def parse_peer(text: str, flag: str = "PEER") -> str:
    """Check one ``HOST[:PORT]`` target; returned unchanged."""
    if not text:
        raise ConfigError(f"{flag}: empty peer address")
    flag = f"{flag} {text}"
    host, port = split_host_port(text, flag)
    parse_host(host, flag)
    if port is not None:
        parse_port(port, flag)
    return text


def _password(value: str | None, env: Mapping[str, str]) -> bytes | None:
    if value is not None:
        if not value:
            raise ConfigError("--password: must not be empty")
        return os.fsencode(value)
    from_env = env.get(ENV_PASSWORD, "")
    return os.fsencode(from_env) if from_env else None


def _subnets(value: str | None) -> tuple[IPNetwork, ...]:
    if value is None:
        return ()
    subnets: list[IPNetwork] = []
    for item in value.split(","):
        item = item.strip()
        try:
            if "/" not in item:
                raise ValueError(item)
            subnets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(
                f"--trusted-subnets: {item or '(empty)'} is not a CIDR (like 10.0.0.0/8)"
            ) from None
    return tuple(subnets)


def _listen_host(value: str | None) -> str:
    if value is None:
        return MeshConfig().host
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ConfigError(f"--host: {value or '(empty)'} is not an IP address") from None


def _port(value: str | None, env: Mapping[str, str]) -> int:
    if value is not None:
        return parse_port(value, "--port")
    if env.get(ENV_PORT):
        return parse_port(env[ENV_PORT], ENV_PORT)
    return DEFAULT_PORT


def _name(value: str | None) -> PeerName | None:
    if value is None:
        return None
    try:
        name = PeerName.parse(value)
    except ConfigError as exc:
        raise ConfigError(f"--name: {exc}") from None
    if int(name) == UNKNOWN_PEER_NAME:
        raise ConfigError(f"--name: {value} is Weave's unknown-peer name; pick another")
    return name


def _nickname(value: str | None) -> str:
    nickname = socket.gethostname() if value is None else value
    if not nickname or len(nickname) > MAX_NICKNAME or not nickname.isprintable() or any(
        char.isspace() for char in nickname
    ):
        raise ConfigError(
            f"--nickname: {nickname!r} is not 1-{MAX_NICKNAME} printable characters "
            "without spaces"
        )
    return nickname


def _conn_limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_CONN_LIMIT
    if not value.isdigit() or int(value) > MAX_CONN_LIMIT:
        raise ConfigError(f"--conn-limit: {value} is not a number of connections "
                          f"(0-{MAX_CONN_LIMIT})")
    return int(value)


def _file(value: str | None, flag: str, default: Path | None) -> Path | None:
    """A file path: not a directory, and its parent (if it exists) a directory."""
    if value is None:
        return default
    if not value.strip():
        raise ConfigError(f"{flag}: empty path")
    path = Path(value).absolute()
    if path.is_dir():
        raise ConfigError(f"{flag}: {value} is a directory")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{flag}: {parent} is not a directory")
            break
    return path


def _mtu(value: str | None, env: Mapping[str, str]) -> int:
    flag = "--mtu"
    if value is None and env.get(ENV_MTU):
        value, flag = env[ENV_MTU], ENV_MTU
    if value is None:
        return DEFAULT_MTU
    if not value.isdigit() or not MIN_MTU <= int(value) <= MAX_MTU:
        raise ConfigError(f"{flag}: {value} is not an MTU ({MIN_MTU}-{MAX_MTU} bytes)")
    return int(value)


def _timings(env: Mapping[str, str]) -> MeshTimings:
    """``WEAVE_ROUTER_TIMINGS=udp_heartbeat_timeout=10,...``: timers other than the defaults.

    Not a Weave setting: for tests that must outlive a timeout, and for operators who
    want a dead path noticed sooner. Each name is a :class:`MeshTimings` field."""
    text = env.get(ENV_TIMINGS, "").strip()
    if not text:
        return MeshTimings()
    kinds = {f.name: str(f.type) for f in fields(MeshTimings)}  # "float" or "int"
    values: dict[str, float | int] = {}
    for item in text.split(","):
        name, sep, raw = item.strip().partition("=")
        if not sep or name not in kinds:
            raise ConfigError(f"{ENV_TIMINGS}: {item.strip()!r} is not NAME=SECONDS with NAME "
                              f"one of {', '.join(kinds)}")
        try:
            value = int(raw) if kinds[name] == "int" else float(raw)
        except ValueError:
            value = -1
        if not 0 < value < 1e6:
            raise ConfigError(f"{ENV_TIMINGS}: {name}={raw} is not a positive number")
        values[name] = value
    timings = replace(MeshTimings(), **values)  # type: ignore[arg-type]
    if timings.udp_heartbeat_slow >= timings.udp_heartbeat_timeout:
        raise ConfigError(f"{ENV_TIMINGS}: udp_heartbeat_slow must be below "
                          "udp_heartbeat_timeout")
    return timings


def _ipam(args: argparse.Namespace) -> dict[str, object]:
    """The IPAM flags, each checked with Weave's messages."""
    if args.init_peer_count is not None and args.ipalloc_init is not None:
        raise ConfigError("--init-peer-count: cannot be combined with --ipalloc-init")
    init = args.ipalloc_init or "consensus"
    if args.init_peer_count is not None:
        if not _peer_count(args.init_peer_count):
            raise ConfigError(f"--init-peer-count: {args.init_peer_count} is not a count of "
                              f"peers (1-{MAX_INIT_PEER_COUNT})")
        init = f"consensus={int(args.init_peer_count)}"
    kind, sep, count = init.strip().partition("=")
    if kind == "consensus" and sep and count.isdigit() and not _peer_count(count):
        raise ConfigError(f"--ipalloc-init: consensus={count} is not a peer count "
                          f"(1-{MAX_INIT_PEER_COUNT})")
    parse_init_mode(init)
    if args.ipalloc_range == "":  # Weave: an empty range runs the router without IPAM
        if args.ipalloc_default_subnet:
            raise ConfigError("--ipalloc-default-subnet: needs IPAM, which "
                              "--ipalloc-range '' disables")
        return {"ipalloc_range": None, "ipalloc_default_subnet": None, "ipalloc_init": init}
    universe = (parse_subnet(args.ipalloc_range, what="--ipalloc-range")
                if args.ipalloc_range else DEFAULT_IPALLOC_RANGE)
    default = None
    if args.ipalloc_default_subnet:
        default = parse_subnet(args.ipalloc_default_subnet, what="--ipalloc-default-subnet")
        if not default.subnet_of(universe):
            raise ConfigError(f"--ipalloc-default-subnet: {default} is not inside "
                              f"--ipalloc-range {universe}")
    return {"ipalloc_range": universe, "ipalloc_default_subnet": default, "ipalloc_init": init}


def _peer_count(text: str) -> bool:
    """True for a count of peers IPAM can wait for (``1``-:data:`MAX_INIT_PEER_COUNT`)."""
    return text.isdigit() and len(text) <= 6 and 1 <= int(text) <= MAX_INIT_PEER_COUNT


def _log_level(value: str | None) -> str:
    if value is None:
        return "info"
    if value.lower() not in LOG_LEVELS:
        raise ConfigError(f"--log-level: {value} is not one of {', '.join(LOG_LEVELS)}")
    return value.lower()


def _api_socket(value: str | None, env: Mapping[str, str], db_path: Path) -> Path | None:
    """``--socket`` (``''``: none), else ``WEAVE_SOCKET``, else derived from ``--db-path``."""
    flag = "--socket"
    if value is None and env.get(ENV_SOCKET):
        value, flag = env[ENV_SOCKET], ENV_SOCKET
    if value is None:
        return default_api_socket(db_path)
    if not value:
        return None
    return _file(value, flag, None)


def build_config(args: argparse.Namespace, env: Mapping[str, str]) -> RouterConfig:
    """Check every launch flag (and WEAVE_* variables) and build the router's config."""
    peers: list[str] = list(args.peers)
    if args.resume and peers:
        raise ConfigError("--resume: cannot be combined with PEER arguments "
                          "(it uses the persisted targets)")
    if len(peers) > MAX_PEERS:
        raise ConfigError(f"PEER: {len(peers)} peers given, at most {MAX_PEERS}")
    mesh = MeshConfig(
        name=_name(args.name),
        nickname=_nickname(args.nickname),
        host=_listen_host(args.host),
        port=_port(args.port, env),
        password=_password(args.password, env),
        trusted_subnets=_subnets(args.trusted_subnets),
        peers=tuple(parse_peer(peer) for peer in peers),
        resume=bool(args.resume),
        discovery=not args.no_discovery,
        conn_limit=_conn_limit(args.conn_limit),
        timings=_timings(env),
    )
    db_path = _file(args.db_path, "--db-path", DEFAULT_DB_PATH) or DEFAULT_DB_PATH
    return RouterConfig(
        mesh=mesh,
        db_path=db_path,
        api_socket=_api_socket(args.socket, env, db_path),
        log_file=_file(args.log_file, "--log-file", None if args.foreground else DEFAULT_LOG_FILE),
        log_level=_log_level(args.log_level),
        http_addr=default_http_addr(args.http_addr, env.get(ENV_HTTP_ADDR)),
        metrics_addr=metrics_flags.metrics_addr(args.metrics_addr, env),
        mtu=_mtu(args.mtu, env),
        dataplane=args.dataplane or "native",
        dns=dns_flags.build(args),
        no_fastdp=bool(getattr(args, "no_fastdp", False) or env.get(ENV_NO_FASTDP)),
        **_ipam(args),  # type: ignore[arg-type]
    )


def config_to_argv(config: RouterConfig) -> list[str]:
    """``launch`` flags that rebuild ``config`` (all but the password), PEERs after ``--``."""
    mesh = config.mesh
    argv = ["--host", mesh.host, "--port", str(mesh.port), "--nickname", mesh.nickname,
            "--conn-limit", str(mesh.conn_limit), "--db-path", str(config.db_path),
            "--log-level", config.log_level, "--mtu", str(config.mtu),
            "--dataplane", config.dataplane,
            "--ipalloc-range", "" if config.ipalloc_range is None else str(config.ipalloc_range),
            "--ipalloc-init", config.ipalloc_init, *dns_flags.to_argv(config.dns)]
    if config.ipalloc_default_subnet is not None:
        argv += ["--ipalloc-default-subnet", str(config.ipalloc_default_subnet)]
    if config.http_addr is not None:
        argv += ["--http-addr", format_addr(config.http_addr)]
    argv += ["--socket", "" if config.api_socket is None else str(config.api_socket)]
    argv += ["--metrics-addr",
             "" if config.metrics_addr is None else format_addr(config.metrics_addr)]
    if mesh.name is not None:
        argv += ["--name", str(mesh.name)]
    if mesh.trusted_subnets:
        argv += ["--trusted-subnets", ",".join(str(net) for net in mesh.trusted_subnets)]
    if mesh.resume:
        argv.append("--resume")
    if not mesh.discovery:
        argv.append("--no-discovery")
    if config.no_fastdp:
        argv.append("--no-fastdp")
    if config.log_file is not None:
        argv += ["--log-file", str(config.log_file)]
    return [*argv, "--", *mesh.peers]


def child_environment(config: RouterConfig, env: Mapping[str, str]) -> dict[str, str]:
    """The environment of the supervisor: ours, with the password (or none) in WEAVE_PASSWORD."""
    child = dict(env)
    child.pop(ENV_PASSWORD, None)
    if config.mesh.password is not None:
        child[ENV_PASSWORD] = os.fsdecode(config.mesh.password)
    return child


def run_foreground(config: RouterConfig) -> int:
    """Run the router in this process until it stops; its exit code."""
    from router import daemon  # the daemon pulls in trio and every service: only now

    return daemon.run(config)


def _answers(client: ApiClient) -> bool:
    try:
        client.get("/status")
    except ApiUnreachable:
        return False
    return True


def last_error(log_file: Path, offset: int) -> str:
    """The last error line the log got after ``offset`` (without its time and level)."""
    try:
        with log_file.open("rb") as log:
            size = log.seek(0, os.SEEK_END)
            log.seek(max(offset, size - LOG_TAIL_BYTES))
            lines = [line.strip() for line in log.read().decode("utf-8", "replace").splitlines()]
    except OSError as exc:
        return f"cannot read {log_file}: {exc.strerror}"
    lines = [line for line in lines if line]
    if not lines:
        return "no log output"
    errors = [line for line in lines if _LOG_PREFIX.match(line) or "error" in line.lower()]
    line = (errors or lines)[-1]
    return _LOG_PREFIX.sub("", _TRACEBACK_DECORATION.sub("", line))


def _spawn_supervisor(config: RouterConfig, *, no_restart: bool,
                      env: Mapping[str, str]) -> tuple[subprocess.Popen[bytes], Path, int]:
    log_file = config.log_file or DEFAULT_LOG_FILE
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log = log_file.open("ab")
    except OSError as exc:
        raise LaunchError(f"--log-file: cannot open {log_file}: {exc.strerror}") from exc
    with log:
        offset = log.seek(0, os.SEEK_END)
        command = [sys.executable, "-m", "cli.supervise"]
        command += ["--no-restart"] if no_restart else []
        command += ["--", *config_to_argv(config)]
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/",
            env=child_environment(config, env), start_new_session=True, close_fds=True,
        )
    return process, log_file, offset


def router_name(addr: tuple[str, int], deadline: float) -> str:
    """The peer name in the report of the router that just answered ``/status``. On a busy
    host the first report can take longer than a poll: asked again, each time with what is
    left of the launch's time (at least :data:`PROBE_TIMEOUT`), until ``deadline``."""
    while True:
        client = ApiClient(addr, timeout=max(PROBE_TIMEOUT, deadline - time.monotonic()))
        try:
            response = client.get("/report")
        except ApiUnreachable as exc:
            problem = str(exc)
        else:
            if response.status == 200:
                try:
                    return str(json.loads(response.body)["Router"]["Name"])
                except (ValueError, KeyError, TypeError) as exc:
                    raise LaunchError(f"the router started but its report is unreadable: "
                                      f"{exc}") from exc
            problem = f"HTTP {response.status}"  # busy (503): ask again
        if time.monotonic() >= deadline:
            raise LaunchError(f"the router started but gave no report within "
                              f"{READY_TIMEOUT:g} s: {problem}")
        time.sleep(POLL_INTERVAL)


def run_detached(config: RouterConfig, *, no_restart: bool, env: Mapping[str, str]) -> int:
    """Start the supervised router in the background; wait until it serves; print its name."""
    assert config.http_addr is not None
    addr = format_addr(config.http_addr)
    client = ApiClient(config.http_addr, timeout=PROBE_TIMEOUT)
    if _answers(client):
        raise LaunchError(f"weave-router is already running (answering on {addr})")
    process, log_file, offset = _spawn_supervisor(config, no_restart=no_restart, env=env)
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if process.poll() is not None:
            raise LaunchError(f"the router did not start: {last_error(log_file, offset)} "
                              f"(log: {log_file})")
        try:
            if client.get("/status").status == 200:
                break
        except ApiUnreachable:
            pass
        if time.monotonic() >= deadline:
            process.terminate()  # the supervisor passes it on to the router
            raise LaunchError(f"the router did not answer on {addr} within "
                              f"{READY_TIMEOUT:g} s (log: {log_file})")
        time.sleep(POLL_INTERVAL)
    print(router_name(config.http_addr, deadline))
    return 0


def apply_persisted(config: RouterConfig, args: argparse.Namespace) -> RouterConfig:
    """What the database says (``router/resume.py``): ``--resume`` takes the recorded
    range, default subnet and encryption; each discarded or changed thing is one line on
    stderr. Reads the database without changing it; ConfigError if it is unreadable."""
    from router import resume  # reads the store: only for launch

    config, notices = resume.resolve(
        config, resume.read_file(config.db_path),
        range_given=args.ipalloc_range is not None,
        subnet_given=args.ipalloc_default_subnet is not None,
    )
    for line in notices:
        print(f"weave-router: warning: {line}", file=sys.stderr, flush=True)
    return config


def run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """``launch``: ConfigError for a bad flag, LaunchError if the router cannot start."""
    from router.store import StoreError

    try:
        config = apply_persisted(build_config(args, env), args)
    except StoreError as exc:  # a full disk: exit 1, so the supervisor tries again later
        raise LaunchError(f"--db-path: {exc}") from exc
    if args.foreground:
        return run_foreground(config)
    return run_detached(config, no_restart=bool(args.no_restart), env=env)
