"""The archive's locks against a real PostgreSQL: they are table locks nobody but the writer can
take (migration 0006), so the read-only Grafana role can no longer hold archiving back, and they
still make a first-tier rollup wait for a write in progress.

Until 0006 they were advisory locks, which any role that can connect may take: a Grafana session
holding pg_advisory_lock(1885696614, 3) stopped every write, rollup and retention pass.
"""

from __future__ import annotations

import datetime as dt
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest
import sqlalchemy as sa
from psycopg import sql
from support.archive import login_as, ms, stored_archive, synthetic

from perfwatch.archiver.migrate import SCHEMA_DIR, apply_migrations
from perfwatch.archiver.model import Batch, MetricMeta, Sample
from perfwatch.archiver.policy import Policy, Tier
from perfwatch.archiver.retention import run_retention
from perfwatch.archiver.rollup import run_rollups
from perfwatch.archiver.store import Store
from perfwatch.common.config import Duration

OLD_LOCK_CLASS = 1885696614  # the advisory-lock class of 0003 and of the old migration lock (1 to 4)
LOCK_TABLES = ["perfwatch.lock_rollup", "perfwatch.lock_raw_write", "perfwatch.lock_partition",
               "perfwatch.schema_migration"]  # the last one: the migration lock
MODES = ["ACCESS SHARE", "ROW SHARE", "ROW EXCLUSIVE", "SHARE UPDATE EXCLUSIVE", "SHARE", "SHARE ROW EXCLUSIVE",
         "EXCLUSIVE", "ACCESS EXCLUSIVE"]
START = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)
POLICY = Policy()
T = TypeVar("T")


@pytest.fixture
def archive(pg_dsn: str) -> Iterator[sa.Engine]:
    """A migrated database holding two hours of samples, not rolled up yet."""
    engine = stored_archive(pg_dsn, POLICY, synthetic(START, 2, interval_s=60))
    yield engine
    engine.dispose()


def finishes(work: Callable[[], T], what: str, timeout: float = 30.0) -> T:
    """work()'s result, failing the test if it is still waiting (for a lock) after `timeout`."""
    outcome: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(work())
        except BaseException as err:
            errors.append(err)

    thread = threading.Thread(target=run, daemon=True)  # a thread stuck on a lock ends with the blocker
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"{what} still waiting after {timeout}s"
    if errors:
        raise errors[0]
    return outcome[0]


def waiting_for(conn: psycopg.Connection, table: str, mode: str) -> bool:
    """Whether a session of this database waits for `mode` on `table` (pg_locks is cluster-wide)."""
    row = conn.execute("SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                       "WHERE d.datname = current_database() AND l.locktype = 'relation' AND NOT l.granted "
                       "AND l.relation = %s::regclass AND l.mode = %s", (table, mode)).fetchone()
    return bool(row and row[0])


def test_grafana_cannot_take_any_of_the_archives_locks(archive: sa.Engine, pg_dsn: str) -> None:
    with login_as("perfwatch_grafana", pg_dsn) as dsn:
        for table in LOCK_TABLES:
            for mode in MODES:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    # Read-only is a default a session may lift; privileges are what must stop it.
                    conn.execute("SET default_transaction_read_only = off")
                    with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                        conn.execute(f"LOCK TABLE {table} IN {mode} MODE")
            with psycopg.connect(dsn, autocommit=True) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"SELECT FROM {table}")
        for statement in ("SELECT * FROM perfwatch.begin_write()", "SELECT perfwatch.begin_rollup('5m')"):
            with psycopg.connect(dsn, autocommit=True) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    with psycopg.connect(pg_dsn) as conn:  # the writer owns them, and no one else (PUBLIC: 0) has a privilege
        for table in LOCK_TABLES:
            assert conn.execute(
                "SELECT pg_get_userbyid(c.relowner), array(SELECT DISTINCT a.grantee FROM aclexplode(c.relacl) a "
                "WHERE a.grantee <> c.relowner) FROM pg_class c WHERE c.oid = %s::regclass", (table,)
            ).fetchone() == ("perfwatch_writer", [])


def test_grafana_holding_the_old_advisory_locks_holds_nothing_back(archive: sa.Engine, pg_dsn: str,
                                                                   tmp_path: Path) -> None:
    """A read-only Grafana session holds every advisory lock the archive used to take; migrations,
    writes, rollups and retention all go on."""
    migrations = tmp_path / "migrations"
    shutil.copytree(SCHEMA_DIR, migrations)
    # A file to apply, so that the migration lock is taken.
    (migrations / "0099_more.sql").write_text("CREATE TABLE perfwatch.more (a int);\n")
    name, labels = "late_gauge", (("instance", "host:1"), ("job", "synthetic"))
    with login_as("perfwatch_grafana", pg_dsn) as dsn, psycopg.connect(dsn, autocommit=True) as grafana:
        assert grafana.execute("SHOW transaction_read_only").fetchone() == ("on",)
        for key in (1, 2, 3, 4):
            grafana.execute("SELECT pg_advisory_lock(%s, %s)", (OLD_LOCK_CLASS, key))
        assert finishes(lambda: apply_migrations(archive, migrations), "a migration") == ["0099_more.sql"]
        now = START + dt.timedelta(days=2)  # the 5m tier rolls past the first day: retention may drop it
        runs = finishes(lambda: run_rollups(archive, POLICY, now), "a rollup pass")
        assert runs[0].buckets_written > 0
        batch = Batch("synthetic", "host:1", ms(START), [Sample(name, labels, 1.0, ms(START) + 1000)],
                      {name: MetricMeta(name, "gauge", "gauge")})
        assert finishes(lambda: Store(archive).write(batch), "a store write") == 1  # a late sample, noted too
        assert finishes(lambda: run_rollups(archive, POLICY, now), "a rollup pass")[0].dirty_buckets_written == 1
        run = finishes(lambda: run_retention(archive, POLICY, now + dt.timedelta(days=30)), "a retention pass")
        assert "sample_20240601" in run.dropped
        later = dt.datetime(2024, 8, 1, tzinfo=dt.UTC)  # a day with no partition yet: created under the lock
        assert finishes(lambda: Store(archive).write(Batch("synthetic", "host:1", ms(later),
                                                           [Sample(name, labels, 2.0, ms(later))],
                                                           {name: MetricMeta(name, "gauge", "gauge")})),
                        "a store write creating a partition") == 1
        assert grafana.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                               "AND pid = pg_backend_pid()").fetchone() == (4,)  # held all along


def test_a_first_tier_rollup_waits_for_a_write_in_progress(archive: sa.Engine, pg_dsn: str) -> None:
    """The raw-write lock: a write reads the first tier's watermark and then inserts; a rollup
    moving the watermark past its samples in between would miss them for good (they would be
    neither rolled up nor noted as late). The rollup must wait for the write to commit."""
    with archive.connect() as conn:
        series_id = conn.execute(sa.text("SELECT min(id) FROM perfwatch.series")).scalar()
    writer = psycopg.connect(pg_dsn)
    guard = writer.execute("SELECT * FROM perfwatch.begin_write()").fetchone()
    assert guard is not None and guard[2] is None  # nothing rolled up yet: a sample now is not late
    at = START + dt.timedelta(minutes=30, seconds=1, microseconds=5)  # no synthetic sample there (ms)
    writer.execute("INSERT INTO perfwatch.sample VALUES (%s, %s, 1e15)", (series_id, at))  # above all of them
    outcome: list[object] = []
    now = START + dt.timedelta(hours=3)
    roller = threading.Thread(target=lambda: outcome.append(run_rollups(archive, POLICY, now)))
    roller.start()
    try:
        deadline = time.monotonic() + 30
        with psycopg.connect(pg_dsn, autocommit=True) as watch:
            while not waiting_for(watch, "perfwatch.lock_raw_write", "ExclusiveLock"):
                assert time.monotonic() < deadline and roller.is_alive(), "the rollup never waited for the write"
                time.sleep(0.05)
    finally:
        writer.commit()
        writer.close()
        roller.join(60)
    assert len(outcome) == 1, "the rollup pass failed"
    with archive.connect() as conn:
        assert conn.execute(sa.text("SELECT max FROM perfwatch.rollup_5m WHERE series_id = :s AND bucket = :b"),
                            {"s": series_id, "b": START + dt.timedelta(minutes=30)}).scalar() == 1e15


@pytest.mark.slow
def test_a_grafana_transaction_left_open_delays_no_write_while_partitions_come_and_go(pg_dsn: str) -> None:
    """A Grafana session reads every table of the archive and leaves its transaction open (20 s; the
    role's idle_in_transaction_session_timeout would end it after a minute). Meanwhile retention
    passes create partitions ahead and expire old ones, and a writer writes a batch every 100 ms:
    no write waits as long as a scrape interval (1 s). CREATE TABLE ... PARTITION OF and DROP TABLE
    waited for the reader's ACCESS SHARE, and every write queued behind them."""
    policy = Policy(raw_retention=Duration(3600), tiers=[Tier(Duration(300), Duration(2 * 86400)),
                                                         Tier(Duration(3600), Duration(730 * 86400))])
    old = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0) - dt.timedelta(days=6)
    # five days: partitions retention expires
    engine = stored_archive(pg_dsn, policy, synthetic(old, 5 * 24, interval_s=600))
    store = Store(engine)
    run_rollups(engine, policy)
    latencies: list[float] = []
    stop = threading.Event()

    def write_continuously() -> None:
        i = 0
        while not stop.is_set():
            now = int(time.time() * 1000)
            batch = Batch("w", "h:1", now, [Sample("live_gauge", (("instance", "h:1"), ("job", "w")), i, now)],
                          {"live_gauge": MetricMeta("live_gauge", "gauge", "gauge")})
            started = time.monotonic()
            store.write(batch)
            latencies.append(time.monotonic() - started)
            i += 1
            stop.wait(0.1)

    with login_as("perfwatch_grafana", pg_dsn) as dsn, psycopg.connect(dsn) as grafana:
        tables = [name for (name,) in grafana.execute(
            "SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'perfwatch'::regnamespace "
            "AND c.relkind IN ('r', 'p') AND has_table_privilege(c.oid, 'SELECT')").fetchall()]
        for name in tables:  # ACCESS SHARE on every table, partitions included, until the transaction ends
            grafana.execute(sql.SQL("SELECT count(*) FROM perfwatch.{}").format(sql.Identifier(name)))
        assert "sample" in tables and any(t.startswith("sample_") for t in tables)
        writer = threading.Thread(target=write_continuously, daemon=True)
        writer.start()
        runs = []
        deadline = time.monotonic() + 20
        day = 0
        while time.monotonic() < deadline:
            # Each pass a day later: a new partition ahead for every level, more of them expired.
            runs.append(finishes(lambda d=day: run_retention(engine, policy, dt.datetime.now(dt.UTC)  # type: ignore[misc]
                                                             + dt.timedelta(days=d)), "a retention pass"))
            day += 1
        stop.set()
        writer.join(10)
        assert grafana.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS  # still open, all along
    assert len(latencies) > 50 and max(latencies) < 1.0, f"slowest write {max(latencies):.2f}s"
    assert sum(len(r.created) for r in runs) >= 3 and sum(len(r.deferred) for r in runs) >= 1
    after = run_retention(engine, policy, dt.datetime.now(dt.UTC) + dt.timedelta(days=day))  # the reader is gone
    assert after.deferred == [] and after.dropped
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM perfwatch.partition_drop")).scalar() == 0
    engine.dispose()
