"""Rollups against a real PostgreSQL: every tier equals what raw samples say, exactly.

Synthetic data (counters with resets inside buckets and on their boundaries, a large-valued
counter, gauges, jitter, a gap, a series that starts late) goes through Store.write; after the
rollup pass each tier's buckets are compared with the same aggregates computed in Python from
the raw points (tests/support/archive.py).
"""

from __future__ import annotations

import datetime as dt
import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from support.archive import (
    Stats,
    SyntheticSeries,
    at,
    batches,
    bucket_stats,
    close,
    floor_ms,
    increase,
    ms,
    stored_archive,
    synthetic,
)
from support.postgres import PostgresServer

from perfwatch.archiver import db
from perfwatch.archiver.migrate import apply_migrations
from perfwatch.archiver.model import Batch, MetricMeta, Sample
from perfwatch.archiver.policy import Policy
from perfwatch.archiver.rollup import TierRun, run_rollups
from perfwatch.archiver.status import tier_status
from perfwatch.archiver.store import Store
from perfwatch.common.config import Duration

START = dt.datetime(2024, 3, 9, 21, 13, 7, 123000, tzinfo=dt.UTC)  # deliberately not on any bucket edge
HOURS = 30
NOW = START + dt.timedelta(hours=HOURS, minutes=20)
POLICY = Policy()  # raw 7d, 5m for 90d, 1h for 2y
Rolled = tuple[sa.Engine, list[SyntheticSeries], list[TierRun]]


def tier_rows(engine: sa.Engine, table: str) -> dict[tuple[int, int], Stats]:
    t = sa.table(table, *(sa.column(c) for c in (
        "series_id", "bucket", "count", "sum", "min", "max", "first_ts", "first_value", "last_ts", "last_value",
        "increase", "resets")), schema="perfwatch")
    with engine.connect() as conn:
        # r.count would type as Row's Sequence.count method (SQLAlchemy resolves the column at runtime)
        return {(r.series_id, ms(r.bucket)): Stats(r._mapping["count"], r.sum, r.min, r.max, ms(r.first_ts),
                                                    r.first_value, ms(r.last_ts), r.last_value, r.increase, r.resets)
                for r in conn.execute(sa.select(t))}


def series_ids(engine: sa.Engine) -> dict[tuple[str, tuple[tuple[str, str], ...]], int]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT s.id, m.name, s.labels FROM perfwatch.series s"
                                    " JOIN perfwatch.metric m ON m.id = s.metric_id"))
        return {(name, tuple(sorted(labels.items()))): sid for sid, name, labels in rows}


def assert_tier_matches(engine: sa.Engine, data: list[SyntheticSeries], table: str, width_s: int,
                        watermark: dt.datetime | None) -> int:
    """Every bucket of `table` before the watermark equals the raw computation, and none is missing."""
    assert watermark is not None, f"{table} has no watermark"
    rows = tier_rows(engine, table)
    ids = series_ids(engine)
    checked = 0
    for s in data:
        sid = ids[(s.name, s.labels)]
        expected = {b: st for b, st in bucket_stats(s.points, width_s * 1000).items()
                    if b + width_s * 1000 <= ms(watermark)}
        got = {b: st for (i, b), st in rows.items() if i == sid}
        assert set(got) == set(expected), f"{table} {s.name}{dict(s.labels)}: buckets differ"
        for b, want in expected.items():
            have = got[b]
            assert b % (width_s * 1000) == 0  # epoch-aligned
            assert (have.count, have.first_ms, have.last_ms) == (want.count, want.first_ms, want.last_ms), (table, b)
            for field in ("sum", "min", "max", "first", "last"):
                assert close(getattr(have, field), getattr(want, field)), (table, at(b), field)
            if s.kind == "counter":
                assert close(have.increase, want.increase), (table, at(b), have.increase, want.increase)
                assert have.resets == want.resets, (table, at(b))
            else:
                assert have.increase is None and have.resets is None
            checked += 1
    return checked


def boundary_increase(rows: list[Stats]) -> float:
    """Increase over consecutive buckets: inside each, plus across each boundary."""
    total, prev = 0.0, None
    for r in rows:
        total += r.increase
        if prev is not None:
            total += r.first - prev if r.first >= prev else r.first
        prev = r.last
    return total


@pytest.fixture(scope="module")
def rolled(postgres_server: PostgresServer) -> Iterator[Rolled]:
    """One database with HOURS of synthetic data stored and rolled up (shared by the read-only tests)."""
    with postgres_server.fresh_database() as dsn:
        data = synthetic(START, HOURS)
        engine = stored_archive(dsn, POLICY, data)
        runs = run_rollups(engine, POLICY, NOW)
        yield engine, data, runs
        engine.dispose()


def test_every_tier_equals_raw(rolled: Rolled) -> None:
    engine, data, runs = rolled
    five, hour = runs
    assert five.watermark_after == dt.datetime(2024, 3, 11, 3, 30, tzinfo=dt.UTC)  # NOW - 1m delay, floored to 5m
    assert hour.watermark_after == dt.datetime(2024, 3, 11, 3, 0, tzinfo=dt.UTC)  # what 5m has, floored to 1h
    assert five.buckets_written > 300 and hour.buckets_written > 100
    assert assert_tier_matches(engine, data, "rollup_5m", 300, five.watermark_after) == five.buckets_written
    assert assert_tier_matches(engine, data, "rollup_1h", 3600, hour.watermark_after) == hour.buckets_written


def test_counter_increase_over_any_tier_equals_raw(rolled: Rolled) -> None:
    """Σ increase inside buckets + the deltas across their boundaries = raw's increase, with resets
    inside buckets and on both sides of bucket boundaries."""
    engine, data, runs = rolled
    ids = series_ids(engine)
    assert runs[1].watermark_after is not None
    end = ms(runs[1].watermark_after)
    # The data must hold resets on the first sample of a 5m bucket (seen only across the
    # boundary) and on the last one, or this test proves less than it claims.
    on_first = on_last = 0
    for s in (s for s in data if s.kind == "counter"):
        for (t0, a), (t1, b) in itertools.pairwise(s.points):
            on_first += b < a and floor_ms(t0, 300_000) != floor_ms(t1, 300_000)
            on_last += b < a and floor_ms(t1, 300_000) != floor_ms(t1 + 13_000, 300_000)
    assert on_first >= 3 and on_last >= 1
    for s in (s for s in data if s.kind == "counter"):
        raw = [(t, v) for t, v in s.points if t < end]
        assert sum(b < a for (_, a), (_, b) in itertools.pairwise(raw)) >= 5, "the data must hold resets"
        for table in ("rollup_5m", "rollup_1h"):
            rows = sorted(((b, st) for (i, b), st in tier_rows(engine, table).items() if i == ids[(s.name, s.labels)]
                           and b < end), key=lambda x: x[0])
            assert close(boundary_increase([st for _, st in rows]), increase(raw)), (table, s.name, dict(s.labels))


def test_rollup_is_idempotent(rolled: Rolled) -> None:
    engine, _, runs = rolled
    before = {t: tier_rows(engine, t) for t in ("rollup_5m", "rollup_1h")}
    again = run_rollups(engine, POLICY, NOW)
    assert [(r.buckets_written, r.dirty_buckets_written, r.chunks) for r in again] == [(0, 0, 0), (0, 0, 0)]
    assert [r.watermark_after for r in again] == [r.watermark_after for r in runs]
    # Re-rolling an already rolled range rewrites nothing either.
    with engine.begin() as conn:
        assert conn.execute(sa.select(db.fn("rollup_range", "5m", at(ms(START) - ms(START) % 300_000),
                                            runs[0].watermark_after))).scalar() == 0
    assert {t: tier_rows(engine, t) for t in ("rollup_5m", "rollup_1h")} == before


def test_late_samples_are_rolled_up_again(pg_dsn: str) -> None:
    """Samples written after their bucket was rolled up (a replayed spool) reach every tier."""
    engine = db.make_engine(pg_dsn)
    apply_migrations(engine)
    start = dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.UTC)
    data = synthetic(start, 3, seed=11)
    store = Store(engine)
    for batch in batches(data):
        store.write(batch)
    now = start + dt.timedelta(hours=3, minutes=5)
    first = run_rollups(engine, POLICY, now)
    # A counter sample squeezed between two stored ones, lower than both (a reset), and a gauge
    # sample below every other: they change a 5m bucket, its 1h bucket, and a boundary delta.
    counter = data[0]
    i = len(counter.points) // 2
    (t_a, _), (t_b, _) = counter.points[i], counter.points[i + 1]
    late_t = t_a + (t_b - t_a) // 2
    counter.points.insert(i + 1, (late_t, 0.25))
    gauge = data[3]
    gauge.points.insert(5, (gauge.points[4][0] + 1, -1e6))
    late = Batch("synthetic", "host:1", late_t, [
        Sample(counter.name, counter.labels, 0.25, late_t),
        Sample(gauge.name, gauge.labels, -1e6, gauge.points[5][0]),
    ], {counter.name: MetricMeta(counter.name, "counter", "counter"),
        gauge.name: MetricMeta(gauge.name, "gauge", "gauge")})
    assert store.write(late) == 2
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(sa.table("rollup_dirty", schema="perfwatch"))
                            ).scalar() == 1
    second = run_rollups(engine, POLICY, now)
    assert second[0].dirty_buckets_written == 2  # the two 5m buckets
    assert second[1].dirty_buckets_written >= 1  # passed on to 1h
    assert [r.watermark_after for r in second] == [r.watermark_after for r in first]
    assert_tier_matches(engine, data, "rollup_5m", 300, second[0].watermark_after)
    assert_tier_matches(engine, data, "rollup_1h", 3600, second[1].watermark_after)
    # Replaying the same late batch changes nothing anywhere.
    assert store.write(late) == 0
    third = run_rollups(engine, POLICY, now)
    assert [(r.buckets_written, r.dirty_buckets_written) for r in third] == [(0, 0), (0, 0)]
    engine.dispose()


def test_first_tier_waits_for_the_delay_and_tiers_for_the_one_below(pg_dsn: str) -> None:
    engine = db.make_engine(pg_dsn)
    apply_migrations(engine)
    policy = Policy(rollup_delay=Duration(120))
    start = dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.UTC)
    store = Store(engine)
    for batch in batches(synthetic(start, 1.2)):
        store.write(batch)
    runs = run_rollups(engine, policy, start + dt.timedelta(minutes=41, seconds=59))
    # 10:41:59 - 2m = 10:39:59: the 10:35 bucket is not closed yet; 1h has nothing closed
    assert runs[0].watermark_after == dt.datetime(2024, 5, 1, 10, 35, tzinfo=dt.UTC)
    assert runs[1].watermark_after is None or runs[1].watermark_after <= start
    runs = run_rollups(engine, policy, start + dt.timedelta(minutes=62))
    assert runs[0].watermark_after == dt.datetime(2024, 5, 1, 11, 0, tzinfo=dt.UTC)
    assert runs[1].watermark_after == dt.datetime(2024, 5, 1, 11, 0, tzinfo=dt.UTC)
    engine.dispose()


def test_tier_status(rolled: Rolled) -> None:
    engine, data, runs = rolled
    # Rows are PostgreSQL's live-row counts (no count(*), no ANALYZE needed); a backend reports
    # its inserts to the statistics once idle, within a second or so (at most about 10 s).
    counts = [sum(len(s.points) for s in data), runs[0].buckets_written, runs[1].buckets_written]
    deadline = time.monotonic() + 20
    while [s.rows_estimate for s in tier_status(engine, POLICY, NOW)] != counts and time.monotonic() < deadline:
        time.sleep(0.2)
    raw, five, hour = tier_status(engine, POLICY, NOW)
    assert (raw.tier, five.tier, hour.tier) == ("raw", "5m", "1h")
    last = max(t for s in data for t, _ in s.points)  # 03:13:07.x, the data's end
    assert raw.newest == at(last)
    assert (five.watermark, hour.watermark) == (runs[0].watermark_after, runs[1].watermark_after)
    assert five.watermark is not None and hour.watermark is not None
    assert five.newest == at(floor_ms(last, 300_000))  # the bucket of the last sample (03:10)
    assert hour.newest == hour.watermark - dt.timedelta(hours=1)  # the last closed one (02:00)
    assert five.lag_seconds == (NOW - five.watermark).total_seconds() and raw.lag_seconds is None
    assert raw.oldest == dt.datetime(2024, 3, 9, tzinfo=dt.UTC) and raw.partitions == 3  # 9th, 10th, 11th
    assert raw.rows_estimate == sum(len(s.points) for s in data)
    assert five.rows_estimate == runs[0].buckets_written and hour.rows_estimate == runs[1].buckets_written
    for level in (raw, five, hour):
        assert level.bytes_per_row is not None
        assert level.bytes > 0 and 40 < level.bytes_per_row < 2000
        assert level.dirty_ranges == 0 and level.in_policy
    assert five.last_rollup_at == NOW and five.last_rollup_rows == 0  # the idempotency test ran a pass after


def test_writes_racing_rollups_lose_nothing(pg_dsn: str) -> None:
    """Two writers (one lagging, one also sending samples minutes late) and a rollup loop run at
    once, the rollup's clock at the leading writer's: whatever the interleaving, no sample is
    both stored and missed by the tiers (the raw-write lock and the late-sample ranges)."""
    engine = db.make_engine(pg_dsn)
    apply_migrations(engine)
    policy = Policy(rollup_delay=Duration(0.001))  # as soon as a bucket has closed
    start = ms(dt.datetime(2024, 7, 1, tzinfo=dt.UTC))
    steps = 360  # an hour of 10 s scrapes
    clock = [start]  # the leading writer's time: the rollup's "now"
    points: dict[tuple[str, tuple[tuple[str, str], ...]], list[tuple[int, float]]] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []
    done = threading.Event()

    def writer(name: str, lag_steps: int, late: bool) -> None:
        store = Store(engine)
        counter = 0.0
        try:
            for i in range(steps):
                t = start + i * 10_000
                counter = counter + 7.5 if i % 50 else 1.0  # resets now and then
                samples = [(f"{name}_total", counter, t), (f"{name}_gauge", float(i % 17), t)]
                if late and i % 40 == 39:
                    samples.append((f"{name}_gauge", -5.0, t - 7 * 60_000 + 1))  # 7 minutes late
                batch = Batch("race", name, t, [Sample(n, (("instance", name), ("job", "race")), v, ts)
                                                for n, v, ts in samples],
                              {f"{name}_total": MetricMeta(f"{name}_total", "counter", "counter"),
                               f"{name}_gauge": MetricMeta(f"{name}_gauge", "gauge", "gauge")})
                store.write(batch)
                with lock:
                    for n, v, ts in samples:
                        points.setdefault((n, (("instance", name), ("job", "race"))), []).append((ts, v))
                    if lag_steps == 0:
                        clock[0] = t + 10_000
                while lag_steps and clock[0] < t + lag_steps * 10_000 and not done.is_set():
                    time.sleep(0.001)  # stay behind the leader
        except BaseException as err:
            errors.append(err)

    def roller() -> None:
        try:
            while not done.is_set():
                run_rollups(engine, policy, at(clock[0]))
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=writer, args=("lead", 0, False)),
               threading.Thread(target=writer, args=("lag", 30, True)),  # 5 minutes behind
               threading.Thread(target=roller)]
    for t in threads[:2]:
        t.start()
    threads[2].start()
    threads[0].join(120)
    done.set()
    for t in threads[1:]:
        t.join(120)
    assert errors == []
    final = run_rollups(engine, policy, at(start + steps * 10_000 + 3600_000))
    data = [SyntheticSeries(n, labels, "counter" if n.endswith("_total") else "gauge", sorted(p))
            for (n, labels), p in points.items()]
    assert sum(len(s.points) for s in data) == 2 * 2 * steps + steps // 40
    assert assert_tier_matches(engine, data, "rollup_5m", 300, final[0].watermark_after) > 0
    assert assert_tier_matches(engine, data, "rollup_1h", 3600, final[1].watermark_after) > 0
    engine.dispose()


def test_a_sample_days_older_than_the_packed_tiers_is_rolled_up(pg_dsn: str) -> None:
    """A late sample older than every chunk partition of a tier (days late, e.g. a backfill) gets
    its partition: the rollup pass used to fail on it, and again on every pass after."""
    from perfwatch.archiver.compact import run_compaction

    engine = db.make_engine(pg_dsn)
    apply_migrations(engine)
    start = dt.datetime(2024, 6, 1, 0, 0, tzinfo=dt.UTC)
    data = synthetic(start, 26, seed=12)
    store = Store(engine)
    for batch in batches(data):
        store.write(batch)
    now = start + dt.timedelta(hours=26, minutes=5)
    run_rollups(engine, POLICY, now)
    run_compaction(engine, POLICY, now)  # packs raw and the 5m tier's first day
    gauge = data[3]
    late_t = ms(start - dt.timedelta(days=3)) + 1234
    late = Batch("synthetic", "host:1", late_t, [Sample(gauge.name, gauge.labels, 42.5, late_t)],
                 {gauge.name: MetricMeta(gauge.name, "gauge", "gauge")})
    assert store.write(late) == 1
    runs = run_rollups(engine, POLICY, now)
    assert runs[0].dirty_buckets_written == 1
    bucket = dt.datetime.fromtimestamp(floor_ms(late_t, 300_000) / 1000, dt.UTC)
    with engine.connect() as conn:
        sql = conn.execute(sa.select(sa.func.perfwatch.tier_buckets_sql("5m", bucket, bucket + dt.timedelta(minutes=5),
                                                                        None))).scalar()
        rows = conn.execute(sa.text(f"SELECT count, sum FROM ({sql}) b")).all()
        assert [tuple(r) for r in rows] == [(1, 42.5)]
        assert conn.execute(sa.text("SELECT count(*) FROM perfwatch.rollup_dirty")).scalar() == 0
    assert [(r.buckets_written, r.dirty_buckets_written) for r in run_rollups(engine, POLICY, now)] == [(0, 0), (0, 0)]
    engine.dispose()


# -- the first tier's catch-up in parallel (policy.catchup_workers) ------------------------------------

def table_digest(engine: sa.Engine, table: str) -> tuple[int, str]:
    """Rows of perfwatch.<table> and an md5 of their text (float8 prints exactly: round-trip digits)."""
    with engine.connect() as conn:
        return tuple(conn.execute(sa.text(
            f"SELECT count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY t.series_id, t.bucket), ''))"
            f" FROM perfwatch.{table} t")).one())


def test_parallel_and_serial_rollups_write_the_same_buckets(rolled: Rolled, postgres_server: PostgresServer) -> None:
    """`rolled` caught up on two connections (the default); one connection gives every bucket bit
    for bit the same, with the same watermarks."""
    engine, data, runs = rolled
    assert POLICY.catchup_workers == 2
    assert runs[0].parallel_pieces == runs[0].chunks > 10  # the first tier's hours, on the pieces' connections
    assert runs[1].parallel_pieces == 0  # the others roll up in their step's transaction
    serial_policy = Policy(catchup_workers=1)
    with postgres_server.fresh_database() as dsn:
        serial = stored_archive(dsn, serial_policy, data)
        serial_runs = run_rollups(serial, serial_policy, NOW)
        assert [r.parallel_pieces for r in serial_runs] == [0, 0]
        assert [(r.watermark_after, r.buckets_written, r.chunks) for r in serial_runs] == \
            [(r.watermark_after, r.buckets_written, r.chunks) for r in runs]
        for table in ("rollup_5m", "rollup_1h"):
            assert table_digest(serial, table) == table_digest(engine, table)
            assert table_digest(serial, table)[0] > 100
        serial.dispose()


def window(conn: sa.Connection, now: dt.datetime) -> sa.Row[Any]:
    return db.call_table(conn, "rollup_window", "5m", now, dt.timedelta(minutes=1), dt.timedelta(hours=4))[0]


def piece(engine: sa.Engine, lo: dt.datetime, hi: dt.datetime, holder: int) -> int:
    with engine.begin() as conn:
        return int(conn.execute(sa.select(sa.func.perfwatch.rollup_piece("5m", lo, hi, holder))).scalar_one())


def test_a_piece_runs_only_while_its_step_holds_the_locks(pg_dsn: str) -> None:
    """rollup_piece refuses a holder that does not hold the rollup's locks (itself, a finished
    step); while the step's transaction holds them, writers wait and the piece rolls up."""
    start = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
    data = synthetic(start, 3, seed=21)
    engine = stored_archive(pg_dsn, POLICY, data)
    now = start + dt.timedelta(hours=3, minutes=10)
    with engine.connect() as conn:
        own = conn.execute(sa.select(sa.func.pg_backend_pid())).scalar_one()
    with pytest.raises(sa.exc.DBAPIError, match=r"runs only while backend .* holds perfwatch.lock_rollup"):
        piece(engine, start, start + dt.timedelta(hours=1), own)
    with engine.begin() as conn:
        step = window(conn, now)
        holder = conn.execute(sa.select(sa.func.pg_backend_pid())).scalar_one()
        assert piece(engine, step.lo, step.lo + dt.timedelta(hours=1), holder) > 0
        with engine.connect() as other:  # a writer waits for the step (lock_timeout: do not wait long)
            other.execute(sa.text("SET lock_timeout = '200ms'"))
            with pytest.raises(sa.exc.DBAPIError, match="lock timeout"):
                other.execute(sa.select(sa.func.perfwatch.begin_write()))
            other.rollback()
        conn.execute(sa.select(sa.func.perfwatch.set_watermark("5m", step.lo + dt.timedelta(hours=1))))
    with engine.connect() as conn:
        assert db.call_table(conn, "tier_state", "5m")[0].watermark == step.lo + dt.timedelta(hours=1)
    with pytest.raises(sa.exc.DBAPIError, match="runs only while backend"):  # that step is over
        piece(engine, step.lo, step.lo + dt.timedelta(hours=1), holder)
    with engine.begin() as conn, pytest.raises(sa.exc.DBAPIError, match="runs only while backend"):
        conn.execute(sa.select(sa.func.perfwatch.set_watermark("5m", now)))  # without the locks
    engine.dispose()


def test_a_step_that_failed_after_some_pieces_is_done_again(pg_dsn: str) -> None:
    """An archiver killed while a step's pieces run leaves the watermark where it was (the step's
    transaction rolls back), and the pieces that committed are above it, where no reader looks:
    the next pass does the step again and the tiers come out whole, each bucket once."""
    start = dt.datetime(2024, 5, 2, tzinfo=dt.UTC)
    data = synthetic(start, 6, seed=22)
    engine = stored_archive(pg_dsn, POLICY, data)
    now = start + dt.timedelta(hours=6, minutes=10)
    with engine.connect() as conn:
        step = window(conn, now)
        holder = conn.execute(sa.select(sa.func.pg_backend_pid())).scalar_one()
        assert piece(engine, step.lo, step.lo + dt.timedelta(hours=1), holder) > 0
        conn.rollback()  # the "kill"
    with engine.connect() as conn:
        assert db.call_table(conn, "tier_state", "5m")[0].watermark is None
    runs = run_rollups(engine, POLICY, now)
    assert runs[0].watermark_before is None and runs[0].parallel_pieces > 0
    assert assert_tier_matches(engine, data, "rollup_5m", 300, runs[0].watermark_after) == \
        table_digest(engine, "rollup_5m")[0]
    assert assert_tier_matches(engine, data, "rollup_1h", 3600, runs[1].watermark_after) > 0
    engine.dispose()


@pytest.mark.parametrize("width", ["1 second", "5 minutes", "1 hour"])
def test_merge_samples_sql_is_merge_buckets_sql_bit_for_bit(pg_dsn: str, width: str) -> None:
    """The first tier's lean merge of raw samples gives what the general merge of one-sample buckets
    gives, every float bit included, over head rows, packed chunks and late samples in one range."""
    from perfwatch.archiver.compact import run_compaction

    start = dt.datetime(2024, 5, 3, 0, 0, 3, tzinfo=dt.UTC)
    data = synthetic(start, 4, seed=23)
    engine = stored_archive(pg_dsn, POLICY, data)
    now = start + dt.timedelta(hours=4)
    run_compaction(engine, POLICY, now)  # hours 0-2 packed, hour 3 in the head
    late_t = ms(start) + 3600_000 + 12_345
    gauge = next(s for s in data if s.kind == "gauge")
    assert Store(engine).write(Batch("synthetic", "host:1", late_t, [Sample(gauge.name, gauge.labels, -3.25, late_t)],
                                     {gauge.name: MetricMeta(gauge.name, "gauge", "gauge")})) == 1
    lo, hi = dt.datetime(2024, 5, 3, tzinfo=dt.UTC), dt.datetime(2024, 5, 3, 5, tzinfo=dt.UTC)
    interval = sa.cast(width, sa.Interval)
    with engine.connect() as conn:
        for table in ("sample_late", "sample_chunk", "sample"):
            assert conn.execute(sa.text(f"SELECT count(*) FROM perfwatch.{table}")).scalar()
        lean_sql = conn.execute(sa.select(sa.func.perfwatch.merge_samples_sql(
            sa.func.perfwatch.raw_samples_sql(lo, hi, None), interval))).scalar_one()
        general_sql = conn.execute(sa.select(sa.func.perfwatch.merge_buckets_sql(
            sa.func.perfwatch.raw_buckets_sql(lo, hi, None), interval, False))).scalar_one()
        lean, general = ([tuple(r) for r in conn.execute(sa.text(f"SELECT m::text FROM ({q}) m"
                                                                 " ORDER BY m.series_id, m.bucket"))]
                         for q in (lean_sql, general_sql))
    assert len(lean) >= 20
    assert lean == general
    engine.dispose()
