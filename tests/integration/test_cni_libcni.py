"""The weave-net plugin driven through libcni (``tests/cni/driver``: a small Go program
built here, offline, against Debian's golang-github-appc-cni-dev sources), so its
results are parsed and cached the way podman, containerd's go-cni and CRI runtimes
parse them, and CHECK gets libcni's cached ADD result as ``prevResult``.

Checked: ADD/CHECK/DEL for conflists of cniVersion 0.3.1, 0.4.0 and 1.0.0, DEL twice,
CHECK after the interface was changed behind the runtime's back, a kubelet's
``CNI_ARGS`` recorded, libcni's validation of the list and of the plugin's versions,
and a delegated host-local IPAM through libcni.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from router.testing.netns import BareContainer, Host, Mesh

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_DIR = ROOT / "build" / "cni"
DRIVER_SRC = ROOT / "tests" / "cni" / "driver"
DRIVER = ROOT / "build" / "libcni" / "cni-driver"
GOCODE = Path("/usr/share/gocode")  # Debian's Go sources (golang-github-appc-cni-dev)
REFERENCE_PLUGINS = Path("/usr/lib/cni")
KUBELET_ARGS = ("IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;"
                "K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=0f7c-11")


@pytest.fixture(scope="module", autouse=True)
def built() -> None:
    """The plugin (``make cni``) and the driver: GOPATH mode over /usr/share/gocode, no
    module proxy, so nothing is fetched and nothing is vendored."""
    subprocess.run(["make", "-s", "cni"], cwd=ROOT, check=True, timeout=300,
                   capture_output=True)
    sources = list(DRIVER_SRC.glob("*.go"))
    if DRIVER.exists() and all(s.stat().st_mtime <= DRIVER.stat().st_mtime for s in sources):
        return
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": str(GOCODE), "GOPROXY": "off",
           "GOFLAGS": "", "GOTOOLCHAIN": "local", "CGO_ENABLED": "0",
           "GOCACHE": str(ROOT / "build" / "go-cache")}
    subprocess.run(["go", "build", "-o", str(DRIVER), "."], cwd=DRIVER_SRC, env=env,
                   check=True, timeout=300, capture_output=True)


@pytest.fixture(scope="module")
def shared_mesh() -> Iterator[Mesh]:
    with Mesh.build(n_hosts=1) as mesh:
        mesh.hosts[0].launch()
        mesh.hosts[0].wait_ready()
        yield mesh


@pytest.fixture
def host1(shared_mesh: Mesh) -> Iterator[Host]:
    """One host shared by the module's tests (each DELs what it ADDed: checked)."""
    [h1] = shared_mesh.hosts
    yield h1
    out = h1.run(["curl", "-sf", "http://127.0.0.1:6784/cni/attachments"]).stdout
    assert json.loads(out) == [], "a test left CNI attachments"


class Driver:
    """``cni-driver`` for one conflist, run in a host namespace."""

    def __init__(self, host: Host, tmp: Path, conf: dict[str, Any]) -> None:
        self.host = host
        self.conflist = tmp / "net.conflist"
        self.conflist.write_text(json.dumps(conf))
        self.cache = tmp / "cache"

    def __call__(self, verb: str, c: BareContainer | None = None, *, cid: str | None = None,
                 args: str = "") -> tuple[int, Any]:
        argv = [str(DRIVER), "-conflist", str(self.conflist),
                "-bin", f"{PLUGIN_DIR}:{REFERENCE_PLUGINS}", "-cache", str(self.cache),
                "-args", args]
        if c is not None:
            argv += ["-netns", f"/run/netns/{c.name}", "-id", cid or c.name]
        proc = self.host.run([*argv, verb], check=False, timeout=60)
        out = proc.stdout.strip()
        return proc.returncode, json.loads(out) if out else None


def conflist(version: str, **plugin: Any) -> dict[str, Any]:
    return {"cniVersion": version, "name": "weave",
            "plugins": [{"type": "weave-net", "hairpinMode": True, **plugin}]}


def ipam_holds(host: Host, cid: str) -> str:
    out = host.run(["curl", "-s", "-w", " %{http_code}", f"http://127.0.0.1:6784/ip/{cid}"])
    body, _, code = out.stdout.strip().rpartition(" ")
    return body.strip() if code == "200" else ""


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
def test_add_check_del_through_libcni(host1: Host, tmp_path: Path, version: str) -> None:
    drive = Driver(host1, tmp_path, conflist(version))
    c = host1.mesh.add_bare_container(host1)
    rc, result = drive("add", c)
    assert rc == 0, result
    assert result["cniVersion"] == version
    [ip] = result["ips"]
    assert c.addresses("eth0") == [ip["address"]]
    assert ipam_holds(host1, c.name) == ip["address"]
    rc, cached = drive("cached", c)
    assert (rc, cached["ips"]) == (0, result["ips"])
    rc, out = drive("check", c)
    if version == "0.3.1":  # libcni itself refuses: CHECK came with 0.4.0
        assert rc == 1 and "does not support the CHECK command" in out["error"], out
    else:
        assert (rc, out) == (0, None)
    assert drive("del", c) == (0, None)
    assert ipam_holds(host1, c.name) == "" and "eth0" not in c.links()
    assert drive("del", c) == (0, None)  # twice


def test_check_through_libcni_compares_prev_result(host1: Host, tmp_path: Path) -> None:
    drive = Driver(host1, tmp_path, conflist("1.0.0"))
    c = host1.mesh.add_bare_container(host1)
    rc, result = drive("add", c)
    assert rc == 0, result
    assert drive("check", c) == (0, None)
    # the runtime's cached result says one address, the interface now has another
    cache = next((tmp_path / "cache" / "results").iterdir())
    cached = json.loads(cache.read_text())
    cached["result"]["ips"][0]["address"] = "10.32.99.99/12"
    cache.write_text(json.dumps(cached))
    rc, out = drive("check", c)
    assert rc == 1 and out["code"] == 100, out
    assert "prevResult" in out["msg"] and "10.32.99.99/12" in out["msg"], out
    # the address removed behind the runtime's back
    cached["result"]["ips"][0]["address"] = result["ips"][0]["address"]
    cache.write_text(json.dumps(cached))
    c.run(["ip", "addr", "flush", "dev", "eth0"])
    rc, out = drive("check", c)
    assert rc == 1 and out["code"] == 100 and "lacks its address" in out["msg"], out
    assert drive("del", c) == (0, None)


def test_kubelet_cni_args_are_recorded(host1: Host, tmp_path: Path) -> None:
    drive = Driver(host1, tmp_path, conflist("1.0.0"))
    c = host1.mesh.add_bare_container(host1)
    assert drive("add", c, args=KUBELET_ARGS)[0] == 0
    out = host1.run(["curl", "-sf", "http://127.0.0.1:6784/cni/attachments"]).stdout
    [record] = json.loads(out)
    assert record["args"] == {"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": "shop",
                              "K8S_POD_NAME": "web-0", "K8S_POD_INFRA_CONTAINER_ID": "abc123",
                              "K8S_POD_UID": "0f7c-11"}
    assert drive("del", c) == (0, None)


def test_libcni_validates_the_list_and_the_versions(host1: Host, tmp_path: Path) -> None:
    drive = Driver(host1, tmp_path, conflist("1.0.0"))
    # every plugin found, supporting the list's version; no capabilities (portMappings...)
    assert drive("validate") == (0, [])
    rc, info = drive("version")
    assert rc == 0
    assert info["supportedVersions"] == ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
    (tmp_path / "bad").mkdir()
    bad = Driver(host1, tmp_path / "bad", {"cniVersion": "1.0.0", "name": "weave",
                                           "plugins": [{"type": "weave-nett"}]})
    rc, out = bad("validate")
    assert rc == 1 and "weave-nett" in json.dumps(out), out


def test_delegated_host_local_through_libcni(host1: Host, tmp_path: Path) -> None:
    ipam = {"type": "host-local", "subnet": "10.32.200.0/24",
            "dataDir": str(tmp_path / "host-local")}
    drive = Driver(host1, tmp_path, conflist("1.0.0", ipam=ipam))
    c = host1.mesh.add_bare_container(host1)
    rc, result = drive("add", c)
    assert rc == 0, result
    [ip] = result["ips"]
    assert ip["address"].startswith("10.32.200.") and c.addresses("eth0") == [ip["address"]]
    assert drive("check", c) == (0, None)
    assert drive("del", c) == (0, None)
    leases = [p.name for p in (tmp_path / "host-local" / "weave").iterdir()
              if p.name[0].isdigit()]
    assert leases == []
