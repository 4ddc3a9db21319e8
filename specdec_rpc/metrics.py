"""Prometheus metrics of one service, on its own registry (no process globals), served on a
separate HTTP port.

PromQL (rate windows to taste):
  acceptance rate        sum(rate(specdec_accepted_tokens_total[5m]))
                         / sum(rate(specdec_drafted_tokens_total[5m]))
  mean acceptance length sum(rate(specdec_emitted_tokens_total[5m]))
  (tokens per verify)    / sum(rate(specdec_verify_steps_total[5m]))
  acceptance at draft i  rate(specdec_accepted_by_position_total{position="i"}[5m])
                         / rate(specdec_drafted_by_position_total{position="i"}[5m])
  errors by code         sum by (code) (rate(specdec_rpc_total{code!="OK"}[5m]))
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from specdec.proposers.suffix import SuffixStats
from specdec_rpc.v1 import specdec_pb2 as pb

K_BUCKETS = tuple(range(17))  # draft lengths asked for: one bucket per k up to 16
LATENCY_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[Counter | Histogram, str], Any] = {}
        r = self.registry
        self.rpc_total = Counter("specdec_rpc", "RPCs finished, by method and status code",
                                 ["method", "code"], registry=r)
        self.rpc_seconds = Histogram("specdec_rpc_seconds", "RPC duration (a Session RPC lasts "
                                     "a whole session)", ["method"], buckets=LATENCY_BUCKETS, registry=r)
        self.step_seconds = Histogram("specdec_step_seconds", "one session step inside the service",
                                      ["kind"], buckets=LATENCY_BUCKETS, registry=r)
        self.sessions_open = Gauge("specdec_sessions_open", "open session streams", registry=r)
        self.slots_in_use = Gauge("specdec_slots_in_use", "KV slots (or histories) held", registry=r)
        self.queue_length = Gauge("specdec_admission_queue_length", "sessions waiting for a slot",
                                  registry=r)
        self.verify_steps = Counter("specdec_verify_steps", "verify steps (target forwards after "
                                    "prefill)", registry=r)
        self.drafts = Counter("specdec_drafts", "verify steps that checked a non-empty draft", registry=r)
        self.drafted = Counter("specdec_drafted_tokens", "draft tokens verified", registry=r)
        self.accepted = Counter("specdec_accepted_tokens", "draft tokens accepted", registry=r)
        self.emitted = Counter("specdec_emitted_tokens", "tokens emitted by verify steps", registry=r)
        self.drafted_at = Counter("specdec_drafted_by_position", "draft tokens verified at draft "
                                  "position i (1-based)", ["position"], registry=r)
        self.accepted_at = Counter("specdec_accepted_by_position", "draft tokens accepted at draft "
                                   "position i (1-based)", ["position"], registry=r)
        self.forward_seconds = Histogram("specdec_forward_seconds", "engine time of one step "
                                         "(verify forward or k draft forwards)", ["kind"],
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.proposals = Counter("specdec_proposals", "proposer steps", registry=r)
        self.proposed = Counter("specdec_proposed_tokens", "tokens proposed", registry=r)
        self.pre_drafted = Counter("specdec_pre_drafted", "proposer steps answered from a branch "
                                   "pre-drafted while the last draft was verified", registry=r)
        self.requested_k = Histogram("specdec_requested_k", "k asked for per proposer step (the "
                                     "client's choice; adaptive with --num-speculative-tokens auto)",
                                     buckets=K_BUCKETS, registry=r)
        self.draft_length = Histogram("specdec_draft_length", "tokens proposed per proposer step "
                                      "(a suffix proposer sizes each draft from its match)",
                                      buckets=K_BUCKETS, registry=r)

    def track_pool(self, in_use: Callable[[], int], waiting: Callable[[], int]) -> None:
        self.slots_in_use.set_function(in_use)
        self.queue_length.set_function(waiting)

    def observe_verifier_step(self, request: pb.VerifierRequest, reply: pb.VerifierReply) -> None:
        # Labelled children are looked up through _child: labels() takes a lock and validates
        # its arguments on every call, and this runs once per step on the reply's path.
        kind = request.WhichOneof("kind")
        self._child(self.step_seconds, kind).observe(reply.timings.total_ns / 1e9)
        self._child(self.forward_seconds, kind).observe(reply.timings.forward_ns / 1e9)
        if kind != "verify":
            return
        self.verify_steps.inc()
        self.emitted.inc(len(reply.tokens))
        if reply.num_drafted:
            self.drafts.inc()
            self.drafted.inc(reply.num_drafted)
            self.accepted.inc(reply.num_accepted_drafts)
            for i in range(reply.num_drafted):
                self._child(self.drafted_at, str(i + 1)).inc()
            for i in range(reply.num_accepted_drafts):
                self._child(self.accepted_at, str(i + 1)).inc()

    def observe_proposer_step(self, request: pb.ProposeRequest, reply: pb.ProposeReply) -> None:
        self._child(self.step_seconds, "propose").observe(reply.timings.total_ns / 1e9)
        self._child(self.forward_seconds, "draft").observe(reply.timings.forward_ns / 1e9)
        self.proposals.inc()
        self.proposed.inc(len(reply.draft_tokens))
        self.pre_drafted.inc(reply.pre_drafted)
        self.requested_k.observe(request.k)
        self.draft_length.observe(len(reply.draft_tokens))

    def track_suffix(self, stats: Callable[[], SuffixStats]) -> None:
        """A suffix proposer's cache hits and global cache size, read at each scrape."""
        self.registry.register(SuffixCollector(stats))

    def _child(self, metric: Counter | Histogram, label: str) -> Any:
        """metric.labels(label), made once per (metric, label)."""
        key = (metric, label)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(label)
        return child

    def serve(self, port: int, host: str) -> int:
        """Start the /metrics HTTP endpoint; returns the bound port (0 picks a free one)."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return server.server_address[1]


class SuffixCollector(Collector):
    """Counts the proposer keeps itself (no per-step hook needed), as Prometheus families."""

    def __init__(self, stats: Callable[[], SuffixStats]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self.stats()
        drafts = CounterMetricFamily("specdec_suffix_drafts", "non-empty suffix drafts, by the trie "
                                     "they came from (global = the finished sessions' cache: a hit)",
                                     labels=["source"])
        drafts.add_metric(["session"], s.session_drafts)
        drafts.add_metric(["global"], s.global_drafts)
        yield drafts
        yield CounterMetricFamily("specdec_suffix_proposals", "suffix proposer steps that asked for "
                                  "k > 0 tokens", value=s.proposals)
        yield GaugeMetricFamily("specdec_suffix_cache_sequences", "finished sessions in the global "
                                "suffix cache", value=s.cached_sequences)
        yield GaugeMetricFamily("specdec_suffix_cache_tokens", "tokens of the finished sessions in "
                                "the global suffix cache", value=s.cached_tokens)
