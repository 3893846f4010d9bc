"""fastdp heartbeats on the real kernel, the way the traffic goes: each host's native data
plane writes them into its TAP (``write_tap``), the bridge sends them into ``vxlan-6784``
as the FastdpService programmed it, the kernel carries them over UDP 6784, and the far
data plane reads them from its TAP and passes them up (``UPCALL_HEARTBEAT``), where
``HeartbeatEcho`` decides. With one direction broken (the far side's VXLAN towards us
dropped by nftables), frames still arrive one way and neither side proves the path."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from router.dataplane.backend import Backend, DataplaneLike
from router.errors import DecodeError
from router.kernel.netlink import NetlinkPort, open_netlink_port
from router.kernel.plumbing import TAP_NAME, bridge_plan, tap_plan
from router.kernel.port import execute
from router.overlay.fastdp.heartbeat import Heard, HeartbeatEcho, decode_heartbeat_untrusted
from router.overlay.fastdp.plan import LocalConfig, heartbeat_mac
from router.overlay.fastdp.service import FastdpService
from tests.fastpath.devices import Namespaces, in_netns, ip

pytestmark = pytest.mark.integration

MTU = 1376
NAMES = ("aa:bb:cc:00:00:01", "aa:bb:cc:00:00:02")
IPS = ("10.77.0.1", "10.77.0.2")


@dataclass
class Host:
    netns: str  # /run/netns/...
    name: str  # peer name
    ip: ipaddress.IPv4Address
    dp: DataplaneLike
    service: FastdpService
    echo: HeartbeatEcho
    tap: Any
    udp: socket.socket


@pytest.fixture
async def port() -> AsyncIterator[NetlinkPort]:
    async with open_netlink_port() as p:
        yield p


def _mac_bytes(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _udp(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 6783))
    return sock


async def _host(port: NetlinkPort, stack: contextlib.ExitStack, backend: Backend,
                netns: str, i: int) -> Host:
    path = f"/run/netns/{netns}"
    await execute(port, bridge_plan(await port.snapshot(path), mtu=MTU))
    tap = await port.open_tap(TAP_NAME, netns=path)
    stack.callback(tap.close)
    await execute(port, tap_plan(await port.snapshot(path), mtu=MTU))
    udp = in_netns(netns, lambda: _udp(IPS[i]))
    stack.callback(udp.close)
    dp = backend.Dataplane(int(NAMES[i].replace(":", ""), 16))
    dp.set_heartbeat_mac(_mac_bytes(heartbeat_mac(NAMES[i])))
    dp.start(tap.fileno(), udp.fileno())
    stack.callback(dp.stop)  # before the fds close
    config = LocalConfig(local=ipaddress.IPv4Address(IPS[i]), mtu=MTU, netns=path,
                         peer_name=NAMES[i])
    echo = HeartbeatEcho(NAMES[i], NAMES[1 - i], heartbeat_mac(NAMES[i]),
                         heartbeat_mac(NAMES[1 - i]))
    return Host(path, NAMES[i], ipaddress.IPv4Address(IPS[i]), dp, FastdpService(port, config),
                echo, tap, udp)


def _round(hosts: list[Host], heard: list[set[Heard]], native: Backend) -> None:
    """Each data plane writes one heartbeat into its TAP; each takes what came up."""
    for h in hosts:
        assert h.dp.write_tap(h.echo.next_frame())
    for h, seen in zip(hosts, heard, strict=True):
        end = time.monotonic() + 0.3
        while (left := end - time.monotonic()) > 0:
            for kind, source, frame in h.dp.get_upcalls(left):
                assert (kind, source) == (native.UPCALL_HEARTBEAT, ("", 0))
                with contextlib.suppress(DecodeError):
                    seen.add(h.echo.receive(decode_heartbeat_untrusted(frame)))


async def test_data_planes_prove_the_vxlan_path_and_not_one_way(
        port: NetlinkPort, native: Backend) -> None:
    with contextlib.ExitStack() as stack:
        namespaces = stack.enter_context(Namespaces())
        ns = [namespaces.add("h1"), namespaces.add("h2")]
        ip("-n", ns[0], "link", "add", "ul", "type", "veth", "peer", "name", "ul",
           "netns", ns[1])
        for n, address in zip(ns, IPS, strict=True):
            ip("-n", n, "addr", "add", f"{address}/24", "dev", "ul")
            ip("-n", n, "link", "set", "ul", "up")
        hosts = [await _host(port, stack, native, ns[i], i) for i in (0, 1)]
        for h, other in ((hosts[0], hosts[1]), (hosts[1], hosts[0])):
            h.service.set_peers({other.name: other.ip})  # flood entry
            h.service.set_heartbeats({other.name: other.ip})  # heartbeat MAC entry, pins
            assert await h.service.converge()

        heard: list[set[Heard]] = [set(), set()]
        deadline = time.monotonic() + 20.0
        while not all(Heard.BOTH_WAYS in s for s in heard):
            assert time.monotonic() < deadline, f"heard only {heard}"
            _round(hosts, heard, native)
        for h in hosts:
            stats = h.dp.statistics()
            assert stats["upcalls"] >= 1 and stats["drops"]["queue_full"] == 0
            assert stats["frames_relayed"] == 0 and stats["peers"] == {}  # not the sleeve
        for n in ns:  # they went through the VXLAN devices
            shown = subprocess.run(["ip", "-n", n, "-s", "-j", "link", "show", "vxlan-6784"],
                                   check=True, capture_output=True, timeout=10).stdout
            assert json.loads(shown)[0]["stats64"]["rx"]["packets"] > 0

        # Break one direction: host 2 sends no VXLAN to host 1 (dropped on its way out;
        # deleting host 2's FDB entries would not do: its device would learn host 1's
        # heartbeat MAC again from host 1's frames); host 1 -> host 2 still works.
        subprocess.run(["ip", "netns", "exec", ns[1], "nft", "-f", "-"], check=True,
                       timeout=10, input=(
                           "table inet hfoneway {\n chain output { type filter hook output"
                           f" priority 0; ip daddr {hosts[0].ip} udp dport 6784 drop; }}\n}}\n"
                       ).encode())
        drain: list[set[Heard]] = [set(), set()]
        for _ in range(4):  # what was in flight, and echoes of seqs still recent
            _round(hosts, drain, native)
        heard = [set(), set()]
        for _ in range(12):
            _round(hosts, heard, native)
        assert heard == [set(), {Heard.ONE_WAY}], heard
