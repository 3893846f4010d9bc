"""The router's Prometheus metrics, read from a live :class:`~router.status.Status` at
scrape time (a custom ``prometheus_client`` Collector: no counters of our own to keep in
step, no hand-written exposition).

Weave's names, labels and help texts (as Go Weave 2.8.1 prints them on :6782)::

    weave_connections{state,type,encryption}   gauge: one series per (state, type) seen,
                                                 for both encryption="" and "yes"
    weave_connection_terminations_total        counter
    weave_ips{state="local-used"}              gauge
    weave_max_ips                              gauge
    weave_ipam_unreachable_count               gauge
    weave_ipam_unreachable_percentage          gauge (of the range's addresses)
    weave_ipam_pending_allocates               gauge
    weave_ipam_pending_claims                  gauge

(the ``weave_ips`` .. ``pending_claims`` family only when IPAM runs, as in Weave).
``weave_dns_entries`` (the live entries) comes from the DNS section of the status, and
``weave_flows`` from fastdp's: Go counts the openvswitch datapath's flows, the kernel state
that forwards container frames without the router; fastdp here is a VXLAN device, whose
equivalent is its forwarding database, so ``weave_flows`` is the device's entries that
carry container frames (one flood entry per fastdp peer and each MAC the kernel learned
behind one: the far containers' and bridges'), without the heartbeat MACs' entries.
Like Go, it is there only while fastdp runs. More families can be added with
:class:`MetricSource` hooks (:meth:`RouterCollector.add_source`).

Ours (the sleeve data plane, ``router.dataplane.backend.Statistics``)::

    weave_sleeve_frames_total{direction,peer}     counter (in|out; per session)
    weave_sleeve_bytes_total{direction,peer}      counter (UDP payload bytes)
    weave_sleeve_datagrams_total{direction,peer}  counter
    weave_dataplane_frames_total{stage}           counter (captured|delivered|relayed)
    weave_dropped_frames_total{reason}            counter (the data plane's DROP_REASONS)
    weave_dataplane_upcalls_total                 counter
    weave_dataplane_icmp_frag_needed_total        counter
    weave_dataplane_mac_table_full_total          counter
    weave_dataplane_macs                          gauge
    weave_mesh_events_total{event}                counter (the mesh's other counters)
    weave_ipam_free_ips                           gauge (free addresses this peer owns)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from router.mesh.names import PeerName
from router.status import ConnectionStatus, Status

# A hook: more metrics read at scrape time (DNS's entries, fastdp's flows).
MetricSource = Callable[[], Iterable[Metric]]

ENCRYPTIONS = ("", "yes")  # Weave's label values: "yes" for an encrypted connection
UNKNOWN_TYPE = "unknown"  # Weave's type of a connection whose overlay is not known yet
TERMINATIONS = "connection_terminations"  # the mesh counter behind ..._terminations_total
DATAPLANE_STAGES = ("captured", "delivered", "relayed")
DATAPLANE_COUNTERS = {
    "upcalls": ("weave_dataplane_upcalls", "Datagrams the data plane handed to the router."),
    "icmp_frag_needed": ("weave_dataplane_icmp_frag_needed",
                         "ICMP fragmentation-needed replies written for oversized frames."),
    "mac_table_full": ("weave_dataplane_mac_table_full",
                       "MAC addresses not learnt because the MAC table was full."),
}
DIRECTIONS = {"in": ("frames_in", "bytes_in", "datagrams_in"),
              "out": ("frames_out", "bytes_out", "datagrams_out")}


class RouterCollector(Collector):
    """Yields the metrics of ``snapshot()`` (a fresh Status per scrape) and of every
    registered source."""

    def __init__(self, snapshot: Callable[[], Status],
                 sources: Iterable[MetricSource] = ()) -> None:
        self._snapshot = snapshot
        self._sources = list(sources)

    def add_source(self, source: MetricSource) -> None:
        """More metrics at each scrape (how DNS and fastdp add theirs)."""
        self._sources.append(source)

    def collect(self) -> Iterator[Metric]:
        status = self._snapshot()
        yield from router_metrics(status)
        if status.ipam is not None:
            yield from ipam_metrics(status)
        if status.dataplane is not None:
            yield from dataplane_metrics(status.dataplane)
        if status.dns is not None:  # Go counts the live entries it would answer with
            yield dns_entries_metric(len(status.dns.entries))
        flows = fastdp_flows(status.fastdp)
        if flows is not None:
            yield flows_metric(flows)
        for source in self._sources:
            yield from source()


def connection_key(conn: ConnectionStatus) -> tuple[str, str, str]:
    """Weave's (state, type, encryption) labels of one ``status connections`` line."""
    return conn.state, conn.overlay or UNKNOWN_TYPE, "yes" if conn.encrypted else ""


def router_metrics(status: Status) -> Iterator[Metric]:
    """weave_connections, weave_connection_terminations_total, weave_mesh_events_total."""
    conns = GaugeMetricFamily("weave_connections", "Number of peer-to-peer connections.",
                              labels=["state", "type", "encryption"])
    counts: dict[tuple[str, str, str], int] = {}
    for conn in status.router.connections:
        key = connection_key(conn)
        counts[key] = counts.get(key, 0) + 1
    for state, kind in sorted({(s, t) for s, t, _ in counts}):
        for encryption in ENCRYPTIONS:  # as Weave: both values for every (state, type)
            conns.add_metric([state, kind, encryption], counts.get((state, kind, encryption), 0))
    yield conns
    counters = status.router.counters
    yield CounterMetricFamily("weave_connection_terminations",
                              "Number of peer-to-peer connections terminated.",
                              value=counters.get(TERMINATIONS, 0))
    events = CounterMetricFamily("weave_mesh_events", "Mesh events by kind since start.",
                                 labels=["event"])
    for event, value in sorted(counters.items()):
        if event != TERMINATIONS:
            events.add_metric([event], value)
    yield events


def ipam_metrics(status: Status) -> Iterator[Metric]:
    """Weave's IPAM gauges (and our count of free addresses)."""
    ipam = status.ipam
    assert ipam is not None
    ips = GaugeMetricFamily("weave_ips", "Number of IP addresses.", labels=["state"])
    ips.add_metric(["local-used"], ipam.ips.get("local-used", 0))
    yield ips
    yield GaugeMetricFamily("weave_max_ips", "Size of IP address space used by allocator.",
                            value=ipam.max_ips)
    yield GaugeMetricFamily("weave_ipam_unreachable_count", "Number of unreachable peers.",
                            value=ipam.unreachable_peers)
    unreachable = sum(s.ips for s in ipam.shares if not s.reachable)
    yield GaugeMetricFamily("weave_ipam_unreachable_percentage",
                            "Percentage of IP addresses owned  by unreachable peers.",
                            value=100.0 * unreachable / ipam.max_ips if ipam.max_ips else 0.0)
    yield GaugeMetricFamily("weave_ipam_pending_allocates", "Number of pending allocates.",
                            value=ipam.pending_allocates)
    yield GaugeMetricFamily("weave_ipam_pending_claims", "Number of pending claims.",
                            value=ipam.pending_claims)
    yield GaugeMetricFamily("weave_ipam_free_ips",
                            "Free IP addresses in the ranges this peer owns.",
                            value=ipam.ips.get("local-free", 0))


def dataplane_metrics(stats: Mapping[str, Any]) -> Iterator[Metric]:
    """The sleeve data plane's counters (``router.dataplane.backend.Statistics``)."""
    per_peer = {
        "frames": CounterMetricFamily("weave_sleeve_frames", "Frames through the sleeve "
                                      "overlay by direction and neighbour peer (this session).",
                                      labels=["direction", "peer"]),
        "bytes": CounterMetricFamily("weave_sleeve_bytes", "UDP payload bytes through the "
                                     "sleeve overlay by direction and neighbour peer.",
                                     labels=["direction", "peer"]),
        "datagrams": CounterMetricFamily("weave_sleeve_datagrams", "Sleeve datagrams by "
                                         "direction and neighbour peer.",
                                         labels=["direction", "peer"]),
    }
    for name, counters in sorted(stats.get("peers", {}).items()):
        peer = str(PeerName(int(name)))
        for direction, keys in DIRECTIONS.items():
            for family, key in zip(per_peer.values(), keys, strict=True):
                family.add_metric([direction, peer], counters.get(key, 0))
    yield from per_peer.values()
    stages = CounterMetricFamily("weave_dataplane_frames", "Frames by data-plane stage.",
                                 labels=["stage"])
    for stage in DATAPLANE_STAGES:
        stages.add_metric([stage], stats.get(f"frames_{stage}", 0))
    yield stages
    drops = CounterMetricFamily("weave_dropped_frames", "Frames the data plane dropped, "
                                "by reason.", labels=["reason"])
    for reason, value in sorted(stats.get("drops", {}).items()):
        drops.add_metric([reason], value)
    yield drops
    for key, (name, help_text) in DATAPLANE_COUNTERS.items():
        yield CounterMetricFamily(name, help_text, value=stats.get(key, 0))
    yield GaugeMetricFamily("weave_dataplane_macs", "Entries in the data plane's MAC table.",
                            value=stats.get("macs", 0))


def dns_entries_metric(count: int) -> Metric:
    """Weave's ``weave_dns_entries`` (for DNS's MetricSource)."""
    return GaugeMetricFamily("weave_dns_entries", "Number of DNS entries.", value=count)


def fastdp_flows(fastdp: Mapping[str, object] | None) -> int | None:
    """The VXLAN device's entries that forward container frames (flood entries and
    learned MACs), or None when fastdp does not run (off, or its device not made)."""
    if fastdp is None or not fastdp.get("enabled"):
        return None
    flood, learned = fastdp.get("flood_entries"), fastdp.get("learned_entries")
    if not isinstance(flood, int) or not isinstance(learned, int):
        return None  # no kernel service yet: no device to count
    return flood + learned


def flows_metric(count: int) -> Metric:
    """Weave's ``weave_flows`` (for fastdp's MetricSource)."""
    return GaugeMetricFamily("weave_flows", "Number of FastDP flows.", value=count)
