"""Prometheus metrics, one registry per application (so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self.requests = Counter(
            "kuadeploy_http_requests_total",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "kuadeploy_http_request_seconds",
            "HTTP request latency by route",
            ["route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
        )
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

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:  # labels() takes a lock and builds a tuple: once per key
            children = (
                self.requests.labels(route, method, str(status)),
                self.latency.labels(route),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_batch(self, size: int) -> None:
        self.batch_size.observe(size)

    def count_sink_failures(self, total: int) -> None:
        """Sinks count their own failures (some before this app exists): catch up."""
        if total > self._sink_failures_seen:
            self.sink_failures.inc(total - self._sink_failures_seen)
            self._sink_failures_seen = total

    def render(self) -> bytes:
        return generate_latest(self.registry)
