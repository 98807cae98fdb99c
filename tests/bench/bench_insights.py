"""What the insight functions cost: anomalies and forecasts, utilisation summaries and right-sizing.

    nice .venv/bin/python tests/bench/bench_insights.py [--only anomalies,summaries] [--runs 5]
        [--anomaly-hosts 20] [--anomaly-days 40] [--summary-hosts 5] [--summary-days 7]

* anomalies: `--anomaly-hosts` hosts, each with node_load1 (a daily pattern, a level per host) and
  one filesystem (size, and avail falling steadily), sampled every minute for `--anomaly-days`
  days, written through Store a day per batch, rolled up and aged under the policy of
  tests/test_archive_anomalies.py (raw 3 days, 5m 90 days, 1h 730 days), so the 30-day baseline is
  read from the tiers as in a real archive. Timed: perfwatch.anomalies() scoring the last day and
  the last 7 days (1-hour steps, the default 30-day baseline), perfwatch.filesystem_forecast() over
  30 days at 1 hour and over 2 days at 5 minutes.
* summaries: `--summary-hosts` hosts of tests/test_archive_utilisation.py's host_batches (16 series
  a host: 2 CPUs x 4 modes, memory total and available, a disk, rx and tx of eth0 and lo, eth0's
  speed) scraped every 60 s for
  `--summary-days` days, default policy, rolled up. Timed: the first summary pass (run_summaries;
  once, since it is the pass that finds everything to do, with its time per period kind), the next
  pass (nothing to do) and recommendations('day', ...) over the stored days and over one more,
  still open, day (computed on read).

Each timed query runs `--runs` times: printed are the rows it returned, the median and the range
(min-max) in ms, and the load average (1 minute) before and after its runs. PostgreSQL is the
embedded server (a fresh one in a temporary directory, default settings) unless
PERFWATCH_BENCH_DSN names a database (superuser; it gets a fresh database per section).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psycopg

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(HERE)]

import test_archive_anomalies as anomaly_case  # noqa: E402
from bench_archive import Server, table  # noqa: E402
from support.archive import SyntheticSeries, at, batches, stored_archive  # noqa: E402
from test_archive_utilisation import DAY0, host_batches, memory_pattern  # noqa: E402
from test_archive_utilisation import POLICY as SUMMARY_POLICY  # noqa: E402

from perfwatch.archiver.retention import run_retention  # noqa: E402
from perfwatch.archiver.rollup import run_rollups  # noqa: E402
from perfwatch.archiver.settings import RightsizingSettings  # noqa: E402
from perfwatch.archiver.store import Store  # noqa: E402
from perfwatch.archiver.summarise import recommendations, run_summaries  # noqa: E402

SECTIONS = ("anomalies", "summaries")
DAY = anomaly_case.DAY
Row = tuple[str, ...]


def load1() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def timed(section: str, what: str, query: Callable[[], int], runs: int) -> Row:
    """A table row for `query` (which returns its row count) run `runs` times."""
    before = load1()
    seconds, rows = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        rows = query()
        seconds.append(time.perf_counter() - t0)
    ms = [s * 1000 for s in seconds]
    return (section, what, str(rows), f"{statistics.median(ms):.1f}", f"{min(ms):.1f}-{max(ms):.1f}",
            f"{before} → {load1()}")


def once(section: str, what: str, seconds: float, rows: int, before: str) -> Row:
    return section, what, str(rows), f"{seconds * 1000:.1f}", "(once)", f"{before} → {load1()}"


# -- anomalies and forecasts ------------------------------------------------------------------------

def host_series(i: int, first_ms: int) -> list[SyntheticSeries]:
    """Host i: node_load1 (an hour-of-day shape, a level of its own, a little minute-by-minute
    variation so the baseline has a spread) and one filesystem filling 1 byte a ms."""
    times = range(first_ms + 17_000, anomaly_case.LAST_DAY + DAY, 60_000)
    instance = f"h{i}:9100"
    fs = anomaly_case.labels(instance, device="/dev/sda", mountpoint="/", fstype="ext4")
    return [
        SyntheticSeries("node_load1", anomaly_case.labels(instance), "gauge",
                        [(t, 1.0 + (t % DAY) // 3600_000 / 10 + i + (t // 60_000 * 7919 % 101) / 1000)
                         for t in times]),
        SyntheticSeries("node_filesystem_size_bytes", fs, "gauge", [(t, 1e12) for t in times]),
        SyntheticSeries("node_filesystem_avail_bytes", fs, "gauge", [(t, 5e11 - (t - first_ms)) for t in times]),
    ]


def bench_anomalies(server: Server, args: argparse.Namespace) -> list[Row]:
    policy, now, last = anomaly_case.POLICY, anomaly_case.NOW, anomaly_case.LAST_DAY
    first = last - (args.anomaly_days - 1) * DAY
    section = f"anomalies: {args.anomaly_hosts} hosts x {args.anomaly_days} d"
    with server.database() as dsn:
        t0 = time.perf_counter()
        engine = stored_archive(dsn, policy)
        store, samples = Store(engine), 0
        for i in range(args.anomaly_hosts):  # a host at a time: all of them at once would not fit in memory
            data = host_series(i, first)
            samples += sum(len(s.points) for s in data)
            for batch in batches(data, per_batch_ms=DAY, job="node", instance=f"h{i}:9100"):
                store.write(batch)
        written = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_rollups(engine, policy, now)
        run_retention(engine, policy, now)
        rolled = time.perf_counter() - t0
        engine.dispose()
        print(f"{section}: {samples:,} samples written in {written:.0f} s, rolled up and aged in {rolled:.0f} s",
              flush=True)
        queries = [
            ("anomalies, last day, 1 h steps, 30 d baseline",
             "SELECT count(*) FROM perfwatch.anomalies('node_load1', '{}', %s, %s)", (last, last + DAY)),
            ("anomalies, last 7 days", "SELECT count(*) FROM perfwatch.anomalies('node_load1', '{}', %s, %s)",
             (last - 6 * DAY, last + DAY)),
            ("filesystem_forecast, 30 d at 1 h",
             "SELECT count(*) FROM perfwatch.filesystem_forecast('{}', %s, %s, '1 hour')",
             (last - 29 * DAY, last + DAY)),
            ("filesystem_forecast, 2 d at 5 min",
             "SELECT count(*) FROM perfwatch.filesystem_forecast('{}', %s, %s, '5 minutes')",
             (last - DAY, last + DAY)),
        ]
        out = []
        with psycopg.connect(dsn) as conn:
            for what, query, (lo, hi) in queries:
                def count(query: str = query, lo: int = lo, hi: int = hi) -> int:
                    row = conn.execute(query, (at(lo), at(hi))).fetchone()
                    assert row is not None
                    return int(row[0])
                out.append(timed(section, what, count, args.runs))
        return out


# -- utilisation summaries and right-sizing ---------------------------------------------------------

def bench_summaries(server: Server, args: argparse.Namespace) -> list[Row]:
    hosts, days = args.summary_hosts, args.summary_days
    section = f"summaries: {hosts} hosts x {days} d"
    settings = RightsizingSettings()
    with server.database() as dsn:
        t0 = time.perf_counter()
        engine = stored_archive(dsn, SUMMARY_POLICY)
        store, samples = Store(engine), 0
        for h in range(hosts):
            for batch in host_batches(f"h{h}:9100", 0.1 + 0.8 * h / hosts, memory_pattern, 0.1, 1e6,
                                      minutes=days * 1440):
                samples += store.write(batch)
        written = time.perf_counter() - t0
        now = DAY0 + dt.timedelta(days=days, minutes=30)
        t0 = time.perf_counter()
        run_rollups(engine, SUMMARY_POLICY, now=now)
        rolled = time.perf_counter() - t0
        print(f"{section}: {samples:,} samples written in {written:.0f} s, rolled up in {rolled:.0f} s", flush=True)
        out = []
        before = load1()
        t0 = time.perf_counter()
        _, runs = run_summaries(engine, settings, now=now)
        first = time.perf_counter() - t0
        out.append(once(section, "first summary pass", first, sum(r.rows for r in runs), before))
        out += [(section, f"  of which by {r.period}", str(r.rows), f"{r.seconds * 1000:.1f}", "(once)", "")
                for r in runs]

        def again() -> int:
            return sum(r.rows for r in run_summaries(engine, settings, now=now)[1])

        def report(extra_days: int) -> Callable[[], int]:
            return lambda: len(recommendations(engine, "day", DAY0, DAY0 + dt.timedelta(days=days + extra_days)))

        out.append(timed(section, "next summary pass (nothing to do)", again, args.runs))
        out.append(timed(section, "recommendations, stored days", report(0), args.runs))
        out.append(timed(section, "recommendations, + open day on read", report(1), args.runs))
        engine.dispose()
        return out


def positive(text: str) -> int:
    """argparse prefixes its errors with the argument's name."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def sections_of(text: str) -> Sequence[str]:
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"unknown section(s) {', '.join(unknown) or '(none given)'}; "
                                         f"choose from {', '.join(SECTIONS)}")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", type=sections_of, default=SECTIONS, help="sections, comma-separated")
    parser.add_argument("--runs", type=positive, default=5, help="runs of each timed query")
    parser.add_argument("--anomaly-hosts", type=positive, default=20)
    parser.add_argument("--anomaly-days", type=positive, default=40,
                        help="days of 1-minute samples (the queries read up to 37 of them)")
    parser.add_argument("--summary-hosts", type=positive, default=5)
    parser.add_argument("--summary-days", type=positive, default=7)
    args = parser.parse_args()
    print(f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}Z, {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, {args.runs} runs a query")
    rows: list[Row] = [("section", "query", "rows", "median ms", "range ms", "load1 before → after")]
    with tempfile.TemporaryDirectory(prefix="perfwatch-bench-") as tmp:
        server = Server(Path(tmp))
        try:
            with psycopg.connect(server.admin_dsn) as conn:
                version = conn.execute("SELECT version()").fetchone()
                assert version is not None
                print(version[0], flush=True)
            if "anomalies" in args.only:
                rows += bench_anomalies(server, args)
            if "summaries" in args.only:
                rows += bench_summaries(server, args)
        finally:
            server.stop()
    print()
    print(table(rows))
    print(f"\nload average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
