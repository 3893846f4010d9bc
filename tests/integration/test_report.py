"""The live report against Go Weave 2.8.1's (issue 10 item 9): real routers in host
namespaces, an encrypted mesh with a container attached and a target nobody answers;
every key of Weave's captured reports is in ours with a type Weave uses there, except
those ``router/testing/report_shape.py`` lists with their reasons. And the templates of
Weave's scripts rendered by the router (``report -f``, ``GET /report?format=``).
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest

from router.testing.netns import Host, Mesh
from router.testing.report_shape import ABSENT, differences, go_reports, shape

pytestmark = pytest.mark.integration
MakeMesh = Callable[..., Mesh]

REFERENCE = Path("/work/shared/reference/go-weave-2.8.1")
if not REFERENCE.is_dir():  # a clone next to shared/
    REFERENCE = Path(__file__).resolve().parents[3] / "shared/reference/go-weave-2.8.1"


def _report(host: Host) -> object:
    return json.loads(host.router("report").stdout)


def test_live_report_has_go_weaves_keys_and_types(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(3)
    mesh.launch_star("--password", "s3cret", "--ipalloc-init", "consensus=3")
    mesh.wait_full_mesh()
    h1, h2, h3 = mesh.hosts
    c1 = mesh.add_bare_container(h1)
    [addr] = c1.attach().stdout.split()
    nobody = h1.ip.rsplit(".", 1)[0] + ".99"  # on the LAN, never answers
    h2.router("connect", nobody)
    h2.wait("a failed connection to the silent target",
            lambda: (f"{nobody}:6783" in (s := h2.status("connections"))
                     and ("failed" in s or "retrying" in s), s), timeout=60.0)
    ours = [_report(h) for h in mesh.hosts]
    h3.router("stop")
    h3.wait_stopped()
    h1.wait("h3 to be unreachable in IPAM",
            lambda: ("unreachable" in (s := h1.status("ipam")), s), timeout=60.0)
    ours.append(_report(h1))
    go = shape(go_reports(REFERENCE))
    assert differences(go, shape(ours)) == []
    assert sorted(ABSENT) == [".Router.CaptureStats", ".Router.MACs"]
    first = ours[0]
    assert isinstance(first, dict)
    assert [(e["Hostname"], e["Address"]) for e in first["DNS"]["Entries"]] == [
        (f"{c1.name}.weave.local.", addr)]  # weaveDNS registered the attached container
    assert first["IPAM"]["ActiveIPs"] == 1 and first["IPAM"]["RangeNumIPs"] == 1 << 20
    assert sorted(e["Nickname"] for e in first["IPAM"]["Entries"]) == ["host1", "host2",
                                                                        "host3"]
    attrs = first["Router"]["Connections"][0]["Attrs"]
    assert attrs["encrypted"] is True and attrs["name"] == "sleeve"
    assert isinstance(attrs["mtu"], int)
    assert h1.router("report", "-f", "{{.IPAM.ActiveIPs}} {{range .IPAM.Entries}}"
                     "{{if eq .Nickname \"host3\"}}{{.IsKnownPeer}}{{end}}{{end}}"
                     ).stdout == "1 false\n"
    assert addr  # attached from IPAM's range


def test_weaves_script_templates_render_on_the_router(running_mesh: Mesh) -> None:
    h1, h2 = running_mesh.hosts[:2]
    name = h1.router("report", "-f", "{{.Router.Name}}").stdout.strip()
    cases = {
        "{{.Router.Name}}({{.Router.NickName}})": f"{name}(host1)",
        "{{len .Router.Peers}}": "3",
        "{{.VersionCheck.Enabled}}": "false",
        "{{.Router.Interface}}": "vethwe-pcap (via TAP)",  # no "datapath": Weave's no_fastdp
        '{{range .Router.Targets}}{{.}}{{"\\n"}}{{end}}': "",
        '{{range .Router.Connections}}{{if eq .State "established"}}x{{end}}{{end}}': "xx",
        '{{with .IPAM}}{{printf "%-14s|" .Range}}{{end}}': "10.32.0.0/12  |",
        '{{range $i, $c := .Router.Connections}}{{$i}}{{end}}': "01",
    }
    for template, expected in cases.items():
        assert h1.router("report", "-f", template).stdout == expected + "\n", template
    targets = h2.router("report", "-f", '{{range .Router.Targets}}{{.}}{{"\\n"}}{{end}}')
    assert targets.stdout in (f"{h1.ip}\n", f"{h1.ip}:6783\n")  # one line per target
    query = urllib.parse.quote("{{.Router.NickName}}")
    out = h1.run(["curl", "-s", f"http://127.0.0.1:6784/report?format={query}"], timeout=15)
    assert out.stdout == "host1"  # rendered by the router, as Weave's API
    bad = h1.router("report", "-f", "{{.Router.Nope}}", check=False)
    assert bad.returncode == 1 and bad.stderr.startswith(
        "weave-router: error: report -f: can't evaluate field Nope")
