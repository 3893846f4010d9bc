"""The architecture's house rules, checked on the source tree.

* Only drivers await: trio, sockets and pyroute2 are imported only by ``service.py``,
  ``daemon.py``, ``kernel/netlink.py``, ``kernel/nft_cli.py`` (the nft binary),
  ``kernel/nft_events.py`` (nftables change notifications),
  ``control/``, ``network/`` and ``testing/``.
* Sans-IO cores never read a clock: time comes in as ``now``.
* Only ``router/dataplane/backend.py`` imports the compiled extension.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROUTER = Path(__file__).resolve().parents[2] / "router"
DRIVER_DIRS = {"control", "testing", "network"}
DRIVER_FILES = {"service.py", "daemon.py"}
IO_MODULES = {"trio", "socket", "pyroute2", "selectors", "asyncio", "subprocess"}
CLOCK_CALLS = {"time", "monotonic", "perf_counter", "current_time", "sleep"}


def _sources() -> list[Path]:
    return sorted(p for p in ROUTER.rglob("*.py"))


def _is_driver(path: Path) -> bool:
    rel = path.relative_to(ROUTER)
    return (path.name in DRIVER_FILES or rel.parts[0] in DRIVER_DIRS
            or rel.as_posix() in ("kernel/netlink.py", "kernel/nft_cli.py",
                                    "kernel/nft_events.py"))


def _imports(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("path", [p for p in _sources() if not _is_driver(p)],
                         ids=lambda p: str(p.relative_to(ROUTER)))
def test_sans_io_modules_do_no_io_and_read_no_clock(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    io = {name for name in _imports(tree) if name.split(".")[0] in IO_MODULES}
    assert not io, f"{path.name} is sans-IO but imports {sorted(io)}"
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "time"
                and node.func.attr in CLOCK_CALLS):
            raise AssertionError(f"{path.name}:{node.lineno} reads a clock; take `now` instead")


def test_only_the_backend_imports_the_extension() -> None:
    importers = [
        str(p.relative_to(ROUTER)) for p in _sources()
        if any(name.startswith("router._fastpath") for name in _imports(ast.parse(p.read_text())))
    ]
    assert importers in ([], ["dataplane/backend.py"]), importers
