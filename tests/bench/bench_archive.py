"""The archive's speed and size, each against a peer measured in the same run.

    .venv/bin/python tests/bench/bench_archive.py [--only ingest,storage,rollup,read] [--series 1000] ...

* ingest: Store.write of scrapes of `--series` samples each (one batch per scrape, as the archiver
  writes them) against a plain binary COPY of the same rows, ready-made (ids and datetimes), into
  a same-shaped table (same columns, primary key and BRIN index, not partitioned), one transaction
  per batch for both, alternating batch by batch. Also a replay of the stored batches (every row
  already there: the fast path fails on the key, the batch goes again through the staging table).
* storage: one day of `--series` host-like series scraped every 15 s (counters with two decimals,
  byte and operation counters, page-sized gauges, constants), compacted and rolled up; bytes per
  raw sample all-in (database growth / samples: catalog, indexes, TOAST) before and after
  compaction, per level, and Prometheus' TSDB on the same samples (promtool backfills them into
  one block; its size on disk).
* compaction and rollup: the time run_compaction and run_rollups (raw → 5m → 1h) take for that day.
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
from perfwatch.archiver.compact import run_compaction  # noqa: E402
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


# -- storage, compaction and rollup -----------------------------------------------------------------

HOST_KINDS = ("cpu_seconds", "bytes", "ops", "memory", "filesystem", "constant")


def host_series(i: int) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    """Series i of a host-like mix (name, kind, labels): 30 % CPU-seconds counters (two decimals),
    20 % byte counters, 15 % operation counters, 15 % memory gauges (pages), 10 % filesystem
    gauges (change now and then), 10 % constants (sizes, limits, info)."""
    kind = HOST_KINDS[next(k for k, bound in enumerate((6, 10, 13, 16, 18, 20)) if i % 20 < bound)]
    name = {"cpu_seconds": "bench_cpu_seconds_total", "bytes": "bench_network_bytes_total",
            "ops": "bench_disk_ops_total", "memory": "bench_memory_bytes", "filesystem": "bench_filesystem_free_bytes",
            "constant": "bench_limit_bytes"}[kind]
    return name, kind, (("instance", "host-a:10280"), ("job", "node"), ("series", str(i)))


def host_values(series: int, scrapes: int, seed: int = 5) -> Iterator[list[float]]:
    """Each scrape's values of `series` host-like series (see host_series)."""
    import random
    rng = random.Random(seed)
    kinds = [host_series(i)[1] for i in range(series)]
    busy = [rng.random() for _ in range(series)]
    values = [float(rng.randint(1, 1 << 20) * (4096 if k in ("memory", "filesystem", "constant") else 1))
              for k in kinds]
    for _ in range(scrapes):
        for i, k in enumerate(kinds):
            if k == "cpu_seconds":
                values[i] = round(values[i] + round(15 * busy[i] * rng.random(), 2), 2)
            elif k == "bytes":
                values[i] += rng.randint(0, 200_000) if rng.random() < busy[i] else 0
            elif k == "ops":
                values[i] += rng.randint(0, 20) if rng.random() < busy[i] else 0
            elif k == "memory":
                values[i] = max(4096.0, values[i] + 4096 * rng.randint(-8, 8))
            elif k == "filesystem" and rng.random() < 0.1:
                values[i] = max(4096.0, values[i] - 4096 * rng.randint(0, 64))
        yield list(values)


def host_timestamps(scrapes: int, interval_ms: int, start_ms: int, seed: int = 6) -> list[int]:
    """Scrape times as the archiver records them: on the interval, a few ms late."""
    import random
    rng = random.Random(seed)
    return [start_ms + n * interval_ms + rng.randint(0, 4) for n in range(scrapes)]


def load_day(engine: sa.Engine, series: int, interval_s: int, days: float, start: dt.datetime,
             scrapes_per_batch: int = 1) -> int:
    """`days` of `series` host-like series every `interval_s`, written through Store one scrape per
    batch, as the archiver writes them (or `scrapes_per_batch` scrapes, for a year of few series)."""
    store = Store(engine)
    scrapes = int(days * 86400 // interval_s)
    names = [host_series(i) for i in range(series)]
    meta = {name: MetricMeta(name, "gauge" if kind in ("memory", "filesystem", "constant") else "counter",
                             "gauge" if kind in ("memory", "filesystem", "constant") else "counter", name)
            for name, kind, _ in names}
    total = 0
    stamps = host_timestamps(scrapes, interval_s * 1000, ms(start))
    pending: list[Sample] = []
    for n, (ts, values) in enumerate(zip(stamps, host_values(series, scrapes), strict=True), 1):
        pending += [Sample(name, labels, v, ts) for (name, _, labels), v in zip(names, values, strict=True)]
        if n % scrapes_per_batch == 0 or n == scrapes:
            total += store.write(Batch("node", "host-a:10280", ts, pending, meta))
            pending = []
    return total


def write_openmetrics(path: Path, series: int, interval_s: int, days: float, start: dt.datetime) -> int:
    """The same samples as load_day, as the OpenMetrics text promtool backfills (series by series)."""
    scrapes = int(days * 86400 // interval_s)
    columns = list(zip(*host_values(series, scrapes), strict=True))
    stamps = host_timestamps(scrapes, interval_s * 1000, ms(start))
    names = [host_series(i) for i in range(series)]
    typed: dict[str, list[int]] = {}
    for i, (name, _, _) in enumerate(names):
        typed.setdefault(name, []).append(i)
    with path.open("w") as f:
        for name, members in typed.items():
            family = name.removesuffix("_total")
            f.write(f"# TYPE {family} {'counter' if name.endswith('_total') else 'gauge'}\n")
            for i in members:
                labels = ",".join(f'{k}="{v}"' for k, v in names[i][2])
                for ts, v in zip(stamps, columns[i], strict=True):
                    f.write(f"{name}{{{labels}}} {v!r} {ts / 1000:.3f}\n")
        f.write("# EOF\n")
    return scrapes * series


def tsdb_bytes(series: int, days: float, start: dt.datetime, workdir: Path) -> tuple[int, int, float]:
    """Prometheus' TSDB on the same samples: promtool backfills them into blocks (one block per
    `days`), measured on disk: (chunk bytes, all bytes, seconds). 0s when promtool is missing."""
    import shutil
    import subprocess
    promtool = shutil.which("promtool")
    if promtool is None:
        return 0, 0, 0.0
    source, blocks = workdir / "samples.om", workdir / "blocks"
    write_openmetrics(source, series, 15, days, start)
    t0 = time.perf_counter()
    subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", "--quiet",
                    f"--max-block-duration={int(days * 24)}h", str(source), str(blocks)], check=True,
                   capture_output=True, timeout=1800)
    seconds = time.perf_counter() - t0
    source.unlink()
    chunks = sum(p.stat().st_size for p in blocks.rglob("*") if p.is_file() and p.parent.name == "chunks")
    total = sum(p.stat().st_size for p in blocks.rglob("*") if p.is_file())
    return chunks, total, seconds


def sizes(engine: sa.Engine) -> dict[str, tuple[int, int, int]]:
    """Level → (rows, bytes, raw samples represented): raw's rows are head rows, late rows and
    chunks; a tier's are its buckets, in its table or packed."""
    out = {}
    with engine.connect() as conn:
        for level, tier, table_name in conn.execute(sa.text(
                "SELECT p.level, t.name, t.table_name FROM perfwatch.archive_policy p "
                "JOIN perfwatch.tier t ON t.name = p.tier ORDER BY p.level")):
            if level == 0:
                rows, represented = conn.execute(sa.text(
                    "SELECT (SELECT count(*) FROM perfwatch.sample) + (SELECT count(*) FROM perfwatch.sample_late) "
                    "+ (SELECT count(*) FROM perfwatch.sample_chunk), (SELECT count(*) FROM perfwatch.sample) "
                    "+ (SELECT count(*) FROM perfwatch.sample_late) "
                    "+ (SELECT coalesce(sum(samples), 0) FROM perfwatch.sample_chunk)")).one()
            else:  # buckets in the tier's table and in its chunks
                rows, represented = conn.execute(sa.text(
                    f"SELECT (SELECT count(*) FROM perfwatch.{table_name}) "
                    f"+ (SELECT coalesce(sum(cardinality(slots)), 0) FROM perfwatch.{table_name}_chunk), "
                    f"(SELECT coalesce(sum(count), 0) FROM perfwatch.{table_name}) "
                    f"+ (SELECT coalesce(sum(c), 0) FROM perfwatch.{table_name}_chunk, unnest(count) c)")).one()
            size = conn.execute(sa.text(
                "SELECT coalesce(sum(pg_total_relation_size(format('perfwatch.%I', table_name)::regclass)), 0) "
                "FROM perfwatch.level_partitions(:t)"), {"t": tier}).scalar_one()
            if level == 0:
                size += conn.execute(sa.text("SELECT pg_total_relation_size('perfwatch.sample_late')")).scalar_one()
            out[tier] = (rows, int(size), int(represented or 0))
    return out


def database_bytes(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CHECKPOINT")
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        assert row is not None
        return int(row[0])


def bench_storage_and_rollup(server: Server, args: argparse.Namespace) -> None:
    with server.database() as dsn:
        engine = archive(dsn)
        empty = database_bytes(dsn)
        t0 = time.perf_counter()
        stored = load_day(engine, args.series, 15, 1, START)
        load_s = time.perf_counter() - t0
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")  # settle hint bits and the visibility map, as in steady state
        unpacked = database_bytes(dsn) - empty
        now = START + dt.timedelta(days=1, minutes=2)
        t0 = time.perf_counter()
        policy = Policy(catchup_workers=args.catchup_workers)
        compaction = run_compaction(engine, policy, now)
        compact_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        runs = run_rollups(engine, policy, now)
        rollup_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        tiers_packed = run_compaction(engine, policy, now)  # the next pass packs the 5m tier's closed day
        pack_tiers_s = time.perf_counter() - t0
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
        packed = database_bytes(dsn) - empty
        sz = sizes(engine)
        with tempfile.TemporaryDirectory(prefix="perfwatch-bench-tsdb-") as tmp:
            tsdb_chunks, tsdb_all, tsdb_s = tsdb_bytes(args.series, 1, START, Path(tmp))
        print(f"\nstorage: one day of {args.series} host-like series every 15 s ({stored:,} samples; written in "
              f"{load_s:.1f} s, {stored / load_s:,.0f} samples/s through Store)")
        rows: list[tuple[str, ...]] = [("level", "rows or buckets", "bytes", "bytes/row or bucket",
                                        "bytes/raw sample")]
        for tier, (n, size, represented) in sz.items():
            rows.append((tier, f"{n:,}", f"{size:,}", f"{size / n:.1f}", f"{size / represented:.2f}"))
        print(table(rows))
        rows = [("all-in, database growth / samples", "bytes/sample")]
        rows.append(("before compaction (a row per sample), with the tiers' tables still empty",
                     f"{unpacked / stored:.2f}"))
        rows.append(("after compaction and rollup (raw packed + 5m + 1h + catalog)", f"{packed / stored:.2f}"))
        raw_bytes = sz["raw"][1]
        rows.append(("raw alone after compaction (chunks, late rows, what is left of the head)",
                     f"{raw_bytes / stored:.2f}"))
        if tsdb_all:
            rows.append((f"Prometheus TSDB, promtool backfill into one block ({tsdb_s:.0f} s): chunks",
                         f"{tsdb_chunks / stored:.2f}"))
            rows.append(("Prometheus TSDB: the whole block (chunks, index, meta)", f"{tsdb_all / stored:.2f}"))
        print()
        print(table(rows))
        if tsdb_all:
            print(f"ratio raw after compaction / TSDB block: {raw_bytes / tsdb_all:.2f}")
        print(f"\npolicy.catchup_workers: {args.catchup_workers} (connections the compaction and the first tier's "
              "rollup use at once)")
        print(f"compaction of that day: {compact_s:.1f} s ({compaction.chunks:,} chunks, "
              f"{stored / compact_s:,.0f} samples/s)")
        print(f"packing the tiers' closed windows (the 5m tier's day): {pack_tiers_s:.1f} s "
              f"({tiers_packed.tier_chunks:,} chunks)")
        print(f"rollup of that day: {rollup_s:.1f} s "
              f"(5m: {runs[0].seconds:.1f} s, {runs[0].buckets_written:,} buckets in {runs[0].chunks} chunks; "
              f"1h: {runs[1].seconds:.1f} s, {runs[1].buckets_written:,} buckets), "
              f"{stored / rollup_s:,.0f} raw samples/s")
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
        stored = load_day(engine, args.read_series, 60, 365, start,
                          scrapes_per_batch=max(1, 20_000 // args.read_series))
        load_s = time.perf_counter() - t0
        run_rollups(engine, year, START + dt.timedelta(minutes=2))
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
        query = sa.text("SELECT * FROM perfwatch.series(:m, '{}', :f, :t, '1 hour')")
        print(f"\nread: a year of {args.read_series} series every minute ({stored:,} samples, written in "
              f"{load_s:.0f} s), perfwatch.series() at a 1h step, median of {args.repeat}")
        read_year(engine, year, query, start, args)
        t0 = time.perf_counter()
        run_compaction(engine, year, START + dt.timedelta(minutes=2))
        print(f"\n... the same after compaction (raw and the tiers' closed windows packed, "
              f"{time.perf_counter() - t0:.0f} s):")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
        read_year(engine, year, query, start, args)
        engine.dispose()


def read_year(engine: sa.Engine, year: Policy, query: sa.TextClause, start: dt.datetime,
              args: argparse.Namespace) -> None:
    # Timed on the server (the client only counts the rows): parsing 17,520 rows into Python
    # objects costs more than producing them, and Grafana's client is not Python.
    counted = sa.text("SELECT count(*) FROM perfwatch.series(:m, '{}', :f, :t, '1 hour')")

    def run(statement: sa.TextClause, metric: str) -> Callable[[], list[Any]]:
        def go() -> list[Any]:
            with engine.connect() as conn:
                return list(conn.execute(statement, {"m": metric, "f": start, "t": START}))
        return go

    rows = [("metric", "rows", "from the 1h tier", "from raw", "ratio", "(with the client: tier, raw)")]
    for metric, field in (("bench_cpu_seconds_total", "rate"), ("bench_memory_bytes", "avg")):
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="ingest,storage,read", help="sections, comma-separated "
                        "(storage includes the rollup timing)")
    parser.add_argument("--series", type=int, default=1000, help="series per scrape (ingest, storage, rollup)")
    parser.add_argument("--batches", type=int, default=300, help="scrapes written in the ingest section")
    parser.add_argument("--read-series", type=int, default=20, help="series with a year of data (read)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each read")
    parser.add_argument("--catchup-workers", type=int, default=Policy().catchup_workers,
                        help="policy.catchup_workers for the compaction and rollup of the storage section")
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
