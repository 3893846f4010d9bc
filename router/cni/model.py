"""Sans-IO part of the CNI endpoints: requests parsed, plans and results built.

The Go plugin (``cni/``) turns the runtime's ``CNI_*`` variables and network config into
one JSON request per verb and prints what the router answers, converted to the
``cniVersion`` the runtime asked for. The router answers in CNI 1.0 shapes; errors carry
the spec's codes (:class:`CniError`), which the plugin passes through unchanged.

An attachment is keyed by (container id, ifname): the host end of its veth is
``vethwecn`` + 7 hex digits of a hash of that pair (every device of ours starts
``vethwe``, so ``reset`` removes these too).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from dataclasses import dataclass, field

from router.kernel.plumbing import multicast_route_via
from router.kernel.port import AddRoute, NetnsState, Op, Route, Scope

HOST_VETH_PREFIX = "vethwecn"
DEFAULT_TIMEOUT = 10.0  # seconds an ADD waits for IPAM before "try again later"
MAX_TIMEOUT = 300.0
MAX_ARGS_LENGTH = 4096  # CNI_ARGS kept in the record
MAX_DELEGATE_CONF = 65536  # a delegated IPAM plugin's config kept in the record
DEFAULT_ROUTE = ipaddress.IPv4Network("0.0.0.0/0")

# The spec's well-known error codes (CNI spec, "Error" section).
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50  # STATUS: the plugin cannot add containers now
CHECK_FAILED = 100  # ours (>= 100 is plugin-specific): CHECK found a difference


class CniError(Exception):
    """A failure the plugin reports as the spec's error object."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self) -> dict[str, object]:
        return {"code": self.code, "msg": self.msg, "details": self.details}


@dataclass(frozen=True)
class RouteSpec:
    """One route for the container: destination and optional gateway."""

    dst: ipaddress.IPv4Network
    gw: ipaddress.IPv4Address | None = None

    def to_json(self) -> dict[str, str]:
        out = {"dst": str(self.dst)}
        if self.gw is not None:
            out["gw"] = str(self.gw)
        return out


@dataclass(frozen=True)
class IpSpec:
    """One address for the container's interface, with its gateway if any."""

    address: ipaddress.IPv4Interface
    gateway: ipaddress.IPv4Address | None = None


@dataclass(frozen=True)
class Delegate:
    """A delegated IPAM plugin as ADD ran it: its name (``ipam.type``), the ``CNI_PATH``
    it was found in and the network config it was given, so the router can run its DEL
    for a pod that vanished while the router was down."""

    type: str
    cni_path: str
    conf: str

    def to_json(self) -> dict[str, str]:
        return {"type": self.type, "cniPath": self.cni_path, "conf": self.conf}

    @classmethod
    def from_json(cls, raw: object) -> Delegate | None:
        if not isinstance(raw, dict):
            return None
        kind, path, conf = raw.get("type"), raw.get("cniPath"), raw.get("conf")
        if not (isinstance(kind, str) and isinstance(path, str) and isinstance(conf, str)):
            return None
        if not kind or "/" in kind or kind in (".", "..") or len(conf) > MAX_DELEGATE_CONF:
            return None
        return cls(kind, path, conf)


@dataclass(frozen=True)
class AddRequest:
    """``POST /cni/add`` (and the ``key``/``netns`` of DEL and CHECK)."""

    container_id: str
    ifname: str
    netns: str
    weave_ipam: bool = True  # allocate from the router's IPAM (else ``ips`` were delegated)
    subnet: ipaddress.IPv4Network | None = None
    gateway: ipaddress.IPv4Address | None = None
    ips: tuple[IpSpec, ...] = ()
    routes: tuple[RouteSpec, ...] = ()
    hairpin: bool = False
    multicast_route: bool = True
    timeout: float = DEFAULT_TIMEOUT
    args: tuple[tuple[str, str], ...] = ()  # CNI_ARGS (K8S_POD_NAME=...), as given
    delegate: Delegate | None = None  # the delegated IPAM plugin (``ips`` are its)

    @property
    def key(self) -> str:
        return attachment_key(self.container_id, self.ifname)


@dataclass
class Record:
    """What the router remembers of one attachment (the store's ``cni_attachments``)."""

    container_id: str
    ifname: str
    netns: str
    weave_ipam: bool
    cidrs: list[str] = field(default_factory=list)
    inode: int | None = None  # of the namespace at ADD: a path reused later is another one
    args: dict[str, str] = field(default_factory=dict)  # CNI_ARGS at ADD (K8S_POD_NAME...)
    delegate: Delegate | None = None

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "containerId": self.container_id, "ifname": self.ifname, "netns": self.netns,
            "weaveIpam": self.weave_ipam, "cidrs": self.cidrs, "inode": self.inode,
            "args": self.args}
        if self.delegate is not None:
            out["delegate"] = self.delegate.to_json()
        return out

    @classmethod
    def from_json(cls, raw: object) -> Record | None:
        if not isinstance(raw, dict):
            return None
        cid, ifname, netns = raw.get("containerId"), raw.get("ifname"), raw.get("netns")
        cidrs = raw.get("cidrs", [])
        if not (isinstance(cid, str) and isinstance(ifname, str) and isinstance(netns, str)
                and isinstance(cidrs, list)):
            return None
        inode = raw.get("inode")
        args = raw.get("args")
        return cls(cid, ifname, netns, bool(raw.get("weaveIpam", True)),
                   [str(c) for c in cidrs], inode if isinstance(inode, int) else None,
                   {str(k): str(v) for k, v in args.items()} if isinstance(args, dict) else {},
                   Delegate.from_json(raw.get("delegate")))


def attachment_key(container_id: str, ifname: str) -> str:
    return f"{container_id}/{ifname}"


def host_veth(container_id: str, ifname: str) -> str:
    """The host end of the attachment's veth (15 characters at most)."""
    digest = hashlib.sha256(attachment_key(container_id, ifname).encode()).hexdigest()
    return HOST_VETH_PREFIX + digest[:7]


def parse_registry(raw: str | None) -> dict[str, Record]:
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    out: dict[str, Record] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            record = Record.from_json(value)
            if record is not None:
                out[str(key)] = record
    return out


def dump_registry(registry: dict[str, Record]) -> str:
    return json.dumps({k: r.to_json() for k, r in registry.items()}, sort_keys=True)


# --- requests ---------------------------------------------------------------------------


def decode_body(body: bytes) -> dict[str, object]:
    """The request's JSON object; CniError 6 if it is not one."""
    try:
        data = json.loads(body.decode("utf-8") or "{}")
    except (UnicodeDecodeError, ValueError) as exc:
        raise CniError(DECODE_FAILURE, "request body is not JSON", str(exc)) from None
    if not isinstance(data, dict):
        raise CniError(DECODE_FAILURE, "request body is not a JSON object")
    return data


def _str(data: dict[str, object], name: str, *, required: bool = True) -> str:
    value = data.get(name, "")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise CniError(INVALID_CONFIG, f"{name} must be a string")
    if required and not value:
        raise CniError(INVALID_ENV, f"{name} is empty",
                       f"the runtime must set CNI_{name.upper()}")
    return value


def container_key(data: dict[str, object]) -> tuple[str, str]:
    """(container id, ifname) of a request; CniError 4 when either is missing."""
    cid = _str(data, "containerId")
    ifname = _str(data, "ifname")
    if len(ifname) > 15 or "/" in ifname or ifname in (".", ".."):
        raise CniError(INVALID_ENV, f"CNI_IFNAME {ifname!r} is not a valid interface name")
    return cid, ifname


def parse_add(data: dict[str, object]) -> AddRequest:
    cid, ifname = container_key(data)
    netns = _str(data, "netns")
    ipam = data.get("ipam")
    result = data.get("result")
    timeout = data.get("timeout", DEFAULT_TIMEOUT)
    if not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_TIMEOUT:
        raise CniError(INVALID_CONFIG, f"timeout must be 0..{MAX_TIMEOUT:g} seconds")
    common = {"container_id": cid, "ifname": ifname, "netns": netns,
              "hairpin": bool(data.get("hairpin", False)),
              "multicast_route": bool(data.get("multicastRoute", True)),
              "timeout": float(timeout), "args": parse_cni_args(data.get("args"))}
    if result is not None:  # a delegated IPAM plugin's result
        if not isinstance(result, dict):
            raise CniError(INVALID_CONFIG, "the IPAM result is not a JSON object")
        ips = tuple(_ip_spec(x) for x in _list(result, "ips"))
        if not ips:
            raise CniError(INVALID_CONFIG, "the IPAM plugin gave no IPv4 address")
        delegate = data.get("delegate")
        parsed = Delegate.from_json(delegate)
        if delegate is not None and parsed is None:
            raise CniError(INVALID_CONFIG, "the delegated IPAM plugin's record (delegate) "
                           "is not {type, cniPath, conf}, or its config is too long")
        return AddRequest(weave_ipam=False, ips=ips, delegate=parsed,
                          routes=tuple(_route_spec(x) for x in _list(result, "routes")),
                          **common)  # type: ignore[arg-type]
    cfg = ipam if isinstance(ipam, dict) else {}
    subnet = _network(cfg.get("subnet"), "ipam.subnet")
    gateway = _address(cfg.get("gateway"), "ipam.gateway")
    return AddRequest(weave_ipam=True, subnet=subnet, gateway=gateway,
                      routes=tuple(_route_spec(x) for x in _list(cfg, "routes")),
                      **common)  # type: ignore[arg-type]


def parse_cni_args(raw: object) -> tuple[tuple[str, str], ...]:
    """``CNI_ARGS`` (``K1=V1;K2=V2``, as libcni joins them) as pairs; pieces without ``=``
    are dropped (the spec leaves their meaning to the plugin, and we use none)."""
    if not isinstance(raw, str) or not raw:
        return ()
    if len(raw) > MAX_ARGS_LENGTH:
        raise CniError(INVALID_ENV, f"CNI_ARGS is longer than {MAX_ARGS_LENGTH} characters")
    pairs = (piece.partition("=") for piece in raw.split(";"))
    return tuple((k, v) for k, eq, v in pairs if eq and k)


def _list(data: dict[str, object], name: str) -> list[object]:
    value = data.get(name) or []
    if not isinstance(value, list):
        raise CniError(INVALID_CONFIG, f"{name} must be a list")
    return value


def _network(value: object, what: str) -> ipaddress.IPv4Network | None:
    if value in (None, ""):
        return None
    try:
        return ipaddress.IPv4Network(str(value))
    except ValueError:
        raise CniError(INVALID_CONFIG, f"{what} {value!r} is not an IPv4 subnet "
                       "with its host bits clear, like 10.32.0.0/12") from None


def _address(value: object, what: str) -> ipaddress.IPv4Address | None:
    if value in (None, ""):
        return None
    try:
        return ipaddress.IPv4Address(str(value))
    except ValueError:
        raise CniError(INVALID_CONFIG, f"{what} {value!r} is not an IPv4 address") from None


def _ip_spec(raw: object) -> IpSpec:
    if not isinstance(raw, dict):
        raise CniError(INVALID_CONFIG, "an IPAM result's ips entry is not an object")
    try:
        address = ipaddress.ip_interface(str(raw.get("address")))
    except ValueError:
        raise CniError(INVALID_CONFIG,
                       f"IPAM result address {raw.get('address')!r} is not a CIDR") from None
    if not isinstance(address, ipaddress.IPv4Interface):
        raise CniError(INVALID_CONFIG, f"IPAM result address {address}: only IPv4 is "
                       "supported by weave-net")
    return IpSpec(address, _address(raw.get("gateway"), "IPAM result gateway"))


def _route_spec(raw: object) -> RouteSpec:
    if not isinstance(raw, dict):
        raise CniError(INVALID_CONFIG, "a routes entry is not an object")
    try:
        dst = ipaddress.IPv4Network(str(raw.get("dst")), strict=False)
    except ValueError:
        raise CniError(INVALID_CONFIG,
                       f"route dst {raw.get('dst')!r} is not an IPv4 CIDR") from None
    return RouteSpec(dst, _address(raw.get("gw"), "route gw"))


# --- plans and results --------------------------------------------------------------------


def bridge_gateway(host: NetnsState, bridge: str,
                   cidr: ipaddress.IPv4Interface) -> ipaddress.IPv4Address | None:
    """The bridge's address in ``cidr``'s subnet (``weave expose``), if it has one."""
    for addr in host.addresses_of(bridge):
        if isinstance(addr, ipaddress.IPv4Interface) and addr.ip in cidr.network:
            return addr.ip
    return None


def routes_for(request: AddRequest, ips: list[IpSpec],
               bridge_ip: ipaddress.IPv4Address | None) -> list[RouteSpec]:
    """The container's routes: those configured; none configured, Weave's rule: a default
    route via the gateway (the configured one, else the bridge's exposed address)."""
    if request.routes:
        return list(request.routes)
    gateway = next((ip.gateway for ip in ips if ip.gateway is not None), bridge_ip)
    return [RouteSpec(DEFAULT_ROUTE, gateway)] if gateway is not None else []


def route_ops(routes: list[RouteSpec], ips: list[IpSpec], ifname: str, netns: str,
              existing: tuple[Route, ...]) -> list[Op]:
    """AddRoute ops for ``routes`` (not already there) through ``ifname``; a gateway
    outside the container's subnets gets a link route of its own first."""
    wanted: list[Route] = []
    default_gw = next((ip.gateway for ip in ips if ip.gateway is not None), None)
    for spec in routes:
        gw = spec.gw if spec.gw is not None else default_gw
        if gw is None:
            wanted.append(Route(dst=spec.dst, ifname=ifname, scope=Scope.LINK))
            continue
        if not any(gw in ip.address.network for ip in ips):  # Weave's rule: reach it first
            wanted.append(Route(dst=ipaddress.IPv4Network(f"{gw}/32"), ifname=ifname,
                                scope=Scope.LINK))
        wanted.append(Route(dst=spec.dst, ifname=ifname, gateway=gw))
    unique = [r for r in dict.fromkeys(wanted) if r not in existing]
    return [AddRoute(r, netns) for r in unique]


def add_result(request: AddRequest, *, host_mac: str, container_mac: str,
               ips: list[IpSpec], routes: list[RouteSpec]) -> dict[str, object]:
    """The CNI 1.0 result of an ADD (the plugin converts it for older versions)."""
    all_routes = [r.to_json() for r in routes]
    if request.multicast_route:
        all_routes.append({"dst": str(multicast_route_via(request.ifname).dst)})
    return {
        "interfaces": [
            {"name": host_veth(request.container_id, request.ifname), "mac": host_mac},
            {"name": request.ifname, "mac": container_mac, "sandbox": request.netns},
        ],
        "ips": [{"address": str(ip.address), "interface": 1,
                 **({"gateway": str(ip.gateway)} if ip.gateway is not None else {})}
                for ip in ips],
        "routes": all_routes,
    }


def ipam_result(ips: list[IpSpec], routes: list[RouteSpec]) -> dict[str, object]:
    """The result of the ``weave-ipam`` plugin mode: addresses and routes, no interfaces."""
    return {
        "ips": [{"address": str(ip.address),
                 **({"gateway": str(ip.gateway)} if ip.gateway is not None else {})}
                for ip in ips],
        "routes": [r.to_json() for r in routes],
    }
