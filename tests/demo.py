"""``make demo``: three hosts in network namespaces form a weave-router mesh.

1. build hosts host1..host3 on one underlay LAN (``router/testing/netns.py``);
2. ``weave-router launch`` on host1, ``weave-router launch <host1's IP>`` on host2 and host3;
3. wait until every host has two established connections (host2 and host3 find each other
   by discovery);
4. print each host's ``status`` and ``status connections``;
5. clean up: stop the routers, delete the namespaces (always: on success, failure, Ctrl-C).

Exits 0 on success, 1 with the reason on failure, 130 when interrupted. Needs root.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from types import FrameType

from router.testing.netns import CommandError, Host, Mesh, WaitTimeout

N_HOSTS = 3


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
    print(f"full mesh after {time.monotonic() - started:.1f}s\n")
    for host in mesh.hosts:
        _show(host)
        _show(host, "connections")


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
        print("demo done: every host saw two established connections")
    return code


if __name__ == "__main__":
    sys.exit(main())
