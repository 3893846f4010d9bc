"""The ``weave-router`` command: argparse tree and one small function per command.

Commands of this milestone (cli.md has the contract)::

    weave-router launch [options] [PEER ...]
    weave-router stop
    weave-router reset
    weave-router status [targets|connections|peers]
    weave-router report [-f TEMPLATE]
    weave-router connect [--replace] [PEER ...]
    weave-router forget PEER ...
    weave-router attach [ADDR ...] [--no-multicast-route] CONTAINER
    weave-router detach [ADDR ...] CONTAINER
    weave-router ps [CONTAINER ...]
    weave-router version

Every command but ``launch`` and ``version`` talks to the router's API at ``--http-addr``
(``WEAVE_HTTP_ADDR``, default 127.0.0.1:6784). Exit codes: 0 done; 1 the command failed
(router not running, router refused, launch failed); 2 a usage error (unknown flag, bad
value), reported as one line ``weave-router: error: ...`` on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NoReturn

from cli import launch
from cli.client import ApiClient, ApiResponse, ApiUnreachable, default_http_addr, format_addr
from cli.template import Template, TemplateError
from router import __version__
from router.config import DEFAULT_DB_PATH
from router.containers.addresses import parse_addrs
from router.errors import ConfigError

PROG = "weave-router"
STATUS_VIEWS = ("targets", "connections", "peers", "ipam")
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


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree."""
    parser = _Parser(prog=PROG, description="Weave Net's router, rebuilt in Python.")
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
                        help="targets, connections or peers")
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
    attach = commands.add_parser("attach", help="put a container on the weave network")
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
    _add_http_addr(commands.add_parser("prime", help="wait until this peer can allocate"))
    rmpeer = commands.add_parser("rmpeer", help="take over the address space of dead peers")
    rmpeer.add_argument("peers", nargs="+", metavar="PEER_ID", help="peer name or nickname")
    rmpeer.add_argument("--force", action="store_true",
                        help="take over the space of a peer even if it is reachable now")
    _add_http_addr(rmpeer)
    commands.add_parser("version", help="print the version")
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv`` (without the program name); UsageError on a mistake."""
    return build_parser().parse_args(list(argv))


def _client(args: argparse.Namespace, env: Mapping[str, str]) -> ApiClient:
    return ApiClient(default_http_addr(args.http_addr, env.get(launch.ENV_HTTP_ADDR)))


def _call(client: ApiClient, method: str, path: str,
          fields: Sequence[tuple[str, str]] = ()) -> ApiResponse:
    """One API request; CommandError unless it answers 200."""
    try:
        response = client.post(path, fields) if method == "POST" else client.request(method, path)
    except ApiUnreachable as exc:
        addr = format_addr(exc.addr)
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

        reset_offline(Path(args.db_path) if args.db_path else DEFAULT_DB_PATH)
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
                       f"{format_addr(client.addr)} {STOP_TIMEOUT:g} s after stop")


def cmd_status(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """``status [VIEW]``: print the router's text layout."""
    path = "/status" if args.view is None else f"/status/{args.view}"
    sys.stdout.write(_call(_client(args, env), "GET", path).body)
    return 0


def cmd_report(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """``report [-f TEMPLATE]``: the JSON report, or a template rendered against it."""
    try:
        template = Template(args.format) if args.format is not None else None
    except TemplateError as exc:
        raise CommandError(f"{PROG}: error: report -f: {exc}") from exc
    body = _call(_client(args, env), "GET", "/report").body
    if template is None:
        sys.stdout.write(body if body.endswith("\n") else body + "\n")
        return 0
    try:
        text = template.render(json.loads(body))
    except ValueError as exc:
        raise CommandError(f"{PROG}: error: the report is not JSON: {exc}") from exc
    except TemplateError as exc:
        raise CommandError(f"{PROG}: error: report -f: {exc}") from exc
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
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
    _call(_client(args, env), "POST", "/forget", [("peer", peer) for peer in peers])
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
    """``ps [CONTAINER...]``: one line per attached container: name, MAC, CIDRs."""
    wanted = set(args.containers)
    for line in _call(_client(args, env), "GET", "/ps").body.splitlines():
        if not wanted or line.split()[0] in wanted:
            print(line)
    return 0


def cmd_prime(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """``prime``: block until the IPAM ring is known (consensus reached, or joined)."""
    client = _client(args, env)
    client.timeout = None  # as Weave's prime: waits as long as it takes
    _call(client, "GET", "/ring")
    return 0


def cmd_rmpeer(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """``rmpeer PEER...``: prints ``N IPs taken over from PEER`` for each."""
    client = _client(args, env)
    for peer in args.peers:
        query = "?force=true" if args.force else ""
        sys.stdout.write(_call(client, "DELETE", f"/peer/{peer}{query}").body)
    return 0


def cmd_version(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """``version``: this program's version."""
    print(f"{PROG} {__version__}")
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
    "prime": cmd_prime,
    "rmpeer": cmd_rmpeer,
    "version": cmd_version,
}


def _error(line: str, code: int) -> int:
    print(line, file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Run one command; the process exit code (``raise SystemExit(main())``)."""
    argv = sys.argv[1:] if argv is None else argv
    env = os.environ if env is None else env
    try:
        args = parse_args(argv)
    except UsageError as exc:
        return _error(f"{PROG}: error: {exc}", 2)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    try:
        return COMMANDS[args.command](args, env)
    except ConfigError as exc:
        return _error(f"{PROG}: error: {exc}", 2)
    except CommandError as exc:
        return _error(str(exc), 1)
    except KeyboardInterrupt:
        return _error(f"{PROG}: interrupted", 130)


if __name__ == "__main__":
    raise SystemExit(main())
