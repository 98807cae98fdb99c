"""The archiver's own /metrics: what it scraped, wrote, spooled, rolled up and dropped.

Names and labels are an interface: Prometheus alerts (archiver target down, spool growing,
database unreachable, rollups behind) are written against them.
"""

from __future__ import annotations

import platform
import threading
import time
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import Counter, Gauge, Histogram, ProcessCollector, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from perfwatch import __version__
from perfwatch.archiver.spool import Spool
from perfwatch.archiver.store import REASONS as DROP_REASONS

PREFIX = "perfwatch_archiver_"
TARGET = ["job", "instance"]


class ArchiverMetrics:
    def __init__(self, spool: Spool | None = None) -> None:
        # `_created` series double every counter for nothing Prometheus 2.42 uses.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus_client leaves it untyped
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry

        self.scrapes = Counter(PREFIX + "scrapes_total", "Scrapes attempted, per target.", TARGET, registry=r)
        self.scrape_failures = Counter(
            PREFIX + "scrape_failures_total",
            "Failed scrapes per target and reason (unreachable, timeout, http_status, malformed).",
            [*TARGET, "reason"], registry=r)
        self.scrapes_skipped = Counter(
            PREFIX + "scrapes_skipped",
            "Scheduled scrapes not run, per target and reason: still_running (the previous scrape of the target "
            "was still running), missed (it could not start in time: the archiver is overloaded).",
            [*TARGET, "reason"], registry=r)
        self.target_up = Gauge(PREFIX + "target_up", "1 if the target's last scrape succeeded, else 0.",
                               TARGET, registry=r)
        self.scrape_duration = Gauge(PREFIX + "scrape_duration_seconds", "How long the target's last scrape took.",
                                     TARGET, registry=r)
        self.samples_scraped = Counter(PREFIX + "samples_scraped_total",
                                       "Samples scraped and spooled (NaN stale markers excluded).", TARGET, registry=r)
        self.samples_written = Counter(PREFIX + "samples_written_total",
                                       "Samples the database inserted, per target (a replayed duplicate is not "
                                       "counted again).",
                                       TARGET, registry=r)
        # Targets from file_sd_configs (discovery.py); Prometheus' own is prometheus_sd_file_read_errors_total.
        self.sd_file_read_errors = Counter(PREFIX + "sd_file_read_errors_total",
                                           "Reads of a file_sd file that failed (unreadable, not a list of target "
                                           "groups, a bad target or label); its last good targets are kept.",
                                           registry=r)
        self.sd_discovered_targets = Gauge(PREFIX + "sd_discovered_targets",
                                           "Targets the files of each file_sd_config list (`config`: its index), "
                                           "before those with the job and instance of another are left out.",
                                           ["config"], registry=r)
        self.write_duration = Histogram(PREFIX + "write_duration_seconds",
                                        "Time to write one batch to the database.", registry=r,
                                        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                                                 5, 10))
        self.database_up = Gauge(PREFIX + "database_up",
                                 "1 if the last database operation succeeded, 0 if PostgreSQL was unreachable.",
                                 registry=r)
        self.rollup_runs = Counter(PREFIX + "rollup_runs_total", "Rollup passes per tier and result (ok, error).",
                                   ["tier", "result"], registry=r)
        self.retention_runs = Counter(PREFIX + "retention_runs_total", "Retention passes by result (ok, error).",
                                      ["result"], registry=r)
        self.utilisation_runs = Counter(PREFIX + "utilisation_runs_total",
                                    "Utilisation summary passes by result (ok, error).", ["result"], registry=r)
        for result in ("ok", "error"):
            self.utilisation_runs.labels(result)
        self.partitions_dropped = Counter(PREFIX + "partitions_dropped_total",
                                          "Partitions dropped by retention, per tier (raw or a resolution).",
                                          ["tier"], registry=r)
        self.rollup_last_success = Gauge(PREFIX + "rollup_last_success_timestamp_seconds",
                                         "When a rollup pass last succeeded (Unix time).", registry=r)
        self.retention_last_success = Gauge(PREFIX + "retention_last_success_timestamp_seconds",
                                            "When a retention pass last succeeded (Unix time).", registry=r)
        self.tier_rows = Gauge(PREFIX + "tier_rows", "Rows in each tier's table (raw and each resolution), "
                               "as of the last rollup or retention pass.", ["tier"], registry=r)
        self.tier_bytes = Gauge(PREFIX + "tier_bytes", "On-disk size of each tier's tables and indexes, "
                                "as of the last rollup or retention pass.", ["tier"], registry=r)
        # Prometheus' remote protocols (receive.py, remoteread.py), when the config opens them.
        self.remote_requests = Counter(PREFIX + "remote_requests_total",
                                       "Remote-write and remote-read requests answered, by handler "
                                       "(/api/v1/write, /api/v1/read) and HTTP status code.",
                                       ["handler", "code"], registry=r)
        self.remote_write_samples = Counter(PREFIX + "remote_write_samples_total",
                                            "Samples received by remote_write and spooled (NaN included: the store "
                                            "drops and counts those).", registry=r)
        self.remote_write_refused = Counter(PREFIX + "remote_write_refused_total",
                                            "Remote-write series (with all their samples) not stored, by reason: "
                                            "invalid (no metric name, a bad or repeated label name), label_limit, "
                                            "native_histogram (histogram samples; only floats are archived).",
                                            ["reason"], registry=r)
        self.remote_read_samples = Counter(PREFIX + "remote_read_samples_total",
                                           "Samples answered by remote_read, by the level read (raw or a tier).",
                                           ["level"], registry=r)
        # Alertmanager's webhook (alerthistory.py), when the config opens it.
        self.alert_webhook_requests = Counter(PREFIX + "alert_webhook_requests_total",
                                              "Alertmanager webhook requests answered, by HTTP status code.",
                                              ["code"], registry=r)
        self.alert_notifications = Counter(PREFIX + "alert_notifications_total",
                                           "Alertmanager notifications stored, by the notification's status "
                                           "(firing, resolved).", ["status"], registry=r)
        self.alerts_received = Counter(PREFIX + "alerts_received_total",
                                       "Alerts in the stored notifications, by the alert's status (firing, resolved).",
                                       ["status"], registry=r)
        self.alert_occurrences = Counter(PREFIX + "alert_occurrences_total",
                                         "Alerts stored, by what they did to the history: new (an occurrence not "
                                         "seen before), resolved (its resolution recorded), repeated (nothing new: "
                                         "a re-delivery or repeat).", ["outcome"], registry=r)

        # Set by the service once the store exists: its counts of samples not stored, by reason.
        self.store_dropped: Callable[[], Mapping[str, int]] | None = None
        # Set by the service when it scrapes in worker processes: (workers running, restarts so far).
        self.scrape_workers: Callable[[], tuple[int, int]] | None = None
        self._watermarks: dict[str, float] = {}
        self._lock = threading.Lock()
        r.register(_Computed(self, spool))
        ProcessCollector(registry=r)

    def set_watermark(self, tier: str, timestamp: float | None) -> None:
        """Tier `tier` is rolled up to `timestamp` (Unix seconds); lag is computed at scrape time,
        so it keeps growing when rollups stop."""
        with self._lock:
            if timestamp is None:
                self._watermarks.pop(tier, None)
            else:
                self._watermarks[tier] = timestamp

    def watermarks(self) -> dict[str, float]:
        with self._lock:
            return dict(self._watermarks)


class _Computed:
    """Values read when /metrics is scraped: spool state, scrape workers, rollup lag, build info."""

    def __init__(self, metrics: ArchiverMetrics, spool: Spool | None) -> None:
        self.metrics = metrics
        self.spool = spool

    def describe(self) -> Iterator[Metric]:
        return iter(())  # computed at collect time; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        if self.spool is not None:
            stats = self.spool.stats()
            yield GaugeMetricFamily(PREFIX + "spool_batches", "Batches spooled and not yet in the database.",
                                    value=stats.batches)
            yield GaugeMetricFamily(PREFIX + "spool_bytes", "Disk bytes of the batches not yet in the database.",
                                    value=stats.bytes)
            age = 0.0 if stats.oldest_ms is None else max(0.0, now - stats.oldest_ms / 1000)
            yield GaugeMetricFamily(PREFIX + "spool_oldest_age_seconds",
                                    "Age of the oldest batch not yet in the database (0 when none).", value=age)
            yield GaugeMetricFamily(PREFIX + "spool_memory_bytes",
                                    "Disk bytes of the spooled batches the writer also has in memory (the rest it "
                                    "reads back from disk).", value=stats.memory_bytes)
            yield CounterMetricFamily(PREFIX + "spool_read_back_batches",
                                      "Batches the writer read back from the spool's disk: spooled before this start, "
                                      "or while the memory queue was full (spool.memory_bytes).",
                                      value=self.spool.read_back)
            yield CounterMetricFamily(PREFIX + "spool_dropped_batches",
                                      "Batches lost: dropped because the spool reached max_bytes (oldest first), "
                                      "or not spooled because the disk failed.", value=self.spool.dropped_batches)
            yield CounterMetricFamily(PREFIX + "batches_rejected",
                                      "Batches set aside in the spool's rejected.jsonl (unparsable, or refused by "
                                      "the database for a reason other than being down).",
                                      value=self.spool.rejected_lines)
        dropped = CounterMetricFamily(PREFIX + "samples_dropped",
                                      "Samples the store did not keep, by reason: nan, out_of_bounds (a timestamp "
                                      "before 1970 or over an hour ahead), expired (older than retention already "
                                      "dropped), unstorable (a NUL in a label), refused (by PostgreSQL).",
                                      labels=["reason"])
        counts = self.metrics.store_dropped() if self.metrics.store_dropped else {}
        for reason in sorted({*DROP_REASONS, *counts}):
            dropped.add_metric([reason], counts.get(reason, 0))
        yield dropped
        running, restarts = self.metrics.scrape_workers() if self.metrics.scrape_workers else (0, 0)
        yield GaugeMetricFamily(PREFIX + "scrape_workers",
                                "Scrape worker processes running (scrape.workers; 0: scrapes run in the archiver's "
                                "own process).", value=running)
        yield CounterMetricFamily(PREFIX + "scrape_worker_restarts",
                                  "Scrape worker processes started again after they died or hung.", value=restarts)
        lag = GaugeMetricFamily(PREFIX + "rollup_lag_seconds",
                                "Now minus the tier's watermark (how far rollups are behind).", labels=["tier"])
        for tier, watermark in sorted(self.metrics.watermarks().items()):
            lag.add_metric([tier], max(0.0, now - watermark))
        yield lag
        yield InfoMetricFamily(PREFIX + "build", "perfwatch archiver version and the Python it runs on.",
                               value={"version": __version__, "python_version": platform.python_version()})
