"""The weave-net CNI plugin, driven as a runtime drives it: the built executable
(``make cni`` -> build/cni/weave-net) run inside a host namespace with ``CNI_*`` variables
and a network config on stdin, against a real router in that host.

Checked: results against the spec's shapes for 0.3.1/0.4.0/1.0.0, every verb (ADD, DEL,
CHECK, VERSION, STATUS, GC), the error paths (router stopped, bad config, unsupported
version, netns gone, missing variables), DEL twice and with an empty CNI_NETNS, the
weave-ipam mode, a delegated IPAM plugin, 50 concurrent ADDs, and two hosts' containers
pinging each other.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from router.testing.netns import BareContainer, Host, Mesh, run_parallel

pytestmark = pytest.mark.integration
MakeMesh = Callable[..., Mesh]

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_DIR = ROOT / "build" / "cni"
PLUGIN = PLUGIN_DIR / "weave-net"
IPAM_PLUGIN = PLUGIN_DIR / "weave-ipam"
HOST_LOCAL_DIR = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
SUPPORTED = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
RANGE = ipaddress.IPv4Network("10.32.0.0/12")
MULTICAST = "224.0.0.0/4"


@pytest.fixture(scope="module", autouse=True)
def built_plugin() -> None:
    """The plugin as `make setup` builds it (rebuilt here when a Go source changed)."""
    subprocess.run(["make", "-s", "cni"], cwd=ROOT, check=True, timeout=300,
                   capture_output=True)
    assert PLUGIN.is_file() and IPAM_PLUGIN.exists()


def conf(version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
    return {"cniVersion": version, "name": "weave", "type": "weave-net", **extra}


def cni(host: Host, command: str, config: dict[str, Any] | str | None, *,
        container: str = "", netns: str = "", ifname: str = "eth0",
        plugin: Path = PLUGIN, env: dict[str, str] | None = None,
        timeout: float = 60.0) -> tuple[int, Any]:
    """Run the plugin in ``host`` as a runtime would: (exit status, stdout as JSON or None)."""
    variables = {"CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_NETNS": netns,
                 "CNI_IFNAME": ifname, "CNI_PATH": str(PLUGIN_DIR), **(env or {})}
    text = config if isinstance(config, str) else json.dumps(config or {})
    proc = host.run([str(plugin)], check=False, input=text, timeout=timeout, env=variables)
    out = proc.stdout.strip()
    return proc.returncode, json.loads(out) if out else None


def netns_path(c: BareContainer) -> str:
    return f"/run/netns/{c.name}"


def add(host: Host, c: BareContainer, version: str = "1.0.0", cid: str | None = None,
        **extra: Any) -> dict[str, Any]:
    rc, out = cni(host, "ADD", conf(version, **extra), container=cid or c.name,
                  netns=netns_path(c))
    assert rc == 0, out
    assert isinstance(out, dict)
    return out


def check_result_shape(result: dict[str, Any], version: str, c: BareContainer) -> None:
    """The spec's result: interfaces (the container's with its sandbox), ips whose
    ``interface`` indexes it (0.3/0.4 with ``version: "4"``), routes, dns (1.0)."""
    assert result["cniVersion"] == version
    ifaces = result["interfaces"]
    assert [i["name"] for i in ifaces][1] == "eth0"
    assert ifaces[1]["sandbox"] == netns_path(c)
    assert all(len(i["mac"].split(":")) == 6 for i in ifaces)
    assert "sandbox" not in ifaces[0]  # the host end
    [ip] = result["ips"]
    assert ifaces[ip["interface"]]["name"] == "eth0"
    assert ipaddress.IPv4Interface(ip["address"]).ip in RANGE
    if version.startswith("0."):
        assert ip["version"] == "4"
    else:
        assert "version" not in ip
        assert isinstance(result["dns"], dict)
    assert {"dst": MULTICAST} in result["routes"]


@pytest.fixture
def host1(make_mesh: MakeMesh) -> Iterator[Host]:
    mesh = make_mesh(1)
    [h1] = mesh.hosts
    h1.launch()
    h1.wait_ready()
    yield h1


def bare(host: Host) -> BareContainer:
    return host.mesh.add_bare_container(host)


# --- VERSION and the results of ADD -----------------------------------------------------


def test_version_answers_the_supported_versions(host1: Host) -> None:
    rc, out = cni(host1, "VERSION", {"cniVersion": "1.0.0"})
    assert rc == 0
    assert out == {"cniVersion": "1.1.0", "supportedVersions": SUPPORTED}


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
def test_add_result_has_the_spec_shape_and_plumbs_the_namespace(host1: Host,
                                                                 version: str) -> None:
    c = bare(host1)
    result = add(host1, c, version, dns={"nameservers": ["10.32.0.53"]})
    check_result_shape(result, version, c)
    assert result["dns"] == {"nameservers": ["10.32.0.53"]}
    [ip] = result["ips"]
    assert c.addresses("eth0") == [ip["address"]]
    routes = c.run(["ip", "route", "show"]).stdout
    assert MULTICAST in routes
    # IPAM filed the address under the CNI container id
    assert host1.run(["curl", "-s", f"http://127.0.0.1:6784/ip/{c.name}"]).stdout.strip() \
        == ip["address"]
    host_veth = result["interfaces"][0]["name"]
    assert host_veth in host1.links()


def ipam_holds(host: Host, cid: str) -> str:
    """What the router's IPAM holds for ``cid`` (empty when nothing)."""
    out = host.run(["curl", "-s", "-w", " %{http_code}", f"http://127.0.0.1:6784/ip/{cid}"])
    body, _, code = out.stdout.strip().rpartition(" ")
    return body.strip() if code == "200" else ""


def error_of(out: Any, code: int) -> str:
    """The spec's error object: cniVersion, code, msg (returned), details optional."""
    assert isinstance(out, dict), out
    assert out["code"] == code, out
    assert out["cniVersion"] in SUPPORTED and out["msg"], out
    assert set(out) <= {"cniVersion", "code", "msg", "details"}
    return str(out["msg"])


def test_hairpin_mode_and_a_gateway_outside_the_subnet(host1: Host) -> None:
    c = bare(host1)
    result = add(host1, c, hairpinMode=True, ipam={"gateway": "10.99.0.1"})
    [ip] = result["ips"]
    assert ip["gateway"] == "10.99.0.1"
    assert {"dst": "0.0.0.0/0", "gw": "10.99.0.1"} in result["routes"]
    routes = c.run(["ip", "route", "show"]).stdout
    assert "default via 10.99.0.1 dev eth0 proto static" in routes
    assert "10.99.0.1 dev eth0 proto static scope link" in routes  # reach the gw first
    veth = result["interfaces"][0]["name"]
    hairpin = host1.run(["cat", f"/sys/class/net/{veth}/brport/hairpin_mode"]).stdout
    assert hairpin.strip() == "1"
    other = bare(host1)
    veth2 = add(host1, other)["interfaces"][0]["name"]  # hairpinMode absent: off
    assert host1.run(["cat", f"/sys/class/net/{veth2}/brport/hairpin_mode"]).stdout.strip() \
        == "0"


def test_add_again_keeps_the_address_and_a_failed_add_leaves_nothing(host1: Host) -> None:
    c = bare(host1)
    first = add(host1, c)
    assert add(host1, c)["ips"] == first["ips"]  # a runtime's retry
    assert c.addresses("eth0") == [first["ips"][0]["address"]]
    # two routes to one destination: the second cannot be added, so the ADD is undone
    other = bare(host1)
    routes = [{"dst": "10.50.0.0/16"}, {"dst": "10.50.0.0/16", "gw": "10.99.0.1"}]
    rc, out = cni(host1, "ADD", conf(ipam={"routes": routes}), container=other.name,
                  netns=netns_path(other))
    assert rc == 1, out
    assert "File exists" in error_of(out, 5)
    assert "eth0" not in other.links()
    assert ipam_holds(host1, other.name) == ""


def test_a_second_interface_in_one_namespace(host1: Host) -> None:
    c = bare(host1)
    add(host1, c)
    rc, out = cni(host1, "ADD", conf(), container="second", netns=netns_path(c),
                  ifname="eth1")
    assert rc == 0, out
    assert c.addresses("eth1") == [out["ips"][0]["address"]]
    assert cni(host1, "DEL", conf(), container="second", netns=netns_path(c),
               ifname="eth1") == (0, None)
    assert "eth1" not in c.links() and "eth0" in c.links()


# --- DEL -----------------------------------------------------------------------------------


def test_del_removes_interface_and_address_and_is_idempotent(host1: Host) -> None:
    c = bare(host1)
    result = add(host1, c)
    veth = result["interfaces"][0]["name"]
    for _ in range(2):  # DEL twice: both succeed, with no output
        rc, out = cni(host1, "DEL", conf(), container=c.name, netns=netns_path(c))
        assert (rc, out) == (0, None)
    assert "eth0" not in c.links() and veth not in host1.links()
    assert ipam_holds(host1, c.name) == ""


def test_del_with_empty_netns_releases_and_unplumbs(host1: Host) -> None:
    c = bare(host1)
    add(host1, c)
    rc, out = cni(host1, "DEL", conf(), container=c.name, netns="")  # as containerd sends
    assert (rc, out) == (0, None)
    assert ipam_holds(host1, c.name) == ""
    assert "eth0" not in c.links()


def test_del_of_a_container_never_added_or_whose_netns_is_gone(host1: Host) -> None:
    rc, out = cni(host1, "DEL", conf(), container="never-added", netns="/run/netns/nope")
    assert (rc, out) == (0, None)
    c = bare(host1)
    add(host1, c)
    subprocess.run(["ip", "netns", "del", c.name], check=True, timeout=10)
    rc, out = cni(host1, "DEL", conf(), container=c.name, netns=netns_path(c))
    assert (rc, out) == (0, None)
    assert ipam_holds(host1, c.name) == ""


# --- CHECK, STATUS, GC -------------------------------------------------------------------


def test_check_passes_then_finds_a_lost_address(host1: Host) -> None:
    c = bare(host1)
    [ip] = add(host1, c)["ips"]
    rc, out = cni(host1, "CHECK", conf(), container=c.name, netns=netns_path(c))
    assert (rc, out) == (0, None)
    c.run(["ip", "addr", "del", ip["address"], "dev", "eth0"])
    rc, out = cni(host1, "CHECK", conf(), container=c.name, netns=netns_path(c))
    assert rc == 1
    assert ip["address"] in error_of(out, 100)
    _, out = cni(host1, "CHECK", conf(), container="unknown", netns=netns_path(c))
    assert "never added" in error_of(out, 3)
    _, out = cni(host1, "CHECK", conf("0.3.1"), container=c.name, netns=netns_path(c))
    assert "0.4.0" in error_of(out, 1)


def test_status_ready_then_not_available_when_the_router_stops(host1: Host) -> None:
    assert cni(host1, "STATUS", conf("1.1.0")) == (0, None)
    _, out = cni(host1, "STATUS", conf("1.0.0"))
    assert "1.1.0" in error_of(out, 1)
    host1.stop_router()
    rc, out = cni(host1, "STATUS", conf("1.1.0"))
    assert rc == 1
    assert "not running" in error_of(out, 50)


def test_gc_frees_attachments_the_runtime_no_longer_has(host1: Host) -> None:
    keep, *gone = [bare(host1) for _ in range(3)]
    for c in (keep, *gone):
        add(host1, c)
    valid = [{"containerID": keep.name, "ifname": "eth0"}]
    rc, out = cni(host1, "GC", conf("1.1.0", **{"cni.dev/valid-attachments": valid}))
    assert (rc, out) == (0, None)
    assert ipam_holds(host1, keep.name) and "eth0" in keep.links()
    for c in gone:
        assert ipam_holds(host1, c.name) == ""
        assert "eth0" not in c.links()


def test_a_router_restart_keeps_the_pod_and_its_address(host1: Host) -> None:
    c = bare(host1)
    [ip] = add(host1, c)["ips"]
    host1.stop_router()
    host1.launch()
    host1.wait_ready()
    assert ipam_holds(host1, c.name) == ip["address"]
    assert c.addresses("eth0") == [ip["address"]]
    assert cni(host1, "CHECK", conf(), container=c.name, netns=netns_path(c)) == (0, None)
    assert cni(host1, "DEL", conf(), container=c.name, netns="") == (0, None)
    assert ipam_holds(host1, c.name) == "" and "eth0" not in c.links()


def delete_netns(host: Host, c: BareContainer, host_veth: str) -> None:
    """``ip netns del`` the pod and wait until the kernel has destroyed its namespace
    (its veth's host end goes with it: the kernel does that asynchronously, seconds
    later on a loaded machine, and until then the router rightly counts it alive)."""
    subprocess.run(["ip", "netns", "del", c.name], check=True, timeout=10)

    def gone() -> tuple[bool, str]:
        return host_veth not in host.links(), f"{host_veth} still in {host.name}"

    host.wait(f"{c.name}'s namespace to be destroyed", gone, timeout=30.0)


def test_a_pod_gone_while_the_router_was_down_gets_its_address_back(host1: Host) -> None:
    c, kept = bare(host1), bare(host1)
    veth = add(host1, c)["interfaces"][0]["name"]
    [ip] = add(host1, kept)["ips"]
    host1.stop_router()
    delete_netns(host1, c, veth)
    host1.launch()
    host1.wait_ready()
    assert ipam_holds(host1, c.name) == ""  # released before the router answered
    assert ipam_holds(host1, kept.name) == ip["address"]
    assert cni(host1, "CHECK", conf(), container=kept.name, netns=netns_path(kept)) \
        == (0, None)


def test_a_delegated_pod_gone_while_the_router_was_down_gets_its_lease_back(
        host1: Host, tmp_path: Path) -> None:
    """The router runs host-local's DEL itself (no runtime will): the lease file goes."""
    data_dir = tmp_path / "host-local"
    config = conf(ipam={"type": "host-local", "dataDir": str(data_dir),
                        "ranges": [[{"subnet": "10.99.0.0/24"}]]})
    env = {"CNI_PATH": f"{PLUGIN_DIR}:{HOST_LOCAL_DIR}"}
    c, kept = bare(host1), bare(host1)
    veths = []
    for x in (c, kept):
        rc, out = cni(host1, "ADD", config, container=x.name, netns=netns_path(x), env=env)
        assert rc == 0, out
        veths.append(out["interfaces"][0]["name"])
    leases = sorted(p.name for p in (data_dir / "weave").iterdir() if p.name[0].isdigit())
    assert len(leases) == 2
    host1.stop_router()
    delete_netns(host1, c, veths[0])
    host1.launch()
    host1.wait_ready()
    left = {p.name: p.read_text().split()[0]
            for p in (data_dir / "weave").iterdir() if p.name[0].isdigit()}
    assert list(left.values()) == [kept.name], left
    assert cni(host1, "CHECK", config, container=kept.name, netns=netns_path(kept),
               env=env) == (0, None)


def test_a_pod_whose_recorded_path_went_away_but_namespace_lives_keeps_it(
        host1: Host) -> None:
    """ADD named the namespace by ``/proc/PID/ns/net`` (as containerd does); the process
    exits but the namespace lives on (held by its ``ip netns`` mount): not vanished."""
    c = bare(host1)
    sleeper = c.popen(["sleep", "600"])
    rc, out = cni(host1, "ADD", conf(), container=c.name,
                  netns=f"/proc/{sleeper.pid}/ns/net")
    assert rc == 0, out
    [ip] = out["ips"]
    sleeper.kill()
    sleeper.wait()
    host1.stop_router()
    host1.launch()
    host1.wait_ready()
    assert ipam_holds(host1, c.name) == ip["address"]
    assert c.addresses("eth0") == [ip["address"]]
    # DEL with an empty CNI_NETNS: the recorded path is gone, the host end goes instead
    assert cni(host1, "DEL", conf(), container=c.name, netns="") == (0, None)
    assert ipam_holds(host1, c.name) == "" and "eth0" not in c.links()


def test_a_pod_gone_while_the_router_runs_is_released_by_the_check(make_mesh: MakeMesh
                                                                   ) -> None:
    [h1] = make_mesh(1).hosts
    h1.launch(env={"WEAVE_CONTAINER_CHECK_INTERVAL": "0.5"})
    h1.wait_ready()
    c = bare(h1)
    add(h1, c)
    subprocess.run(["ip", "netns", "del", c.name], check=True, timeout=10)

    def probe() -> tuple[bool, str]:
        held = ipam_holds(h1, c.name)
        return held == "", f"IPAM still holds {held!r}"

    h1.wait(f"{c.name}'s address to be released", probe, timeout=20.0)


# --- errors --------------------------------------------------------------------------------


def test_add_with_the_router_stopped_says_try_again_later(host1: Host) -> None:
    host1.stop_router()
    c = bare(host1)
    rc, out = cni(host1, "ADD", conf(), container=c.name, netns=netns_path(c))
    assert rc == 1
    assert "weave-router is not running" in error_of(out, 11)


@pytest.mark.parametrize(("config", "code", "words"), [
    ("{not json", 6, "not valid JSON"),
    ({"cniVersion": "1.0.0", "type": "weave-net"}, 7, "no name"),
    ({"name": "weave", "type": "weave-net"}, 7, "no cniVersion"),
    ({"cniVersion": "0.2.0", "name": "weave", "type": "weave-net"}, 1, "not supported"),
    (conf(ipam={"type": "weave-ipam", "subnet": "10.32.0.1/12"}), 7, "host bits"),
    (conf(ipam={"type": "no-such-ipam"}), 7, "not found in CNI_PATH"),
    (conf(isGateway=True), 7, "isGateway and ipMasq are not supported"),
])
def test_bad_config_is_the_specs_error(host1: Host, config: dict[str, Any] | str, code: int,
                                       words: str) -> None:
    c = bare(host1)
    rc, out = cni(host1, "ADD", config, container=c.name, netns=netns_path(c))
    assert rc == 1
    assert words in error_of(out, code)
    assert ipam_holds(host1, c.name) == ""  # nothing allocated


def test_missing_variables_and_a_gone_netns(host1: Host) -> None:
    c = bare(host1)
    _, out = cni(host1, "ADD", conf(), container="", netns=netns_path(c))
    assert "CNI_CONTAINERID" in error_of(out, 4)
    _, out = cni(host1, "", conf(), container=c.name, netns=netns_path(c))
    assert "CNI_COMMAND" in error_of(out, 4)
    _, out = cni(host1, "ADD", conf(), container=c.name, netns="/run/netns/gone-away")
    assert "namespace is gone" in error_of(out, 3)
    assert ipam_holds(host1, c.name) == ""


# --- other IPAM ------------------------------------------------------------------------------


def test_weave_ipam_mode_allocates_and_frees_only(host1: Host) -> None:
    config = conf("0.4.0", ipam={"type": "weave-ipam", "subnet": "10.32.8.0/24"})
    rc, out = cni(host1, "ADD", config, container="ipam-only", plugin=IPAM_PLUGIN)
    assert rc == 0, out
    assert "interfaces" not in out
    [ip] = out["ips"]
    assert ip["version"] == "4"
    assert ipaddress.IPv4Interface(ip["address"]) in ipaddress.IPv4Network("10.32.8.0/24")
    assert ipam_holds(host1, "ipam-only") == ip["address"]
    assert cni(host1, "CHECK", config, container="ipam-only", plugin=IPAM_PLUGIN) == (0, None)
    assert cni(host1, "DEL", config, container="ipam-only", plugin=IPAM_PLUGIN) == (0, None)
    assert ipam_holds(host1, "ipam-only") == ""


def test_delegated_host_local_ipam(host1: Host, tmp_path: Path) -> None:
    data_dir = tmp_path / "host-local"
    config = conf(ipam={"type": "host-local", "dataDir": str(data_dir),
                        "ranges": [[{"subnet": "10.99.0.0/24", "gateway": "10.99.0.1"}]],
                        "routes": [{"dst": "10.98.0.0/16"}]})
    path = f"{PLUGIN_DIR}:{HOST_LOCAL_DIR}"
    c = bare(host1)
    rc, out = cni(host1, "ADD", config, container=c.name, netns=netns_path(c),
                  env={"CNI_PATH": path})
    assert rc == 0, out
    [ip] = out["ips"]
    assert ip["address"] == "10.99.0.2/24" and ip["gateway"] == "10.99.0.1"
    assert c.addresses("eth0") == ["10.99.0.2/24"]
    assert "10.98.0.0/16 via 10.99.0.1" in c.run(["ip", "route"]).stdout
    assert ipam_holds(host1, c.name) == ""  # weave IPAM not asked
    assert cni(host1, "CHECK", config, container=c.name, netns=netns_path(c),
               env={"CNI_PATH": path}) == (0, None)
    assert cni(host1, "DEL", config, container=c.name, netns=netns_path(c),
               env={"CNI_PATH": path}) == (0, None)
    assert not any(p.name.startswith("10.99") for p in data_dir.rglob("*"))  # released


# --- many at once, and across hosts ----------------------------------------------------------


def test_50_concurrent_adds_get_distinct_addresses_all_released_after_del(
        host1: Host) -> None:
    containers = [bare(host1) for _ in range(50)]
    started = time.monotonic()
    results = run_parallel(*(lambda c=c: add(host1, c) for c in containers))
    elapsed = time.monotonic() - started
    addresses = [r["ips"][0]["address"] for r in results]
    assert len(set(addresses)) == 50, addresses
    for c, address in zip(containers, addresses, strict=True):
        assert c.addresses("eth0") == [address]
    dels = run_parallel(*(lambda c=c: cni(host1, "DEL", conf(), container=c.name,
                                         netns=netns_path(c)) for c in containers))
    assert all(d == (0, None) for d in dels)
    assert all(ipam_holds(host1, c.name) == "" for c in containers)
    print(f"50 concurrent ADDs took {elapsed:.1f}s")


def test_containers_on_two_hosts_added_by_the_plugin_ping_each_other(
        make_mesh: MakeMesh) -> None:
    mesh = make_mesh(2)
    h1, h2 = mesh.hosts
    mesh.launch_star()
    mesh.wait_full_mesh()
    c1, c2 = bare(h1), bare(h2)
    [ip1] = add(h1, c1)["ips"]
    [ip2] = add(h2, c2)["ips"]
    assert ip1["address"] != ip2["address"]
    peer = ip2["address"].split("/")[0]
    c1.run(["ping", "-c", "3", "-W", "5", peer], timeout=30)
