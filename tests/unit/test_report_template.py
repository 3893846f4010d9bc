"""router/control/report.py (Weave's report shape) and cli/template.py (``report -f``)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cli.template import Template, TemplateError, go_format, render
from router.control.report import build_report, render_report
from tests.unit.test_layouts import H1, H2, H3, sample_status


def _report(**kwargs: bool) -> Any:
    return json.loads(render_report(sample_status(**kwargs)))


def test_report_has_weaves_shape() -> None:
    report = _report()
    assert list(report) == ["Version", "Router"]
    assert report["Version"] == "0.1.0"
    router = report["Router"]
    assert list(router) == [
        "Protocol", "ProtocolMinVersion", "ProtocolMaxVersion", "Encryption", "PeerDiscovery",
        "Name", "NickName", "Port", "Peers", "UnicastRoutes", "BroadcastRoutes",
        "Connections", "Targets", "TrustedSubnets", "ConnLimit",
    ]
    assert (router["Protocol"], router["ProtocolMinVersion"], router["ProtocolMaxVersion"]) == (
        "weave-router", 1, 1)
    assert (router["Name"], router["NickName"], router["Port"]) == (H1, "host1", 6783)
    assert router["Encryption"] is False and router["PeerDiscovery"] is True
    assert router["Targets"] == ["192.168.77.2"]
    assert router["TrustedSubnets"] == []
    assert router["ConnLimit"] == 200


def test_report_peers_and_their_connections() -> None:
    peers = _report()["Router"]["Peers"]
    assert [p["Name"] for p in peers] == [H1, H2, H3]
    assert peers[0] == {
        "Name": H1, "NickName": "host1", "UID": 11, "ShortID": 11, "Version": 4,
        "Connections": [
            {"Name": H2, "NickName": "host2", "Address": "192.168.77.2:6783",
             "Outbound": True, "Established": True},
            {"Name": H3, "NickName": "host3", "Address": "192.168.77.3:41234",
             "Outbound": False, "Established": True},
        ],
    }


def test_report_connections_and_routes() -> None:
    router = _report(password=True)["Router"]
    assert router["Connections"][0] == {
        "Address": "192.168.77.2:6783", "Outbound": True, "State": "established",
        "Info": f"encrypted   fastdp {H2}(host2)", "Attrs": {"mtu": "1376"},
    }
    assert router["UnicastRoutes"] == [{"Dest": H2, "Via": H2}, {"Dest": H3, "Via": H3}]
    assert router["BroadcastRoutes"] == [{"Source": H1, "Via": [H2, H3]}]


def test_report_carries_the_data_plane_counters_by_peer_name() -> None:
    import dataclasses

    counters = {"frames_out": 3, "bytes_out": 300, "datagrams_out": 3, "frames_in": 2,
                "bytes_in": 200, "datagrams_in": 2}
    stats = {"frames_captured": 3, "drops": {"bad_auth": 1, "replay": 0},
             "peers": {0x0A0000000002: counters}}
    report = build_report(dataclasses.replace(sample_status(), dataplane=stats))
    sleeve = report["Router"]["OverlayDiagnostics"]["sleeve"]
    assert sleeve["drops"] == {"bad_auth": 1, "replay": 0}
    assert sleeve["peers"] == {"0a:00:00:00:00:02": counters}
    assert "OverlayDiagnostics" not in build_report(sample_status())["Router"]


def test_report_has_an_ipam_section_when_ipam_runs() -> None:
    import dataclasses

    from router.ipam import IpamStatistics, PeerShare

    ipam = IpamStatistics(
        status="ready", range="10.32.0.0/12", default_subnet="10.32.0.0/12", max_ips=1 << 20,
        ips={"local-used": 2, "local-free": 10}, unreachable_peers=1, pending_allocates=0,
        pending_claims=0, quorum=None, known=None, counters={},
        shares=(PeerShare("aa:00:00:00:00:01", "host1", 12, True, 2),
                PeerShare("aa:00:00:00:00:02", "host2", 20, False, None)),
    )
    report = build_report(dataclasses.replace(sample_status(), ipam=ipam))
    assert report["IPAM"]["Status"] == "ready"
    assert [e["NickName"] for e in report["IPAM"]["Entries"]] == ["host1", "host2"]
    assert report["IPAM"]["UnreachablePeers"] == 1
    assert render("{{.IPAM.Range}}", report) == "10.32.0.0/12"


def test_report_is_deterministic_indented_json() -> None:
    text = render_report(sample_status())
    assert text == render_report(sample_status())
    assert text.startswith('{\n    "Version": "0.1.0",\n    "Router": {\n')
    assert text.endswith("}\n")
    assert json.loads(text) == build_report(sample_status())


# --- templates against the report -------------------------------------------------------

@pytest.mark.parametrize(("template", "expected"), [
    ("{{.Router.Name}}", H1),
    ("{{ .Router.NickName }}", "host1"),
    ("name={{.Router.Name}} port={{.Router.Port}}", f"name={H1} port=6783"),
    ("{{len .Router.Peers}}", "3"),
    ("{{len .Router.Name}}", "17"),
    ("{{len .Router.Connections | json}}", "2"),
    ("{{range .Router.Peers}}{{.NickName}} {{end}}", "host1 host2 host3 "),
    ("{{range .Router.Peers}}{{.NickName}}:{{len .Connections}};{{end}}",
     "host1:2;host2:2;host3:2;"),
    ("{{range .Router.Peers}}{{range .Connections}}{{.NickName}}{{end}}|{{end}}",
     "host2host3|host1host3|host1host2|"),
    ("{{range .Router.Peers}}{{$.Router.NickName}}{{end}}", "host1host1host1"),
    ("{{range .Router.TrustedSubnets}}x{{else}}none{{end}}", "none"),
    ("{{range .Router.Targets}}{{.}}\n{{end}}", "192.168.77.2\n"),
    ("{{json .Router.Targets}}", '["192.168.77.2"]'),
    ("{{.Router.Targets | json}}", '["192.168.77.2"]'),
    ("{{json .Router.Encryption}}", "false"),
    ("{{.Router.Encryption}} {{.Router.PeerDiscovery}}", "false true"),
    ("{{.Router.Targets}}", "[192.168.77.2]"),
    ("{{if .Router.Encryption}}yes{{else}}no{{end}}", "no"),
    ("{{if .Router.Targets}}{{len .Router.Targets}} targets{{end}}", "1 targets"),
    ("a  {{- .Router.Port -}}  b", "a6783b"),
    ("{{/* a comment */}}x", "x"),
    ("{{range\n.Router.Targets}}{{.}}{{end\n}}", "192.168.77.2"),
    ("no actions at all", "no actions at all"),
    ("{{range .Router.Connections}}{{range .Attrs}}{{.}} {{end}}{{end}}", "1376 1438 sleeve "),
])
def test_template_cases(template: str, expected: str) -> None:
    assert render(template, _report()) == expected


def test_json_of_an_object_is_compact_and_keeps_field_order() -> None:
    out = render("{{json .Router.Peers}}", _report())
    assert out.startswith('[{"Name":"5a:b7:04:1c:2d:8e","NickName":"host1","UID":11,')
    assert json.loads(out) == _report()["Router"]["Peers"]


def test_json_escapes_like_go() -> None:
    assert render("{{json .}}", {"a": "<b>&"}) == '{"a":"\\u003cb\\u003e\\u0026"}'


def test_go_formatting_of_values() -> None:
    assert go_format(None) == "<nil>"
    assert go_format([1, "a", True, [2]]) == "[1 a true [2]]"
    assert go_format({"A": 1, "B": "x"}) == "{1 x}"
    assert go_format(1.5) == "1.5"
    assert go_format(3.0) == "3"


@pytest.mark.parametrize(("template", "message"), [
    ("{{.Router.Name", "unclosed action"),
    ("{{}}", "empty action"),
    ("{{end}}", "unexpected {{end}}"),
    ("{{else}}", "unexpected {{else}}"),
    ("{{range .Router.Peers}}x", "missing {{end}}"),
    ("{{printf .Router.Name}}", "unsupported 'printf'"),
    ("{{.Router.Name .Router.Port}}", "is not a function"),
    ("{{\"literal\"}}", "unsupported"),
    ("{{.Router | .Router}}", "cannot pipe"),
    ("{{range $i, $p := .Router.Peers}}{{end}}", "unsupported"),
    ("{{if .A}}{{else if .B}}{{end}}", "unexpected {{else if .B}}"),
    ("{{.A\n.B}}", "is not a function in {{.A\\n.B}}"),
])
def test_template_syntax_errors(template: str, message: str) -> None:
    with pytest.raises(TemplateError) as info:
        Template(template)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("template", "message"), [
    ("{{.Router.Nope}}", "no field Nope in {{.Router.Nope}}"),
    ("{{.Router.Name.Deeper}}", "can't evaluate field Deeper"),
    ("{{len .Router.Port}}", "len of '6783'"),
    ("{{range .Router.Port}}{{end}}", "range can't iterate"),
    ("{{len}}", "len wants 1 argument, got 0"),
    ("{{len .Router.Peers .Router.Peers}}", "len wants 1 argument, got 2"),
])
def test_template_errors_against_the_data(template: str, message: str) -> None:
    with pytest.raises(TemplateError) as info:
        render(template, _report())
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@given(st.text(alphabet=st.characters(blacklist_characters="{}"), max_size=200))
def test_text_without_actions_renders_verbatim(text: str) -> None:
    assert render(text, {"a": 1}) == text


@given(st.text(alphabet="{}.| \n\t-$abAB/*", max_size=60) | st.text(max_size=60))
def test_any_template_either_parses_or_raises_template_error(text: str) -> None:
    try:
        Template(text).render({"Router": {"Name": "n", "Peers": [{"A": 1}]}})
    except TemplateError as exc:
        assert "\n" not in str(exc)
