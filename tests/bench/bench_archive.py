"""The archive's speed and size, each against a peer measured in the same run.

    .venv/bin/python tests/bench/bench_archive.py [--only ingest,storage,rollup,read] [--series 1000] ...

* ingest: Store.write of scrapes of `--series` samples each (one batch per scrape, as the archiver
  writes them) against a plain binary COPY of the same rows, ready-made (ids and datetimes), into
  a same-shaped table (same columns, primary key and BRIN index, not partitioned), one transaction
  per batch for both, alternating batch by batch. Also a replay of the stored batches (every row
  already there: the fast path fails on the key, the batch goes again through the staging table).
* storage: one day of `--series` series scraped every 15 s, rolled up; bytes on disk per row and
  per raw sample for raw and each tier (pg_total_relation_size: heap, indexes, TOAST).
* rollup: the time run_rollups takes for that day (raw → 5m → 1h), from a clean start.
* read: perfwatch.series() over a year of 1-hour data (`--read-series` series sampled every
  minute, rolled up) against the same answer computed from raw samples (the same function with
  a policy of raw only), median of `--repeat` runs; the two answers are checked equal.

PostgreSQL is the embedded server (a fresh one in a temporary directory, default settings) unless
PERFWATCH_BENCH_DSN names a database (superuser; it gets a fresh database per section).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg.conninfo import conninfo_to_dict, make_conninfo

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from perfwatch.archiver import db  # noqa: E402
from perfwatch.archiver.embedded import EmbeddedPostgres  # noqa: E402
from perfwatch.archiver.migrate import apply_migrations  # noqa: E402
from perfwatch.archiver.model import Batch, MetricMeta, Sample  # noqa: E402
from perfwatch.archiver.policy import Policy, Tier, mirror_policy  # noqa: E402
from perfwatch.archiver.rollup import run_rollups  # noqa: E402
from perfwatch.archiver.store import Store  # noqa: E402
from perfwatch.common.config import Duration  # noqa: E402

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
START = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


class Server:
    def __init__(self, workdir: Path) -> None:
        external = os.environ.get("PERFWATCH_BENCH_DSN")
        self.embedded: EmbeddedPostgres | None = None
        if external:
            self.admin_dsn = external
        else:
            self.embedded = EmbeddedPostgres(workdir / "pg")
            self.embedded.start()
            self.admin_dsn = self.embedded.dsn("postgres")

    @contextmanager
    def database(self) -> Iterator[str]:
        name = f"bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        params = conninfo_to_dict(self.admin_dsn)
        params["dbname"] = name
        try:
            yield make_conninfo("", **params)
        finally:
            with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        if self.embedded:
            self.embedded.stop()


def archive(dsn: str, policy: Policy | None = None) -> sa.Engine:
    engine = db.make_engine(dsn)
    apply_migrations(engine)
    mirror_policy(engine, policy or Policy())
    return engine


def labels_of(i: int) -> tuple[tuple[str, str], ...]:
    return (("cpu", str(i % 64)), ("instance", "host-a:10280"), ("job", "perfwatch"), ("mode", f"m{i // 64}"))


def scrape(n: int, series: int, interval_ms: int, start_ms: int) -> Batch:
    """Scrape number n: half counters (growing, a reset now and then), half gauges."""
    ts = start_ms + n * interval_ms
    samples = []
    for i in range(series):
        if i % 2 == 0:
            value = float((n % 5000) * (i + 1)) + 0.5
            samples.append(Sample("bench_cpu_seconds_total", labels_of(i), value, ts))
        else:
            samples.append(Sample("bench_temperature_celsius", labels_of(i), 40 + 10 * math.sin(n / 50 + i), ts))
    meta = {"bench_cpu_seconds_total": MetricMeta("bench_cpu_seconds_total", "counter", "counter", "CPU."),
            "bench_temperature_celsius": MetricMeta("bench_temperature_celsius", "gauge", "gauge", "Temp.")}
    return Batch("perfwatch", "host-a:10280", ts, samples, meta)


def ms(t: dt.datetime) -> int:
    return int((t - EPOCH).total_seconds() * 1000)


def table(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


# -- ingest -----------------------------------------------------------------------------------------

def bench_ingest(server: Server, args: argparse.Namespace) -> None:
    with server.database() as dsn:
        engine = archive(dsn)
        store = Store(engine)
        start_ms = ms(START)
        batches = [scrape(n, args.series, 15_000, start_ms) for n in range(args.batches + 1)]
        store.write(batches[0])  # creates the series: not measured
        ids = {}
        with engine.connect() as conn:
            for sid, name, labels in conn.execute(sa.text("SELECT s.id, m.name, s.labels FROM perfwatch.series s"
                                                          " JOIN perfwatch.metric m ON m.id = s.metric_id")):
                ids[(name, tuple(sorted(labels.items())))] = sid
        peer_rows = [[(ids[(s.name, s.labels)], EPOCH + dt.timedelta(milliseconds=s.timestamp_ms), s.value)
                      for s in b.samples] for b in batches]
        with psycopg.connect(dsn) as conn:
            conn.execute("CREATE TABLE peer (series_id integer NOT NULL, ts timestamptz NOT NULL, "
                         "value double precision NOT NULL, PRIMARY KEY (series_id, ts))")
            conn.execute("CREATE INDEX ON peer USING brin (ts)")
            conn.commit()
            store_s = peer_s = 0.0
            for i in range(1, len(batches)):
                t0 = time.perf_counter()
                store.write(batches[i])
                t1 = time.perf_counter()
                with conn.cursor() as cur, cur.copy("COPY peer FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(["int4", "timestamptz", "float8"])
                    for row in peer_rows[i]:
                        copy.write_row(row)
                conn.commit()
                t2 = time.perf_counter()
                store_s += t1 - t0
                peer_s += t2 - t1
        replay_t0 = time.perf_counter()
        replayed = sum(store.write(b) for b in batches[1:])
        replay_s = time.perf_counter() - replay_t0
        assert replayed == 0
        n = args.batches * args.series
        store_rate, peer_rate = n / store_s, n / peer_s
        print(f"\ningest: {args.batches} scrapes of {args.series} samples ({n} samples), one transaction each")
        print(table([
            ("", "samples/s", "ms per scrape", "ratio to COPY"),
            ("Store.write", f"{store_rate:,.0f}", f"{store_s / args.batches * 1000:.2f}",
             f"{store_rate / peer_rate:.2f}"),
            ("plain COPY", f"{peer_rate:,.0f}", f"{peer_s / args.batches * 1000:.2f}", "1.00"),
            ("replay (all stored)", f"{n / replay_s:,.0f}", f"{replay_s / args.batches * 1000:.2f}",
             f"{n / replay_s / peer_rate:.2f}"),
        ]))
        engine.dispose()


# -- storage and rollup -----------------------------------------------------------------------------

def load_day(engine: sa.Engine, series: int, interval_s: int, days: float, start: dt.datetime) -> int:
    """`days` of `series` series every `interval_s`, written through Store in batches of 10 minutes
    or 20,000 samples, whichever is more."""
    store = Store(engine)
    per_batch = max(1, 600 // interval_s, 20_000 // series)
    scrapes = int(days * 86400 // interval_s)
    total = 0
    for first in range(0, scrapes, per_batch):
        samples: list[Sample] = []
        meta: dict[str, MetricMeta] = {}
        for n in range(first, min(first + per_batch, scrapes)):
            b = scrape(n, series, interval_s * 1000, ms(start))
            samples += b.samples
            meta.update(b.metadata)
        total += store.write(Batch("perfwatch", "host-a:10280", samples[-1].timestamp_ms, samples, meta))
    return total


def sizes(engine: sa.Engine) -> dict[str, tuple[int, int, int]]:
    """Level → (rows, bytes, raw samples represented)."""
    out = {}
    with engine.connect() as conn:
        for level, tier, table_name in conn.execute(sa.text(
                "SELECT p.level, t.name, t.table_name FROM perfwatch.archive_policy p "
                "JOIN perfwatch.tier t ON t.name = p.tier ORDER BY p.level")):
            count_expr = "count(*)" if level == 0 else "sum(count)"
            rows, represented = conn.execute(sa.text(
                f"SELECT count(*), {count_expr} FROM perfwatch.{table_name}")).one()
            size = conn.execute(sa.text(
                "SELECT sum(pg_total_relation_size(format('perfwatch.%I', table_name)::regclass)) "
                "FROM perfwatch.partition WHERE tier = :t"), {"t": tier}).scalar()
            assert size is not None, f"no partitions for tier {tier}"
            out[tier] = (rows, int(size), int(represented or 0))
    return out


def bench_storage_and_rollup(server: Server, args: argparse.Namespace) -> None:
    with server.database() as dsn:
        engine = archive(dsn)
        t0 = time.perf_counter()
        stored = load_day(engine, args.series, 15, 1, START)
        load_s = time.perf_counter() - t0
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")  # settle hint bits and the visibility map, as in steady state
        now = START + dt.timedelta(days=1, minutes=2)
        t0 = time.perf_counter()
        runs = run_rollups(engine, Policy(), now)
        rollup_s = time.perf_counter() - t0
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
        sz = sizes(engine)
        print(f"\nstorage: one day of {args.series} series every 15 s ({stored:,} samples; written in {load_s:.1f} s)")
        rows = [("level", "rows", "bytes", "bytes/row", "bytes/raw sample")]
        for tier, (n, size, represented) in sz.items():
            rows.append((tier, f"{n:,}", f"{size:,}", f"{size / n:.1f}", f"{size / represented:.2f}"))
        print(table(rows))
        print(f"\nrollup of that day: {rollup_s:.1f} s "
              f"(5m: {runs[0].seconds:.1f} s, {runs[0].buckets_written:,} buckets in {runs[0].chunks} chunks; "
              f"1h: {runs[1].seconds:.1f} s, {runs[1].buckets_written:,} buckets), "
              f"{stored / rollup_s:,.0f} raw samples/s; writing the day took {load_s / rollup_s:.1f}x as long")
        engine.dispose()


# -- read -------------------------------------------------------------------------------------------

def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def bench_read(server: Server, args: argparse.Namespace) -> None:
    year = Policy(raw_retention=Duration(400 * 86400), tiers=[Tier(Duration(300), Duration(400 * 86400)),
                                                                Tier(Duration(3600), Duration(800 * 86400))])
    with server.database() as dsn:
        engine = archive(dsn, year)
        start = START - dt.timedelta(days=365)
        t0 = time.perf_counter()
        stored = load_day(engine, args.read_series, 60, 365, start)
        load_s = time.perf_counter() - t0
        run_rollups(engine, year, START + dt.timedelta(minutes=2))
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
        query = sa.text("SELECT * FROM perfwatch.series(:m, '{}', :f, :t, '1 hour')")
        # Timed on the server (the client only counts the rows): parsing 17,520 rows into Python
        # objects costs more than producing them, and Grafana's client is not Python.
        counted = sa.text("SELECT count(*) FROM perfwatch.series(:m, '{}', :f, :t, '1 hour')")

        def run(statement: sa.TextClause, metric: str) -> Callable[[], list[Any]]:
            def go() -> list[Any]:
                with engine.connect() as conn:
                    return list(conn.execute(statement, {"m": metric, "f": start, "t": START}))
            return go

        print(f"\nread: a year of {args.read_series} series every minute ({stored:,} samples, written in "
              f"{load_s:.0f} s), perfwatch.series() at a 1h step, median of {args.repeat}")
        rows = [("metric", "rows", "from the 1h tier", "from raw", "ratio", "(with the client: tier, raw)")]
        for metric, field in (("bench_cpu_seconds_total", "rate"), ("bench_temperature_celsius", "avg")):
            mirror_policy(engine, year)
            tier_s, _ = timed(run(counted, metric), args.repeat)
            tier_all_s, tier_rows = timed(run(query, metric), 1)
            mirror_policy(engine, Policy(raw_retention=Duration(400 * 86400), tiers=[]))  # raw only
            raw_s, _ = timed(run(counted, metric), args.repeat)
            raw_all_s, raw_rows = timed(run(query, metric), 1)
            assert len(tier_rows) == len(raw_rows) > 0
            for a, b in zip(tier_rows, raw_rows, strict=True):
                assert a.time == b.time and math.isclose(getattr(a, field), getattr(b, field), rel_tol=1e-9), (a, b)
            rows.append((f"{metric} ({field})", f"{len(tier_rows):,}", f"{tier_s * 1000:.0f} ms",
                         f"{raw_s * 1000:.0f} ms", f"{tier_s / raw_s:.3f}",
                         f"{tier_all_s * 1000:.0f} ms, {raw_all_s * 1000:.0f} ms"))
        print(table(rows))
        print("(the two answers are equal to a relative 1e-9)")
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="ingest,storage,read", help="sections, comma-separated "
                        "(storage includes the rollup timing)")
    parser.add_argument("--series", type=int, default=1000, help="series per scrape (ingest, storage, rollup)")
    parser.add_argument("--batches", type=int, default=300, help="scrapes written in the ingest section")
    parser.add_argument("--read-series", type=int, default=10, help="series with a year of data (read)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each read")
    args = parser.parse_args()
    sections = {s.strip() for s in args.only.split(",")}
    print(f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}Z, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="perfwatch-bench-") as tmp:
        server = Server(Path(tmp))
        try:
            with psycopg.connect(server.admin_dsn) as conn:
                version = conn.execute("SELECT version()").fetchone()
                assert version is not None
                print(version[0])
            if "ingest" in sections:
                bench_ingest(server, args)
            if sections & {"storage", "rollup"}:
                bench_storage_and_rollup(server, args)
            if "read" in sections:
                bench_read(server, args)
        finally:
            server.stop()
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
