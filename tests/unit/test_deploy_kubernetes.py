"""``deploy/kubernetes/weave-router.yaml``: valid Kubernetes (the API schemas that
kubernetes-validate ships, offline), the shape of Weave's DaemonSet, and only variables the
image's entry point documents and accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from cli.entrypoint import DOCUMENTED, check_launch, install_cni_argv, launch_argv

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "weave-router.yaml"
K8S_VERSIONS = ("1.25.0", "1.30.0", "1.33.0")  # apps/v1 DaemonSet, as Weave's 1.11+ manifest
# What a node gives the variables that come from elsewhere (fieldRef, Secret).
FROM_ELSEWHERE = {"HOSTNAME": "node-1", "WEAVE_PASSWORD": "from-the-secret"}


def _documents() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc is not None]


def _daemonset() -> dict[str, Any]:
    (daemonset,) = _documents()
    return daemonset


def _pod() -> dict[str, Any]:
    return dict(_daemonset()["spec"]["template"]["spec"])


def _env(container: dict[str, Any]) -> dict[str, str]:
    env = {}
    for item in container.get("env", []):
        name = item["name"]
        env[name] = item["value"] if "value" in item else FROM_ELSEWHERE[name]
    return env


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_document_is_valid_kubernetes(version: str) -> None:
    for doc in _documents():
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_schema_check_can_fail() -> None:
    broken = _daemonset()
    del broken["spec"]["selector"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)
    broken = _daemonset()
    broken["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_it_is_one_daemonset_in_kube_system_and_no_rbac() -> None:
    docs = _documents()
    assert [(d["apiVersion"], d["kind"]) for d in docs] == [("apps/v1", "DaemonSet")]
    meta = docs[0]["metadata"]
    assert meta["namespace"] == "kube-system" and meta["name"] == "weave-router"
    spec = docs[0]["spec"]
    assert spec["selector"]["matchLabels"] == spec["template"]["metadata"]["labels"]
    assert "serviceAccountName" not in spec["template"]["spec"]


def test_the_pod_is_on_the_host_network_privileged_with_its_state_on_the_node() -> None:
    pod = _pod()
    assert pod["hostNetwork"] is True and pod["hostPID"] is True
    (weave,) = pod["containers"]
    (init,) = pod["initContainers"]
    assert weave["name"] == "weave" and init["name"] == "weave-init"
    assert weave["securityContext"]["privileged"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in weave["volumeMounts"]}
    assert volumes[mounts["/var/lib/weave-router"]]["hostPath"]["path"] == "/var/lib/weave-router"
    assert volumes[mounts["/run/netns"]]["hostPath"]["path"] == "/run/netns"
    probe = weave["readinessProbe"]["httpGet"]
    assert (probe["host"], probe["port"], probe["path"]) == ("127.0.0.1", 6784, "/status")
    assert weave["image"] == init["image"]


def test_the_init_container_installs_the_cni_plugin_into_the_node() -> None:
    pod = _pod()
    (init,) = pod["initContainers"]
    assert init["args"] == ["install-cni"]
    env = _env(init)
    assert set(env) <= DOCUMENTED
    argv = install_cni_argv(env)
    bin_dir = argv[argv.index("--cni-bin-dir") + 1]
    conf_dir = argv[argv.index("--cni-conf-dir") + 1]
    volumes = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in init["volumeMounts"]}
    assert mounts[bin_dir] == "/opt/cni/bin" and mounts[conf_dir] == "/etc/cni/net.d"


def test_every_variable_of_the_router_is_documented_and_accepted() -> None:
    (weave,) = _pod()["containers"]
    assert "command" not in weave and "args" not in weave  # the image's entry point
    env = _env(weave)
    undocumented = set(env) - DOCUMENTED
    assert not undocumented, undocumented
    argv = launch_argv(env)
    check_launch(argv, env)
    assert "--nickname=node-1" in argv and argv[-4:] == ["--", "192.0.2.11", "192.0.2.12",
                                                          "192.0.2.13"]
