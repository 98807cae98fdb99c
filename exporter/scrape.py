"""One scrape: run every enabled collector, time it, and never let one failure fail the rest."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from exporter.collectors.base import Collector, metric_name

log = logging.getLogger(__name__)


class CollectorSet:
    """A prometheus_client collector that runs perfwatch's collectors at every scrape."""

    def __init__(self, collectors: Sequence[Collector]) -> None:
        self.collectors = list(collectors)
        # Collectors keep state between scrapes (perf deltas); one scrape at a time keeps it
        # consistent, and the GIL would serialise the work anyway.
        self._lock = threading.Lock()
        self._last_error: dict[str, str] = {}

    def collect(self) -> Iterator[Metric]:
        success = GaugeMetricFamily(
            metric_name("scrape_collector_success"),
            "1 if the collector succeeded in this scrape, 0 if it raised.",
            labels=["collector"],
        )
        duration = GaugeMetricFamily(
            metric_name("scrape_collector_duration_seconds"),
            "Time the collector took in this scrape.",
            labels=["collector"],
        )
        with self._lock:
            for collector in self.collectors:
                start = time.perf_counter()
                families = self._run(collector)
                duration.add_metric([collector.name], time.perf_counter() - start)
                success.add_metric([collector.name], 0.0 if families is None else 1.0)
                if families:
                    yield from families
        yield success
        yield duration

    def _run(self, collector: Collector) -> list[Metric] | None:
        try:
            families = list(collector.collect())
        except Exception as err:  # a collector must never fail the scrape
            message = f"{type(err).__name__}: {err}"
            # Log when a collector starts failing or fails differently, not at every scrape.
            if self._last_error.get(collector.name) != message:
                log.error("collector %s failed: %s", collector.name, message, exc_info=True)
                self._last_error[collector.name] = message
            return None
        if self._last_error.pop(collector.name, None) is not None:
            log.info("collector %s recovered", collector.name)
        return families

    def close(self) -> None:
        for collector in self.collectors:
            try:
                collector.close()
            except Exception:
                log.exception("collector %s failed to close", collector.name)


def build_registry(collector_set: CollectorSet, *, version: str) -> CollectorRegistry:
    """The registry `/metrics` renders: the collectors, the process' own metrics, build info."""
    from prometheus_client import ProcessCollector
    from prometheus_client.core import InfoMetricFamily

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector_set)  # type: ignore[arg-type]
    ProcessCollector(registry=registry)

    class BuildInfo:
        def collect(self) -> Iterator[Metric]:
            import platform

            yield InfoMetricFamily(
                metric_name("exporter_build"),
                "perfwatch exporter version and the Python it runs on.",
                value={"version": version, "python_version": platform.python_version()},
            )

    registry.register(BuildInfo())  # type: ignore[arg-type]
    return registry
