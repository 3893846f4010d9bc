"""The weave-net plugin under real container runtimes, each run inside a host namespace
whose router the plugin dials (``127.0.0.1:6784`` there):

* podman 4.3 (CNI backend, runc, its own storage: :mod:`router.testing.podman`) on two
  hosts: ``podman run --network weave`` gets an address from weave IPAM, the routes and
  the multicast route, pings the other host's container; ``podman rm`` frees the address;
* ``podman kube play`` of a two-pod manifest (the ``K8S_POD_*`` CNI_ARGS are recorded)
  and ``podman kube down``;
* ``ctr run --cni`` against a containerd the test starts in the host namespace (its own
  root, state and socket) and stops: ADD with ``/proc/PID/ns/net``, DEL with an empty
  ``CNI_NETNS``.

The plugin and conflist are installed by ``weave-router setup-cni`` into directories of
the test (never ``/opt/cni`` or ``/etc/cni`` of the machine).
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from router.cni.model import host_veth
from router.testing.containerd import Containerd
from router.testing.netns import Host, Mesh
from router.testing.podman import (
    IMAGE,
    Podman,
    busybox_image,
    busybox_rootfs,
    no_new_netavark_chains,
)

pytestmark = pytest.mark.integration
MakeMesh = Callable[..., Mesh]

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "build" / "cni" / "weave-net"
IMAGES = ROOT / "build" / "images"
REFERENCE_PLUGINS = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
RANGE = ipaddress.IPv4Network("10.32.0.0/12")
MULTICAST = "224.0.0.0/4"
LIBCNI_CACHE = Path("/var/lib/cni/results")  # podman's libcni caches ADD results there



@pytest.fixture(scope="module", autouse=True)
def _root_namespace_gains_no_netavark_chains() -> Iterator[None]:
    """Every podman here names its network: netavark's firewall never runs in the root
    namespace (:func:`router.testing.podman.no_new_netavark_chains`)."""
    with no_new_netavark_chains("tests/integration/test_cni_runtimes.py"):
        yield

@pytest.fixture(scope="module", autouse=True)
def built_plugin() -> None:
    subprocess.run(["make", "-s", "cni"], cwd=ROOT, check=True, timeout=300,
                   capture_output=True)
    assert PLUGIN.is_file()


@pytest.fixture(scope="module")
def image() -> Path:
    IMAGES.mkdir(parents=True, exist_ok=True)
    return busybox_image(IMAGES)


@pytest.fixture
def cni_dirs(tmp_path: Path) -> tuple[Path, Path]:
    """(plugin dir, conf dir) as ``weave-router setup-cni`` installs them, plus the
    reference plugins (``loopback``) a runtime may want beside ours."""
    bin_dir, conf_dir = tmp_path / "cni-bin", tmp_path / "cni-conf"
    subprocess.run([str(ROOT / ".venv" / "bin" / "weave-router"), "setup-cni",
                    "--plugin", str(PLUGIN), "--cni-bin-dir", str(bin_dir),
                    "--cni-conf-dir", str(conf_dir)], check=True, timeout=30,
                   capture_output=True)
    (bin_dir / "loopback").symlink_to(REFERENCE_PLUGINS / "loopback")
    return bin_dir, conf_dir


@pytest.fixture(scope="module")
def shared_mesh() -> Iterator[Mesh]:
    """Two hosts with routers, shared by the tests that leave no container behind (each
    has podmen of its own and checks its host holds no attachment when it is done)."""
    with Mesh.build(n_hosts=2) as mesh:
        mesh.launch_star()
        mesh.wait_full_mesh()
        yield mesh


@pytest.fixture
def two_hosts(shared_mesh: Mesh) -> Iterator[tuple[Host, Host]]:
    h1, h2 = shared_mesh.hosts
    yield h1, h2
    for host in (h1, h2):  # what a test left would mislead the next
        assert attachments(host) == [], f"{host.nickname} kept CNI attachments"


def podman_on(host: Host, tmp_path: Path, cni_dirs: tuple[Path, Path],
              image: Path) -> Podman:
    bin_dir, conf_dir = cni_dirs
    podman = Podman(tmp_path / f"podman-{host.nickname}", namespace=host,
                    cni_plugin_dirs=[bin_dir], network_config_dir=conf_dir)
    podman.load(image)
    return podman


@pytest.fixture
def podmen(two_hosts: tuple[Host, Host], tmp_path: Path, cni_dirs: tuple[Path, Path],
           image: Path) -> Iterator[tuple[Podman, Podman]]:
    h1, h2 = two_hosts
    p1 = podman_on(h1, tmp_path, cni_dirs, image)
    p2 = podman_on(h2, tmp_path, cni_dirs, image)
    try:
        yield p1, p2
    finally:
        p1.close()
        p2.close()


def ipam_holds(host: Host, ident: str) -> str:
    out = host.run(["curl", "-s", "-w", " %{http_code}", f"http://127.0.0.1:6784/ip/{ident}"])
    body, _, code = out.stdout.strip().rpartition(" ")
    return body.strip() if code == "200" else ""


def attachments(host: Host) -> list[dict[str, object]]:
    out = host.run(["curl", "-sf", "http://127.0.0.1:6784/cni/attachments"]).stdout
    found = json.loads(out)
    assert isinstance(found, list)
    return found


def container_ip(podman: Podman, name: str) -> tuple[str, str]:
    """(container id, CIDR on its eth0) of a running container."""
    [info] = podman.inspect(name)
    cid = str(info["Id"])
    out = podman.run("exec", name, "ip", "-o", "-4", "addr", "show", "dev", "eth0").stdout
    [cidr] = re.findall(r"\binet (\S+)", out)
    return cid, cidr


def check_plumbed(podman: Podman, name: str, host: Host,
                  ident: str | None = None) -> tuple[str, str]:
    """The container has a weave address that IPAM filed under ``ident`` (default: its
    id; a pod's: its infra container's), the connected route and the multicast route;
    (container id, CIDR)."""
    cid, cidr = container_ip(podman, name)
    assert ipaddress.IPv4Interface(cidr).ip in RANGE
    assert ipam_holds(host, ident or cid) == cidr
    routes = podman.run("exec", name, "ip", "route", "show").stdout
    assert f"{MULTICAST} dev eth0" in routes, routes
    assert str(ipaddress.IPv4Interface(cidr).network) in routes, routes
    return cid, cidr


def ping(podman: Podman, name: str, cidr: str) -> None:
    ip = str(ipaddress.IPv4Interface(cidr).ip)
    podman.run("exec", name, "ping", "-c", "1", "-W", "5", ip, timeout=30)


# --- podman run ------------------------------------------------------------------------


def test_podman_run_on_two_hosts_pings_across_and_rm_frees_the_address(
        two_hosts: tuple[Host, Host], podmen: tuple[Podman, Podman]) -> None:
    h1, h2 = two_hosts
    p1, p2 = podmen
    for podman in podmen:
        podman.run("run", "-d", "--name", "c", "--network", "weave", IMAGE,
                   "sleep", "600", timeout=90)
    cid1, cidr1 = check_plumbed(p1, "c", h1)
    cid2, cidr2 = check_plumbed(p2, "c", h2)
    assert cidr1 != cidr2
    ping(p1, "c", cidr2)
    ping(p2, "c", cidr1)
    p1.run("rm", "--force", "--time", "0", "c")
    assert ipam_holds(h1, cid1) == ""
    assert attachments(h1) == []
    assert ipam_holds(h2, cid2) == cidr2  # the other host's is untouched


# --- podman kube play ------------------------------------------------------------------

PODS = """\
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: shop
spec:
  restartPolicy: Never
  containers:
  - name: app
    image: {image}
    command: ["sleep", "600"]
"""


def test_podman_kube_play_two_pods_records_k8s_args_and_kube_down_frees(
        two_hosts: tuple[Host, Host], podmen: tuple[Podman, Podman], tmp_path: Path) -> None:
    h1, _ = two_hosts
    p1, p2 = podmen
    manifest = tmp_path / "pods.yaml"
    manifest.write_text("---\n".join(PODS.format(name=n, image=IMAGE) for n in ("web", "db")))
    p1.run("kube", "play", "--network", "weave", str(manifest), timeout=120)
    found = {}
    for record in attachments(h1):
        args = record["args"]
        assert isinstance(args, dict)
        found[str(args.get("K8S_POD_NAME"))] = record
    assert sorted(found) == ["db", "web"], found
    cidrs: dict[str, str] = {}
    for pod in ("web", "db"):
        record = found[pod]
        args = record["args"]
        assert isinstance(args, dict)
        # podman 4.3 sends only these two (its K8S_POD_NAMESPACE etc. were dropped, podman
        # issue 12083); the libcni driver test sends a kubelet's full set
        assert args == {"IgnoreUnknown": "1", "K8S_POD_NAME": pod}, args
        infra = str(record["containerId"])
        cid, cidrs[pod] = check_plumbed(p1, f"{pod}-app", h1, infra)
        assert cid != infra  # the app shares the infra container's namespace
        assert p1.run("pod", "inspect", "--format", "{{.InfraContainerID}}",
                      pod).stdout.strip() == infra
        assert record["cidrs"] == [cidrs[pod]]
    ping(p1, "web-app", cidrs["db"])
    # and a container on the other host reaches a pod
    p2.run("run", "-d", "--name", "c", "--network", "weave", IMAGE, "sleep", "600",
           timeout=90)
    ping(p2, "c", cidrs["web"])
    p1.run("kube", "down", str(manifest), timeout=120)
    assert attachments(h1) == []
    for pod in ("web", "db"):
        assert ipam_holds(h1, str(found[pod]["containerId"])) == ""


# --- ctr run --cni -----------------------------------------------------------------------


def test_ctr_run_cni_with_a_containerd_of_its_own(
        two_hosts: tuple[Host, Host], podmen: tuple[Podman, Podman],
        cni_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    h1, h2 = two_hosts
    _, p2 = podmen
    p2.run("run", "-d", "--name", "c", "--network", "weave", IMAGE, "sleep", "600",
           timeout=90)
    _, peer = check_plumbed(p2, "c", h2)
    rootfs = busybox_rootfs(tmp_path / "rootfs")
    bin_dir, conf_dir = cni_dirs
    with Containerd(h1) as ctd:
        # in the foreground, as a user runs it: ctr does ADD after creating the task
        # (CNI_NETNS=/proc/PID/ns/net) and DEL with an empty CNI_NETNS once it exits
        argv = ctd.ctr("run", *ctd.io_args(), "--rm", "--cni", "--rootfs", str(rootfs),
                       "wr-ctr",
                       "/bin/sh", "-c", "sleep 1000", cni_conf_dir=conf_dir,
                       cni_bin_dir=bin_dir)
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        try:
            def attached() -> tuple[bool, str]:
                if proc.poll() is not None:
                    raise AssertionError(f"ctr exited {proc.returncode}: "
                                         f"{proc.communicate()[0]}\n{ctd.log_tail()}")
                found = attachments(h1)
                return bool(found), json.dumps(found)
            [record] = json.loads(h1.wait("ctr's ADD", attached, timeout=60))
            cid, [cidr] = str(record["containerId"]), record["cidrs"]
            assert cid == "default-wr-ctr"  # ctr's namespace-id
            assert re.fullmatch(r"/proc/\d+/ns/net", str(record["netns"])), record
            assert ipam_holds(h1, cid) == cidr
            exec_ = ctd.run("tasks", "exec", "--fifo-dir", str(ctd.dir / "fifo"),
                            "--exec-id", "probe", "wr-ctr", "/bin/sh",
                            "-c", f"ip route; ping -c 1 -W 5 "
                                  f"{ipaddress.IPv4Interface(peer).ip}", timeout=30)
            assert f"{MULTICAST} dev eth0" in exec_.stdout, exec_.stdout
            ctd.run("tasks", "kill", "--signal", "SIGKILL", "wr-ctr")
            out, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode in (0, 137), out
    assert attachments(h1) == []
    assert ipam_holds(h1, cid) == ""


# --- as a new user tries it ----------------------------------------------------------------


def test_podman_with_the_router_stopped_a_wrong_conflist_and_rm_while_down(
        make_mesh: MakeMesh, tmp_path: Path, cni_dirs: tuple[Path, Path],
        image: Path) -> None:
    """The router stopped: podman says so and nothing is left; a wrong conflist: podman
    shows the plugin's message; a container removed while the router is down (podman's
    DEL fails) gets its address back when the router returns."""
    mesh = make_mesh(1)
    [h1] = mesh.hosts
    _, conf_dir = cni_dirs
    with podman_on(h1, tmp_path, cni_dirs, image) as podman:
        run = podman.run("run", "-d", "--name", "c", "--network", "weave", IMAGE,
                         "sleep", "600", check=False, timeout=90)
        assert run.returncode != 0
        assert "weave-router is not running" in run.stderr, run.stderr
        assert podman.run("ps", "-q").stdout.strip() == ""
        h1.launch()
        h1.wait_ready()
        wrong = json.loads((conf_dir / "10-weave.conflist").read_text())
        wrong["name"] = "wrong"
        wrong["plugins"][0]["ipam"] = {"subnet": "10.32.0.0/33"}
        (conf_dir / "20-wrong.conflist").write_text(json.dumps(wrong))
        run = podman.run("run", "--rm", "--network", "wrong", IMAGE, "true", check=False,
                         timeout=90)
        assert run.returncode != 0 and "ipam.subnet" in run.stderr, run.stderr
        podman.run("rm", "--force", "--all", "--time", "0")  # what the failed run left
        podman.run("run", "-d", "--name", "c", "--network", "weave", IMAGE, "sleep", "600",
                   timeout=90)
        cid, _ = check_plumbed(podman, "c", h1)
        h1.stop_router()
        try:
            podman.run("rm", "--force", "--time", "0", "c")  # its DEL fails: router down
        finally:  # so libcni keeps its cached result of the ADD (machine-wide): drop it
            LIBCNI_CACHE.joinpath(f"weave-{cid}-eth0").unlink(missing_ok=True)
        veth = host_veth(cid, "eth0")  # goes once the kernel destroyed the namespace

        def destroyed() -> tuple[bool, str]:
            return veth not in h1.links(), f"{veth} still in {h1.name}"

        h1.wait("the container's namespace to be destroyed", destroyed, timeout=30.0)
        h1.launch()
        h1.wait_ready()
        assert ipam_holds(h1, cid) == ""  # released before the router answered
        assert attachments(h1) == []
