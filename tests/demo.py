"""``make demo``: three hosts in network namespaces form a weave-router mesh, and a
container on each host talks to the others across it.

1. build hosts host1..host3 on one underlay LAN (``router/testing/netns.py``);
2. ``weave-router launch`` on host1, ``weave-router launch <host1's IP>`` on host2 and host3;
3. wait until every host has two established connections (host2 and host3 find each other
   by discovery);
4. print each host's ``status`` and ``status connections``;
5. put a container (a bare network namespace) on each host on the network:
   ``weave-router attach CONTAINER`` on host N: IPAM allocates its address (the first
   attach triggers the consensus that splits 10.32.0.0/12 between the three peers),
   then ``weave-router ps`` and ``weave-router status ipam``;
6. each container pings the next one across hosts (c1 -> c2 -> c3 -> c1);
7. a short iperf3 (TCP, 3 s) from the container on host1 to the one on host2 prints the
   throughput, and the overlay that carried it (fastdp, the kernel's VXLAN, unless a
   host cannot: then the router's own sleeve);
8. clean up: stop the routers, delete the namespaces (always: on success, failure, Ctrl-C).

Exits 0 on success, 1 with the reason on failure, 130 when interrupted. Needs root.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from types import FrameType

from router.testing.netns import BareContainer, CommandError, Host, Mesh, WaitTimeout, wait_until

N_HOSTS = 3
IPERF_SECONDS = 3
IPERF_PORT = 5201  # iperf3's default, inside the container's own namespace


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _show(host: Host, *what: str) -> None:
    command = " ".join(["weave-router", "status", *what])
    print(f"==== {host.nickname} ({host.ip}, netns {host.name}): {command}")
    print(host.router("status", *what).stdout.rstrip())
    print()


def run_demo(mesh: Mesh) -> None:
    """Launch the routers, wait for the full mesh, print every host's status."""
    started = time.monotonic()
    h1 = mesh.hosts[0]
    print(f"built {N_HOSTS} hosts on 192.168.{mesh.subnet}.0/24 (namespaces {mesh.prefix}-*)")
    print(f"launching: host1 alone, then host2 and host3 with peer {h1.ip}")
    mesh.launch_star()
    mesh.wait_full_mesh(timeout=30)
    mesh.wait_routes(timeout=30)
    print(f"full mesh after {time.monotonic() - started:.1f}s\n")
    for host in mesh.hosts:
        _show(host)
        _show(host, "connections")
    containers = _attach_containers(mesh)
    _ping_around(containers)
    _iperf(containers[0], containers[1])


ADDRESSES: dict[str, str] = {}  # container name -> the address IPAM gave it


def _ip_of(container: BareContainer) -> str:
    return ADDRESSES[container.name]


def _attach_containers(mesh: Mesh) -> list[BareContainer]:
    """A bare container namespace on each host, attached with an address from IPAM."""
    containers = [mesh.add_bare_container(host) for host in mesh.hosts]
    for container in containers:
        print(f"==== {container.host.nickname}: weave-router attach {container.name}")
        address = container.attach().stdout.strip()
        print(address)
        ADDRESSES[container.name] = address.split()[0]
    print()
    for host in mesh.hosts:
        print(f"==== {host.nickname}: weave-router ps")
        print(host.router("ps").stdout.rstrip())
    _show(mesh.hosts[0], "ipam")
    print()
    return containers


def _ping_around(containers: list[BareContainer]) -> None:
    """Each container pings the next one (on the next host); fails unless all replies come."""
    for src, dst in zip(containers, containers[1:] + containers[:1], strict=True):
        proc = src.run(["ping", "-n", "-c", "3", "-i", "0.2", "-w", "10", _ip_of(dst)],
                       check=False, timeout=20)
        summary = [line for line in proc.stdout.splitlines() if "transmitted" in line or
                   line.startswith("rtt")]
        print(f"ping {src.name} ({src.host.nickname}) -> {_ip_of(dst)} "
              f"({dst.name} on {dst.host.nickname}): {'; '.join(summary)}")
        if proc.returncode != 0:
            raise CommandError(f"ping {_ip_of(dst)} from {src.name} failed:\n"
                               f"{proc.stdout}{proc.stderr}")
    print()


def _iperf(client: BareContainer, server: BareContainer) -> None:
    """iperf3 TCP for a few seconds from ``client`` to ``server``; print the throughput."""
    listener = server.popen(["iperf3", "-s", "-1", "-p", str(IPERF_PORT)],
                            stdout=subprocess.DEVNULL)

    def listening() -> tuple[bool, str]:
        out = server.run(["ss", "-Htln", f"sport = :{IPERF_PORT}"], check=False).stdout
        return bool(out.strip()) or listener.poll() is not None, out or "(no listener)"

    try:
        wait_until(f"iperf3 -s to listen in {server.name}", listening, timeout=10)
        proc = client.run(["iperf3", "-c", _ip_of(server), "-p", str(IPERF_PORT),
                           "-t", str(IPERF_SECONDS), "-J"], check=False,
                          timeout=IPERF_SECONDS + 20)
    finally:
        try:
            listener.wait(timeout=5)  # -1: it exits after one test
        except subprocess.TimeoutExpired:
            listener.kill()
            listener.wait()
    if proc.returncode != 0:
        raise CommandError(f"iperf3 from {client.name} failed: {_iperf_error(proc.stdout)}"
                           f"{proc.stderr}")
    end = json.loads(proc.stdout)["end"]
    rate = end["sum_received"]["bits_per_second"] / 1e9
    sent = end["sum_sent"]["bytes"] / 2**20
    overlay = re.search(rf"established (?:encrypted\s+)?(\w+) \S+\({server.host.nickname}\)",
                        client.host.status("connections"))
    print(f"iperf3 TCP {client.name} ({client.host.nickname}) -> {_ip_of(server)} "
          f"({server.host.nickname}), {IPERF_SECONDS} s through "
          f"{overlay.group(1) if overlay else 'the overlay'}: "
          f"{rate:.2f} Gbit/s ({sent:.0f} MiB sent, {end['sum_sent'].get('retransmits', 0)} "
          "retransmits)")
    print()
    _show(client.host, "connections")


def _iperf_error(output: str) -> str:
    match = re.search(r'"error":\s*"([^"]*)"', output)
    return match.group(1) + "\n" if match else ""


def main() -> int:
    if os.geteuid() != 0:
        print("make demo needs root (it creates network namespaces)", file=sys.stderr)
        return 1
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    mesh: Mesh | None = None
    code = 0
    try:
        mesh = Mesh.build(n_hosts=N_HOSTS)  # removes what it made if it fails half-way
        run_demo(mesh)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    except (WaitTimeout, CommandError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        code = 1
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):  # cleanup runs to its end
            signal.signal(signum, signal.SIG_IGN)
        if mesh is not None:
            print("cleaning up: stopping routers, deleting namespaces")
            try:
                mesh.close()
            except CommandError as exc:
                print(f"cleanup failed: {exc}", file=sys.stderr)
                code = code or 1
    if code == 0:
        print("demo done: every host saw two established connections, "
              "containers on every host reached each other")
    return code


if __name__ == "__main__":
    sys.exit(main())
