"""Weave's ADDR syntax for ``attach``/``detach``: ``[ip:]CIDR | net:CIDR | net:default``.

* ``ip:10.2.3.7/24`` or ``10.2.3.7/24``: that address, with that prefix length.
* ``net:10.2.3.0/24``: an address allocated from that subnet (IPAM); host bits must be 0.
* ``net:default``: an address from IPAM's default subnet.

:func:`parse_addrs` raises :class:`~router.errors.ConfigError` naming the bad value.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from router.errors import ConfigError


@dataclass(frozen=True)
class AddressRequest:
    """What ``attach`` was asked for: explicit addresses and subnets to allocate from."""

    cidrs: tuple[ipaddress.IPv4Interface, ...] = ()
    subnets: tuple[ipaddress.IPv4Network, ...] = ()
    default_subnet: bool = False

    @property
    def needs_ipam(self) -> bool:
        return bool(self.subnets) or self.default_subnet


def parse_addrs(values: Iterable[str]) -> AddressRequest:
    cidrs: list[ipaddress.IPv4Interface] = []
    subnets: list[ipaddress.IPv4Network] = []
    default = False
    for value in values:
        if value == "net:default":
            default = True
        elif value.startswith("net:"):
            subnets.append(_subnet(value))
        else:
            cidrs.append(_address(value))
    return AddressRequest(tuple(dict.fromkeys(cidrs)), tuple(dict.fromkeys(subnets)), default)


def _address(value: str) -> ipaddress.IPv4Interface:
    text = value.removeprefix("ip:")
    if "/" not in text:
        try:
            ipaddress.IPv4Address(text)
        except ValueError:
            raise ConfigError(f"address {value!r} is not an IPv4 address with a prefix "
                              "length, like ip:10.32.1.1/12") from None
        raise ConfigError(f"address {value!r} needs a prefix length, like 10.32.1.1/12")
    try:
        iface = ipaddress.IPv4Interface(text)
    except ValueError:
        raise ConfigError(f"address {value!r} is not an IPv4 CIDR like 10.32.1.1/12") from None
    if iface.network.prefixlen > 30:
        raise ConfigError(f"address {value!r}: a /{iface.network.prefixlen} leaves no room "
                          "for a network and broadcast address (use /30 or shorter)")
    if iface.ip in (iface.network.network_address, iface.network.broadcast_address):
        raise ConfigError(f"address {value!r} is the network or broadcast address of its subnet")
    return iface


def _subnet(value: str) -> ipaddress.IPv4Network:
    text = value.removeprefix("net:")
    try:
        net = ipaddress.IPv4Network(text)
    except ValueError:
        raise ConfigError(f"subnet {value!r} is not an IPv4 subnet with its host bits "
                          "clear, like net:10.32.2.0/24") from None
    if net.prefixlen > 30:
        raise ConfigError(f"subnet {value!r}: a /{net.prefixlen} holds no container addresses")
    return net
