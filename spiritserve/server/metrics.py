"""Prometheus metrics, on a registry owned by the app (no global state shared between apps)."""

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from spiritserve.batching import BatchStats

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "spiritserve_requests",
            "HTTP requests by route template and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "spiritserve_request_duration_seconds",
            "HTTP request latency by route template",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "spiritserve_batch_size",
            "items per micro-batch, by speech stage",
            ["stage"],
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "spiritserve_queue_wait_seconds",
            "how long a batch's oldest item waited before its stage ran it",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

        self.realtime_sessions = Gauge(
            "spiritserve_realtime_sessions", "open /v1/realtime websocket sessions", registry=self.registry
        )

    def observe_batch(self, stats: BatchStats) -> None:
        self.batch_size.labels(stats.stage).observe(stats.size)
        self.queue_wait.labels(stats.stage).observe(stats.queue_wait_s)


class MetricsMiddleware:
    """Counts every HTTP request by its route template (not the raw path, which would explode the labels)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(template, str(status)).inc()
            self.metrics.latency.labels(template).observe(time.perf_counter() - started)
