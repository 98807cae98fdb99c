"""exporter/collect.py's CollectorSet in process: closing it while a scrape runs."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client.core import Metric

from perfwatch.exporter.collect import CollectorSet
from perfwatch.exporter.collectors.base import Collector, HostPaths, NoOptions, gauge


class Slow(Collector[NoOptions]):
    """Blocks in collect() until released; counts its collects and closes."""

    name = "slow"
    description = "test"

    def __init__(self) -> None:
        super().__init__(NoOptions(), HostPaths())
        self.entered, self.release = threading.Event(), threading.Event()
        self.collects = self.closes = 0
        self.closed_while_collecting = False

    def collect(self) -> Iterator[Metric]:
        self.collects += 1
        self.entered.set()
        self.release.wait(10)
        self.closed_while_collecting = self.closes > 0
        yield gauge("slow", "Test.", 1)

    def close(self) -> None:
        self.closes += 1


def test_close_waits_for_the_scrape_in_progress_and_no_collector_runs_after_it() -> None:
    slow = Slow()
    collectors = CollectorSet([slow])
    scrape = threading.Thread(target=lambda: list(collectors.collect()))
    scrape.start()
    assert slow.entered.wait(10)
    closing = threading.Thread(target=collectors.close)
    closing.start()
    closing.join(0.3)
    assert closing.is_alive() and slow.closes == 0  # waits for the scrape
    slow.release.set()
    scrape.join(10)
    closing.join(10)
    assert slow.closes == 1 and not slow.closed_while_collecting
    families = {f.name: f for f in collectors.collect()}  # a late scrape on a kept-alive connection
    assert slow.collects == 1 and "perfwatch_slow" not in families
    assert families["perfwatch_scrape_collector_success"].samples == []
    collectors.close()
    assert slow.closes == 1
