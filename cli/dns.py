"""weaveDNS commands: ``dns-add``, ``dns-remove``, ``dns-lookup``, ``dns-args``.

::

    weave-router dns-add [IP ...] CONTAINER [-h FQDN]   names for an attached container
                                                        (default: its addresses, NAME.domain)
    weave-router dns-add IP ... -h FQDN                 names for something else (weave:extern)
    weave-router dns-remove [IP ...] CONTAINER [-h FQDN] | dns-remove IP ... -h FQDN
    weave-router dns-lookup NAME                        ask weaveDNS (a real DNS query)
    weave-router dns-args                               --dns=ADDR --dns-search=DOMAIN

Every input is checked before anything changes: a malformed IP or FQDN is a usage error
(exit 2), a container that is not attached or an FQDN outside the domain exits 1, each
with one line.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
import urllib.parse
from collections.abc import Callable, Sequence

from cli.client import ApiClient, ApiResponse, is_hostname
from router.errors import ConfigError

PROG = "weave-router"
EXTERNAL_ID = "weave:extern"
LOOKUP_TIMEOUT = 3.0  # seconds

Call = Callable[..., ApiResponse]


class DnsCommandError(Exception):
    """A DNS command failed (exit 1); ``str()`` is the line to print."""


def add_commands(commands: argparse._SubParsersAction,  # type: ignore[type-arg]
                 add_api_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    for name, what in (("dns-add", "add names to weaveDNS"),
                       ("dns-remove", "remove names from weaveDNS")):
        parser = commands.add_parser(name, help=what, add_help=False)
        parser.add_argument("--help", action="help", help="show this help message and exit")
        parser.add_argument("-h", dest="hostname", metavar="FQDN", help="the name (FQDN)")
        parser.add_argument("args", nargs="+", metavar="[IP ...] [CONTAINER]")
        add_api_flags(parser)
    lookup = commands.add_parser("dns-lookup", help="look a name up in weaveDNS")
    lookup.add_argument("name", metavar="NAME")
    add_api_flags(lookup)
    add_api_flags(commands.add_parser("dns-args", help="--dns/--dns-search for a runtime"))


def split(args: Sequence[str], hostname: str | None) -> tuple[list[ipaddress.IPv4Address],
                                                                 str | None]:
    """``([IP ...], CONTAINER or None)``; ConfigError for a malformed IP or FQDN."""
    if hostname is not None and not is_hostname(hostname):
        raise ConfigError(f"-h {hostname}: not a host name (like foo.weave.local)")
    words = list(args)
    container = None
    if not _looks_like_ip(words[-1]):
        container = words.pop()
    elif hostname is None:
        raise ConfigError("give a CONTAINER, or -h FQDN for addresses of no container")
    ips = []
    for word in words:
        if not _is_ip(word):
            raise ConfigError(f"{word!r} is not an IPv4 address")
        ips.append(ipaddress.IPv4Address(word))
    return ips, container


def _looks_like_ip(text: str) -> bool:
    """Digits and dots (a mistyped address is an error, not a container name)."""
    return bool(text) and all(c.isdigit() or c == "." for c in text)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _attached(client: ApiClient, call: Call, container: str) -> list[ipaddress.IPv4Address]:
    """The container's addresses; DnsCommandError if it is not attached."""
    query = urllib.parse.urlencode([("container", container)])
    body = call(client, "GET", "/ps?" + query).body
    for line in body.splitlines():
        fields = line.split()
        if fields and fields[0] == container:
            return [ipaddress.IPv4Interface(c).ip for c in fields[2:] if "." in c]
    raise DnsCommandError(f"{PROG}: {container} is not attached: nothing changed")


def dns_add(args: argparse.Namespace, client: ApiClient, call: Call) -> int:
    ips, container = split(args.args, args.hostname)
    domain = call(client, "GET", "/domain").body.strip()
    fqdn = args.hostname
    if container is not None:
        have = _attached(client, call, container)
        ips = ips or have
        if fqdn is None:
            label = container.rstrip("/").rsplit("/", 1)[-1]
            if label.isdigit() or not is_hostname(label):
                raise DnsCommandError(f"{PROG}: give the name with -h FQDN ({container} "
                                      "has no name to register)")
            fqdn = f"{label}.{domain}"
    assert fqdn is not None
    full = fqdn.rstrip(".").lower() + "."
    if not full.endswith("." + domain.lower()):
        raise DnsCommandError(f"{PROG}: {fqdn} is not in the DNS domain {domain}: "
                              "nothing changed")
    who = urllib.parse.quote(container or EXTERNAL_ID, safe="")
    for ip in ips:
        call(client, "PUT", f"/name/{who}/{ip}?" + urllib.parse.urlencode({"fqdn": fqdn}))
    return 0


def dns_remove(args: argparse.Namespace, client: ApiClient, call: Call) -> int:
    ips, container = split(args.args, args.hostname)
    who = "*" if container is None else urllib.parse.quote(container, safe="")
    query = "" if args.hostname is None else "?" + urllib.parse.urlencode(
        {"fqdn": args.hostname})
    removed = 0
    for ip in [str(i) for i in ips] or [""]:
        path = f"/name/{who}" + (f"/{ip}" if ip else "")
        removed += int(call(client, "DELETE", path + query).body.strip() or 0)
    if not removed:
        print(f"{PROG}: no such DNS entry: nothing removed", file=sys.stderr)
    return 0


def dns_args(args: argparse.Namespace, client: ApiClient, call: Call) -> int:
    address = call(client, "GET", "/dns-address").body.strip()
    domain = call(client, "GET", "/domain").body.strip()
    print(f"--dns={address} --dns-search={domain}")
    return 0


def dns_lookup(args: argparse.Namespace, client: ApiClient, call: Call) -> int:
    """A real DNS query to weaveDNS (Weave runs dig); the addresses, one per line."""
    import dns.exception
    import dns.message
    import dns.query
    import dns.rcode

    domain = call(client, "GET", "/domain").body.strip()
    report = call(client, "GET", "/report?" + urllib.parse.urlencode(
        {"format": "{{.DNS.Address}}"})).body.strip()
    host, _, port = report.rpartition(":")
    name = args.name if "." in args.name.rstrip(".") else f"{args.name}.{domain}"
    try:
        query = dns.message.make_query(name, "A")
    except dns.exception.DNSException as exc:
        raise ConfigError(f"dns-lookup: {args.name!r} is not a DNS name ({exc})") from exc
    try:
        reply = dns.query.udp(query, host, port=int(port), timeout=LOOKUP_TIMEOUT)
    except (OSError, dns.exception.DNSException) as exc:
        raise DnsCommandError(f"{PROG}: weaveDNS at {report} did not answer: {exc}") from exc
    addresses = [r.address for rrset in reply.answer for r in rrset if hasattr(r, "address")]
    for address in sorted(addresses, key=ipaddress.IPv4Address):
        print(address)
    if reply.rcode() != dns.rcode.NOERROR or not addresses:
        print(f"{PROG}: {name}: {dns.rcode.to_text(reply.rcode())}, no address",
              file=sys.stderr)
        return 1
    return 0
