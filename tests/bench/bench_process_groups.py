"""Cost of the process_groups collector per process and scrape, against psutil doing the same.

    .venv/bin/python tests/bench/bench_process_groups.py [--extra 0,250,1000] [--runs 7] [--scrapes 20]

For each count of extra processes (`sleep` children started for the run, on top of what the host
runs), the collector is built once and collected once (the first scrape classifies every
process; later ones only read), then `--runs` runs of `--scrapes` collections each are timed
(wall clock, the families rendered to text as a scrape does). Printed per variant: the median of
the runs' µs per process per scrape and the runs' range, with /proc/loadavg before and after.
Variants: the default config (one group per comm, /proc/<pid>/stat and /proc/<pid>/io), `io:
false` (stat only), the processes collector (node_processes_*, the same stat walk, for
reference) and psutil reading the same fields (name, cpu_times, memory_info, num_threads,
io_counters) through `process_iter`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402
from prometheus_client.registry import Collector as RegistryCollector  # noqa: E402
from prometheus_client.registry import CollectorRegistry  # noqa: E402

from perfwatch.common.config import from_mapping  # noqa: E402
from perfwatch.exporter.collectors import load_all  # noqa: E402
from perfwatch.exporter.collectors.base import Collector, HostPaths  # noqa: E402
from perfwatch.exporter.exposition import render  # noqa: E402


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def build(name: str, options: dict[str, Any]) -> Collector[Any]:
    cls = load_all()[name]
    return cls(from_mapping(cls.Options, options, f"collectors.{name}"), HostPaths())


class _Families(RegistryCollector):
    def __init__(self, collector: Collector[Any]) -> None:
        self.collector = collector

    def collect(self) -> Any:
        return self.collector.collect()


def scrape_of(collector: Collector[Any]) -> Callable[[], object]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(collector))
    return lambda: render(registry)


def psutil_scrape() -> object:
    attrs = ["name", "cpu_times", "memory_info", "num_threads", "io_counters"]
    return [p.info for p in psutil.process_iter(attrs, ad_value=None)]


def process_count() -> int:
    return sum(1 for p in Path("/proc").iterdir() if p.name.isdigit())


def measure(scrape: Callable[[], object], runs: int, scrapes: int) -> list[float]:
    """µs per process per scrape, one figure per run."""
    scrape()  # warm: the first scrape classifies every process, later ones only read
    out = []
    for _ in range(runs):
        processes = process_count()
        start = time.perf_counter()
        for _ in range(scrapes):
            scrape()
        out.append((time.perf_counter() - start) / scrapes / processes * 1e6)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extra", default="0,250,1000", help="extra sleeping processes, comma-separated")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--scrapes", type=int, default=20)
    args = parser.parse_args()
    variants: dict[str, Callable[[], Callable[[], object]]] = {
        "process_groups (default)": lambda: scrape_of(build("process_groups", {})),
        "process_groups io: false": lambda: scrape_of(build("process_groups", {"io": False})),
        "processes (reference)": lambda: scrape_of(build("processes", {})),
        "psutil process_iter": lambda: psutil_scrape,
    }
    print(f"{'extra':>5} {'procs':>5}  {'variant':<26} {'µs/process':>10}  {'range':>13}  loadavg before → after")
    for extra in (int(n) for n in args.extra.split(",")):
        children = [subprocess.Popen(["sleep", "3600"]) for _ in range(extra)]
        try:
            for name, make in variants.items():
                before = loadavg()
                figures = measure(make(), args.runs, args.scrapes)
                print(f"{extra:>5} {process_count():>5}  {name:<26} {statistics.median(figures):>10.1f}  "
                      f"{min(figures):>6.1f}-{max(figures):<6.1f}  {before} → {loadavg()}", flush=True)
        finally:
            for child in children:
                child.kill()
            for child in children:
                child.wait()


if __name__ == "__main__":
    main()
