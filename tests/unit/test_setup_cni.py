"""``weave-router setup-cni``: installs the built plugin and the conflist (docs/cni.md)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from cli.main import main
from cli.setup_cni import BUILT_PLUGIN

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def built_plugin() -> None:
    subprocess.run(["make", "-s", "cni"], cwd=ROOT, check=True, timeout=300,
                   capture_output=True)


def test_installs_plugin_ipam_link_and_conflist(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    bin_dir, conf_dir = tmp_path / "bin", tmp_path / "net.d"
    args = ["setup-cni", "--cni-bin-dir", str(bin_dir), "--cni-conf-dir", str(conf_dir)]
    for _ in range(2):  # again over an existing install
        assert main([*args, "--http-addr", "/run/weave/weave.sock"], env={}) == 0
    assert "installed" in capsys.readouterr().out
    plugin = bin_dir / "weave-net"
    assert plugin.read_bytes() == BUILT_PLUGIN.read_bytes()
    assert os.access(plugin, os.X_OK)
    assert os.readlink(bin_dir / "weave-ipam") == "weave-net"
    assert json.loads((conf_dir / "10-weave.conflist").read_text()) == {
        "cniVersion": "1.0.0", "name": "weave",
        "plugins": [{"name": "weave", "type": "weave-net", "hairpinMode": True,
                     "routerAddr": "/run/weave/weave.sock"}],
    }
    out = subprocess.run([str(bin_dir / "weave-ipam")], input="{}", text=True,
                         capture_output=True, env={"CNI_COMMAND": "VERSION"}, check=True)
    assert json.loads(out.stdout)["supportedVersions"][-1] == "1.1.0"
    assert not list(bin_dir.glob(".*.tmp")) and not list(conf_dir.glob(".*.tmp"))


def test_missing_plugin_is_one_line_naming_the_flag(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["setup-cni", "--plugin", str(tmp_path / "nope"),
               "--cni-bin-dir", str(tmp_path / "b"), "--cni-conf-dir", str(tmp_path / "c")],
              env={})
    assert rc == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--plugin" in err and "make cni" in err
    assert not (tmp_path / "b").exists()
