"""The Prometheus metrics of one server: a registry per application (tests build many apps in one
process) and every series the code records, named in one place (``docs/operations.md``).

Base layer: no aiohttp. The store wrapper (``store/instrumented.py``), the share service, the rate
limiter and the web middleware record into a ``Metrics``; ``web/observability.py`` serves
``/metrics`` from its registry. Label values are bounded: route names from the routing table,
store operation names, rate-limit names, a fixed set of methods and statuses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "Metrics"]

# The text format every Prometheus version reads (what generate_latest writes).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# No ``*_created`` series: they double the output and dashboards do not use them.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Request latencies: from a cached read (~1 ms) to a first full sync of a large session (seconds).
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
JOURNAL_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


class _FunctionCollector(Collector):
    """Series read when scraped from a callback (live viewers, the Redis relay's state)."""

    def __init__(self, produce: Callable[[], Iterable[Metric]]) -> None:
        self._produce = produce

    def collect(self) -> Iterable[Metric]:
        return self._produce()


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.requests = Counter(
            "cloudsession_http_requests", "HTTP requests answered, by route name, method and status", ["route", "method", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "cloudsession_http_request_duration_seconds",
            "Time from a request's arrival to its handler's answer (WebSockets: the whole connection)",
            ["route", "method"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("cloudsession_http_requests_in_flight", "Requests being handled now", registry=r)
        self.store_ops = Counter(
            "cloudsession_store_operations", "Object-store calls by operation and outcome (ok, absent, precondition_failed, error)", ["op", "outcome"], registry=r
        )
        self.store_seconds = Histogram(
            "cloudsession_store_operation_duration_seconds", "Object-store call latency by operation", ["op"], buckets=STORE_BUCKETS, registry=r
        )
        self.syncs = Counter("cloudsession_syncs", "Syncs applied (REST/RPC syncs and durable op batches count their syncs)", registry=r)
        self.items = Counter("cloudsession_sync_items", "Items applied by syncs and ops", registry=r)
        self.journal_bytes = Counter("cloudsession_journal_bytes", "Bytes appended to share journals", registry=r)
        self.journal_entries = Counter("cloudsession_journal_entries", "Journal entries appended (every accepted write)", registry=r)
        self.compactions = Counter("cloudsession_compactions", "Journal compactions by outcome (written, skipped, failed)", ["outcome"], registry=r)
        self.compacted_entries = Histogram(
            "cloudsession_compaction_journal_entries", "Journal length folded into a snapshot per compaction", buckets=JOURNAL_BUCKETS, registry=r
        )
        self.rate_limited = Counter("cloudsession_rate_limited", "Requests refused with 429, by limit", ["limit"], registry=r)
        self.rate_limit_errors = Counter(
            "cloudsession_rate_limit_storage_errors", "Rate-limit checks that failed (storage unreachable) and were let through", registry=r
        )
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._store_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._viewers: Callable[[], int] | None = None
        self._relay: Callable[[], dict[str, Any] | None] | None = None
        self._journal: Callable[[], tuple[int, int]] | None = None
        r.register(_FunctionCollector(self._collect_callbacks))

    # -- values read at scrape time

    def watch_viewers(self, count: Callable[[], int]) -> None:
        self._viewers = count

    def watch_relay(self, state: Callable[[], dict[str, Any] | None]) -> None:
        """``state()`` is None without Redis, else the relay's ``state()`` dict."""
        self._relay = state

    def watch_journal(self, tails: Callable[[], tuple[int, int]]) -> None:
        """``tails()`` is (longest journal tail, total of journal tails) over the cached shares."""
        self._journal = tails

    def _collect_callbacks(self) -> Iterable[Metric]:
        if self._viewers is not None:
            yield GaugeMetricFamily("cloudsession_live_viewers", "WebSocket viewers connected to this process", value=self._viewers())
        if self._journal is not None:
            longest, total = self._journal()
            tails = GaugeMetricFamily(
                "cloudsession_journal_tail_entries", "Unfolded journal entries over the shares this process has cached (max, total)", labels=["stat"]
            )
            tails.add_metric(["max"], longest)
            tails.add_metric(["total"], total)
            yield tails
        state = self._relay() if self._relay is not None else None
        configured = GaugeMetricFamily("cloudsession_redis_relay_configured", "1 when REDIS_URL is set (live updates across replicas)")
        configured.add_metric([], 0 if state is None else 1)
        yield configured
        if state is None:
            return
        yield GaugeMetricFamily("cloudsession_redis_relay_subscribed", "1 while the relay's Redis subscription is up", value=1 if state["subscribed"] else 0)
        yield GaugeMetricFamily("cloudsession_redis_relay_outbox_bytes", "Relay messages waiting to be published", value=state["outbox_bytes"])
        yield GaugeMetricFamily("cloudsession_redis_relay_missed_shares", "Shares whose events wait for Redis to come back", value=state["missed_shares"])
        for name, help_text in (
            ("published", "Relay messages published to Redis"),
            ("publish_failures", "Relay publishes that failed"),
            ("received", "Relay messages delivered to this process's viewers"),
        ):
            yield CounterMetricFamily(f"cloudsession_redis_relay_{name}", help_text, value=state[name])

    # -- recording helpers

    def request_done(self, route: str, method: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else "other"
        # The labelled children, looked up once per label set (``labels()`` takes a lock and
        # builds its key each call; route names, methods, statuses and store operations are
        # few, so these dicts are as bounded as the series themselves).
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (self.requests.labels(route, method, str(status)), self.request_seconds.labels(route, method))
        children[0].inc()
        children[1].observe(seconds)

    def store_call(self, op: str, outcome: str, seconds: float) -> None:
        key = (op, outcome)
        children = self._store_children.get(key)
        if children is None:
            children = self._store_children[key] = (self.store_ops.labels(op, outcome), self.store_seconds.labels(op))
        children[0].inc()
        children[1].observe(seconds)

    def journal_appended(self, content: dict[str, Any], size: int) -> None:
        self.journal_entries.inc()
        self.journal_bytes.inc(size)
        syncs = content.get("syncs")
        if isinstance(syncs, int) and syncs > 0:
            self.syncs.inc(syncs)
        items = content.get("items")
        if isinstance(items, list) and items:
            self.items.inc(len(items))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
