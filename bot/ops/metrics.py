"""Prometheus metrics of the conversation manager, in a registry of their own (one per runtime).

Names follow Prometheus conventions (``_total`` counters, ``_seconds`` histograms). The HTTP server
exposes :meth:`Metrics.render` at ``/metrics``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

#: Seconds; from a few tens of ms (echo, cached) to minutes (long answers on CPU).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.messages_in = Counter("internvl_bot_messages_in_total", "Messages received from users",
                                   ["adapter"], registry=r)
        self.messages_out = Counter("internvl_bot_messages_out_total",
                                    "Messages sent to users (answer, notice, error, file)", ["adapter", "kind"],
                                    registry=r)
        self.answer_seconds = Histogram("internvl_bot_answer_seconds",
                                        "From a message's arrival to its complete answer", ["adapter"],
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.ttft_seconds = Histogram("internvl_bot_time_to_first_token_seconds",
                                      "From a message's arrival to the first streamed text of its answer",
                                      ["adapter"], buckets=LATENCY_BUCKETS, registry=r)
        self.engine_errors = Counter("internvl_bot_engine_errors_total", "Answers that failed in the engine",
                                     ["engine"], registry=r)
        self.handoffs = Counter("internvl_bot_handoffs_total", "Conversations handed to a human",
                                ["adapter"], registry=r)
        self.queue_depth = Gauge("internvl_bot_queue_depth", "Messages queued or being answered", registry=r)
        self.delivery_failed = Counter("internvl_bot_delivery_failed_total",
                                       "Replies given up after the delivery deadline (or refused for good)",
                                       ["adapter"], registry=r)
        self.redelivered = Counter("internvl_bot_redelivered_total",
                                   "Replies delivered by the outbox after a failed first send", ["adapter"],
                                   registry=r)
        self.held_messages = Counter("internvl_bot_held_messages_total",
                                     "Messages kept for a person (conversation handed off), not answered by the bot",
                                     registry=r)
        self.webhook_rejected = Counter("internvl_bot_webhook_rejected_total",
                                        "Requests a webhook or API route refused: missing, wrong or stale "
                                        "signature, secret or token", ["route", "reason"], registry=r)
        self.feedback = Counter("internvl_bot_feedback_total",
                                "Feedback on answers: explicit (up, down, csat, sent_as_is, edited, discarded) and "
                                "implicit (regenerated, handoff_after_answer, reset_after_answer)",
                                ["kind", "platform", "persona"], registry=r)
        self._adapters: dict[str, AdapterMetrics] = {}

    def adapter(self, name: str) -> AdapterMetrics:
        """The series of one adapter, bound once (see :class:`AdapterMetrics`)."""
        found = self._adapters.get(name)
        if found is None:
            found = self._adapters[name] = AdapterMetrics(self, name)
        return found

    def track_queue(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(lambda: float(depth()))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class AdapterMetrics:
    """One adapter's labelled series, each bound on its first use and kept: a message costs no ``labels()``
    lookup (a lock, a check of the values and a dict lookup every call). Bound on first use, not up front,
    so ``/metrics`` lists a series once it has happened, as before."""

    def __init__(self, metrics: Metrics, adapter: str) -> None:
        self._metrics = metrics
        self.adapter = adapter

    @cached_property
    def messages_in(self) -> Counter:
        return self._metrics.messages_in.labels(self.adapter)

    @cached_property
    def answers_out(self) -> Counter:
        return self._metrics.messages_out.labels(self.adapter, "answer")

    @cached_property
    def notices_out(self) -> Counter:
        return self._metrics.messages_out.labels(self.adapter, "notice")

    @cached_property
    def errors_out(self) -> Counter:
        return self._metrics.messages_out.labels(self.adapter, "error")

    @cached_property
    def files_out(self) -> Counter:
        return self._metrics.messages_out.labels(self.adapter, "file")

    @cached_property
    def ttft_seconds(self) -> Histogram:
        return self._metrics.ttft_seconds.labels(self.adapter)

    @cached_property
    def answer_seconds(self) -> Histogram:
        return self._metrics.answer_seconds.labels(self.adapter)

    @cached_property
    def handoffs(self) -> Counter:
        return self._metrics.handoffs.labels(self.adapter)

    @cached_property
    def delivery_failed(self) -> Counter:
        return self._metrics.delivery_failed.labels(self.adapter)

    @cached_property
    def redelivered(self) -> Counter:
        return self._metrics.redelivered.labels(self.adapter)
