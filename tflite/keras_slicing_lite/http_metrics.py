"""Prometheus metrics of the HTTP front ends (`GET /metrics`).

Counts and latencies per width come from `prometheus-client` (the `serve`
extra); without it, `/metrics` says how to install it and the rest of the
front end works unchanged. Each front end has its own registry, so that two
in one process (tests, benchmarks) do not mix their counts.
"""

try:
    import prometheus_client
except ImportError:  # the edge core needs only numpy and LiteRT
    prometheus_client = None

# Buckets of the per-width latency histogram: from a fraction of a
# millisecond (one narrow call) to seconds (an overloaded queue).
LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
)
MISSING = (
    b"# /metrics needs prometheus-client: pip install 'keras-slicing-lite[serve]'\n"
)


class Metrics:
    """Answers per width (count, late count, latency histogram) and replies
    per status class.

    Every method is a no-op without `prometheus-client`.
    """

    def __init__(self):
        self.content_type = "text/plain; version=0.0.4; charset=utf-8"
        if prometheus_client is None:
            self._registry = None
            return
        self._registry = prometheus_client.CollectorRegistry()
        self.content_type = prometheus_client.CONTENT_TYPE_LATEST
        self._answers = prometheus_client.Counter(
            "keras_slicing_answers", "Examples answered, by the width that answered.",
            ["rate"], registry=self._registry,
        )
        self._late = prometheus_client.Counter(
            "keras_slicing_late_answers", "Examples answered after their deadline.",
            ["rate"], registry=self._registry,
        )
        self._latency = prometheus_client.Histogram(
            "keras_slicing_latency_seconds",
            "Seconds from an example's arrival at the server to its answer.",
            ["rate"], buckets=LATENCY_BUCKETS_S, registry=self._registry,
        )
        self._errors = prometheus_client.Counter(
            "keras_slicing_http_errors", "Error replies, by status code.",
            ["status"], registry=self._registry,
        )

    def answered(self, responses):
        """Counts the `Response`s of one request."""
        if self._registry is None:
            return
        for response in responses:
            rate = format(response.rate, "g")
            self._answers.labels(rate).inc()
            self._latency.labels(rate).observe(response.latency_ms / 1e3)
            if response.late:
                self._late.labels(rate).inc()

    def status(self, code):
        """Counts an error reply."""
        if self._registry is not None:
            self._errors.labels(str(code)).inc()

    def exposition(self):
        """The metrics in Prometheus text format (bytes)."""
        if self._registry is None:
            return MISSING
        return prometheus_client.generate_latest(self._registry)
