"""Which delegated IPAM plugin the router runs for a vanished pod (router/cni/delegate.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from router.cni.delegate import DelegateError, del_environment, find_plugin
from router.cni.model import Delegate
from router.cni.service import run_del


def plugin(directory: Path, name: str, body: str = "#!/bin/sh\nexit 0\n",
           mode: int = 0o755) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    path = directory / name
    path.write_text(body)
    path.chmod(mode)
    return path


def test_found_in_cni_path_in_order(tmp_path: Path) -> None:
    first = plugin(tmp_path / "a", "host-local")
    plugin(tmp_path / "b", "host-local")
    cni_path = f"relative/dir:{tmp_path / 'none'}:{tmp_path / 'a'}:{tmp_path / 'b'}"
    assert find_plugin(Delegate("host-local", cni_path, "{}")) == str(first)


def test_a_plugin_others_may_write_is_not_run(tmp_path: Path) -> None:
    plugin(tmp_path / "a", "host-local", mode=0o757)
    with pytest.raises(DelegateError, match="writable by others"):
        find_plugin(Delegate("host-local", str(tmp_path / "a"), "{}"))
    plugin(tmp_path / "b", "host-local")
    (tmp_path / "b").chmod(0o777)
    with pytest.raises(DelegateError, match="writable by others"):
        find_plugin(Delegate("host-local", str(tmp_path / "b"), "{}"))


def test_not_found(tmp_path: Path) -> None:
    with pytest.raises(DelegateError, match="not found"):
        find_plugin(Delegate("host-local", str(tmp_path), "{}"))


def test_del_runs_the_plugin_as_libcni_would(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    plugin(tmp_path / "bin", "ipam", f"#!/bin/sh\nenv > {seen}.env\ncat > {seen}.in\n")
    delegate = Delegate("ipam", str(tmp_path / "bin"), '{"name": "weave"}')
    trio.run(run_del, delegate, "cid1", "eth0")
    env = dict(line.split("=", 1) for line in Path(f"{seen}.env").read_text().splitlines()
               if "=" in line)
    expected = del_environment(delegate, "cid1", "eth0")
    assert {k: env.get(k, "") for k in expected if k != "PATH"} == \
        {k: v for k, v in expected.items() if k != "PATH"}
    assert expected["CNI_COMMAND"] == "DEL" and expected["CNI_NETNS"] == ""
    assert Path(f"{seen}.in").read_text() == '{"name": "weave"}'


def test_a_failing_del_says_so(tmp_path: Path) -> None:
    plugin(tmp_path / "bin", "ipam", '#!/bin/sh\necho \'{"code": 11, "msg": "busy"}\'\nexit 1\n')
    with pytest.raises(DelegateError, match=r"exited 1.*busy"):
        trio.run(run_del, Delegate("ipam", str(tmp_path / "bin"), "{}"), "c", "eth0")

