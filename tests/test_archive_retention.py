"""Retention against a real PostgreSQL: partitions created ahead; exactly the expired partitions
dropped, and never one the next tier has not rolled up yet (Thanos lost data that way)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from support.archive import ms, stored_archive, synthetic
from support.postgres import scalar

from perfwatch.archiver import db
from perfwatch.archiver.migrate import apply_migrations
from perfwatch.archiver.model import Batch, MetricMeta, Sample
from perfwatch.archiver.policy import Policy, Tier, mirror_policy
from perfwatch.archiver.retention import run_retention
from perfwatch.archiver.rollup import run_rollups
from perfwatch.archiver.status import tier_status
from perfwatch.archiver.store import Store
from perfwatch.common.config import Duration

DAY = 86400
POLICY = Policy(raw_retention=Duration(2 * DAY), tiers=[Tier(Duration(300), Duration(4 * DAY)),
                                                          Tier(Duration(3600), Duration(30 * DAY))])
START = dt.datetime(2024, 6, 1, 0, 0, 30, tzinfo=dt.UTC)
END = dt.datetime(2024, 6, 7, tzinfo=dt.UTC)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.UTC)


def partitions(engine: sa.Engine, tier: str) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text("SELECT table_name FROM perfwatch.partition WHERE tier = :t ORDER BY lo"),
                                 {"t": tier}).scalars())


def tables(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.text("SELECT relname FROM pg_class WHERE relnamespace = 'perfwatch'::regnamespace "
                                         "AND relkind = 'r'")).scalars())


@pytest.fixture
def engine(pg_dsn: str) -> Iterator[sa.Engine]:
    engine = stored_archive(pg_dsn, POLICY, synthetic(START, (END - START).total_seconds() / 3600, interval_s=120),
                            per_batch_ms=6 * 3600_000)
    yield engine
    engine.dispose()


def test_partitions_are_created_ahead(engine: sa.Engine) -> None:
    run = run_retention(engine, POLICY, utc(2024, 6, 7, 5))
    # the partition holding now and the next one, at every level (5m: a day each, 1h: 12 days)
    assert run.created == ["sample_20240607", "sample_20240608", "rollup_5m_20240607", "rollup_5m_20240608",
                           "rollup_1h_20240529", "rollup_1h_20240610"]
    assert set(run.created) <= tables(engine)
    assert run_retention(engine, POLICY, utc(2024, 6, 7, 6)).created == []
    assert partitions(engine, "raw") == [f"sample_202406{d:02}" for d in range(1, 9)]


def test_nothing_is_dropped_before_the_next_tier_has_rolled_it_up(engine: sa.Engine) -> None:
    now = utc(2024, 6, 7, 0, 5)
    # No rollup yet: raw partitions ending before 06-05 00:05 are expired, and all must stay.
    run = run_retention(engine, POLICY, now)
    assert run.dropped == []
    assert run.waiting == ["sample_20240601", "sample_20240602", "sample_20240603", "sample_20240604"]
    # The 5m tier rolled up to 06-03 11:55: the two partitions it passed go, the other two wait.
    run_rollups(engine, POLICY, utc(2024, 6, 3, 12))
    run = run_retention(engine, POLICY, now)
    assert run.dropped == ["sample_20240601", "sample_20240602", "rollup_5m_20240601", "rollup_5m_20240602"]
    assert run.waiting == ["sample_20240603", "sample_20240604"]
    assert {"sample_20240601", "sample_20240602"}.isdisjoint(tables(engine))
    # (5m partitions ending before 06-03 00:05 are expired too, and the 1h tier, at 06-03 11:00, has them.)
    assert partitions(engine, "5m")[:1] == ["rollup_5m_20240603"]
    status = {s.tier: s for s in tier_status(engine, POLICY, now)}
    assert status["raw"].horizon == utc(2024, 6, 3) and status["raw"].last_retention_waiting == 2
    assert status["5m"].horizon == utc(2024, 6, 3) and status["5m"].last_retention_dropped == 2
    # Once rolled up, exactly the expired ones go; nothing younger.
    run_rollups(engine, POLICY, now)
    run = run_retention(engine, POLICY, now)
    assert run.dropped == ["sample_20240603", "sample_20240604"] and run.waiting == []
    assert partitions(engine, "raw")[0] == "sample_20240605"
    assert run_retention(engine, POLICY, now).dropped == []


def test_late_samples_keep_their_partition_until_rolled_up(engine: sa.Engine) -> None:
    now = utc(2024, 6, 7, 0, 5)
    run_rollups(engine, POLICY, now)
    run_retention(engine, POLICY, now)
    # A late sample in 06-05 (already rolled up), then time passes until that day expires.
    late = utc(2024, 6, 5, 13, 0, 1)
    name = "synthetic_temperature_celsius"
    labels = (("instance", "host:1"), ("job", "synthetic"), ("sensor", "a"))
    assert Store(engine).write(Batch("synthetic", "host:1", ms(late), [Sample(name, labels, 1e9, ms(late))],
                                     {name: MetricMeta(name, "gauge", "gauge")})) == 1
    later = utc(2024, 6, 8, 0, 5)
    run = run_retention(engine, POLICY, later)
    assert "sample_20240605" in run.waiting and "sample_20240605" not in run.dropped
    run_rollups(engine, POLICY, later)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT max FROM perfwatch.rollup_5m WHERE bucket = '2024-06-05 13:00+00'"
                                    " AND max = 1e9")).scalar() == 1e9
        assert conn.execute(sa.text("SELECT max(max) FROM perfwatch.rollup_1h WHERE bucket = '2024-06-05 13:00+00'"
                                    )).scalar() == 1e9
    assert "sample_20240605" in run_retention(engine, POLICY, later).dropped


def test_each_tier_waits_for_the_next_and_the_last_only_for_its_retention(engine: sa.Engine) -> None:
    now = utc(2024, 6, 7, 0, 5)
    while True:  # roll up the 5m tier alone: the 1h tier has nothing yet
        with engine.begin() as conn:
            step = db.call_table(conn, "rollup_next", "5m", now, dt.timedelta(minutes=1), dt.timedelta(days=1))[0]
        if step.lo is None or step.lo >= step.hi:
            break
    far = utc(2024, 8, 1)
    days = [f"202406{d:02}" for d in range(1, 7)]
    run = run_retention(engine, POLICY, far)
    assert run.dropped == [f"sample_{d}" for d in days]  # the 5m tier has them all
    assert run.waiting == [f"rollup_5m_{d}" for d in days]  # the 1h tier has none
    run_rollups(engine, POLICY, now)
    run = run_retention(engine, POLICY, far)
    assert run.dropped == [f"rollup_5m_{d}" for d in days] + ["rollup_1h_20240529"]  # 12 days, ended 06-10
    assert run.waiting == []
    assert partitions(engine, "1h") == ["rollup_1h_20240728", "rollup_1h_20240809"]  # those ahead


def test_retention_and_a_writer_in_mid_write_do_not_deadlock(pg_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    """A store write holds the raw-write lock (shared) and then may create a partition; a
    retention pass creates partitions and then takes the raw-write lock. Holding both in one
    transaction deadlocked against the writer; the pass must take them one at a time."""
    import threading
    import time

    import psycopg

    engine = db.make_engine(pg_dsn)
    apply_migrations(engine)
    mirror_policy(engine, POLICY)
    now = utc(2024, 6, 7, 5)
    writer = psycopg.connect(pg_dsn)
    writer.execute("SELECT * FROM perfwatch.begin_write()")  # a write in progress: shared raw-write lock
    outcome: list[object] = []
    retention = threading.Thread(target=lambda: outcome.append(run_retention(engine, POLICY, now)))
    with caplog.at_level("INFO", logger="perfwatch.archiver"):
        retention.start()
        deadline = time.monotonic() + 30
        while not scalar(writer, "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                                 "WHERE d.datname = current_database() AND l.locktype = 'relation' AND NOT l.granted "
                                 "AND l.relation = 'perfwatch.lock_raw_write'::regclass AND l.mode = 'ExclusiveLock'"):
            assert time.monotonic() < deadline and retention.is_alive(), "retention never waited for the writer"
            time.sleep(0.05)
        # The writer needs a partition nobody created ahead: it takes the partition lock now.
        writer.execute("SELECT perfwatch.ensure_partition('raw', %s)", (now + dt.timedelta(days=20),))
        writer.commit()
        retention.join(60)
    writer.close()
    engine.dispose()
    assert not retention.is_alive()
    assert len(outcome) == 1, "retention pass failed"
    assert "lock race" not in caplog.text


def test_a_tier_keeps_a_partition_whose_late_samples_it_has_not_passed_on(pg_dsn: str) -> None:
    """Raw and 5m kept equally long (the policy allows it): a late sample on the last day raw
    still holds is noted for the 5m tier, whose partition of that day expires in the same pass.
    Dropping it then would leave the sample out of the 1h tier for good."""
    policy = Policy(raw_retention=Duration(2 * DAY), tiers=[Tier(Duration(300), Duration(2 * DAY)),
                                                            Tier(Duration(3600), Duration(30 * DAY))])
    engine = stored_archive(pg_dsn, policy, synthetic(START, (END - START).total_seconds() / 3600, interval_s=600),
                            per_batch_ms=DAY * 1000)
    store = Store(engine)
    now = utc(2024, 6, 7, 0, 5)
    run_rollups(engine, policy, now)
    late = utc(2024, 6, 4, 13, 0, 1)  # raw still holds 06-04; both tiers rolled past it
    name = "synthetic_temperature_celsius"
    labels = (("instance", "host:1"), ("job", "synthetic"), ("sensor", "a"))
    assert store.write(Batch("synthetic", "host:1", ms(late), [Sample(name, labels, 1e9, ms(late))],
                             {name: MetricMeta(name, "gauge", "gauge")})) == 1
    run = run_retention(engine, policy, now)
    assert run.waiting == ["sample_20240604", "rollup_5m_20240604"]  # until the sample reached 1h
    run_rollups(engine, policy, now)
    with engine.connect() as conn:
        assert conn.execute(sa.text(
            "SELECT r.max FROM perfwatch.rollup_1h r JOIN perfwatch.series s ON s.id = r.series_id"
            " WHERE s.labels @> '{\"sensor\": \"a\"}' AND r.bucket = '2024-06-04 13:00+00'")).scalar() == 1e9
    assert run_retention(engine, policy, now).dropped == ["sample_20240604", "rollup_5m_20240604"]
    engine.dispose()
