"""``weave-router setup-cni``: install the CNI plugin and its network config (docs/cni.md).

Copies the static ``weave-net`` executable (``make cni`` builds it into ``build/cni/``) to
``--cni-bin-dir`` (``/opt/cni/bin``), links ``weave-ipam`` to it there, and writes
``10-weave.conflist`` to ``--cni-conf-dir`` (``/etc/cni/net.d``), as Weave's DaemonSet
does. Each file is written beside its target and renamed over it, so a runtime never
runs a half-copied plugin nor reads a half-written config.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

from router.errors import ConfigError

DEFAULT_BIN_DIR = "/opt/cni/bin"
DEFAULT_CONF_DIR = "/etc/cni/net.d"
CONFLIST = "10-weave.conflist"
BUILT_PLUGIN = Path(__file__).resolve().parents[1] / "build" / "cni" / "weave-net"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cni-bin-dir", default=DEFAULT_BIN_DIR, metavar="DIR",
                        help=f"where plugins go ({DEFAULT_BIN_DIR})")
    parser.add_argument("--cni-conf-dir", default=DEFAULT_CONF_DIR, metavar="DIR",
                        help=f"where network configs go ({DEFAULT_CONF_DIR})")
    parser.add_argument("--plugin", default=str(BUILT_PLUGIN), metavar="FILE",
                        help="the weave-net executable to install (built by `make cni`)")
    parser.add_argument("--http-addr", metavar="HOST:PORT|SOCKET",
                        help="the router's API, written as routerAddr (default 127.0.0.1:6784)")
    parser.add_argument("--no-hairpin", action="store_true",
                        help="hairpinMode false in the conflist")


def conflist(*, router_addr: str | None, hairpin: bool) -> dict[str, object]:
    plugin: dict[str, object] = {"name": "weave", "type": "weave-net", "hairpinMode": hairpin}
    if router_addr:
        plugin["routerAddr"] = router_addr
    return {"cniVersion": "1.0.0", "name": "weave", "plugins": [plugin]}


def run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    source = Path(args.plugin)
    if not source.is_file() or not os.access(source, os.X_OK):
        raise ConfigError(f"--plugin {source}: no such executable (run `make cni` first)")
    bin_dir, conf_dir = Path(args.cni_bin_dir), Path(args.cni_conf_dir)
    for flag, folder in (("--cni-bin-dir", bin_dir), ("--cni-conf-dir", conf_dir)):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{flag} {folder}: {exc.strerror}") from None
    target = bin_dir / "weave-net"
    _replace(target, lambda tmp: shutil.copyfile(source, tmp), mode=0o755)
    _replace(bin_dir / "weave-ipam", lambda tmp: os.symlink("weave-net", tmp))
    text = json.dumps(conflist(router_addr=args.http_addr, hairpin=not args.no_hairpin),
                      indent=2) + "\n"
    _replace(conf_dir / CONFLIST, lambda tmp: tmp.write_text(text, encoding="utf-8"),
             mode=0o644)
    print(f"installed {target} (and weave-ipam) and {conf_dir / CONFLIST}")
    return 0


def _replace(path: Path, write: Callable[[Path], object], *, mode: int | None = None) -> None:
    """Write ``path`` through a temporary beside it, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        write(tmp)
        if mode is not None:
            tmp.chmod(mode)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
