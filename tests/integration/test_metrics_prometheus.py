"""Weave's metrics read back through a real Prometheus (Debian's ``prometheus``): it runs
in host1's namespace on loopback, scrapes host1's router on 127.0.0.1:6782 every 250 ms
into its own storage directory, and the test asks its query API while a mesh of three
hosts forms and a container is attached, then ``weave_flows`` (fastdp's forwarding
entries) growing once a container on another host is pinged. Before that, ``launch``
with the metrics port taken fails with one line and a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest

from router.testing.netns import Host, Mesh

pytestmark = pytest.mark.integration
MakeMesh = Callable[..., Mesh]
PROMETHEUS_PORT = 9090  # in host1's namespace, loopback only

CONFIG = """\
global:
  scrape_interval: 250ms
  scrape_timeout: 200ms
scrape_configs:
  - job_name: weave
    static_configs:
      - targets: ['127.0.0.1:6782']
"""


def start_prometheus(host: Host, run_dir: Path) -> subprocess.Popen[str]:
    config = run_dir / "prometheus.yml"
    config.write_text(CONFIG)
    return host.popen(["prometheus", f"--config.file={config}",
                       f"--storage.tsdb.path={run_dir / 'prometheus-data'}",
                       f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}",
                       "--log.level=warn"], stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL)


def query(host: Host, promql: str) -> tuple[bool, str, float | None]:
    """(answered, raw answer, the value of the first series or None)."""
    url = (f"http://127.0.0.1:{PROMETHEUS_PORT}/api/v1/query?"
           + urllib.parse.urlencode({"query": promql}))
    proc = host.run(["curl", "-s", "--max-time", "2", url], check=False, timeout=10.0)
    try:
        result = json.loads(proc.stdout)["data"]["result"]
    except (ValueError, KeyError, TypeError):
        return False, proc.stdout + proc.stderr, None
    return True, proc.stdout, float(result[0]["value"][1]) if result else None


def wait_value(host: Host, promql: str, want: float, timeout: float = 30.0) -> None:
    def probe() -> tuple[bool, str]:
        _, raw, value = query(host, promql)
        return value == want, f"{promql} = {value} ({raw[:300]})"

    host.wait(f"Prometheus to report {promql} == {want}", probe, timeout=timeout)


def wait_at_least(host: Host, promql: str, least: float, timeout: float = 30.0) -> float:
    got: list[float] = []

    def probe() -> tuple[bool, str]:
        _, raw, value = query(host, promql)
        got[:] = [] if value is None else [value]
        return value is not None and value >= least, f"{promql} = {value} ({raw[:300]})"

    host.wait(f"Prometheus to report {promql} >= {least}", probe, timeout=timeout)
    return got[0]


def test_prometheus_scrapes_weave_metrics_as_a_mesh_forms(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(3)
    h1, h2, h3 = mesh.hosts
    squatter = h1.popen(["python3", "-c", "import socket,time; s=socket.socket(); "
                         "s.bind(('127.0.0.1', 6782)); s.listen(); print('up', flush=True); "
                         "time.sleep(60)"])
    assert squatter.stdout is not None and squatter.stdout.readline() == "up\n"
    taken = h1.launch(check=False)
    assert taken.returncode != 0
    [line] = taken.stderr.strip().splitlines()
    assert "cannot listen on 127.0.0.1:6782 (metrics): [Errno 98] Address already in use" \
        in line, line
    squatter.kill()
    squatter.wait()

    start_prometheus(h1, mesh.run_dir)
    h1.launch()
    wait_value(h1, 'up{job="weave"}', 1.0)
    _, raw, established = query(h1, 'sum(weave_connections{state="established"})')
    assert established is None, raw  # no connections yet: no series (as Weave)
    h2.launch(h1.ip)
    h3.launch(h1.ip)
    # fastdp is the default overlay (docs/fastdp.md): both connections end up there
    wait_value(h1, 'sum(weave_connections{state="established",type="fastdp"})', 2.0)
    wait_value(h1, 'weave_ips{state="local-used"}', 0.0)
    container = mesh.add_bare_container(h1)
    container.attach()
    wait_value(h1, 'weave_ips{state="local-used"}', 1.0)
    wait_value(h1, "weave_max_ips", float(1 << 20))
    _, raw, terminations = query(h1, "weave_connection_terminations_total")
    assert terminations is not None, raw
    # weave_flows: one flood entry per fastdp peer, then the far container's MAC once the
    # kernel learned it (counted by fastdp's next pass, within its 10 s resync)
    wait_at_least(h1, "weave_flows", 2.0)
    far = mesh.add_bare_container(h2)
    [address] = far.attach().stdout.split()
    assert container.run(["ping", "-c", "3", "-W", "2", address], check=False,
                         timeout=30).returncode == 0, address
    assert wait_at_least(h1, "weave_flows", 3.0, timeout=30.0) >= 3.0
