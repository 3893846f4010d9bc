"""The router's nftables table (``inet weave-router``), as nft JSON, from what it protects
and what is exposed. Pure: :func:`table_commands` is the whole table, rebuilt each time.

::

    chain input        hook input, priority filter
      iifname "weave" tcp dport PORT drop                containers cannot reach the
      iifname "weave" udp dport PORT-PORT+1 drop         router's ports through the bridge
    chain forward      hook forward, priority filter
      iifname "weave" oifname "weave" accept             bridged (br_netfilter) traffic
      oifname "weave" ip daddr NET accept                per exposed network: in ...
      iifname "weave" ip saddr NET accept                ... and out
      oifname "weave" ct state established,related accept   (only with an exposure)
      iifname "weave" drop                               nothing else is forwarded to or
      oifname "weave" drop                               from the bridge
    chain postrouting  hook postrouting, priority srcnat (only with an exposure; rules
                                                          per network exposed with masquerade)
      ip saddr NET ip daddr 224.0.0.0/4 return           multicast stays as it is
      ip saddr NET ip daddr != NET oifname != "weave" masquerade   containers -> outside
      ip saddr != NET ip daddr NET oifname "weave" masquerade      outside/host -> containers

With nothing exposed the table has no ``ct`` match and no NAT chain, so it does not turn
connection tracking on in the host's namespace: with ``br_netfilter`` every bridged frame
between containers would be tracked, for nothing, as no traffic is routed to or from the
bridge until something is exposed (through a hand-made VXLAN bridge, such a table cost
0.98-1.31x the CPU per Gbit of no table, median 1.07x, in 8 rounds of ``iperf3 -b 2G``
on a busy machine).

Every rule carries a comment ``weave-router:<what>`` so the service can tell by reading
the table back whether someone removed rules (``nft flush ruleset``) and put them back.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from router.kernel.nft import Command, TableRef, meta_match, payload_match, prefix

TABLE = TableRef("inet", "weave-router")
MULTICAST = ipaddress.IPv4Network("224.0.0.0/4")
_PRIORITY_FILTER = 0
_PRIORITY_SRCNAT = 100


@dataclass(frozen=True)
class Exposure:
    """An address of the host on the bridge, and whether its network is masqueraded."""

    cidr: ipaddress.IPv4Interface
    masquerade: bool = True


@dataclass(frozen=True)
class HostRules:
    """What the table is made of."""

    bridge: str  # "weave"
    port: int  # the router's TCP port; UDP port and port + 1 (sleeve, fastdp)
    exposures: tuple[Exposure, ...] = ()


def _chain(name: str, kind: str, hook: str, prio: int) -> Command:
    return {"add": {"chain": {**TABLE.json(), "table": TABLE.name, "name": name,
                              "type": kind, "hook": hook, "prio": prio, "policy": "accept"}}}


def _rule(chain: str, what: str, *expr: Mapping[str, Any]) -> Command:
    return {"add": {"rule": {"family": TABLE.family, "table": TABLE.name, "chain": chain,
                             "comment": f"weave-router:{what}", "expr": list(expr)}}}


def networks(exposures: Iterable[Exposure], *, masquerade: bool | None = None
             ) -> list[ipaddress.IPv4Network]:
    """The exposed networks (only those with/without masquerade if given), once each."""
    return list(dict.fromkeys(e.cidr.network for e in exposures
                              if masquerade is None or e.masquerade == masquerade))


def table_commands(rules: HostRules) -> list[Command]:
    """The adds that make the whole table (for ``NftPort.replace_table``)."""
    bridge, port = rules.bridge, rules.port
    commands = [
        _chain("input", "filter", "input", _PRIORITY_FILTER),
        _rule("input", "router-tcp", meta_match("iifname", "==", bridge),
              payload_match("tcp", "dport", "==", port), {"drop": None}),
        _rule("input", "router-udp", meta_match("iifname", "==", bridge),
              payload_match("udp", "dport", "==", {"range": [port, port + 1]}), {"drop": None}),
        _chain("forward", "filter", "forward", _PRIORITY_FILTER),
        _rule("forward", "bridged", meta_match("iifname", "==", bridge),
              meta_match("oifname", "==", bridge), {"accept": None}),
    ]
    for net in networks(rules.exposures):
        commands += [
            _rule("forward", f"expose-in-{net}", meta_match("oifname", "==", bridge),
                  payload_match("ip", "daddr", "==", prefix(net)), {"accept": None}),
            _rule("forward", f"expose-out-{net}", meta_match("iifname", "==", bridge),
                  payload_match("ip", "saddr", "==", prefix(net)), {"accept": None}),
        ]
    if rules.exposures:  # replies to what an exposure let out; nothing else is routed
        commands.append(_rule("forward", "replies", meta_match("oifname", "==", bridge),
                              {"match": {"op": "in", "left": {"ct": {"key": "state"}},
                                         "right": ["established", "related"]}},
                              {"accept": None}))
    commands += [
        _rule("forward", "from-bridge", meta_match("iifname", "==", bridge), {"drop": None}),
        _rule("forward", "to-bridge", meta_match("oifname", "==", bridge), {"drop": None}),
    ]
    if rules.exposures:
        commands.append(_chain("postrouting", "nat", "postrouting", _PRIORITY_SRCNAT))
    for net in networks(rules.exposures, masquerade=True):
        commands += [
            _rule("postrouting", f"multicast-{net}",
                  payload_match("ip", "saddr", "==", prefix(net)),
                  payload_match("ip", "daddr", "==", prefix(MULTICAST)), {"return": None}),
            _rule("postrouting", f"masquerade-out-{net}",
                  payload_match("ip", "saddr", "==", prefix(net)),
                  payload_match("ip", "daddr", "!=", prefix(net)),
                  meta_match("oifname", "!=", bridge), {"masquerade": None}),
            _rule("postrouting", f"masquerade-in-{net}",
                  payload_match("ip", "saddr", "!=", prefix(net)),
                  payload_match("ip", "daddr", "==", prefix(net)),
                  meta_match("oifname", "==", bridge), {"masquerade": None}),
        ]
    return commands
