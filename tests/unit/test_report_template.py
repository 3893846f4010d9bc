"""router/control/report.py (Go Weave's report shape), router/control/template.py (Go's
text/template for ``report -f`` and ``GET /report?format=``) and govalues.py (Go's fmt)."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from cli.template import Template, TemplateError, go_format, render
from router.control.govalues import GoMap, NilSlice, go_sprintf
from router.control.report import build_report, render_report
from router.ipam import IpamStatistics, PeerShare, RingEntryStatus
from router.testing.report_shape import ABSENT, differences, go_reports, shape
from router.testing.sim import Sim
from tests.unit.api_helpers import Api
from tests.unit.api_helpers import request as _request
from tests.unit.test_api import _cli, api  # noqa: F401 (api: fixture)
from tests.unit.test_layouts import H1, H2, H3, sample_status

REFERENCE = Path("/work/shared/reference/go-weave-2.8.1")
if not REFERENCE.is_dir():  # a clone next to shared/
    REFERENCE = Path(__file__).resolve().parents[3] / "shared/reference/go-weave-2.8.1"


def _report(**kwargs: bool) -> Any:
    return json.loads(render_report(sample_status(**kwargs)))


IPAM = IpamStatistics(
    status="ready", range="10.32.0.0/12", default_subnet="10.32.0.0/12", max_ips=1 << 20,
    ips={"local-used": 2, "local-free": 10}, unreachable_peers=1, pending_allocates=1,
    pending_claims=1, quorum=None, known=None, counters={},
    shares=(PeerShare(H1, "host1", 12, True, 2), PeerShare(H2, "host2", 20, False, None)),
    entries=(RingEntryStatus("10.32.0.0", 12, H1, "host1", True, 3),
             RingEntryStatus("10.32.0.12", 20, H2, "host2", False, 0)),
    pending_allocate_list=("netns-f00004fd 10.32.0.0/12",),
    pending_claim_list=(("c9", "10.32.0.7/12"),),
)


def _typed(**kwargs: bool) -> Any:
    return build_report(dataclasses.replace(sample_status(**kwargs), ipam=IPAM))


# --- the report's shape: Go Weave's keys and types --------------------------------------

async def _sim_reports(tmp: Path) -> list[object]:
    """Reports of real routers (mesh, sleeve, IPAM, store) in a simulation: a three-peer
    encrypted mesh with an allocation, a loner dialling an address nobody has, and the
    first peer again after the third stopped (unreachable in the ring)."""
    reports: list[object] = []
    async with trio.open_nursery() as nursery:
        sim = Sim(nursery, tmp)
        try:
            opts = {"ipalloc_init": "consensus=3"}
            ips = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
            await sim.add_star(ips, password=b"pw", router_options=opts)
            await sim.add("10.0.0.4", peers=("10.0.0.99",), router_options=opts)
            trio_mesh = [sim.routers[ip] for ip in ips]
            await sim.wait_until(lambda: sim.full_mesh(trio_mesh), timeout=60, what="a mesh",
                                 show=sim.mesh_summary)
            first = sim.routers[ips[0]].router
            assert first is not None
            address = await first.ipam.allocate("c1")
            assert first.dns is not None
            first.dns.add("c1.weave.local.", "c1", [address.ip])
            await trio.sleep(30)  # the failed dial is retried; gossip settles
            reports += [json.loads(render_report(r.status())) for r in sim.routers.values()]
            await sim.stop(ips[2])
            await trio.sleep(5)
            reports.append(json.loads(render_report(sim.routers[ips[0]].status())))
        finally:
            nursery.cancel_scope.cancel()
            sim.close()
    return reports


async def test_report_has_go_weaves_keys_and_types(tmp_path: Path,
                                                   autojump_clock: trio.abc.Clock) -> None:
    go = go_reports(REFERENCE)
    assert len(go) >= 7  # ipam3 h1-h3 (+ after iperf3), ipam3-h3-stopped h1, failures h1-h3
    ours = await _sim_reports(tmp_path)
    assert differences(shape(go), shape(ours)) == []
    stopped = ours[-1]
    assert isinstance(stopped, dict)
    known = [e["IsKnownPeer"] for e in stopped["IPAM"]["Entries"]]
    assert sorted(known) == [False, True, True]  # as Weave's ipam3-h3-stopped
    assert stopped["IPAM"]["ActiveIPs"] == 1
    assert stopped["IPAM"]["RangeNumIPs"] == 1 << 20
    assert sum(e["Size"] for e in stopped["IPAM"]["Entries"]) == 1 << 20  # the whole ring
    tokens = [e["Token"] for e in stopped["IPAM"]["Entries"]]
    assert tokens[0] == "10.32.0.0" and tokens == sorted(tokens, key=ipaddress.IPv4Address)


def test_the_shape_check_finds_a_renamed_or_retyped_key() -> None:
    go = shape(go_reports(REFERENCE))
    ours = {path: set(types) for path, types in go.items() if not path.startswith(
        tuple(ABSENT))}
    assert differences(go, ours) == []
    renamed = {p.replace(".IPAM.Entries[].Nickname", ".IPAM.Entries[].NickName"): t
               for p, t in ours.items()}
    assert differences(go, renamed) == [
        "missing .IPAM.Entries[].Nickname (str)",
        "unknown to Go: .IPAM.Entries[].NickName (str)"]
    retyped = {**ours, ".Router.Connections[].Attrs.mtu": {"str"}}
    assert differences(go, retyped) == [
        ".Router.Connections[].Attrs.mtu: ours ['str'], Go's ['int']"]


def test_report_top_level_and_router_keys_in_weaves_order() -> None:
    report = _report()
    assert list(report) == ["Ready", "Version", "VersionCheck", "Router"]
    assert report["Ready"] is True and report["Version"] == "0.1.0"
    assert report["VersionCheck"] == {"Enabled": False, "Success": False, "NewVersion": "",
                                      "NextCheckAt": "0001-01-01T00:00:00Z"}
    assert list(report["Router"]) == [
        "Protocol", "ProtocolMinVersion", "ProtocolMaxVersion", "Encryption", "PeerDiscovery",
        "Name", "NickName", "Port", "Peers", "UnicastRoutes", "BroadcastRoutes",
        "Connections", "TerminationCount", "Targets", "OverlayDiagnostics", "TrustedSubnets",
        "Interface", "ConnLimit",
    ]
    assert "DNS" not in report and "IPAM" not in report  # no DNS, no IPAM: absent as Weave's
    assert json.loads(render_report(sample_status(ready=False)))["Ready"] is False


def test_report_peers_connections_and_routes() -> None:
    router = _report(password=True)["Router"]
    assert router["Peers"][0]["Connections"][0] == {
        "Name": H2, "NickName": "host2", "Address": "192.168.77.2:6783", "Outbound": True,
        "Established": True}
    assert router["Connections"][0] == {
        "Address": "192.168.77.2:6783", "Outbound": True, "State": "established",
        "Info": f"encrypted   fastdp {H2}(host2)",
        "Attrs": {"encrypted": True, "mtu": 1376, "name": "fastdp"},  # Go: int mtu, sorted
    }
    assert router["UnicastRoutes"] == [{"Dest": H2, "Via": H2}, {"Dest": H3, "Via": H3}]
    assert router["BroadcastRoutes"] == [{"Source": H1, "Via": [H2, H3]}]
    assert router["Targets"] == ["192.168.77.2"] and router["TrustedSubnets"] == []
    assert router["OverlayDiagnostics"] == {"sleeve": None}


def test_nil_slices_and_maps_are_json_null_as_go_writes_them() -> None:
    lonely = dataclasses.replace(sample_status().router, targets=(), peers=(
        dataclasses.replace(sample_status().router.peers[0], connections=()),))
    report = json.loads(render_report(dataclasses.replace(sample_status(), router=lonely)))
    assert report["Router"]["Targets"] is None
    assert report["Router"]["Peers"][0]["Connections"] is None


def test_report_ipam_section_is_weaves_then_ours() -> None:
    ipam = json.loads(render_report(dataclasses.replace(sample_status(), ipam=IPAM)))["IPAM"]
    assert list(ipam) == ["Paxos", "Range", "RangeNumIPs", "ActiveIPs", "DefaultSubnet",
                          "Entries", "PendingClaims", "PendingAllocates",
                          "Status", "IPs", "UnreachablePeers", "Shares"]
    assert (ipam["Paxos"], ipam["RangeNumIPs"], ipam["ActiveIPs"]) == (None, 1 << 20, 2)
    assert ipam["Entries"][1] == {"Token": "10.32.0.12", "Size": 20, "Peer": H2,
                                  "Nickname": "host2", "IsKnownPeer": False, "Version": 0}
    assert ipam["PendingClaims"] == [{"Ident": "c9", "CIDR": "10.32.0.7/12"}]
    assert ipam["PendingAllocates"] == ["netns-f00004fd 10.32.0.0/12"]
    waiting = dataclasses.replace(IPAM, status="awaiting consensus (quorum: 2, known: 1)",
                                  quorum=2, known=1, entries=())
    ipam = build_report(dataclasses.replace(sample_status(), ipam=waiting))["IPAM"]
    assert isinstance(ipam, dict)
    assert ipam["Paxos"] == {"Elector": True, "KnownNodes": 1, "Quorum": 2}
    assert json.loads(render_report(dataclasses.replace(sample_status(), ipam=waiting))
                      )["IPAM"]["Entries"] is None


def test_report_carries_the_data_plane_counters_by_peer_name() -> None:
    counters = {"frames_out": 3, "bytes_out": 300, "datagrams_out": 3, "frames_in": 2,
                "bytes_in": 200, "datagrams_in": 2}
    stats = {"frames_captured": 3, "drops": {"bad_auth": 1, "replay": 0},
             "peers": {0x0A0000000002: counters}}
    report = build_report(dataclasses.replace(sample_status(), dataplane=stats))
    sleeve = report["Router"]["OverlayDiagnostics"]["sleeve"]  # type: ignore[index]
    assert sleeve["drops"] == {"bad_auth": 1, "replay": 0}
    assert sleeve["peers"] == {"0a:00:00:00:00:02": counters}
    assert render("{{.Router.OverlayDiagnostics.sleeve.drops}}", report) == (
        "map[bad_auth:1 replay:0]")


def test_report_is_deterministic_indented_json() -> None:
    text = render_report(sample_status())
    assert text == render_report(sample_status())
    assert text.startswith('{\n    "Ready": true,\n    "Version": "0.1.0",\n')
    assert text.endswith("}\n")


# --- templates: what Weave's scripts, tests and docs use --------------------------------

WEAVE_TEMPLATES = [  # (template, expected) as weave's test/*.sh and docs write them
    ("{{.Router.Name}}", H1),
    ("{{.Router.Name}}({{.Router.NickName}})", f"{H1}(host1)"),
    ("{{len .Router.Peers}}", "3"),
    ("{{.IPAM.DefaultSubnet}}", "10.32.0.0/12"),
    ("{{.IPAM.Range}}", "10.32.0.0/12"),
    ("{{.VersionCheck.Enabled}}", "false"),
    ("{{.Router.Interface}}", ""),  # no data plane in this status; the live test has one
    ('{{range .Router.Targets}}{{.}}{{"\\n"}}{{end}}', "192.168.77.2\n"),
    ("{{range .Router.Targets}}{{.}}\n{{end}}", "192.168.77.2\n"),  # weave test: direct_peers
    ("{{json .Router.Targets}}", '["192.168.77.2"]'),
    ('{{range .Router.Connections}}{{if eq .State "established"}}{{.Address}}\n{{end}}{{end}}',
     "192.168.77.2:6783\n192.168.77.3:41234\n"),
    # status connections, as Weave's http.go builds it from the report
    ('{{range .Router.Connections}}{{if .Outbound}}->{{else}}<-{{end}} '
     '{{printf "%-21v" .Address}} {{printf "%-11v" .State}} {{.Info}} '
     '{{range $key,$element := .Attrs}}{{if ne $key "name"}}{{$key}}={{$element}} '
     '{{end}}{{end}}\n{{end}}',
     f"-> 192.168.77.2:6783     established fastdp {H2}(host2) mtu=1376 \n"
     f"<- 192.168.77.3:41234    established sleeve {H3}(host3) mtu=1438 \n"),
    # status peers
    ('{{range .Router.Peers}}{{.Name}}({{.NickName}})\n{{range .Connections}}'
     '   {{if .Outbound}}->{{else}}<-{{end}} {{printf "%-21v" .Address}} '
     '{{$nameNickName := printf "%v(%v)" .Name .NickName}}{{printf "%-37v" $nameNickName}} '
     '{{if .Established}}established{{else}}pending{{end}}\n{{end}}{{end}}',
     f"{H1}(host1)\n   -> 192.168.77.2:6783     {H2 + '(host2)':<37} established\n"
     f"   <- 192.168.77.3:41234    {H3 + '(host3)':<37} established\n"
     f"{H2}(host2)\n   <- 192.168.77.1:50000    {H1 + '(host1)':<37} established\n"
     f"   <- 192.168.77.3:41235    {H3 + '(host3)':<37} established\n"
     f"{H3}(host3)\n   -> 192.168.77.1:6783     {H1 + '(host1)':<37} established\n"
     f"   -> 192.168.77.2:6783     {H2 + '(host2)':<37} established\n"),
    ("{{if .IPAM.Entries}}achieved{{else if .IPAM.Paxos}}waiting{{else}}deferred{{end}}",
     "achieved"),
    ("{{with .IPAM.Paxos}}{{.Quorum}}{{else}}no election{{end}}", "no election"),
    ("{{range $i, $e := .IPAM.Entries}}{{$i}}:{{$e.Nickname}}/{{.Size}} {{end}}",
     "0:host1/12 1:host2/20 "),
    ('{{range .IPAM.Entries}}{{printf "%-37v %8d IPs (%04.1f%% of total)" .Peer .Size '
     '50.0}}{{"\\n"}}{{end}}',
     f"{H1:<37}       12 IPs (50.0% of total)\n{H2:<37}       20 IPs (50.0% of total)\n"),
    ("{{(index .Router.Peers 1).NickName}} {{len (index .Router.Peers 1).Connections}}",
     "host2 2"),
    ("{{.IPAM.IPs}}", "map[local-free:10 local-used:2]"),
    ("{{(index .Router.Connections 0).Attrs}}", "map[mtu:1376 name:fastdp]"),
    ("{{.Router.TrustedSubnets}} {{.IPAM.Paxos}} {{.IPAM.PendingClaims}}",
     "[] <nil> [{c9 10.32.0.7/12}]"),
    ("{{(index .IPAM.Entries 0)}}", f"{{10.32.0.0 12 {H1} host1 true 3}}"),
    # Weave's status: "Version: {{.Version}} ({{.VersionCheck}})", a Stringer
    ("{{.Version}} ({{.VersionCheck}})", "0.1.0 (version check update disabled)"),
    ("{{.VersionCheck.NextCheckAt}}", "0001-01-01 00:00:00 +0000 UTC"),  # time.Time
    ("{{json .VersionCheck}}", '{"Enabled":false,"Success":false,"NewVersion":"",'
                               '"NextCheckAt":"0001-01-01T00:00:00Z"}'),
    # pointers to structs: &{...} on top, an address inside another value
    ("{{.IPAM}}", "&{<nil> 10.32.0.0/12 1048576 2 10.32.0.0/12 [{10.32.0.0 12 " + H1),
    ("{{.}}", "{true 0.1.0 version check update disabled 0xc000010000 0xc000010000}"),
]


@pytest.mark.parametrize(("template", "expected"), WEAVE_TEMPLATES)
def test_weaves_templates(template: str, expected: str) -> None:
    out = render(template, _typed())
    assert out == expected or (template == "{{.IPAM}}" and out.startswith(expected))


@pytest.mark.parametrize(("template", "expected"), [
    ("{{eq 1 1}} {{eq .Router.Port 6783}} {{eq \"a\" \"b\" \"a\"}} {{ne 1 2}}",
     "true true true true"),
    ("{{lt 1 2}} {{le 2 2}} {{gt \"b\" \"a\"}} {{ge 1 2}}", "true true true false"),
    ("{{and 1 0}} {{and 1 2}} {{or 0 \"\"}} {{or 0 \"x\"}} {{not .Router.Encryption}}",
     "0 2  x true"),
    ("{{if and .Router.PeerDiscovery (not .Router.Encryption)}}open{{end}}", "open"),
    ('{{"a\\tb\\\\c\\u00e9\\x41"}}|{{`raw\\n`}}', "a\tb\\c\u00e9A|raw\\n"),
    ("{{3}} {{-2}} {{1.5}} {{1e21}} {{0x1F}} {{true}} {{print nil}}",
     "3 -2 1.5 1e+21 31 true <nil>"),
    ("{{$x := 1}}{{if true}}{{$x = 2}}{{$y := 3}}{{end}}{{$x}}", "2"),
    ("{{$p := .Router.Peers}}{{range $p}}{{$.Router.NickName}}{{end}}", "host1host1host1"),
    ("{{range .Router.TrustedSubnets}}x{{else}}none{{end}}", "none"),
    ("{{range $k, $v := (index .Router.Connections 1).Attrs}}{{$k}}={{$v}};{{end}}",
     "mtu=1438;name=sleeve;"),
    ("{{with .Router.Targets}}{{len .}} target{{end}}", "1 target"),
    ("{{with .Router.TrustedSubnets}}x{{else with .Router.Targets}}{{.}}{{end}}",
     "[192.168.77.2]"),
    ("{{print \"a\" 1 2 \"b\"}}|{{println 1 \"a\"}}|", "a1 2b|1 a\n|"),
    ("{{len .Router.Name}} {{len .IPAM.IPs}} {{index .Router.Name 0}}", "17 2 53"),
    ("{{index .IPAM.IPs \"local-used\"}} {{index .IPAM.IPs \"nope\"}} {{.IPAM.IPs.nope}}",
     "2 <nil> <no value>"),
    ("a  {{- .Router.Port -}}  b", "a6783b"),
    ("{{/* a comment */}}x{{- /* trimmed */ -}}  y", "xy"),
    ('{{ "}}" }}', "}}"),
    ("{{range\n.Router.Targets}}{{.}}{{end\n}}", "192.168.77.2"),
    ("{{.Router.Port | printf \"%05d\"}}", "06783"),
])
def test_template_features(template: str, expected: str) -> None:
    assert render(template, _typed()) == expected


@pytest.mark.parametrize(("fmt", "args", "expected"), [
    ("%s|%-10s|%10s|%.2s", ["ab", "ab", "ab", "abc"], "ab|ab        |        ab|ab"),
    ("%d|%5d|%-5d|%05d|%+d|%x|%X", [42, 42, 42, -42, 3, 255, 255],
     "42|   42|42   |-0042|+3|ff|FF"),
    ("%v|%v|%v|%v|%v", [True, None, [1, "a"], {"A": 1}, GoMap(b=1, a=2)],
     "true|<nil>|[1 a]|{1}|map[a:2 b:1]"),
    ("%q|%t|%5.1f|%04.1f|%e|%g|%%", ["a\"b\n", False, 3.14159, 5.0, 1234.5, 0.0001],
     '"a\\"b\\n"|false|  3.1|05.0|1.234500e+03|0.0001|%'),
    ("%12.12v|%-8v|", ["0123456789abcdef", 7], "0123456789ab|7       |"),
    ("%d %s", ["x", 5], "%!d(string=x) %!s(int=5)"),
    ("%d %d", [1], "1 %!d(MISSING)"),
    ("%d", [1, "x"], "1%!(EXTRA string=x)"),
])
def test_printf_is_gos(fmt: str, args: list[object], expected: str) -> None:
    assert go_sprintf(fmt, args) == expected


def test_go_formatting_of_values() -> None:
    assert go_format(None) == "<nil>"
    assert go_format([1, "a", True, [2]]) == "[1 a true [2]]"
    assert go_format({"A": 1, "B": "x"}) == "{1 x}"  # a struct: values in field order
    assert go_format(GoMap(b="x", a=1)) == "map[a:1 b:x]"  # a map: sorted keys
    assert go_format(NilSlice()) == "[]"
    assert (go_format(1.5), go_format(3.0), go_format(1e21), go_format(1e20)) == (
        "1.5", "3", "1e+21", "100000000000000000000")


def test_json_of_an_object_is_compact_keeps_field_order_and_escapes_like_go() -> None:
    out = render("{{json .Router.Peers}}", _typed())
    assert out.startswith('[{"Name":"5a:b7:04:1c:2d:8e","NickName":"host1","UID":11,')
    assert render("{{json .}}", {"a": "<b>&"}) == '{"a":"\\u003cb\\u003e\\u0026"}'
    assert render("{{json .IPAM.PendingAllocates}} {{json .Router.TrustedSubnets}}",
                  _typed()) == '["netns-f00004fd 10.32.0.0/12"] []'
    assert render("{{json .}}", {"x": NilSlice()}) == '{"x":null}'


@pytest.mark.parametrize(("template", "message"), [
    ("{{.Router.Name", "unclosed action"),
    ("{{}}", "missing value for command"),
    ("{{end}}", "unexpected {{end}}"),
    ("{{else}}", "unexpected {{else}}"),
    ("{{range .Router.Peers}}x", "missing {{end}}"),
    ("{{nosuch .Router.Name}}", 'function "nosuch" not defined'),
    ('{{"unterminated}}', "unterminated quoted string"),
    ("{{.Router | .Router}}", None),
    ("{{template \"x\"}}", "is not supported"),
    ("{{range $i, $p, $q := .Router.Peers}}{{end}}", "expected := or ="),
    ("{{/* open", "unclosed comment"),
    ("{{(len .A}}", "unclosed ("),
])
def test_template_syntax_errors(template: str, message: str | None) -> None:
    if message is None:  # parses; fails against the data
        with pytest.raises(TemplateError, match="can't give argument to non-function"):
            render(template, _typed())
        return
    with pytest.raises(TemplateError) as info:
        Template(template)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("template", "message"), [
    ("{{.Router.Nope}}", "can't evaluate field Nope in {{.Router.Nope}}"),
    ("{{.IPAM.IPs}}{{.IPAM.Nope}}", "can't evaluate field Nope"),
    ("{{.Router.Name.Deeper}}", "can't evaluate field Deeper"),
    ("{{.IPAM.Paxos.Quorum}}", "nil pointer evaluating .Quorum"),
    ("{{len .Router.Port}}", "len of '6783'"),
    ("{{range .VersionCheck}}{{end}}", "range can't iterate over version check update"),
    ("{{range .Router}}{{end}}", "range can't iterate"),
    ("{{len}}", "len wants 1 argument, got 0"),
    ("{{eq .Router.Port \"6783\"}}", "incompatible types for comparison"),
    ("{{eq .Router.Peers .Router.Peers}}", "non-comparable type"),
    ("{{index .Router.Peers 9}}", "index out of range: 9"),
    ("{{$nope}}", 'undefined variable "$nope"'),
    ("{{printf 3}}", "printf wants a format string"),
])
def test_template_errors_against_the_data(template: str, message: str) -> None:
    with pytest.raises(TemplateError) as info:
        render(template, _typed())
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_runaway_templates_are_bounded() -> None:
    nested = "{{range $}}" * 8 + "{{end}}" * 8  # 10**8 iterations
    with pytest.raises(TemplateError, match="steps"):
        render(nested, list(range(10)))


@given(st.text(alphabet=st.characters(blacklist_characters="{}"), max_size=200))
def test_text_without_actions_renders_verbatim(text: str) -> None:
    assert render(text, {"a": 1}) == text


@given(st.text(alphabet='{}.|() \n\t-$abAB/*":=,1ieflnd', max_size=60) | st.text(max_size=60))
def test_any_template_either_renders_or_raises_template_error(text: str) -> None:
    try:
        Template(text).render({"Router": {"Name": "n", "Peers": [{"A": 1}]}, "a": GoMap(b=1)})
    except TemplateError as exc:
        assert "\n" not in str(exc)


# --- GET /report?format= (server-side, as Weave's API) and report -f -------------------

async def test_report_format_is_rendered_by_the_api(api: Api) -> None:  # noqa: F811
    response = await _request(api.port, "GET", "/report?format=%7B%7B.Router.Name%7D%7D")
    assert (response.status, response.text) == (200, H1)
    assert response.headers["content-type"].startswith("text/plain")
    response = await _request(api.port, "GET", "/report?format=%7B%7B.Nope%7D%7D")
    assert response.status == 400
    assert response.text.startswith("template: can't evaluate field Nope")
    response = await _request(api.port, "GET", "/report?x=1")
    assert json.loads(response.body)["Router"]["Name"] == H1


async def test_cli_report_renders_on_the_router(api: Api,  # noqa: F811
                                                capsys: pytest.CaptureFixture[str]) -> None:
    template = '{{range .Router.Connections}}{{if eq .State "established"}}{{.Attrs}}{{"\\n"}}' \
               '{{end}}{{end}}'
    assert await _cli(api, "report", "-f", template) == 0
    assert capsys.readouterr().out == "map[mtu:1376 name:fastdp]\nmap[mtu:1438 name:sleeve]\n"
    assert await _cli(api, "report", "-f", "{{printf \"%5.1f|%-6s|\" 2.25 .Router.NickName}}"
                      ) == 0
    assert capsys.readouterr().out == "  2.2|host1 |\n"
