"""Prometheus metrics, one registry per application (so tests can run several)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)


class RequestMetrics:
    """Requests and latency per route as plain counts, turned into Prometheus families
    only when scraped: prometheus_client's Histogram takes a lock and walks its buckets
    in Python on every observation, a tenth of a whole GET here."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, int], int] = {}
        self.latency: dict[str, list[float]] = {}  # route -> bucket counts, then sum

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        self.counts[key] = self.counts.get(key, 0) + 1
        row = self.latency.get(route)
        if row is None:
            row = self.latency[route] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        row[bisect_left(LATENCY_BUCKETS, seconds)] += 1  # the last slot before sum: +Inf
        row[-1] += seconds

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        requests = CounterMetricFamily(
            "kuadeploy_http_requests",
            "HTTP requests by route, method and status",
            labels=["route", "method", "status"],
        )
        for (route, method, status), n in sorted(self.counts.items()):
            requests.add_metric([route, method, str(status)], n)
        yield requests
        latency = HistogramMetricFamily(
            "kuadeploy_http_request_seconds", "HTTP request latency by route", labels=["route"]
        )
        for route, row in sorted(self.latency.items()):
            cumulative, buckets = 0.0, []
            for bound, n in zip((*LATENCY_BUCKETS, float("inf")), row[:-1], strict=True):
                cumulative += n
                buckets.append((str(bound) if bound != float("inf") else "+Inf", cumulative))
            latency.add_metric([route], buckets, row[-1])
        yield latency


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = RequestMetrics()
        self.registry.register(self.requests)
        self.head_seq = Gauge(
            "kuadeploy_ledger_head_seq", "Ledger head seq", registry=self.registry
        )
        self.batch_size = Histogram(
            "kuadeploy_ledger_append_batch_size",
            "Events per group commit",
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 8192),
        )
        self.verify_ok = Gauge(
            "kuadeploy_audit_last_verify_ok",
            "1 when the last chain verification passed, 0 when it failed, -1 before any",
            registry=self.registry,
        )
        self.verify_ok.set(-1)
        self.webhook_rejected = Counter(
            "kuadeploy_webhook_rejected_total",
            "Webhook deliveries rejected before reaching the ledger",
            ["reason"],
            registry=self.registry,
        )
        self.webhook_deliveries = Counter(
            "kuadeploy_webhook_deliveries_total",
            "Verified webhook deliveries by outcome (deployed, ignored, repeated)",
            ["outcome"],
            registry=self.registry,
        )
        self.sink_failures = Counter(
            "kuadeploy_export_sink_failures_total",
            "Failed writes to the git export sink",
            registry=self.registry,
        )
        self._sink_failures_seen = 0

    def observe_batch(self, size: int) -> None:
        self.batch_size.observe(size)

    def count_sink_failures(self, total: int) -> None:
        """Sinks count their own failures (some before this app exists): catch up."""
        if total > self._sink_failures_seen:
            self.sink_failures.inc(total - self._sink_failures_seen)
            self._sink_failures_seen = total

    def render(self) -> bytes:
        return generate_latest(self.registry)
