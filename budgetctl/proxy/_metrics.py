"""The proxy's Prometheus metrics, in a registry of its own (two proxies in one process never collide)."""

from __future__ import annotations

from collections.abc import Callable

from .._optional import import_optional

__all__ = ["ProxyMetrics"]

_DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_SAMPLE_BUCKETS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)


class ProxyMetrics:
    """Every metric the proxy exposes at ``/metrics`` (Prometheus text format).

    ``budgetctl_request_duration_seconds`` (labels ``policy``, ``stop_reason``),
    ``budgetctl_samples_per_request``, ``budgetctl_tokens_total`` (label ``type``: ``billed``,
    ``wasted``), ``budgetctl_spend_usd_total``, ``budgetctl_budget_remaining_tokens``,
    ``budgetctl_budget_remaining_usd``, ``budgetctl_deadline_misses_total``,
    ``budgetctl_requests_waiting``, and ``budgetctl_requests_total`` (label ``status``).
    """

    def __init__(self, waiting: Callable[[], float]) -> None:
        prometheus = import_optional("prometheus_client", "proxy", "the proxy's /metrics")
        self._prometheus = prometheus
        self.registry = prometheus.CollectorRegistry(auto_describe=True)
        r = self.registry
        self.duration = prometheus.Histogram(
            "budgetctl_request_duration_seconds",
            "Seconds from a request's arrival to its answer.",
            ["policy", "stop_reason"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.samples = prometheus.Histogram(
            "budgetctl_samples_per_request",
            "Upstream samples that came back per answered request.",
            buckets=_SAMPLE_BUCKETS,
            registry=r,
        )
        self.tokens = prometheus.Counter(
            "budgetctl_tokens",
            "Tokens: billed (prompt and completion of every sample paid for), wasted (completions of samples "
            "whose answer was not the final one).",
            ["type"],
            registry=r,
        )
        self.spend = prometheus.Counter("budgetctl_spend_usd", "Dollars spent upstream (with --price).", registry=r)
        self.remaining_tokens = prometheus.Gauge(
            "budgetctl_budget_remaining_tokens",
            "Generated tokens left in the shared budget's current window (read at each scrape; NaN: no token budget).",
            registry=r,
        )
        self.remaining_usd = prometheus.Gauge(
            "budgetctl_budget_remaining_usd",
            "Dollars left in the shared budget's current window (read at each scrape; NaN: no dollar budget).",
            registry=r,
        )
        # NaN (unknown) until a budget is set and read: 0 would say the budget is spent.
        self.remaining_tokens.set(float("nan"))
        self.remaining_usd.set(float("nan"))
        self.deadline_misses = prometheus.Counter(
            "budgetctl_deadline_misses",
            "Requests answered after their deadline.",
            registry=r,
        )
        self.waiting = prometheus.Gauge(
            "budgetctl_requests_waiting", "Requests waiting for an upstream slot now.", registry=r
        )
        self.waiting.set_function(waiting)
        self.requests = prometheus.Counter(
            "budgetctl_requests", "Completion requests answered, by HTTP status.", ["status"], registry=r
        )

    def render(self) -> bytes:
        """The registry in Prometheus's text exposition format."""
        data: bytes = self._prometheus.generate_latest(self.registry)
        return data

    @property
    def content_type(self) -> str:
        """The text format's content type."""
        return str(self._prometheus.CONTENT_TYPE_LATEST)
