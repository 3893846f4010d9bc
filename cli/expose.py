"""``expose [ADDR ...] [-h FQDN] [--without-masquerade]`` and ``hide [ADDR ...]``.

``expose`` gives this host an address on the weave network (none given: one from IPAM's
default subnet, ``net:CIDR`` from that subnet, ``ip:CIDR`` that one) and prints the
address(es), as Weave's ``weave expose`` does; traffic from the exposed network to the
outside is masqueraded unless ``--without-masquerade``; ``-h FQDN`` registers the name in
weaveDNS for those addresses (id ``weave:expose``). ``hide`` takes them (none given:
all) away again with their names and prints what it took.
"""

from __future__ import annotations

import argparse
import sys
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from router.containers.addresses import parse_addrs

PROG = "weave-router"
EXPOSE_ID = "weave%3Aexpose"  # weave:expose, quoted for the path: the exposed host's DNS id


def add_commands(commands: argparse._SubParsersAction[Any],
                 add_http_addr: Callable[[argparse.ArgumentParser], None],
                 add_hostname: Callable[[argparse.ArgumentParser], None]) -> None:
    expose = commands.add_parser("expose", help="give this host an address on the weave "
                                 "network", add_help=False)
    add_hostname(expose)
    expose.add_argument("--without-masquerade", action="store_true",
                        help="do not masquerade the exposed network's traffic to the outside")
    expose.add_argument("addrs", nargs="*", metavar="ADDR",
                        help="[ip:]CIDR | net:CIDR | net:default (default: from IPAM)")
    add_http_addr(expose)
    hide = commands.add_parser("hide", help="take this host's weave address(es) away")
    hide.add_argument("addrs", nargs="*", metavar="CIDR", help="[ip:]CIDR (default: all)")
    add_http_addr(hide)


def cmd_expose(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from cli.main import _call, _client  # cli.main imports this module

    parse_addrs(args.addrs)  # a malformed ADDR is a usage error, before asking the router
    fields = [("addr", addr) for addr in args.addrs]
    if args.without_masquerade:
        fields.append(("masquerade", "false"))
    client = _client(args, env)
    if args.hostname is not None:  # checked before anything changes
        domain = _call(client, "GET", "/domain").body.strip()
        if not (args.hostname.rstrip(".").lower() + ".").endswith("." + domain.lower()):
            from router.errors import ConfigError

            raise ConfigError(f"-h {args.hostname}: not in the DNS domain {domain}: "
                              "nothing changed")
    client.timeout = None  # an allocation waits for IPAM consensus, as attach does
    cidrs = _call(client, "POST", "/expose", fields).body.split()
    print(" ".join(cidr.split("/")[0] for cidr in cidrs))
    if args.hostname is not None:  # as Weave: the name of weave:expose, for each address
        query = urllib.parse.urlencode({"fqdn": args.hostname})
        for cidr in cidrs:
            _call(client, "PUT", f"/name/{EXPOSE_ID}/{cidr.split('/')[0]}?{query}")
    return 0


def cmd_hide(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from cli.main import _call, _client

    request = parse_addrs(args.addrs)
    if request.needs_ipam:
        from router.errors import ConfigError

        raise ConfigError("hide takes the exposed addresses (ip:CIDR) or none for all")
    client = _client(args, env)
    cidrs = _call(client, "POST", "/hide", [("addr", addr) for addr in args.addrs]).body.split()
    if cidrs:
        print(" ".join(cidr.split("/")[0] for cidr in cidrs))
    for cidr in cidrs:  # the names `expose -h` gave them (none: nothing to remove)
        reply = client.request("DELETE", f"/name/{EXPOSE_ID}/{cidr.split('/')[0]}")
        if reply.status not in (200, 503):  # 503: --no-dns
            print(f"{PROG}: hide: {cidr}: its DNS names were not removed: {reply.body.strip()}",
                  file=sys.stderr)
    return 0
