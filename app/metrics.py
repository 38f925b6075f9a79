"""Prometheus metrics of one app instance (its own registry, so tests and reloads never
collide): requests by route and status, latency, shortlist size, search stage times,
index size, queue depth."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CANDIDATE_BUCKETS = (10, 50, 100, 200, 300, 500, 1000, 2000, 5000, 20_000, 100_000)


class Metrics:
    def __init__(self, queue_depth: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "chan_requests_total",
            "HTTP requests by route and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.internal_errors = Counter(
            "chan_internal_errors_total",
            "requests that ended in an unexpected exception (answered 500)",
            ["route"],
            registry=r,
        )
        self.latency = Histogram(
            "chan_request_duration_seconds",
            "HTTP request latency",
            ["route", "method"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.candidates = Histogram(
            "chan_search_candidates",
            "items scored exactly per search",
            ["direction"],
            buckets=CANDIDATE_BUCKETS,
            registry=r,
        )
        self.stage = Histogram(
            "chan_search_stage_seconds",
            "time per search stage",
            ["direction", "stage"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.index_items = Gauge(
            "chan_index_items", "live items in the served index", ["kind"], registry=r
        )
        self.index_bytes = Gauge(
            "chan_index_bytes", "bytes of the served index on disk", registry=r
        )
        self.ready = Gauge("chan_ready", "1 when the model and index are loaded", registry=r)
        depth = Gauge("chan_queue_depth", "searches running or waiting", registry=r)
        depth.set_function(queue_depth)

    def observe_search(self, direction: str, result: Any) -> None:
        """One search's candidates and step timings (an ImageResults or CaptionResults)."""
        self.candidates.labels(direction).observe(result.candidates)
        for key, value in result.timings_ms.items():
            if key.endswith("_ms") and key != "total_ms" and value is not None:
                self.stage.labels(direction, key.removesuffix("_ms")).observe(value / 1000)
