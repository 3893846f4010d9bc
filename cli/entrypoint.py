"""``weave-router-entrypoint``: the container image's entry point, configured as Weave Net's
image is, by environment variables.

::

    weave-router-entrypoint [launch] [FLAG ...]   weave-router launch --foreground, from the
                                                  variables below (FLAGs are added last)
    weave-router-entrypoint install-cni [FLAG ...]  copy the CNI plugin of the image and its
                                                  conflist into the host (HOST_ROOT)
    weave-router-entrypoint --help                this text, with every variable

``launch`` turns the variables into ``launch`` flags (:data:`LAUNCH_FLAGS`), checks them all
as ``weave-router launch`` would (a bad value is one line naming the variable, exit 2), then
runs the router in this process (PID 1 of the container: SIGTERM stops it cleanly). Its
state is the default ``--db-path``, ``/var/lib/weave-router/weave.db``: the image's volume.
``install-cni`` is ``weave-router setup-cni`` with the plugin shipped in the image
(``<prefix>/cni/weave-net``) and the host's ``/opt/cni/bin`` and ``/etc/cni/net.d`` under
``HOST_ROOT``: the DaemonSet's init container.

A variable of Weave's that this version has no feature for (:data:`UNSUPPORTED`: NPC,
``expose``, metrics ...) is refused in one line rather than ignored, unless it asks for the
feature to be off.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cli import launch
from cli.main import UsageError, main, parse_args
from router.errors import ConfigError

PROG = "weave-router-entrypoint"
DEFAULT_HOST_ROOT = "/host"  # where the DaemonSet mounts the host's / (Weave's HOST_ROOT)
PLUGIN = Path(sys.prefix) / "cni" / "weave-net"  # the image installs it beside the venv
_PEER_SEPARATORS = re.compile(r"[\s,]+")
USAGE = f"""\
usage: {PROG} [launch] [FLAG ...]
         weave-router launch --foreground, configured by the environment below (FLAGs last)
       {PROG} install-cni [FLAG ...]
         the image's CNI plugin and conflist into HOST_ROOT/opt/cni/bin and .../etc/cni/net.d
"""


@dataclass(frozen=True)
class Variable:
    """One environment variable the entry point reads."""

    name: str
    use: str  # what it does, for --help and docs/install.md
    flag: str | None = None  # the launch flag it becomes (None: read another way)


LAUNCH_FLAGS = (
    Variable("IPALLOC_RANGE", "range containers get addresses from (10.32.0.0/12)",
             "--ipalloc-range"),
    Variable("IPALLOC_DEFAULT_SUBNET", "subnet of attach without net: (the whole range)",
             "--ipalloc-default-subnet"),
    Variable("IPALLOC_INIT", "consensus[=COUNT] (default), seed=NAME,... or observer",
             "--ipalloc-init"),
    Variable("CONN_LIMIT", "most connections to peers (200)", "--conn-limit"),
    Variable("NICKNAME", "peer nickname (default HOSTNAME)", "--nickname"),
    Variable("TRUSTED_SUBNETS", "CIDR,...: peers there may skip encryption",
             "--trusted-subnets"),
    Variable("WEAVE_METRICS_ADDR", "/metrics and /status address (127.0.0.1:6782)",
             "--metrics-addr"),
)
VARIABLES = (
    Variable("WEAVE_PASSWORD", "encrypt the mesh with this password (e.g. from a Secret)"),
    Variable("WEAVE_MTU", "MTU of the bridge and containers (1376)"),
    Variable("WEAVE_PORT", "TCP and UDP port for peers (6783)"),
    Variable("WEAVE_HTTP_ADDR", "control API address (127.0.0.1:6784); install-cni: the "
             "plugin's routerAddr"),
    Variable("WEAVE_STATUS_ADDR", "the same, when WEAVE_METRICS_ADDR is unset ('' for none)"),
    Variable("WEAVE_NO_FASTDP", "any value: keep traffic on the sleeve (no kernel VXLAN)"),
    *LAUNCH_FLAGS,
    Variable("HOSTNAME", "the nickname when NICKNAME is unset (Weave's DaemonSet: the node)"),
    Variable("PEERS", "peers to connect to: HOST[:PORT] separated by spaces or commas"),
    Variable("KUBE_PEERS", "Weave's name for PEERS (both may be set: PEERS first)"),
    Variable("EXTRA_ARGS", "more launch flags, split as a shell would (--log-level=debug)"),
    Variable("CHECKPOINT_DISABLE", "accepted: this router never checks for new versions"),
    Variable("HOST_ROOT", f"install-cni: where the host's / is mounted ({DEFAULT_HOST_ROOT})"),
    Variable("HAIRPIN_MODE", "install-cni: 'false' writes hairpinMode false in the conflist"),
)
DOCUMENTED = frozenset(v.name for v in VARIABLES)
# Weave's variables for features this version lacks: name -> (the value that asks for the
# feature to be off, or None; why it is refused).
UNSUPPORTED: dict[str, tuple[str | None, str]] = {
    "EXPECT_NPC": ("0", "network policy (weave-npc) is not in this version; set it to 0"),
    "WEAVE_EXPOSE_IP": (None, "not done at start: run `weave-router expose ip:CIDR`"),
    "NO_MASQ_LOCAL": ("0", "this version has no NodePort masquerading rules"),
    "IPTABLES_BACKEND": (None, "this version writes no iptables rules"),
}


def check_unsupported(env: Mapping[str, str]) -> None:
    """ConfigError for the first of :data:`UNSUPPORTED` set to anything but its "off" value."""
    for name, (off, why) in UNSUPPORTED.items():
        value = env.get(name)
        if value and value != off:
            raise ConfigError(f"{name}={value}: {why}")


def _split(name: str, text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def launch_argv(env: Mapping[str, str], extra: Sequence[str] = ()) -> list[str]:
    """The ``launch`` arguments (after ``launch --foreground``) that ``env`` asks for.

    Raises ConfigError (naming the variable) for an unsupported or malformed one. Values
    are checked later by :func:`check_launch`.
    """
    check_unsupported(env)
    argv: list[str] = []
    for var in LAUNCH_FLAGS:
        value = env.get(var.name)
        if value and var.flag is not None:
            argv.append(f"{var.flag}={value}")
    if not env.get("NICKNAME") and env.get("HOSTNAME"):
        argv.append(f"--nickname={env['HOSTNAME']}")
    argv += _split("EXTRA_ARGS", env.get("EXTRA_ARGS", ""))
    argv += list(extra)
    peers = [p for name in ("PEERS", "KUBE_PEERS") for p in
             _PEER_SEPARATORS.split(env.get(name, "").strip()) if p]
    return [*argv, "--", *peers] if peers else argv


def _blame(message: str, env: Mapping[str, str]) -> str:
    """Name the variable behind the flag a launch error names (``--conn-limit`` -> CONN_LIMIT)."""
    for var in LAUNCH_FLAGS:
        if var.flag is not None and message.startswith(var.flag) and env.get(var.name):
            return f"{var.name} ({var.flag}){message[len(var.flag):]}"
    if message.startswith("--nickname") and not env.get("NICKNAME") and env.get("HOSTNAME"):
        return f"HOSTNAME (--nickname){message[len('--nickname'):]}"
    if message.startswith("PEER") and (env.get("PEERS") or env.get("KUBE_PEERS")):
        return f"PEERS/KUBE_PEERS ({message})"
    return message


def check_launch(argv: Sequence[str], env: Mapping[str, str]) -> None:
    """Check ``launch --foreground ARGV`` as ``weave-router launch`` would, without running
    it; ConfigError whose message names the variable behind a bad value."""
    try:
        args = parse_args(["launch", "--foreground", *argv])
        launch.build_config(args, env)
    except UsageError as exc:
        raise ConfigError(f"launch: {exc} (from the environment: {' '.join(argv)})") from None
    except ConfigError as exc:
        raise ConfigError(_blame(str(exc), env)) from None


def install_cni_argv(env: Mapping[str, str], extra: Sequence[str] = ()) -> list[str]:
    """The ``setup-cni`` arguments of ``install-cni``."""
    check_unsupported(env)
    root = Path(env.get("HOST_ROOT") or DEFAULT_HOST_ROOT)
    argv = ["--plugin", str(PLUGIN), "--cni-bin-dir", str(root / "opt/cni/bin"),
            "--cni-conf-dir", str(root / "etc/cni/net.d")]
    hairpin = env.get("HAIRPIN_MODE", "")
    if hairpin not in ("", "true", "false"):
        raise ConfigError(f"HAIRPIN_MODE={hairpin}: expected true or false")
    if hairpin == "false":
        argv.append("--no-hairpin")
    if env.get("WEAVE_HTTP_ADDR"):
        argv += ["--http-addr", env["WEAVE_HTTP_ADDR"]]
    return [*argv, *extra]


def help_text() -> str:
    width = max(len(v.name) for v in VARIABLES)
    lines = [USAGE, "environment:"]
    lines += [f"  {v.name:<{width}}  {v.use}" for v in VARIABLES]
    lines += ["", "refused (not in this version):"]
    lines += [f"  {name:<{width}}  {why}" for name, (_, why) in UNSUPPORTED.items()]
    return "\n".join(lines) + "\n"


def run(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """The entry point; the exit code."""
    words = list(argv)
    if words[:1] in (["--help"], ["-h"], ["help"]):
        sys.stdout.write(help_text())
        return 0
    mode = words.pop(0) if words[:1] in (["launch"], ["install-cni"]) else "launch"
    try:
        if mode == "install-cni":
            return main(["setup-cni", *install_cni_argv(env, words)], env)
        flags = launch_argv(env, words)
        check_launch(flags, env)
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    return main(["launch", "--foreground", *flags], env)


def entry() -> None:
    """Console script ``weave-router-entrypoint``."""
    raise SystemExit(run(sys.argv[1:], os.environ))


if __name__ == "__main__":
    entry()
