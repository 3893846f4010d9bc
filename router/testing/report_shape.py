"""The shape of a report: its key paths and JSON value types, to compare ours with the
report Go Weave 2.8.1 wrote (``shared/reference/go-weave-2.8.1/*/h*/report*.json``).

A path is ``.Router.Peers[].Name``; its types are the JSON types seen there (``str``,
``int``, ``bool``, ``dict``, ``list``, ``NoneType``), unioned over every report given.
:func:`differences` lists what differs, except what :data:`ABSENT`, :data:`OURS` and
:data:`RICHER` name (each with its reason).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

Shape = dict[str, set[str]]

# Keys of Weave's report this router leaves out, and why.
ABSENT: dict[str, str] = {
    ".Router.CaptureStats": "pcap counters; ours are under OverlayDiagnostics.sleeve",
    ".Router.MACs": "the MAC table is in the compiled data plane, which gives only its size"
                    " (OverlayDiagnostics.sleeve.macs)",
}
# Keys only ours has (our additions, under names Weave does not use).
OURS: dict[str, str] = {
    ".Router.ConnLimit": "--conn-limit",
    ".Router.OverlayDiagnostics.fastdp": "fastdp's state and each peer's overlay and reason"
                                         " (docs/fastdp.md; Go's is its ODP datapath's)",
    ".IPAM.Status": "the Status: line of status ipam",
    ".IPAM.IPs": "weave_ips{state} of /metrics",
    ".IPAM.UnreachablePeers": "peers of the ring not reachable now",
    ".IPAM.Shares": "each peer's share of the ring, as status ipam lists it",
}
# Keys both have whose value is null in Weave's captures but may be an object in ours.
RICHER: dict[str, str] = {
    ".Router.OverlayDiagnostics.sleeve": "Weave's sleeve says null; ours are its counters",
    ".IPAM.Paxos": "Weave's too is an object while awaiting consensus (captures: null)",
    ".DNS.Upstream": "Weave's too lists the resolv.conf servers (captures: none there, null)",
}


def shape(reports: Iterable[object]) -> Shape:
    """The key paths and their types, unioned over ``reports`` (JSON-decoded)."""
    out: Shape = {}

    def walk(value: object, path: str) -> None:
        out.setdefault(path, set()).add(type(value).__name__)
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{path}.{key}")
        elif isinstance(value, list):
            for item in value:
                walk(item, f"{path}[]")

    for report in reports:
        walk(report, "")
    return out


def go_reports(reference: Path) -> list[object]:
    """Every report Go Weave wrote in the reference captures."""
    files = sorted(reference.glob("*/h*/report*.json"))
    return [json.loads(f.read_text()) for f in files]


def _covered(path: str, names: Iterable[str]) -> bool:
    return any(path == name or path.startswith((name + ".", name + "[]")) for name in names)


def differences(go: Shape, ours: Shape) -> list[str]:
    """One line per difference: a Go key we lack, a type Go never has there, or a key of
    ours Go does not know (outside :data:`OURS`)."""
    problems = []
    for path, types in sorted(go.items()):
        if _covered(path, ABSENT):
            continue
        if path not in ours:
            problems.append(f"missing {path} ({'/'.join(sorted(types))})")
        elif not ours[path] <= types and path not in RICHER:
            problems.append(f"{path}: ours {sorted(ours[path])}, Go's {sorted(types)}")
    for path in sorted(set(ours) - set(go)):
        if not _covered(path, OURS) and not _covered(path, RICHER):
            problems.append(f"unknown to Go: {path} ({'/'.join(sorted(ours[path]))})")
    return problems
