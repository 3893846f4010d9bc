"""The five ways the benchmark connects a container on host1 to a container on host2.

Every mode starts from a fresh two-host :class:`~router.testing.netns.Mesh` (host1 and
host2 on one underlay bridge, eth0 MTU 1500) and returns the :class:`Pair` to measure:

* ``underlay``: no overlay. Each container's ``ethwe`` has an address in its own /24
  (10.97.1.0/24 on host1, 10.97.2.0/24 on host2) with the host end of the veth as its
  gateway; each host forwards and routes the other container's /24 via the other host's
  underlay address. Container to container, routed, no encapsulation: the floor for
  latency and the ceiling for throughput.
* ``vxlan``: kernel VXLAN set up by hand, the kernel's limit for an overlay. Each host has
  a bridge ``brbench`` with the container's veth and a VXLAN device ``vxbench`` (VNI 42,
  UDP 4789, learning off, the other host as the default remote). MTUs: underlay - 50.
  Containers share 10.96.0.0/16 (one L2 segment).
* ``sleeve``: ``weave-router launch`` on host1, ``launch <host1>`` on host2 (plus
  ``--no-fastdp`` when the CLI has it, so the sleeve is measured, never fastdp), then
  ``weave-router attach ip:10.96.1.N/16 CONTAINER`` on bare container namespaces (the
  router creates ``ethwe`` itself). The addresses lie outside the IPAM range on purpose:
  an address inside it is claimed from IPAM and refused when the other peer owns it.
  The connection must show ``established ... sleeve``.
* ``sleeve-encrypted``: the same with ``--password``; the connection must show
  ``encrypted``.
* ``fastdp``: ``weave-router launch --mtu <underlay - 50>`` on both hosts (the container
  MTU of ``vxlan``, so the two compare like for like): the router's own kernel VXLAN
  device (``vxlan-6784``) carries the traffic; the connection must show ``established
  fastdp``. The routers' CPU is what the control plane costs while the kernel forwards.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field

from router.testing.netns import CommandError, ConnectionLine, Host, Mesh, Namespace

VXLAN_VNI = 42
VXLAN_PORT = 4789
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8 bytes
BENCH_PASSWORD = "weave-router-bench"  # a throwaway mesh in namespaces
# Outside the routers' IPAM range (10.32.0.0/12), so `attach ip:` does not claim them from
# IPAM: whichever peer owns that space, the bench measures the data plane, not consensus.
OVERLAY_ADDRS = ("10.96.1.1", "10.96.1.2")
OVERLAY_PREFIX = 16
ESTABLISH_TIMEOUT = 30.0  # seconds for the two routers to connect


class ModeUnavailable(RuntimeError):
    """The mode cannot run on this build (e.g. the CLI lacks a command it needs)."""


@dataclass(frozen=True)
class Pair:
    """What to measure: pings and iperf3 from ``client`` to ``server_ip`` in ``server``."""

    client: Namespace
    server: Namespace
    server_ip: str
    path: str  # how the containers are connected, for the table and the JSON
    mtu: int  # the client container's interface MTU
    details: dict[str, str] = field(default_factory=dict)
    watch: tuple[Namespace, ...] = ()  # whose processes' CPU use to report (the routers)


Setup = Callable[[Mesh, contextlib.ExitStack], Pair]


@dataclass(frozen=True)
class Mode:
    """A named way to connect the two containers."""

    name: str
    setup: Setup


def link_mtu(ns: Namespace, dev: str) -> int:
    """The MTU of ``dev`` in ``ns`` (from ``ip -j link show``)."""
    out = ns.run(["ip", "-j", "link", "show", "dev", dev], timeout=10.0).stdout
    return int(json.loads(out)[0]["mtu"])


def _ip(ns: Namespace, *args: str) -> None:
    ns.run(["ip", *args], timeout=10.0)


def setup_underlay(mesh: Mesh, stack: contextlib.ExitStack) -> Pair:
    """Containers routed host to host over the underlay, nothing encapsulated."""
    h1, h2 = mesh.hosts[:2]
    containers = [mesh.add_container(h1), mesh.add_container(h2)]
    for i, (host, cont, other) in enumerate(((h1, containers[0], h2),
                                             (h2, containers[1], h1)), start=1):
        gateway, addr, far = f"10.97.{i}.1", f"10.97.{i}.2", f"10.97.{3 - i}.0/24"
        _ip(host, "addr", "add", f"{gateway}/24", "dev", cont.host_veth)
        _ip(host, "link", "set", cont.host_veth, "up")
        host.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], timeout=10.0)
        _ip(host, "route", "add", far, "via", other.ip)
        _ip(cont, "addr", "add", f"{addr}/24", "dev", "ethwe")
        _ip(cont, "link", "set", "ethwe", "up")
        _ip(cont, "route", "add", "default", "via", gateway)
    return Pair(containers[0], containers[1], "10.97.2.2",
                "container to container, routed over the underlay (no overlay)",
                link_mtu(containers[0], "ethwe"))


def setup_vxlan(mesh: Mesh, stack: contextlib.ExitStack) -> Pair:
    """Containers bridged to a hand-made kernel VXLAN device on each host."""
    h1, h2 = mesh.hosts[:2]
    containers = [mesh.add_container(h1), mesh.add_container(h2)]
    mtu = link_mtu(h1, "eth0") - VXLAN_OVERHEAD
    for i, (host, cont, other) in enumerate(((h1, containers[0], h2),
                                             (h2, containers[1], h1))):
        _ip(host, "link", "add", "vxbench", "type", "vxlan", "id", str(VXLAN_VNI),
            "local", host.ip, "remote", other.ip, "dstport", str(VXLAN_PORT), "dev", "eth0",
            "nolearning")
        _ip(host, "link", "set", "vxbench", "mtu", str(mtu))
        _ip(host, "link", "add", "brbench", "type", "bridge")
        _ip(host, "link", "set", "vxbench", "master", "brbench", "up")
        _ip(host, "link", "set", cont.host_veth, "mtu", str(mtu), "master", "brbench", "up")
        _ip(host, "link", "set", "brbench", "up")
        _ip(cont, "link", "set", "ethwe", "mtu", str(mtu))
        _ip(cont, "addr", "add", f"{OVERLAY_ADDRS[i]}/{OVERLAY_PREFIX}", "dev", "ethwe")
        _ip(cont, "link", "set", "ethwe", "up")
    return Pair(containers[0], containers[1], OVERLAY_ADDRS[1],
                f"kernel VXLAN (VNI {VXLAN_VNI}, UDP {VXLAN_PORT}) bridged to the containers",
                link_mtu(containers[0], "ethwe"))


def _cli_has(host: Host, *args: str, word: str) -> bool:
    """Whether ``weave-router ARGS --help`` succeeds and mentions ``word``."""
    proc = host.router(*args, "--help", check=False, timeout=20.0)
    return proc.returncode == 0 and word in proc.stdout


def _bare_namespace(mesh: Mesh, stack: contextlib.ExitStack, index: int) -> Namespace:
    """``<prefix>-b<index>``: a namespace with only ``lo``, removed when ``stack`` unwinds
    (before the mesh itself, whose teardown insists nothing of its prefix is left)."""
    ns = Namespace(f"{mesh.prefix}-b{index}", mesh.env)
    _root_ip("netns", "add", ns.name)
    stack.callback(_delete_namespace, ns)
    _ip(ns, "link", "set", "lo", "up")
    return ns


def _root_ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10.0)
    if proc.returncode != 0:
        raise CommandError(f"`ip {' '.join(args)}` exited {proc.returncode}: "
                           f"{proc.stderr.strip()}")


def _delete_namespace(ns: Namespace) -> None:
    ns.kill_all()
    _root_ip("netns", "del", ns.name)


def _sleeve_line(host: Host, encrypted: bool, overlay: str = "sleeve") -> ConnectionLine:
    """Wait for the one connection to be ``established`` over ``overlay`` (and encrypted
    exactly when asked); return its line."""
    def accept(lines: list[ConnectionLine]) -> bool:
        if len(lines) != 1 or lines[0].state != "established":
            return False
        words = lines[0].text.split()
        return overlay in words and ("encrypted" in words) == encrypted

    want = f"1 established {overlay} connection" + (", encrypted" if encrypted else "")
    return host.wait_connections(accept, want, timeout=ESTABLISH_TIMEOUT)[0]


def _setup_sleeve(mesh: Mesh, stack: contextlib.ExitStack, encrypted: bool) -> Pair:
    h1, h2 = mesh.hosts[:2]
    if not _cli_has(h1, "attach", word="CONTAINER"):
        raise ModeUnavailable("`weave-router attach` does not exist yet (attach --help failed)")
    flags = ["--password", BENCH_PASSWORD] if encrypted else []
    if _cli_has(h1, "launch", word="--no-fastdp"):
        flags.append("--no-fastdp")
    h1.launch(*flags)
    h2.launch(*flags, h1.ip)
    lines = [_sleeve_line(h, encrypted) for h in (h1, h2)]
    containers = [_bare_namespace(mesh, stack, i) for i in (1, 2)]
    for host, cont, addr in zip((h1, h2), containers, OVERLAY_ADDRS, strict=True):
        host.router("attach", f"ip:{addr}/{OVERLAY_PREFIX}", cont.name, timeout=30.0)
    how = "weave-router sleeve" + (", encrypted (--password)" if encrypted else "")
    return Pair(containers[0], containers[1], OVERLAY_ADDRS[1], how,
                link_mtu(containers[0], "ethwe"),
                {"launch_flags": " ".join(f for f in flags if f != BENCH_PASSWORD),
                 "connection_host1": lines[0].text, "connection_host2": lines[1].text},
                (h1, h2))


def setup_sleeve(mesh: Mesh, stack: contextlib.ExitStack) -> Pair:
    """weave-router on both hosts, no password: the sleeve overlay in the clear."""
    return _setup_sleeve(mesh, stack, encrypted=False)


def setup_sleeve_encrypted(mesh: Mesh, stack: contextlib.ExitStack) -> Pair:
    """weave-router on both hosts with ``--password``: the sleeve overlay sealed."""
    return _setup_sleeve(mesh, stack, encrypted=True)


def setup_fastdp(mesh: Mesh, stack: contextlib.ExitStack) -> Pair:
    """weave-router on both hosts, fastdp at the hand-made VXLAN's container MTU."""
    h1, h2 = mesh.hosts[:2]
    if not _cli_has(h1, "launch", word="--no-fastdp"):
        raise ModeUnavailable("this weave-router has no fastdp (no --no-fastdp flag)")
    flags = ["--mtu", str(link_mtu(h1, "eth0") - VXLAN_OVERHEAD)]
    h1.launch(*flags)
    h2.launch(*flags, h1.ip)
    lines = [_sleeve_line(h, False, overlay="fastdp") for h in (h1, h2)]
    containers = [_bare_namespace(mesh, stack, i) for i in (1, 2)]
    for host, cont, addr in zip((h1, h2), containers, OVERLAY_ADDRS, strict=True):
        host.router("attach", f"ip:{addr}/{OVERLAY_PREFIX}", cont.name, timeout=30.0)
    return Pair(containers[0], containers[1], OVERLAY_ADDRS[1],
                "weave-router fastdp (kernel VXLAN vxlan-6784 programmed by the router)",
                link_mtu(containers[0], "ethwe"),
                {"launch_flags": " ".join(flags),
                 "connection_host1": lines[0].text, "connection_host2": lines[1].text},
                (h1, h2))


MODES: dict[str, Mode] = {
    m.name: m for m in (
        Mode("underlay", setup_underlay),
        Mode("vxlan", setup_vxlan),
        Mode("sleeve", setup_sleeve),
        Mode("sleeve-encrypted", setup_sleeve_encrypted),
        Mode("fastdp", setup_fastdp),
    )
}
BASELINE = "vxlan"  # throughput ratios are to this mode
LATENCY_BASELINE = "underlay"  # added latency is against this mode
