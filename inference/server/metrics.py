"""Prometheus metrics under vLLM's names, so existing vLLM dashboards work unchanged.

Engine-wide numbers (queue lengths, KV usage, token totals, prefix cache) are read from
`engine.stats()` at scrape time; per-request histograms are observed by the server as tokens flow.
"""

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from inference import kernels

disable_created_metrics()  # no *_created series (vLLM does the same): dashboards only read totals and buckets

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                   40.0, 80.0, 160.0)
TOKEN_GAP_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
                     5.0, 10.0)

# engine stats field → (metric name, kind, help)
ENGINE_STATS_METRICS = (
    ("num_running", "vllm:num_requests_running", "gauge", "Requests in the running batch."),
    ("num_waiting", "vllm:num_requests_waiting", "gauge", "Requests waiting to be scheduled."),
    ("kv_cache_usage", "vllm:kv_cache_usage_perc", "gauge", "Fraction of KV-cache blocks in use (0 to 1)."),
    ("kv_cache_usage", "vllm:gpu_cache_usage_perc", "gauge", "Alias of vllm:kv_cache_usage_perc."),
    ("prefix_cache_queries", "vllm:prefix_cache_queries", "counter", "Prompt tokens looked up in the prefix cache."),
    ("prefix_cache_hits", "vllm:prefix_cache_hits", "counter", "Prompt tokens found in the prefix cache."),
    ("prompt_tokens_total", "vllm:prompt_tokens", "counter", "Prompt tokens processed."),
    ("generation_tokens_total", "vllm:generation_tokens", "counter", "Tokens generated."),
)


class EngineStatsCollector:
    """Turns one `engine.stats()` snapshot into gauges and counters at every scrape."""

    def __init__(self, model_name: str, read_stats: Callable[[], object | None]) -> None:
        self.model_name, self.read_stats = model_name, read_stats

    def collect(self):
        stats = self.read_stats()
        if stats is None:
            return
        for field, name, kind, help_text in ENGINE_STATS_METRICS:
            family_class = GaugeMetricFamily if kind == "gauge" else CounterMetricFamily
            family = family_class(name, help_text, labels=["model_name"])
            family.add_metric([self.model_name], float(getattr(stats, field)))
            yield family


class ServerMetrics:
    """Every metric of one server, in its own registry (several apps can live in one process)."""

    def __init__(self, model_name: str, read_stats: Callable[[], object | None]) -> None:
        self.model_name = model_name
        self.registry = CollectorRegistry()
        self.registry.register(EngineStatsCollector(model_name, read_stats))
        self.ttft = self.histogram("vllm:time_to_first_token_seconds", "Time to first token.", LATENCY_BUCKETS)
        self.itl = self.histogram("vllm:inter_token_latency_seconds", "Gap between output tokens.", TOKEN_GAP_BUCKETS)
        self.tpot = self.histogram("vllm:time_per_output_token_seconds", "Alias of inter-token latency.",
                                   TOKEN_GAP_BUCKETS)
        self.e2e = self.histogram("vllm:e2e_request_latency_seconds", "Arrival to last token.", LATENCY_BUCKETS)
        self.queue_time = self.histogram("vllm:request_queue_time_seconds", "Arrival to first scheduled.",
                                         LATENCY_BUCKETS)
        self.prefill_time = self.histogram("vllm:request_prefill_time_seconds", "First scheduled to first token.",
                                           LATENCY_BUCKETS)
        self.decode_time = self.histogram("vllm:request_decode_time_seconds", "First token to last token.",
                                          LATENCY_BUCKETS)
        self.finished = Counter("vllm:request_success", "Finished requests by finish reason.",
                                ["model_name", "finished_reason"], registry=self.registry)
        self.aborted = Counter("vllm:request_aborted", "Requests aborted (client gone, drain timeout).",
                               ["model_name"], registry=self.registry).labels(model_name)
        self.rejected = Counter("vllm:request_rejected", "Requests refused with 429 (queue full).",
                                ["model_name"], registry=self.registry).labels(model_name)
        self.failed = Counter("opslab:request_failed", "Requests the engine failed alone (answered 500 or an "
                              "in-band stream error).", ["model_name"], registry=self.registry).labels(model_name)
        cpu = kernels.describe()
        Info("opslab:cpu_kernels", "The CPU kernels' instruction-set path, the CPU model and its flags that the "
             "paths look at.", registry=self.registry).info(
            {"path": cpu["path"] or "none", "cpu_model": cpu["cpu_model"], "cpu_flags": " ".join(cpu["isa_flags"]),
             "amx": cpu["amx"]})

    def histogram(self, name: str, help_text: str, buckets: tuple[float, ...]):
        """A model_name-labelled histogram, already bound to this server's model."""
        return Histogram(name, help_text, ["model_name"], buckets=buckets, registry=self.registry).labels(
            self.model_name)

    def observe_token_gap(self, seconds: float) -> None:
        """One inter-token gap (ITL and its TPOT alias)."""
        self.itl.observe(seconds)
        self.tpot.observe(seconds)

    def observe_finished(self, reason: str, e2e_seconds: float) -> None:
        """A request ended: count it by reason and record its end-to-end latency."""
        self.finished.labels(self.model_name, reason).inc()
        self.e2e.observe(e2e_seconds)

    def observe_phases(self, output, end: float) -> None:
        """A request ended at `end`: its queue, prefill and decode times (each only if it reached that phase)."""
        scheduled, first_token = output.first_scheduled_time, output.first_token_time
        if scheduled is not None:
            self.queue_time.observe(max(scheduled - output.arrival_time, 0.0))
        if scheduled is not None and first_token is not None:
            self.prefill_time.observe(max(first_token - scheduled, 0.0))
            self.decode_time.observe(max(end - first_token, 0.0))
