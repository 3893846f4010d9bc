"""The container image: two router containers in two host namespaces form a mesh from
Weave's environment variables; namespaces attached through them ping each other; a
stopped and started container is the same peer with the same IPAM data.

The image is built with podman (runc, explicit ulimits, storage under
``build/podman-pkg/``) from a Debian rootfs made by debootstrap; the rootfs and the image
are cached by the digest of their sources, so only the first run after a change builds
(cold: debootstrap about 1.5 minutes, the image about 3; warm: nothing).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from router.testing.netns import BareContainer, Host, Mesh, wait_until
from router.testing.podman import busybox_image, no_new_netavark_chains
from tests.integration.image_helpers import BUILD, IMAGE_BUILD_TIMEOUT, Podman, ensure_image

# The test that first needs the image builds it (when the cache misses): give it the time.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(IMAGE_BUILD_TIMEOUT + 300)]
MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "weave-router.yaml"
MakeMesh = Callable[..., Mesh]
PASSWORD = "image-test-password"
RANGE = "10.44.0.0/16"
_OURS = re.compile(r"^wr(\d+)n\d+-r\d+$")  # containers of Mesh prefixes: wr<pid>n<seq>-rN


@pytest.fixture(scope="module")
def podman() -> Iterator[Podman]:
    with no_new_netavark_chains("tests/integration/test_image.py"):
        podman = Podman()
        _remove_stale_containers(podman)
        yield podman


@pytest.fixture(scope="module")
def image(podman: Podman) -> str:
    tag, times = ensure_image(podman)
    if times:
        print("image built:", ", ".join(f"{k} {v:.0f}s" for k, v in times.items()))
    return tag


def _remove_stale_containers(podman: Podman) -> None:
    """Containers of earlier runs whose test process is gone (it crashed)."""
    names = podman.run("ps", "-a", "--format", "{{.Names}}").stdout.split()
    for name in names:
        match = _OURS.match(name)
        if match and not os.path.exists(f"/proc/{match.group(1)}"):
            podman.run("rm", "-f", "-t", "0", name, check=False)


@dataclass
class RouterContainer:
    """One router container, running in ``host``'s network namespace."""

    podman: Podman
    image: str
    host: Host
    name: str
    env: dict[str, str]

    def start_new(self) -> None:
        state = self.host.dir / "state"
        state.mkdir(exist_ok=True)
        args = ["run", "-d", "--name", self.name, "--network", f"ns:/run/netns/{self.host.name}",
                "--cap-add", "NET_ADMIN", "--cap-add", "SYS_ADMIN", "--device", "/dev/net/tun",
                "-v", "/run/netns:/run/netns:rslave", "-v", f"{state}:/var/lib/weave-router"]
        for key, value in self.env.items():
            args += ["-e", f"{key}={value}"]
        self.podman.run(*args, self.image, timeout=60)

    def cli(self, *args: str, check: bool = True) -> str:
        """``weave-router ARGS`` of the image, in this container (``podman exec``)."""
        return self.podman.run("exec", self.name, "weave-router", *args, check=check,
                               timeout=30).stdout

    def logs(self) -> str:
        proc = self.podman.run("logs", "--tail", "40", self.name, check=False)
        return proc.stdout + proc.stderr

    def wait_established(self, n: int, timeout: float = 30.0) -> str:
        def probe() -> tuple[bool, str]:
            proc = self.podman.run("exec", self.name, "weave-router", "status", "connections",
                                   check=False, timeout=15)
            lines = [line for line in proc.stdout.splitlines() if line.strip()]
            ok = len(lines) == n and all(" established " in line for line in lines)
            return ok, proc.stdout + proc.stderr

        return wait_until(f"{n} established connection(s) in {self.name}", probe,
                          timeout=timeout, context=self.logs)

    def attach(self, container: BareContainer) -> str:
        """``weave-router attach NAME``: an address from IPAM; returns it (as it prints it,
        without the prefix length)."""
        addr = self.cli("attach", container.name).strip()
        assert ipaddress.IPv4Address(addr) in ipaddress.IPv4Network(RANGE), addr
        return addr

    def ring(self) -> list[tuple[str, int, str]]:
        """Who owns which part of the range: (token, size, peer) of each ring entry (the
        versions are left out: a restarted router re-asserts its own entries)."""
        entries = json.loads(self.cli("report", "-f", "{{json .IPAM.Entries}}"))
        return [(e["Token"], e["Size"], e["Peer"]) for e in entries]


@pytest.fixture
def pair(podman: Podman, image: str,
         make_mesh: MakeMesh) -> Iterator[tuple[Mesh, RouterContainer, RouterContainer]]:
    """Two hosts and a router container for each (not started); both removed afterwards,
    their logs printed (pytest shows them when the test failed)."""
    mesh = make_mesh(2)
    h1, h2 = mesh.hosts
    common = {"WEAVE_PASSWORD": PASSWORD, "IPALLOC_RANGE": RANGE, "IPALLOC_INIT": "consensus=2",
              "CONN_LIMIT": "20", "WEAVE_MTU": "1400", "CHECKPOINT_DISABLE": "1",
              "EXTRA_ARGS": "--log-level=info"}
    made = [RouterContainer(podman, image, h1, f"{mesh.prefix}-r1",
                            {**common, "NICKNAME": "box1", "PEERS": h2.ip}),
            RouterContainer(podman, image, h2, f"{mesh.prefix}-r2",
                            {**common, "NICKNAME": "box2", "KUBE_PEERS": f"{h1.ip}"})]
    try:
        yield mesh, made[0], made[1]
    finally:
        for router in made:
            print(f"--- podman logs {router.name} ---\n{router.logs()}")
            podman.run("rm", "-f", "-t", "5", router.name, check=False, timeout=60)


def _kubelet_probe(host: Host) -> None:
    """The DaemonSet's readiness probe, as a kubelet on the node sends it: 200."""
    (daemonset,) = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    (weave,) = daemonset["spec"]["template"]["spec"]["containers"]
    get = weave["readinessProbe"]["httpGet"]
    script = ("import http.client, sys; c = http.client.HTTPConnection(sys.argv[1], "
              "int(sys.argv[2]), timeout=5); c.request('GET', sys.argv[3], headers="
              "{'User-Agent': 'kube-probe/1.30', 'Accept': '*/*'}); print(c.getresponse().status)")
    out = host.run(["python3", "-c", script, get["host"], str(get["port"]), get["path"]],
                   timeout=15).stdout
    assert out.strip() == "200", out


def test_two_router_containers_connect_hosts_and_keep_their_identity(
        pair: tuple[Mesh, RouterContainer, RouterContainer]) -> None:
    mesh, r1, r2 = pair
    for router in (r1, r2):
        router.start_new()
    for router in (r1, r2):
        lines = router.wait_established(1)
        assert "encrypted" in lines and "sleeve" in lines, lines
    _kubelet_probe(r1.host)
    c1, c2 = mesh.add_bare_container(r1.host), mesh.add_bare_container(r2.host)
    addr1, addr2 = r1.attach(c1), r2.attach(c2)
    assert c2.addresses("ethwe") == [f"{addr2}/16"]
    c1.run(["ping", "-c", "3", "-i", "0.2", "-W", "2", addr2], timeout=30)
    assert "box2" in r2.cli("status")

    name = r2.cli("report", "-f", "{{.Router.Name}}").strip()
    ring = r2.ring()
    assert name in {peer for _, _, peer in ring}, ring
    r2.podman.run("stop", "-t", "10", r2.name, timeout=60)
    assert r2.podman.run("inspect", "-f", "{{.State.ExitCode}}", r2.name).stdout.strip() == "0"
    r2.podman.run("start", r2.name, timeout=60)
    r2.wait_established(1)
    r1.wait_established(1)
    assert r2.cli("report", "-f", "{{.Router.Name}}").strip() == name
    assert r2.ring() == ring
    assert f"{addr2}/16" in r2.cli("ps", c2.name)
    c3 = mesh.add_bare_container(r2.host)
    addr3 = r2.attach(c3)  # c2's address is still allocated: c3 gets another one
    assert addr3 != addr2
    c1.run(["ping", "-c", "3", "-i", "0.2", "-W", "2", addr2], timeout=30)
    c3.run(["ping", "-c", "3", "-i", "0.2", "-W", "2", addr1], timeout=30)


def test_the_image_runs_the_compiled_data_plane_without_a_compiler(
        podman: Podman, image: str) -> None:
    def sh(script: str) -> str:
        return podman.run("run", "--rm", "--entrypoint", "sh", image, "-c", script).stdout

    version = sh("weave-router version")
    assert "dataplane native (compiled router._fastpath), ciphers aes256gcm secretbox" in version
    assert "extension /opt/weave-router/lib/python3.11/site-packages/router/_fastpath" in version
    found = sh("for t in gcc cc go pip pip3 python3-config pkg-config; do "
               "command -v $t || true; done; ls /usr/include 2>/dev/null | head -n 3")
    assert found == "", found
    size = int(podman.run("image", "inspect", "--format", "{{.Size}}", image).stdout)
    print(f"image {image}: {size / 1e6:.0f} MB")


def test_the_entry_point_lists_its_variables_and_refuses_unsupported_ones(
        podman: Podman, image: str) -> None:
    from cli.entrypoint import DOCUMENTED, UNSUPPORTED

    text = podman.run("run", "--rm", image, "--help").stdout
    listed = set(re.findall(r"^  ([A-Z_]+)  ", text, re.M))
    assert listed == DOCUMENTED | set(UNSUPPORTED), text
    proc = podman.run("run", "--rm", "-e", "WEAVE_EXPOSE_IP=10.44.0.1", image, check=False)
    assert proc.returncode == 2, proc
    assert proc.stderr == ("weave-router-entrypoint: error: WEAVE_EXPOSE_IP=10.44.0.1: "
                           "not done at start: run `weave-router expose ip:CIDR`\n"), proc.stderr
    proc = podman.run("run", "--rm", "-e", "CONN_LIMIT=lots", image, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith(
        "weave-router-entrypoint: error: CONN_LIMIT (--conn-limit): "), proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr


def test_install_cni_copies_the_plugin_and_conflist_into_the_host(
        podman: Podman, image: str, tmp_path: Path) -> None:
    podman.run("run", "--rm", "-e", "HAIRPIN_MODE=false", "-v", f"{tmp_path}:/host", image,
               "install-cni")
    plugin = tmp_path / "opt/cni/bin/weave-net"
    assert plugin.is_file() and os.access(plugin, os.X_OK)
    assert os.readlink(tmp_path / "opt/cni/bin/weave-ipam") == "weave-net"
    conf = json.loads((tmp_path / "etc/cni/net.d/10-weave.conflist").read_text())
    assert conf["plugins"][0]["type"] == "weave-net"
    assert conf["plugins"][0]["hairpinMode"] is False
    proc = subprocess.run([str(plugin)], env={"CNI_COMMAND": "VERSION"}, input="{}",
                          capture_output=True, text=True, timeout=10)
    assert proc.returncode == 0 and "1.0.0" in json.loads(proc.stdout)["supportedVersions"]


def test_the_suites_podman_gives_a_container_no_network_it_did_not_ask_for() -> None:
    """``podman run`` without ``--network`` (as this file's runs of the image): no network,
    so netavark (podman's default backend here) adds no firewall chains. Run in a namespace
    of the test's own, where they would land, so a failure leaves the root one clean."""
    base = Path(tempfile.mkdtemp(prefix="wrnv-", dir="/tmp"))  # podman: runroot <= 50 chars
    podman = Podman(base)
    ns = f"wr{os.getpid()}-netavark"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        def run(*args: str) -> subprocess.CompletedProcess[str]:
            proc = subprocess.run(["nsenter", f"--net=/run/netns/{ns}", *podman.argv(*args)],
                                  env=podman.env(), capture_output=True, text=True,
                                  timeout=120)
            assert proc.returncode == 0, f"podman {' '.join(args)}: {proc.stderr}"
            return proc

        run("import", "--change", 'CMD ["sh"]', str(busybox_image(BUILD / "images")),
            "localhost/wr-netavark-probe")
        run("run", "--rm", "localhost/wr-netavark-probe", "true")
        chains = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "chains"],
                                capture_output=True, text=True, check=True).stdout
        assert "NETAVARK" not in chains, chains
        assert "lo" in run("run", "--rm", "localhost/wr-netavark-probe", "ls",
                           "/sys/class/net").stdout.split()
    finally:
        subprocess.run(podman.argv("rm", "--all", "--force"), env=podman.env(),
                       capture_output=True, timeout=120)
        subprocess.run(podman.argv("system", "reset", "--force"), env=podman.env(),
                       capture_output=True, timeout=120)
        subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(base, ignore_errors=True)
