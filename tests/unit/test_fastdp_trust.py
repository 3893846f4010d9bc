"""fastdp with a password: when it is offered, and the VXLAN guard's rules."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
import trio

from router.config import MeshConfig, RouterConfig
from router.daemon import fastdp_off_reason
from router.kernel.nft_fake import FakeNft
from router.kernel.vxlan_guard import TABLE, guard_commands, install_guard, remove_guard

NETS = (ipaddress.ip_network("192.168.5.1/32"), ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("fd00::/64"))


def _config(**mesh: Any) -> RouterConfig:
    return RouterConfig(mesh=MeshConfig(**mesh))


@pytest.fixture
def nft_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("router.daemon.nft_binary", lambda: "/usr/sbin/nft")


@pytest.mark.usefixtures("nft_found")
def test_password_needs_trusted_subnets_for_fastdp() -> None:
    assert fastdp_off_reason(_config()) == ""
    off = fastdp_off_reason(_config(password=b"pw"))
    assert off.startswith("--password: this kernel has no ESP or WireGuard"), off
    assert "--trusted-subnets" in off
    assert fastdp_off_reason(_config(password=b"pw", trusted_subnets=NETS[:1])) == ""
    assert fastdp_off_reason(_config(trusted_subnets=NETS[:1])) == ""
    off = fastdp_off_reason(RouterConfig(mesh=MeshConfig(password=b"pw", trusted_subnets=NETS),
                                         no_fastdp=True))
    assert off == "--no-fastdp"


def _rules(commands: list[Any]) -> list[list[Any]]:
    return [c["add"]["rule"]["expr"] for c in commands if "rule" in c["add"]]


def test_guard_drops_the_port_from_outside_the_trusted_subnets() -> None:
    commands = guard_commands(6784, NETS)
    chain = commands[0]["add"]["chain"]
    assert (chain["family"], chain["table"], chain["hook"], chain["policy"]) == (
        "inet", "weave-vxlan-guard", "input", "accept")
    v4, v6 = _rules(commands)
    for rule, family, nets in ((v4, "ip", NETS[:2]), (v6, "ip6", NETS[2:])):
        assert rule[1]["match"] == {"op": "==", "left": {"payload": {
            "protocol": "udp", "field": "dport"}}, "right": 6784}
        match = rule[2]["match"]
        assert match["op"] == "!=" and match["left"]["payload"] == {
            "protocol": family, "field": "saddr"}
        assert match["right"]["set"] == [
            {"prefix": {"addr": str(n.network_address), "len": n.prefixlen}} for n in nets]
        assert rule[-2:] == [{"counter": None}, {"drop": None}]


def test_a_family_without_trusted_subnets_drops_every_datagram_to_the_port() -> None:
    v4, v6 = _rules(guard_commands(4789, NETS[2:]))
    assert [list(e) for e in v4] == [["match"], ["match"], ["counter"], ["drop"]]
    assert v4[0]["match"]["right"] == "ipv4" and v4[1]["match"]["right"] == 4789
    assert "saddr" in str(v6)


def test_install_replaces_and_remove_deletes() -> None:
    nft = FakeNft()

    async def main() -> None:
        await install_guard(nft, 6784, NETS)
        await install_guard(nft, 6784, NETS[:1])
        assert nft.replaced == 2 and nft.commands[TABLE] == guard_commands(6784, NETS[:1])
        assert await remove_guard(nft) is True
        assert await remove_guard(nft) is False

    trio.run(main)
