"""Prometheus metrics of the server, in a registry of its own so that tests and several servers do not share state."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from modeldeploy_serving.batching import BatchStats

# Latency buckets from 100 us (a small model over a local socket) to 10 s.
_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The server's metrics; the data plane and the transports record, /metrics renders."""

    def __init__(self) -> None:
        self.model = ""
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "modeldeploy_requests",
            "Inference requests by model, protocol and status code (HTTP status, or gRPC code name).",
            ["model", "protocol", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "modeldeploy_request_duration_seconds",
            "Time from receiving an inference request to having its response, by model and protocol.",
            ["model", "protocol"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_time = Histogram(
            "modeldeploy_queue_duration_seconds",
            "Time a request waited in the batching queue before its model run started.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "modeldeploy_batch_size",
            "Rows in one onnxruntime run (after dynamic batching).",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "modeldeploy_requests_in_flight",
            "Inference requests received and not yet answered.",
            ["model"],
            registry=self.registry,
        )
        self.shed = Counter(
            "modeldeploy_requests_shed",
            "Inference requests refused with 503 / RESOURCE_EXHAUSTED to bound the server's work, by reason: "
            "queue_full, deadline (waited too long in the queue), memory (request bodies held at once).",
            ["model", "reason"],
            registry=self.registry,
        )
        self.load_seconds = Gauge(
            "modeldeploy_model_load_seconds",
            "Seconds it took to load the model and warm it up.",
            ["model"],
            registry=self.registry,
        )
        self.set_model("")

    def set_model(self, model: str) -> None:
        """The model's name is known once it is loaded; until then requests are counted under ""."""
        if self.model == "" and model != "":
            # The placeholder series would sit at 0 beside the real ones and confuse dashboards.
            for metric in (self.queue_time, self.batch_size, self.in_flight):
                metric.remove("")
        self.model = model
        # Children by (protocol, code): labels() takes a lock and builds a key on every call, and this is per request.
        self._request_children: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        self._queue_time = self.queue_time.labels(model)
        self._batch_size = self.batch_size.labels(model)
        self.in_flight_now = self.in_flight.labels(model)

    def observe_batch(self, stats: BatchStats) -> None:
        self._batch_size.observe(stats.rows)
        for seconds in stats.queue_seconds:
            self._queue_time.observe(seconds)

    def observe_shed(self, reason: str) -> None:
        self.shed.labels(self.model, reason).inc()

    def observe_request(self, protocol: str, code: str, seconds: float) -> None:
        children = self._request_children.get((protocol, code))
        if children is None:
            children = (self.requests.labels(self.model, protocol, code), self.latency.labels(self.model, protocol))
            self._request_children[(protocol, code)] = children
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
