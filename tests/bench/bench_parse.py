"""The parse step alone: the reference (prometheus_client's parser) against perfwatch's own.

    .venv/bin/python tests/bench/bench_parse.py [--runs 9] [--wide 5000]

Each body is parsed as a scrape parses it (archiver.parse.parse_lines, the archiver's default
limits, two target labels), by the reference (tests/support/reference_parse.py) and by the fast
parser, runs interleaved so that both see the same machine. Bodies:

* synthetic: SyntheticExporter's wide body, `--wide` series of one gauge beside its usual families;
* node_exporter: the real output of Debian's prometheus-node-exporter, when it is installed;
* perfwatch: the perfwatch exporter with its default collectors, rendered in-process.

Printed per body and parser: µs of CPU (this process' time, which other processes on a shared
machine do not add to) per sample, the median of `--runs` runs and their min-max, and the
speed-up; with the load average before and after, since a loaded machine slows both.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from support.reference_parse import node_exporter_exposition, perfwatch_exposition, reference_parse_lines  # noqa: E402
from support.synthetic import exposition  # noqa: E402

from perfwatch.archiver.model import Batch  # noqa: E402
from perfwatch.archiver.parse import parse_lines  # noqa: E402
from perfwatch.archiver.settings import DEFAULT_LIMITS  # noqa: E402

TARGET = {"job": "node", "instance": "host:9100"}
Parser = Callable[..., Batch]


def cpu_seconds(parser: Parser, lines: list[str]) -> tuple[float, int]:
    started = time.process_time()
    batch = parser(lines, TARGET, 1_700_000_000_000, DEFAULT_LIMITS)
    return time.process_time() - started, len(batch.samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9, help="runs of each parser on each body (≥ 5)")
    parser.add_argument("--wide", type=int, default=5000, help="series in the synthetic body")
    args = parser.parse_args()
    runs = max(5, args.runs)

    bodies: dict[str, str] = {"synthetic": exposition(3, wide=args.wide)}
    node = node_exporter_exposition()
    if node is None:
        print("node_exporter: prometheus-node-exporter is not installed, skipped")
    else:
        bodies["node_exporter"] = node
    bodies["perfwatch"] = perfwatch_exposition()

    load_before = os.getloadavg()
    rows = []
    for body, text in bodies.items():
        lines = text.splitlines(keepends=True)
        reference_batch = reference_parse_lines(lines, TARGET, 1_700_000_000_000, DEFAULT_LIMITS)
        fast_batch = parse_lines(lines, TARGET, 1_700_000_000_000, DEFAULT_LIMITS)
        same = (reference_batch.samples, reference_batch.metadata) == (fast_batch.samples, fast_batch.metadata)
        per_sample: dict[str, list[float]] = {"reference": [], "fast": []}
        for _ in range(runs):
            for name, parse in (("reference", reference_parse_lines), ("fast", parse_lines)):
                seconds, samples = cpu_seconds(parse, lines)
                per_sample[name].append(seconds / samples * 1e6)
        rows.append((body, len(text), len(fast_batch.samples), same, per_sample))
    load_after = os.getloadavg()

    print(f"µs of CPU per sample, median of {runs} runs (min-max); load average "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after, on {os.cpu_count()} CPUs")
    print(f"{'body':<14} {'bytes':>9} {'samples':>8} {'reference':>22} {'fast':>20} {'speed-up':>9}  same")
    for body, size, samples, same, per_sample in rows:
        ref, fast = per_sample["reference"], per_sample["fast"]
        print(f"{body:<14} {size:>9,} {samples:>8,} "
              f"{statistics.median(ref):>7.2f} ({min(ref):6.2f}-{max(ref):6.2f}) "
              f"{statistics.median(fast):>6.2f} ({min(fast):5.2f}-{max(fast):5.2f}) "
              f"{statistics.median(ref) / statistics.median(fast):>8.1f}x  {'yes' if same else 'NO'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
