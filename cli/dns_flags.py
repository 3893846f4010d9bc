"""``launch``'s weaveDNS flags (Weave's names and defaults) -> :class:`DnsConfig`, and back."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

from cli.client import is_hostname, parse_port, split_host_port
from router.dns.config import DEFAULT_DOMAIN, DEFAULT_RESOLV_CONF, DEFAULT_TTL, DnsConfig
from router.errors import ConfigError

MAX_TTL = 2**31 - 1  # seconds (RFC 2181)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--no-dns", action="store_true", help="run without weaveDNS")
    add("--dns-domain", metavar="DOMAIN", help=f"weaveDNS's domain (default {DEFAULT_DOMAIN})")
    add("--dns-listen-address", metavar="IP:PORT",
        help="where weaveDNS listens (default 169.254.255.53:53 on the weave bridge, "
             "routed into every attached container: docs/dns.md)")
    add("--dns-ttl", metavar="SECONDS", help=f"TTL of weaveDNS's answers (default {DEFAULT_TTL})")
    add("--resolv-conf", metavar="PATH",
        help=f"upstream servers for names outside the domain (default {DEFAULT_RESOLV_CONF})")


def build(args: argparse.Namespace) -> DnsConfig | None:
    """The DNS config of ``launch`` (None: ``--no-dns``); ConfigError names the flag."""
    given = [f for f in ("dns_domain", "dns_listen_address", "dns_ttl")
             if getattr(args, f) is not None]
    if args.no_dns:
        if given:
            raise ConfigError(f"--{given[0].replace('_', '-')}: cannot be combined with "
                              "--no-dns")
        return None
    return DnsConfig(domain=_domain(args.dns_domain), listen=_listen(args.dns_listen_address),
                     ttl=_ttl(args.dns_ttl), resolv_conf=_resolv_conf(args.resolv_conf))


def to_argv(config: DnsConfig | None) -> list[str]:
    """Flags that rebuild ``config``."""
    if config is None:
        return ["--no-dns"]
    argv = ["--dns-domain", config.domain, "--dns-ttl", str(config.ttl),
            "--resolv-conf", str(config.resolv_conf)]
    if config.listen is not None:
        argv += ["--dns-listen-address", f"{config.listen[0]}:{config.listen[1]}"]
    return argv


def _domain(value: str | None) -> str:
    if value is None:
        return DEFAULT_DOMAIN
    domain = value.strip().lower().rstrip(".") + "."
    if domain == "." or not is_hostname(domain):
        raise ConfigError(f"--dns-domain: {value!r} is not a domain name (like weave.local.)")
    return domain


def _listen(value: str | None) -> tuple[str, int] | None:
    if value is None:
        return None
    host, port = split_host_port(value, "--dns-listen-address")
    try:
        address = ipaddress.IPv4Address(host or "0.0.0.0")
    except ValueError:
        raise ConfigError(f"--dns-listen-address: {host} is not an IPv4 address "
                          "(like 127.0.0.1:53)") from None
    return str(address), 53 if port is None else parse_port(port, "--dns-listen-address")


def _ttl(value: str | None) -> int:
    if value is None:
        return DEFAULT_TTL
    if not value.isdigit() or int(value) > MAX_TTL:
        raise ConfigError(f"--dns-ttl: {value} is not a number of seconds (0-{MAX_TTL})")
    return int(value)


def _resolv_conf(value: str | None) -> Path:
    if value is None:
        return DEFAULT_RESOLV_CONF
    if not value:
        raise ConfigError("--resolv-conf: empty path")
    return Path(value).absolute()
