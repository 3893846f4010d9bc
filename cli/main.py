"""The ``weave-router`` command: argparse tree and one small function per command.

Commands of this milestone (cli.md has the contract)::

    weave-router launch [options] [PEER ...]
    weave-router stop
    weave-router reset
    weave-router status [targets|connections|peers|ipam|dns]
    weave-router report [-f TEMPLATE]
    weave-router connect [--replace] [PEER ...]
    weave-router forget PEER ...
    weave-router attach [ADDR ...] [-h FQDN] [--without-dns] [--no-multicast-route] CONTAINER
    weave-router detach [ADDR ...] CONTAINER
    weave-router ps [CONTAINER ...]
    weave-router prime
    weave-router rmpeer PEER_ID ...
    weave-router dns-add [IP ...] CONTAINER [-h FQDN] | dns-add IP ... -h FQDN
    weave-router dns-remove [IP ...] CONTAINER [-h FQDN] | dns-remove IP ... -h FQDN
    weave-router dns-lookup NAME
    weave-router dns-args
    weave-router setup-cni [--cni-bin-dir DIR] [--cni-conf-dir DIR]
    weave-router version
    weave-router help [COMMAND]

``-h`` is Weave's hostname flag on ``attach``, ``expose`` and ``dns-*`` (``--help`` is the
help there): the name registered in weaveDNS (default: the container's ``ip netns`` name in
the domain; ``--without-dns``: none). The DNS commands are in ``cli/dns.py``, ``expose`` and
``hide`` in ``cli/expose.py``. Weave's commands this version lacks (``launch-proxy`` ...:
:data:`cli.missing.MISSING`) say so in one line and exit 1.

Every command but ``launch`` and ``version`` talks to the router's API: over its unix
socket (``--socket``, ``WEAVE_SOCKET``; ``/run/weave-router/weave.sock`` if it exists) or
at ``--http-addr`` (``WEAVE_HTTP_ADDR``, default 127.0.0.1:6784), either given before or
after the command: ``cli/client.py``. Exit codes: 0 done; 1 the command failed (router not
running, router refused, launch failed, a command of Weave's this version lacks); 2 a usage
error (unknown flag, bad value), reported as one line ``weave-router: error: ...`` on stderr.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NoReturn

from cli import dns as dns_cli
from cli import expose, launch, setup_cni
from cli.client import (
    ApiClient,
    ApiResponse,
    ApiUnreachable,
    choose_api,
    is_hostname,
)
from cli.missing import MISSING, missing_command
from cli.template import Template, TemplateError
from router.config import DEFAULT_DB_PATH
from router.containers.addresses import parse_addrs
from router.errors import ConfigError

PROG = "weave-router"
STATUS_VIEWS = ("targets", "connections", "peers", "ipam", "dns")
STOP_TIMEOUT = 30.0  # seconds ``stop`` waits for the router to stop answering
STOP_POLL = 0.1  # seconds


class UsageError(Exception):
    """A command-line mistake found by argparse (exit 2)."""


class CommandError(Exception):
    """A command failed at run time (exit 1); ``str()`` is the line to print."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a mistake as one line instead of a usage dump."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _add_http_addr(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--http-addr", metavar="HOST:PORT",
                        help="the router's API (127.0.0.1:6784) [WEAVE_HTTP_ADDR]")
    parser.add_argument("--socket", metavar="PATH",
                        help="the router's API socket (default /run/weave-router/weave.sock "
                             "if it exists) [WEAVE_SOCKET]")


def _hostname(value: str) -> str:
    if not is_hostname(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a host name (like foo.weave.local)")
    return value


def _add_hostname(parser: argparse.ArgumentParser) -> None:
    """Weave's ``-h FQDN``; ``--help`` stays the help (the parser has ``add_help=False``)."""
    parser.add_argument("--help", action="help", help="show this help message and exit")
    parser.add_argument("-h", dest="hostname", metavar="FQDN", type=_hostname,
                        help="the container's DNS name (default: NAME.weave.local. for "
                             "an `ip netns` NAME)")


def _add_container_commands(commands: argparse._SubParsersAction[_Parser]
                            ) -> None:
    """``attach``, ``detach`` and ``ps``."""
    attach = commands.add_parser("attach", help="put a container on the weave network",
                                 add_help=False)
    _add_hostname(attach)
    attach.add_argument("--without-dns", action="store_true",
                        help="register no DNS name for the container")
    attach.add_argument("--no-multicast-route", action="store_true",
                        help="do not route 224.0.0.0/4 via ethwe")
    attach.add_argument("args", nargs="+", metavar="[ADDR ...] CONTAINER",
                        help="ADDR = [ip:]CIDR; CONTAINER = netns name, path or PID")
    _add_http_addr(attach)
    detach = commands.add_parser("detach", help="take addresses (all: the container) off")
    detach.add_argument("args", nargs="+", metavar="[ADDR ...] CONTAINER")
    _add_http_addr(detach)
    ps = commands.add_parser("ps", help="attached containers: name, MAC, CIDRs")
    ps.add_argument("containers", nargs="*", metavar="CONTAINER")
    _add_http_addr(ps)


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree."""
    parser = _Parser(prog=PROG, description="Weave Net's router, rebuilt in Python.")
    parser.add_argument("--http-addr", dest="global_http_addr", metavar="HOST:PORT",
                        help="the router's API, for any command (127.0.0.1:6784)")
    parser.add_argument("--socket", dest="global_socket", metavar="PATH",
                        help="the router's API socket, for any command")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    launch.add_arguments(commands.add_parser("launch", help="start the router on this host"))
    _add_http_addr(commands.add_parser("stop", help="stop the router"))
    reset = commands.add_parser("reset", help="stop; remove the bridge, devices and data")
    reset.add_argument("--db-path", metavar="PATH",
                       help=f"the database to remove if the router is not running "
                            f"(default {DEFAULT_DB_PATH})")
    _add_http_addr(reset)
    status = commands.add_parser("status", help="show the router's status")
    status.add_argument("view", nargs="?", choices=STATUS_VIEWS, metavar="VIEW",
                        help="targets, connections, peers, ipam or dns")
    _add_http_addr(status)
    report = commands.add_parser("report", help="the JSON report")
    report.add_argument("-f", "--format", metavar="TEMPLATE",
                        help="render with a Go-style template, e.g. '{{.Router.Name}}'")
    _add_http_addr(report)
    connect = commands.add_parser("connect", help="add connection targets")
    connect.add_argument("--replace", action="store_true", help="drop the old targets first")
    connect.add_argument("peers", nargs="*", metavar="PEER", help="HOST[:PORT]")
    _add_http_addr(connect)
    forget = commands.add_parser("forget", help="drop connection targets")
    forget.add_argument("peers", nargs="+", metavar="PEER", help="HOST[:PORT]")
    _add_http_addr(forget)
    _add_container_commands(commands)
    dns_cli.add_commands(commands, _add_http_addr)
    expose.add_commands(commands, _add_http_addr, _add_hostname)
    _add_http_addr(commands.add_parser("prime", help="wait until this peer can allocate"))
    rmpeer = commands.add_parser("rmpeer", help="take over the address space of dead peers")
    rmpeer.add_argument("peers", nargs="+", metavar="PEER_ID", help="peer name or nickname")
    rmpeer.add_argument("--force", action="store_true",
                        help="take over the space of a peer even if it is reachable now")
    _add_http_addr(rmpeer)
    setup_cni.add_arguments(commands.add_parser(
        "setup-cni", help="install the CNI plugin and 10-weave.conflist"))
    commands.add_parser("version", help="print the versions of weave-router's parts")
    help_ = commands.add_parser("help", help="print this help, or a command's")
    help_.add_argument("topic", nargs="?", metavar="COMMAND")
    for name, (summary, _) in MISSING.items():
        commands.add_parser(name, help=f"{summary} (not in this version)", add_help=False)
    return parser


def merge_global_flags(args: argparse.Namespace) -> argparse.Namespace:
    """``--http-addr`` before the command counts when none follows it."""
    if getattr(args, "http_addr", None) is None and args.global_http_addr is not None:
        args.http_addr = args.global_http_addr
    if getattr(args, "socket", None) is None and args.global_socket is not None:
        args.socket = args.global_socket
    return args


def _command_word(argv: Sequence[str]) -> str | None:
    """The command in ``argv``, skipping the options before it."""
    words = list(argv)
    while words:
        word = words.pop(0)
        if word == "--http-addr":
            words = words[1:]
        elif not word.startswith("-"):
            return word
    return None


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv`` (without the program name); UsageError on a mistake."""
    return build_parser().parse_args(list(argv))


def _client(args: argparse.Namespace, env: Mapping[str, str]) -> ApiClient:
    return choose_api(getattr(args, "http_addr", None) or args.global_http_addr,
                      getattr(args, "socket", None) or args.global_socket, env)


def _call(client: ApiClient, method: str, path: str,
          fields: Sequence[tuple[str, str]] = ()) -> ApiResponse:
    """One API request; CommandError unless it answers 200."""
    try:
        response = client.post(path, fields) if method == "POST" else client.request(method, path)
    except ApiUnreachable as exc:
        addr = exc.where
        if exc.refused:
            raise CommandError(f"{PROG} is not running (no answer on {addr})") from exc
        raise CommandError(f"{PROG} did not answer on {addr}: {exc.reason}") from exc
    if response.status != 200:
        raise CommandError(f"{PROG}: error: {response.message()}")
    return response


def cmd_launch(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """``launch``: validate, then run in the foreground or detached."""
    try:
        return launch.run(args, env)
    except launch.LaunchError as exc:
        line = str(exc)  # "weave-router is already running ..." reads best without a prefix
        raise CommandError(line if line.startswith(PROG) else f"{PROG}: error: {line}") from exc


def cmd_stop(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """``stop``: ask the router to stop, then wait until it no longer answers."""
    client = _client(args, env)
    _call(client, "POST", "/stop")
    return _wait_stopped(client)


def cmd_reset(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """``reset``: a running router removes its plumbing and data as it stops; with none
    running, this command removes them itself."""
    client = _client(args, env)
    try:
        client.post("/reset", [])
    except ApiUnreachable as exc:
        if not exc.refused:
            raise CommandError(f"{PROG}: error: the router did not answer: {exc.reason}") from exc
        from router.daemon import reset_offline  # trio and netlink: only when needed

        db_path = Path(args.db_path) if args.db_path else DEFAULT_DB_PATH
        devices, db_removed = reset_offline(db_path)
        which = "" if args.db_path else " (the default --db-path)"
        print(f"{PROG} is not running (no answer on {client.where}); reset: "
              + (f"removed {', '.join(devices)}" if devices else "no bridge or devices of ours")
              + "; " + (f"removed {db_path}{which}" if db_removed
                        else f"no database at {db_path}{which}"))
        return 0
    return _wait_stopped(client)


def _wait_stopped(client: ApiClient) -> int:
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        try:
            client.get("/status")
        except ApiUnreachable:
            return 0
        time.sleep(STOP_POLL)
    raise CommandError(f"{PROG}: error: the router still answers on "
                       f"{client.where} {STOP_TIMEOUT:g} s after stop")


def cmd_status(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """``status [VIEW]``: print the router's text layout."""
    path = "/status" if args.view is None else f"/status/{args.view}"
    sys.stdout.write(_call(_client(args, env), "GET", path).body)
    return 0


def cmd_report(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """``report [-f TEMPLATE]``: the JSON report, or a template the router renders against
    it (``GET /report?format=``, as Weave's); a malformed template fails before asking."""
    path = "/report"
    if args.format is not None:
        try:
            Template(args.format)
        except TemplateError as exc:
            raise CommandError(f"{PROG}: error: report -f: {exc}") from exc
        path += "?" + urllib.parse.urlencode({"format": args.format})
    try:
        body = _call(_client(args, env), "GET", path).body
    except CommandError as exc:
        raise CommandError(str(exc).replace(": error: template: ", ": error: report -f: ", 1)
                           ) from exc
    sys.stdout.write(body if body.endswith("\n") else body + "\n")
    return 0


def cmd_connect(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """``connect [--replace] PEER...``: add targets (persisted by the router)."""
    peers = [launch.parse_peer(peer) for peer in args.peers]
    fields = [("peer", peer) for peer in peers]
    if args.replace:
        fields.append(("replace", "true"))
    _call(_client(args, env), "POST", "/connect", fields)
    return 0


def cmd_forget(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """``forget PEER...``: drop targets; live connections stay until lost."""
    peers = [launch.parse_peer(peer) for peer in args.peers]
    client = _client(args, env)
    before = set(_call(client, "GET", "/status/targets").body.split())
    _call(client, "POST", "/forget", [("peer", peer) for peer in peers])
    after = set(_call(client, "GET", "/status/targets").body.split())
    if before == after:
        print(f"{PROG}: nothing to forget: {' '.join(peers)} "
              f"{'is not a target' if len(peers) == 1 else 'are not targets'} "
              f"(targets: {' '.join(sorted(before)) or 'none'})", file=sys.stderr)
    return 0


def _container_fields(args: argparse.Namespace) -> list[tuple[str, str]]:
    *addrs, container = args.args
    parse_addrs(addrs)  # a malformed ADDR is a usage error, before asking the router
    return [("container", container), *(("addr", addr) for addr in addrs)]


def cmd_attach(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """``attach [ADDR...] CONTAINER``: prints the container's addresses, as Weave does."""
    fields = _container_fields(args)
    if args.no_multicast_route:
        fields.append(("multicast_route", "false"))
    if args.hostname is not None:
        fields.append(("fqdn", args.hostname))
    if args.without_dns:
        fields.append(("dns", "false"))
    client = _client(args, env)
    client.timeout = None  # an allocation waits for IPAM consensus, as in Weave
    line = _call(client, "POST", "/attach", fields).body.split()
    print(" ".join(cidr.split("/")[0] for cidr in line[2:]))
    return 0


def cmd_detach(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """``detach [ADDR...] CONTAINER``: without ADDRs, the container leaves the network."""
    _call(_client(args, env), "POST", "/detach", _container_fields(args))
    return 0


def cmd_ps(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """``ps [CONTAINER...]``: one line per attached container: name, MAC, CIDRs. The
    router finds each CONTAINER by its namespace, whichever form (name, path, PID) it was
    attached with; one that is not a namespace is an error (exit 1, as Weave's ps)."""
    query = urllib.parse.urlencode([("container", c) for c in args.containers])
    body = _call(_client(args, env), "GET", "/ps" + ("?" + query if query else "")).body
    sys.stdout.write(body)
    listed = {line.split()[0] for line in body.splitlines() if line.strip()}
    for container in dict.fromkeys(c for c in args.containers if c not in listed):
        # a namespace that exists but is not on the network: nothing to list
        print(f"{PROG}: {container} is not attached", file=sys.stderr)
    return 0


def cmd_prime(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """``prime``: block until the IPAM ring is known (consensus reached, or joined)."""
    client = _client(args, env)
    client.timeout = None  # as Weave's prime: waits as long as it takes
    _call(client, "GET", "/ring")
    return 0


def cmd_rmpeer(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """``rmpeer PEER...``: prints ``N IPs taken over from PEER`` for each."""
    if any(not peer for peer in args.peers):
        raise ConfigError("rmpeer: empty PEER_ID (give a peer name or nickname)")
    client = _client(args, env)
    for peer in args.peers:
        query = "?force=true" if args.force else ""
        path = "/peer/" + urllib.parse.quote(peer, safe=":") + query
        sys.stdout.write(_call(client, "DELETE", path).body)
    return 0


def cmd_version(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """``version``: the versions of this program's parts, one per line."""
    from cli.version import version_lines  # trio and the extension: only for this command

    print("\n".join(version_lines()))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, Mapping[str, str]], int]] = {
    "launch": cmd_launch,
    "stop": cmd_stop,
    "reset": cmd_reset,
    "status": cmd_status,
    "report": cmd_report,
    "connect": cmd_connect,
    "forget": cmd_forget,
    "attach": cmd_attach,
    "detach": cmd_detach,
    "ps": cmd_ps,
    "expose": expose.cmd_expose,
    "hide": expose.cmd_hide,
    "prime": cmd_prime,
    "rmpeer": cmd_rmpeer,
    "setup-cni": setup_cni.run,
    **{name: functools.partial(lambda fn, a, e: fn(a, _client(a, e), _call), fn)
       for name, fn in (("dns-add", dns_cli.dns_add), ("dns-remove", dns_cli.dns_remove),
                        ("dns-lookup", dns_cli.dns_lookup), ("dns-args", dns_cli.dns_args))},
    "version": cmd_version,
}


def cmd_help(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """``help [COMMAND]``: the help of the whole tree, or of one command."""
    if args.topic in MISSING:
        print(missing_command(args.topic))
        return 0
    argv = [args.topic, "--help"] if args.topic else ["--help"]
    try:
        build_parser().parse_args(argv)
    except SystemExit:
        return 0
    except UsageError as exc:  # help of an unknown command
        raise ConfigError(f"help: {exc}") from exc
    return 0


COMMANDS["help"] = cmd_help


def _error(line: str, code: int) -> int:
    print(line, file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Run one command; the process exit code (``raise SystemExit(main())``)."""
    argv = sys.argv[1:] if argv is None else argv
    env = os.environ if env is None else env
    word = _command_word(argv)
    if word in MISSING:
        return _error(missing_command(word), 1)
    try:
        args = merge_global_flags(parse_args(argv))
    except UsageError as exc:
        return _error(f"{PROG}: error: {exc}", 2)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    try:
        return COMMANDS[args.command](args, env)
    except ConfigError as exc:
        return _error(f"{PROG}: error: {exc}", 2)
    except (CommandError, dns_cli.DnsCommandError) as exc:
        return _error(str(exc), 1)
    except KeyboardInterrupt:
        return _error(f"{PROG}: interrupted", 130)


if __name__ == "__main__":
    raise SystemExit(main())
