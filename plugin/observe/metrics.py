"""Prometheus metrics, read from the backends' counters and the saved state at scrape time.

A custom collector: nothing is sampled in the background. Each scrape lists
every network's tables once (terse, see :mod:`plugin.counters`) and maps the
rule comments back to segment pairs and drop reasons. ``secnet metrics``
asks the daemon over its socket; with ``SECNET_METRICS_ADDR=host:port`` the
daemon also serves ``/metrics`` over HTTP from a thread of its own.
prometheus-client is imported on the first scrape (not every daemon is scraped),
without OpenSSL (:func:`plugin.kernel.lightimport.import_prometheus`).
"""
from __future__ import annotations

import collections
import logging

from plugin.config import metrics_address
from plugin.kernel.lightimport import import_prometheus
from plugin.enforce.backend import REASONS
from plugin.observe import counting
from plugin.observe.counting import OUTSIDE

log = logging.getLogger(__name__)
PAIR = ["network", "src_segment", "dst_segment"]
ALLOWED_HELP = ("{what} matched by the allow rules from src_segment to dst_segment (" + OUTSIDE +
                " is outside the network). Rules see the first packets of flows only: replies and "
                "established traffic are accepted before the rules and not counted here.")
WOULD_HELP = ("{what} that audit mode let pass from src_segment to dst_segment and enforce mode "
              "would drop (secnet.mode=audit).")
DROPPED_HELP = ("{what} dropped from src_segment to dst_segment because no rule allows them "
                "(east-west, egress denied, ingress not allowed, internal network).")


class SecnetCollector:
    """Collects per network: pair counters, drops by reason, endpoints; daemon totals."""

    def __init__(self, state, reconciler, droplog=None):
        self.state, self.reconciler, self.droplog = state, reconciler, droplog

    @staticmethod
    def _families() -> dict:
        from prometheus_client.core import CounterMetricFamily as c, GaugeMetricFamily as g
        net = ["network"]
        return {
            "allowed_packets": c("secnet_allowed_packets", ALLOWED_HELP.format(what="Packets"), labels=PAIR),
            "allowed_bytes": c("secnet_allowed_bytes", ALLOWED_HELP.format(what="Bytes"), labels=PAIR),
            "dropped_packets": c("secnet_dropped_packets", DROPPED_HELP.format(what="Packets"), labels=PAIR),
            "dropped_bytes": c("secnet_dropped_bytes", DROPPED_HELP.format(what="Bytes"), labels=PAIR),
            "would_drop_packets": c("secnet_would_drop_packets", WOULD_HELP.format(what="Packets"),
                                    labels=PAIR),
            "would_drop_bytes": c("secnet_would_drop_bytes", WOULD_HELP.format(what="Bytes"), labels=PAIR),
            "would_drops": c("secnet_would_drops", "Packets audit mode let pass that enforce mode would "
                             "drop, by reason.", labels=net + ["reason"]),
            "drops": c("secnet_drops", "Packets dropped by policy, by reason.", labels=net + ["reason"]),
            "drop_bytes": c("secnet_drop_bytes", "Bytes dropped by policy, by reason.",
                            labels=net + ["reason"]),
            "endpoints": g("secnet_endpoints", "Endpoints enforced in each segment.",
                           labels=net + ["segment"]),
            "quarantined": g("secnet_quarantined_endpoints", "Quarantined endpoints (all their traffic "
                             "is dropped).", labels=net),
            "pending": g("secnet_pending_endpoints", "Endpoints whose segment is not known yet (their "
                         "traffic is dropped).", labels=net),
        }

    def collect(self):
        fams = self._families()
        for net in self.state.networks():
            try:
                self._network(fams, net)
            except Exception:  # one broken network must not hide the others
                log.exception("metrics of network %s failed", net.id[:12])
        yield from fams.values()
        yield from self._daemon()

    def _network(self, fams: dict, net) -> None:
        nid = net.id[:12]
        compiled = self.reconciler.compiled(net)
        counters = self.reconciler.counters(net)
        allowed, dropped, would = counting.per_pair(compiled, counters)
        for kind, table in (("allowed", allowed), ("dropped", dropped), ("would_drop", would)):
            for (src, dst), (packets, nbytes) in sorted(table.items()):
                fams[f"{kind}_packets"].add_metric([nid, src, dst], packets)
                fams[f"{kind}_bytes"].add_metric([nid, src, dst], nbytes)
        for reason in REASONS:
            packets, nbytes = counters.reasons.get(reason, (0, 0))
            fams["drops"].add_metric([nid, reason], packets)
            fams["drop_bytes"].add_metric([nid, reason], nbytes)
            fams["would_drops"].add_metric([nid, reason], counters.would_drop_reasons.get(reason, (0, 0))[0])
        eps = self.state.endpoints(net.id)
        per_segment = collections.Counter(e.segment for e in eps if e.segment and e.quarantine is None)
        for seg in sorted(set(compiled.segments) | set(per_segment)):
            fams["endpoints"].add_metric([nid, seg], per_segment.get(seg, 0))
        fams["quarantined"].add_metric([nid], sum(e.quarantine is not None for e in eps))
        fams["pending"].add_metric([nid], sum(e.segment is None and e.quarantine is None for e in eps))

    def _daemon(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        yield CounterMetricFamily("secnet_reconcile_repairs", "Networks whose kernel state the reconciler "
                                  "found drifted and rebuilt, and orphan state it removed.",
                                  value=self.reconciler.repairs)
        if self.droplog is not None:
            stats = self.droplog.stats()
            yield GaugeMetricFamily("secnet_droplog_entries", "Entries in the in-memory drop log.",
                                    value=stats["entries"])
            yield CounterMetricFamily("secnet_droplog_events", "Drop events received from the datapaths.",
                                      value=stats.get("received", 0))
        dns = getattr(self.reconciler, "dns", None)
        if dns is not None:
            d = dns.status()
            yield CounterMetricFamily("secnet_dns_answers", "DNS answers read from the queue for "
                                      "segments with DNS rules.", value=d["answers"])
            yield GaugeMetricFamily("secnet_dns_learned", "Addresses learned from DNS answers and in "
                                    "force (per segment and rule).", value=d["learned"])
            yield CounterMetricFamily("secnet_dns_refused", "Addresses not allowed because the bound on "
                                      "learned addresses was reached (fail closed).", value=d["refused"])
            if d.get("budget_drops") is not None:
                yield CounterMetricFamily("secnet_dns_budget_drops", "DNS answers dropped before learning: "
                                          "over one destination address's budget.", value=d["budget_drops"])
            yield CounterMetricFamily("secnet_dns_queue_lost", "Times the kernel could not hand DNS answers "
                                      "over to the daemon (queue overflow; they were dropped).",
                                      value=d.get("queue_lost", 0))


class Metrics:
    """The registry of one daemon, its text form, and the optional HTTP endpoint."""

    def __init__(self, state, reconciler, droplog=None):
        self.collector = SecnetCollector(state, reconciler, droplog)
        self._registry = None

    @property
    def registry(self):
        """The prometheus-client ``CollectorRegistry`` (made, and the library imported, on first use)."""
        if self._registry is None:
            import_prometheus()
            from prometheus_client import CollectorRegistry
            registry = CollectorRegistry(auto_describe=False)
            registry.register(self.collector)
            self._registry = registry
        return self._registry

    def text(self) -> str:
        registry = self.registry
        from prometheus_client import generate_latest
        return generate_latest(registry).decode()

    def samples(self) -> list:
        return [{"name": s.name, "labels": s.labels, "value": s.value}
                for fam in self.registry.collect() for s in fam.samples]

    def serve(self, addr: str) -> None:
        """Serve /metrics on ``host:port`` (IPv6 as ``[::1]:9100``) from a daemon thread."""
        registry = self.registry
        from prometheus_client import start_http_server
        host, port = parse_addr(addr)
        start_http_server(port, addr=host, registry=registry)
        log.info("serving metrics on http://%s/metrics", addr)


parse_addr = metrics_address   # SECNET_METRICS_ADDR -> (host, port); checked at start too
