"""The narrow port to nftables the router needs: replace its own table atomically, read
it back, delete it. Rules are nft's JSON (``nft -j``, libnftables-json(5)); only
``router/host/`` builds them, only ``kernel/nft_cli.py`` (the ``nft`` binary) and
``kernel/nft_fake.py`` (in memory, for unit tests) run them.

A table of ours is replaced in one batch (``add table; delete table; add table; ...``):
nftables applies a batch as one transaction, so the rules are never half there, and
``add`` before ``delete`` makes the delete succeed whether or not the table existed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from typing import Any, Protocol

Command = Mapping[str, Any]  # one element of nft's {"nftables": [...]}


@dataclass(frozen=True)
class TableRef:
    """An nftables table: its family (``inet``, ``ip``, ...) and name."""

    family: str
    name: str

    def json(self) -> dict[str, str]:
        return {"family": self.family, "name": self.name}

    def __str__(self) -> str:
        return f"{self.family} {self.name}"


@dataclass(frozen=True)
class RuleView:
    """A rule as read back: its chain and comment (ours carry a unique comment)."""

    chain: str
    comment: str


@dataclass(frozen=True)
class TableView:
    """What a table holds now: its chains (name -> hook, "" for a regular chain) and rules."""

    chains: Mapping[str, str]
    rules: tuple[RuleView, ...]


class NftPort(Protocol):
    """nftables, as the router uses it (errors: :class:`~router.errors.KernelError`)."""

    async def replace_table(self, table: TableRef, commands: Sequence[Command]) -> None:
        """Atomically: ``table`` holds exactly what ``commands`` add (chains, rules)."""
        ...

    async def read_table(self, table: TableRef) -> TableView | None:
        """The table's chains and rules; None if there is no such table."""
        ...

    async def delete_table(self, table: TableRef) -> bool:
        """Remove the table; False if there was none."""
        ...


# Match expressions, the pieces every table's rules are made of (nft JSON's "match").


def meta_match(key: str, op: str, value: object) -> dict[str, Any]:
    """``meta KEY OP VALUE`` (``iifname == "weave"``, ``nfproto == ipv4``)."""
    return {"match": {"op": op, "left": {"meta": {"key": key}}, "right": value}}


def payload_match(protocol: str, field: str, op: str, value: object) -> dict[str, Any]:
    """``PROTOCOL FIELD OP VALUE`` (``udp dport == 6784``, ``ether type != 0x88b5``)."""
    return {"match": {"op": op, "left": {"payload": {"protocol": protocol, "field": field}},
                      "right": value}}


def prefix(net: IPv4Network | IPv6Network) -> dict[str, Any]:
    """A network as a match's right-hand side."""
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def replace_batch(table: TableRef, commands: Sequence[Command]) -> dict[str, Any]:
    """The one transaction :meth:`NftPort.replace_table` sends."""
    ref = {"table": table.json()}
    return {"nftables": [{"add": ref}, {"delete": ref}, {"add": ref}, *commands]}


def delete_batch(table: TableRef) -> dict[str, Any]:
    return {"nftables": [{"delete": {"table": table.json()}}]}


def parse_listing(listing: Mapping[str, Any]) -> TableView:
    """``nft -j list table FAMILY NAME``'s output as a :class:`TableView`."""
    chains: dict[str, str] = {}
    rules: list[RuleView] = []
    for item in listing.get("nftables", []):
        if "chain" in item:
            chain = item["chain"]
            chains[str(chain["name"])] = str(chain.get("hook", ""))
        elif "rule" in item:
            rule = item["rule"]
            rules.append(RuleView(str(rule["chain"]), str(rule.get("comment", ""))))
    return TableView(chains, tuple(rules))


def commands_view(commands: Sequence[Command]) -> TableView:
    """What a table holds once ``commands`` (adds of chains and rules) ran."""
    chains: dict[str, str] = {}
    rules: list[RuleView] = []
    for command in commands:
        added = command.get("add", {})
        if "chain" in added:
            chains[str(added["chain"]["name"])] = str(added["chain"].get("hook", ""))
        elif "rule" in added:
            rule = added["rule"]
            rules.append(RuleView(str(rule["chain"]), str(rule.get("comment", ""))))
    return TableView(chains, tuple(rules))
