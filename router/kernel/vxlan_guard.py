"""fastdp's VXLAN guard: with a password, only trusted hosts may send into the VXLAN port.

The kernel's VXLAN device (``vxlan-6784``) takes any UDP datagram to its port and puts the
frame inside on the ``weave`` bridge: it has no notion of peers, keys or trust. Without a
password that is Weave's model (the underlay is trusted). With ``--password`` and
``--trusted-subnets`` fastdp carries only the connections whose both ends are trusted,
so a datagram to the VXLAN port from a source outside the trusted subnets is never ours:
an untrusted underlay host forging one would inject frames into the bridge past the
encrypted sleeve. This table drops (and counts) them before the device sees them.

One nftables table of the inet family, ``weave-vxlan-guard``, with one input chain::

    udp dport 6784 ip saddr != { TRUSTED IPv4 SUBNETS } counter drop
    udp dport 6784 ip6 saddr != { TRUSTED IPv6 SUBNETS } counter drop

(a family without trusted subnets drops every such datagram). nft JSON, applied through
the nftables port (``kernel/nft_cli.py``), replaced whole when fastdp starts with a
password and deleted by ``reset`` (and when a router starts without a password).
"""

from __future__ import annotations

from collections.abc import Iterable

from router.config import IPNetwork
from router.kernel.nft import Command, NftPort, TableRef, meta_match, payload_match, prefix

TABLE = TableRef("inet", "weave-vxlan-guard")
CHAIN = "input"
PRIORITY = -10  # before the filter tables of others (priority 0): ours decide first


def guard_commands(port: int, trusted: Iterable[IPNetwork]) -> list[Command]:
    """The table's chain and rules: UDP ``port`` from outside ``trusted`` is dropped."""
    ref = {"family": TABLE.family, "table": TABLE.name}
    nets = list(trusted)
    commands: list[Command] = [
        {"add": {"chain": {**ref, "name": CHAIN, "type": "filter", "hook": "input",
                           "prio": PRIORITY, "policy": "accept"}}}]
    for family, version in (("ip", 4), ("ip6", 6)):
        mine = [n for n in nets if n.version == version]
        expr: list[Command] = [
            meta_match("nfproto", "==", "ipv4" if version == 4 else "ipv6"),
            payload_match("udp", "dport", "==", port)]
        if mine:
            expr.append(payload_match(family, "saddr", "!=", {"set": [prefix(n) for n in mine]}))
        expr += [{"counter": None}, {"drop": None}]
        commands.append({"add": {"rule": {**ref, "chain": CHAIN, "expr": expr,
                                          "comment": f"weave-vxlan-guard-ipv{version}"}}})
    return commands


async def install_guard(nft: NftPort, port: int, trusted: Iterable[IPNetwork]) -> None:
    """Create (or replace) the table; KernelError if nftables refuses it."""
    await nft.replace_table(TABLE, guard_commands(port, trusted))


async def remove_guard(nft: NftPort) -> bool:
    """Delete the table; False if there was none."""
    return await nft.delete_table(TABLE)
