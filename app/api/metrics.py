"""GET /metrics: what the server has done since it started, in the Prometheus text format.

    nextword_requests_total{route,status}          counter    every answer, 5xx included;
                                                              499: the client went away first
    nextword_request_duration_seconds{route}       histogram  from the request's arrival to
                                                              its answer's last byte
    nextword_requests_in_flight                    gauge      requests being answered, as
                                                              /health and NEXTWORD_MAX_IN_FLIGHT
                                                              count them
    nextword_refusals_total{route,status}          counter    answers 4xx, 503 and 504
    nextword_batch_size{model}                     histogram  queries computed together
    nextword_prefix_cache_hits_total{model,process}   counter texts whose reading, or its head,
    nextword_prefix_cache_misses_total{model,process} counter was kept (by process: server,
                                                              model_process)
    nextword_model_loads_total{model,version}      counter    versions loaded and served
    nextword_model_refusals_total{model,version}   counter    versions refused
    nextword_model_info{name,version}              gauge      1 for each version served now
    process_*                                      the server process's CPU, memory and files

`route` is the route's path, or `other` for a path the app does not have (a 404): one series a
route, however many paths clients try.

Counting costs next to nothing per request: app.api.telemetry adds to plain integers here, on
the event loop, and the metric families are made from them only when /metrics is asked (a
custom collector, prometheus-client's way to expose counts kept elsewhere). What the model
process counts comes back with each batch's answers (app.inference.counts), so nothing is lost
to the fork, and no file or lock is shared (as prometheus-client's multiprocess mode would).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector
from prometheus_client import generate_latest as prometheus_text
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from app.inference.counts import ModelCounts

# Upper bounds of the latency buckets, in seconds: /health and a type-ahead answer from the
# reading cache take well under a millisecond; a long text read from scratch, a second or more.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)  # NEXTWORD_BATCH_MAX_SIZE <= 1024
OTHER_ROUTE = "other"
CLIENT_GONE = 499  # the status of a request never answered: its client went away first


class Latency:
    """One route's answers by latency bucket (not cumulative; the last is above every bound)."""

    __slots__ = ("buckets", "seconds")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.seconds = 0.0


class RequestCounts:
    """Answers by route and status, and their latency by route: added to by Telemetry, on the
    event loop (so without a lock), once a request."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, int], int] = {}
        self.latency: dict[str, Latency] = {}

    def add(self, route: str, status: int, seconds: float) -> None:
        key = (route, status)
        self.answers[key] = self.answers.get(key, 0) + 1
        latency = self.latency.get(route)
        if latency is None:
            latency = self.latency[route] = Latency()
        latency.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1  # le: seconds <= bound
        latency.seconds += seconds


def is_refusal(status: int) -> bool:
    """A request the server would not or could not answer: every 4xx, and 503 (overloaded, no
    model yet) and 504 (no answer in time). A 500 is a failure, not a refusal, and neither is a
    request whose client went away before its answer (CLIENT_GONE)."""
    return (400 <= status < 500 and status != CLIENT_GONE) or status in (503, 504)


class NextwordCollector(Collector):
    """The families of the module's docstring, made from the counts when /metrics is asked.

    `state` is the app's state: `load` (requests in flight) and `models` (the ModelRegistry,
    None before start-up and after shut-down), read at each collection."""

    def __init__(self, requests: RequestCounts, state: Any) -> None:
        self.requests = requests
        self.state = state

    def collect(self) -> Iterator[Metric]:
        yield from self._requests()
        in_flight = GaugeMetricFamily(
            "nextword_requests_in_flight",
            "Requests being answered (their body received; not /health, /ready, /metrics).",
        )
        in_flight.add_metric([], self.state.load.in_flight)
        yield in_flight
        models = self.state.models
        managers = models.managers if models is not None else {}
        yield from _models({name: manager.counts for name, manager in managers.items()})
        info = GaugeMetricFamily(
            "nextword_model_info",
            "1 for each model version served now.",
            labels=["name", "version"],
        )
        for name, manager in managers.items():
            if manager.current is not None:
                info.add_metric([name, str(manager.current.info.version)], 1)
        yield info

    def _requests(self) -> Iterator[Metric]:
        answers = CounterMetricFamily(
            "nextword_requests", "HTTP answers, by route and status.", labels=["route", "status"]
        )
        refusals = CounterMetricFamily(
            "nextword_refusals",
            "Requests refused (4xx, 503, 504), by route and status.",
            labels=["route", "status"],
        )
        for (route, status), count in sorted(self.requests.answers.items()):
            answers.add_metric([route, str(status)], count)
            if is_refusal(status):
                refusals.add_metric([route, str(status)], count)
        latency = HistogramMetricFamily(
            "nextword_request_duration_seconds",
            "Time from a request's arrival to its answer's last byte, by route.",
            labels=["route"],
        )
        for route, seen in sorted(self.requests.latency.items()):
            latency.add_metric([route], _cumulative(LATENCY_BUCKETS, seen.buckets), seen.seconds)
        yield from (answers, refusals, latency)


def _models(counts: Mapping[str, ModelCounts]) -> Iterator[Metric]:
    batches = HistogramMetricFamily(
        "nextword_batch_size", "Queries computed together, by model.", labels=["model"]
    )
    hits = CounterMetricFamily(
        "nextword_prefix_cache_hits",
        "Texts whose reading, or its head, was kept in the reading cache, by model and process.",
        labels=["model", "process"],
    )
    misses = CounterMetricFamily(
        "nextword_prefix_cache_misses",
        "Texts read from scratch (not kept in the reading cache), by model and process.",
        labels=["model", "process"],
    )
    loads = CounterMetricFamily(
        "nextword_model_loads",
        "Model versions loaded, checked and served, by model and version.",
        labels=["model", "version"],
    )
    refusals = CounterMetricFamily(
        "nextword_model_refusals",
        "Model versions refused (the version served before kept serving), by model and version.",
        labels=["model", "version"],
    )
    for model, counted in counts.items():
        sizes = [0] * (len(BATCH_BUCKETS) + 1)
        for size, times in counted.batch_sizes.items():
            sizes[bisect_left(BATCH_BUCKETS, size)] += times
        rows = sum(size * times for size, times in counted.batch_sizes.items())
        batches.add_metric([model], _cumulative(BATCH_BUCKETS, sizes), rows)
        for process in ("server", "model_process"):
            hits.add_metric([model, process], counted.cache_hits[process])
            misses.add_metric([model, process], counted.cache_misses[process])
        for version, times in sorted(counted.loads.items()):
            loads.add_metric([model, str(version)], times)
        for refused, times in sorted(counted.refusals.items(), key=lambda item: item[0] or 0):
            # None: no version was found to load ('latest' in an empty folder).
            refusals.add_metric([model, "none" if refused is None else str(refused)], times)
    yield from (batches, hits, misses, loads, refusals)


def _cumulative(bounds: Iterable[float], counts: list[int]) -> list[tuple[str, float]]:
    """Prometheus buckets, `(le, count of values <= le)`, from counts per bucket."""
    buckets: list[tuple[str, float]] = []
    total = 0
    for bound, count in zip([*bounds, float("inf")], counts, strict=True):
        total += count
        buckets.append((floatToGoString(bound), total))  # as the library writes them: 1.0, +Inf
    return buckets


def metrics_registry(requests: RequestCounts, state: Any) -> CollectorRegistry:
    """A registry of the app's own (not prometheus-client's global one: each app made, e.g. in
    the tests, counts apart)."""
    registry = CollectorRegistry(auto_describe=False)  # (describing would collect now)
    registry.register(NextwordCollector(requests, state))
    ProcessCollector(registry=registry)
    return registry


router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    summary="The server's metrics, in the Prometheus text format",
    response_class=PlainTextResponse,
)
async def metrics(request: Request) -> Response:
    """Requests by route and status, their latency, refusals, batch sizes, the reading cache's
    hits and misses, model loads and refusals, and the models served. Open like /health unless
    NEXTWORD_METRICS_KEY is set."""
    return Response(prometheus_text(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)
