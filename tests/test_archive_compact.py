"""Packed storage (sql/functions/compact.sql, perfwatch/archiver/compact.py) against a real
PostgreSQL: the same samples stored as head rows, packed into chunks, or partly packed with late
samples waiting beside the chunks, read the same through every read function; compaction is
idempotent, resumes after an interruption, merges late samples and drops what it packed."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from support.archive import SyntheticSeries, at, batches, login_as, ms, same, stored_archive, synthetic
from support.postgres import PostgresServer

from perfwatch.archiver.compact import run_compaction
from perfwatch.archiver.model import Batch, Sample
from perfwatch.archiver.policy import Policy, Tier
from perfwatch.archiver.rollup import run_rollups
from perfwatch.archiver.store import Store
from perfwatch.common.config import Duration

START = dt.datetime(2024, 5, 1, 21, 13, 7, 123000, tzinfo=dt.UTC)
HOURS = 30
END = START + dt.timedelta(hours=HOURS)
MID = START + dt.timedelta(hours=HOURS // 2)
POLICY = Policy(raw_retention=Duration(30 * 86400), tiers=[Tier(Duration(300), Duration(90 * 86400)),
                                                            Tier(Duration(3600), Duration(730 * 86400))])
DATA = synthetic(START, HOURS, interval_s=10.0, seed=11)
T_FROM, T_TO = START - dt.timedelta(hours=1), END + dt.timedelta(hours=1)
STEPS = ["1 minute", "90 seconds", "5 minutes", "15 minutes", "1 hour", "1 day"]
LAYOUTS = ["head", "packed", "mixed", "merged"]


def raw_samples(engine: sa.Engine) -> list[tuple[int, dt.datetime, float]]:
    """Every raw sample, wherever it is stored, through the one query every reader uses."""
    with engine.connect() as conn:
        query = conn.execute(sa.text("SELECT perfwatch.raw_buckets_sql('-infinity', 'infinity', NULL)")).scalar_one()
        return sorted((r.series_id, r.bucket, r.sum) for r in conn.execute(sa.text(query)))


def read_everything(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    with engine.connect() as conn:
        for s in DATA:
            for step in STEPS:
                out[f"{s.name} {dict(s.labels)} {step}"] = [tuple(r) for r in conn.execute(sa.text(
                    "SELECT time, labels, avg, min, max, last, samples, increase, rate, resets FROM "
                    "perfwatch.series(:m, CAST(:l AS jsonb), :f, :t, CAST(:s AS interval))"),
                    {"m": s.name, "l": json.dumps(dict(s.labels)), "f": T_FROM, "t": T_TO, "s": step})]
    return out


def build(dsn: str, layout: str) -> sa.Engine:
    """DATA stored in `layout`: head (never compacted), packed (all of it), mixed (packed up to MID,
    with every seventh hour of before MID written after that, so it waits in sample_late), merged
    (mixed, then compacted again: the late samples merged into existing chunks)."""
    if layout in ("head", "packed"):
        engine = stored_archive(dsn, POLICY, DATA)
        if layout == "packed":
            run_compaction(engine, POLICY, END + dt.timedelta(hours=1))
    else:
        engine = stored_archive(dsn, POLICY)
        store = Store(engine)
        early = [b for b in batches(DATA) if b.scraped_at_ms < ms(MID)]
        held = early[3::7]
        for b in early:
            if b not in held:
                store.write(b)
        run_compaction(engine, POLICY, MID)
        for b in held:
            store.write(b)
        for b in batches(DATA):
            if b.scraped_at_ms >= ms(MID):
                store.write(b)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM perfwatch.sample_late")).scalar_one() > 0
        if layout == "merged":
            run_compaction(engine, POLICY, MID)
            with engine.connect() as conn:
                assert conn.execute(sa.text("SELECT count(*) FROM perfwatch.sample_late")).scalar() == 0
    run_rollups(engine, POLICY, END + dt.timedelta(hours=2))
    if layout != "head":  # and the tiers' windows they have rolled past
        run_compaction(engine, POLICY, END + dt.timedelta(hours=2) if layout == "packed" else MID)
    return engine


@pytest.fixture(scope="module")
def archives(postgres_server: PostgresServer) -> Iterator[dict[str, sa.Engine]]:
    with (postgres_server.fresh_database() as a, postgres_server.fresh_database() as b,
          postgres_server.fresh_database() as c, postgres_server.fresh_database() as d):
        engines = {layout: build(dsn, layout) for layout, dsn in zip(LAYOUTS, (a, b, c, d), strict=True)}
        yield engines
        for engine in engines.values():
            engine.dispose()


@pytest.mark.parametrize("layout", LAYOUTS[1:])
def test_every_layout_holds_the_same_samples(archives: dict[str, sa.Engine], layout: str) -> None:
    expected = raw_samples(archives["head"])
    assert len(expected) == sum(len(s.points) for s in DATA)
    assert raw_samples(archives[layout]) == expected  # timestamps and values exact


@pytest.mark.parametrize("layout", LAYOUTS[1:])
def test_reads_and_rollups_agree_whatever_the_layout(archives: dict[str, sa.Engine], layout: str) -> None:
    expected = read_everything(archives["head"])
    got = read_everything(archives[layout])
    assert got.keys() == expected.keys()
    assert all(expected.values())
    assert [key for key in expected if not same(got[key], expected[key])] == []
    for tier in ("5m", "1h"):
        with archives["head"].connect() as h, archives[layout].connect() as o:
            want, have = ([tuple(r) for r in c.execute(sa.text(
                "SELECT * FROM (" + c.execute(sa.text("SELECT perfwatch.tier_buckets_sql(:t, '-infinity', 'infinity', "
                                                      "NULL)"), {"t": tier}).scalar_one()
                + ") b ORDER BY series_id, bucket"))] for c in (h, o))
        assert want and same(have, want), tier


def test_the_packed_head_is_dropped(archives: dict[str, sa.Engine]) -> None:
    engine = archives["packed"]
    with engine.connect() as conn:
        watermark = conn.execute(sa.text("SELECT watermark FROM perfwatch.tier WHERE name = 'packed'")).scalar()
        assert watermark == dt.datetime(2024, 5, 3, 5, tzinfo=dt.UTC)  # END + 2h (the last pass), on the hour
        chunks = conn.execute(sa.text("SELECT count(*), sum(samples) FROM perfwatch.sample_chunk")).one()
        assert chunks[0] > 0 and chunks[1] == sum(len(s.points) for s in DATA)
        head = conn.execute(sa.text("SELECT table_name, hi FROM perfwatch.partition WHERE tier = 'raw'")).all()
        assert head and all(hi > watermark for _, hi in head)
        for day in ("sample_20240501", "sample_20240502"):
            assert conn.execute(sa.select(sa.func.to_regclass(f"perfwatch.{day}"))).scalar() is None, day
        # the day the watermark is in keeps its head partition (readers skip what is packed of it)
        assert conn.execute(sa.text("SELECT count(*) FROM perfwatch.sample WHERE ts < date_trunc('day', :w)"),
                            {"w": watermark}).scalar() == 0


def test_chunks_of_regular_scrapes_are_compressed(postgres_server: PostgresServer) -> None:
    # DATA's values are random doubles and its intervals jitter by up to 2 s: PostgreSQL stores
    # such arrays as they are (compressing them would not save a quarter). A gauge scraped every
    # 15 s with its value changing now and then is what hosts expose.
    t0 = ms(START.replace(minute=0, second=0, microsecond=0))  # whole windows: TOAST only compresses rows over ~2 kB
    points = [(t0 + 15_000 * i + i % 3, 4096.0 * (1000 + i // 40)) for i in range(240)]
    gauge = SyntheticSeries("host_memory_bytes", (("instance", "host:1"), ("job", "synthetic")), "gauge", points)
    with postgres_server.fresh_database() as dsn:
        engine = stored_archive(dsn, POLICY, [gauge])
        run_compaction(engine, POLICY, END)
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT samples, pg_column_compression(jitter) AS jc, pg_column_compression(vals) AS vc, "
                "pg_column_size(jitter) + pg_column_size(vals) AS bytes FROM perfwatch.sample_chunk")).all()
        assert sum(r.samples for r in rows) == 240
        for r in rows:  # a quarter of the arrays' 12 bytes per sample, at most
            assert r.jc is not None and r.vc is not None and r.bytes < r.samples * 12 / 4, r
        assert raw_samples(engine) == sorted((1, at(t), v) for t, v in points)
        engine.dispose()


def test_compaction_is_idempotent_and_replays_store_nothing_twice(postgres_server: PostgresServer) -> None:
    with postgres_server.fresh_database() as dsn:
        engine = stored_archive(dsn, POLICY, DATA)
        first = run_compaction(engine, POLICY, END)
        assert first.chunks > 0
        before = raw_samples(engine)
        again = run_compaction(engine, POLICY, END)
        assert again.chunks == 0 and again.late_samples == 0 and again.watermark_after == first.watermark_after
        # A whole replay (a spool read again from the start): packed or not, nothing is stored twice.
        store = Store(engine)
        assert sum(store.write(b) for b in batches(DATA)) == 0
        # The same sample with another value: the first write wins, as in the head.
        s = DATA[0]
        t, v = s.points[100]
        assert store.write(Batch("synthetic", "host:1", t, [Sample(s.name, s.labels, v + 1, t)], {})) == 0
        assert raw_samples(engine) == before
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM perfwatch.sample_late")).scalar() == 0
        engine.dispose()


def test_an_interrupted_compaction_resumes_without_loss_or_duplicates(postgres_server: PostgresServer) -> None:
    with postgres_server.fresh_database() as dsn:
        engine = stored_archive(dsn, POLICY, DATA)
        expected = raw_samples(engine)
        step = "SELECT * FROM perfwatch.compact_next(:now, interval '1 minute', interval '1 hour')"
        with engine.begin() as conn:  # the day's first hours hold nothing
            while conn.execute(sa.text(step), {"now": END}).one().chunks == 0:
                pass
        # a second step dies half-way: its transaction rolls back
        with pytest.raises(sa.exc.DBAPIError), engine.begin() as conn:
            conn.execute(sa.text(step), {"now": END})
            conn.execute(sa.text("SELECT 1 / 0"))
        # a third one is cut off, before it commits, by its connection going away
        victim = psycopg.connect(dsn)
        victim.execute(step.replace(":now", "%(now)s"), {"now": END})
        with psycopg.connect(dsn, autocommit=True) as killer:
            killer.execute("SELECT pg_terminate_backend(%s)", (victim.info.backend_pid,))
        with pytest.raises(psycopg.OperationalError):
            victim.commit()
        victim.close()
        run = run_compaction(engine, POLICY, END)
        assert run.watermark_after is not None and run.watermark_after > START + dt.timedelta(hours=1)
        assert raw_samples(engine) == expected
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM (SELECT series_id, start FROM perfwatch.sample_chunk "
                                        "GROUP BY 1, 2 HAVING count(*) > 1) d")).scalar() == 0
        engine.dispose()


def test_late_samples_for_a_packed_window_are_read_at_once_and_merged(postgres_server: PostgresServer) -> None:
    with postgres_server.fresh_database() as dsn:
        engine = stored_archive(dsn, POLICY, DATA)
        run_compaction(engine, POLICY, END)
        run_rollups(engine, POLICY, END)
        assert run_compaction(engine, POLICY, END).tier_chunks > 0  # the 5m tier's first day
        s: SyntheticSeries = DATA[3]  # a gauge
        t = s.points[500][0] + 1  # between two samples, in a packed window
        store = Store(engine)
        assert store.write(Batch("synthetic", "host:1", t, [Sample(s.name, s.labels, 1e6, t)], {})) == 1

        def bucket_max(step: str = "1 minute") -> float:
            with engine.connect() as conn:
                return max(conn.execute(sa.text(
                    "SELECT max FROM perfwatch.series(:m, CAST(:l AS jsonb), :f, :t, CAST(:s AS interval))"),
                    {"m": s.name, "l": json.dumps(dict(s.labels)), "f": START, "t": END, "s": step}).scalars().all(),
                           default=0.0)

        assert bucket_max() == 1e6  # raw: from sample_late, before any compaction
        assert bucket_max("5 minutes") < 1e6  # the tier has not rolled it up yet
        run_rollups(engine, POLICY, END)
        assert bucket_max("5 minutes") == 1e6
        run = run_compaction(engine, POLICY, END)
        assert run.late_samples == 1
        assert bucket_max() == 1e6
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM perfwatch.sample_late")).scalar() == 0
            # the 5m tier's window was packed before the late sample came: it was merged into the chunk
            assert conn.execute(sa.text("SELECT count(*) FROM perfwatch.rollup_5m_chunk WHERE start <= :t"),
                                {"t": at(t)}).scalar_one() > 0
        assert bucket_max("5 minutes") == 1e6
        assert len(raw_samples(engine)) == sum(len(x.points) for x in DATA) + 1
        engine.dispose()


def test_the_writer_is_the_only_one_who_may_compact(postgres_server: PostgresServer) -> None:
    with postgres_server.fresh_database() as dsn:
        engine = stored_archive(dsn, POLICY, DATA[:1])
        with login_as("perfwatch_grafana", dsn) as grafana, psycopg.connect(grafana) as conn:
            for call in ("SELECT perfwatch.compact_next(now(), '1 minute', '1 hour')",
                         "SELECT perfwatch.compact_late('1 hour')",
                         "SELECT perfwatch.compact_piece(now() - interval '1 hour', now(), pg_backend_pid())",
                         "SELECT perfwatch.rollup_piece('5m', now() - interval '1 hour', now(), pg_backend_pid())"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(call)
                conn.rollback()
        engine.dispose()


def chunk_digest(engine: sa.Engine) -> tuple[int, str]:
    with engine.connect() as conn:
        return tuple(conn.execute(sa.text(
            "SELECT count(*), md5(string_agg(c::text, ',' ORDER BY c.series_id, c.start)) FROM perfwatch.sample_chunk c"
        )).one())


def test_parallel_and_serial_compaction_write_the_same_chunks(postgres_server: PostgresServer) -> None:
    """Catching up on two connections (the default) packs every chunk as one connection does, and
    a piece refuses to run unless its step's backend holds the raw-write lock."""
    serial_policy = dataclasses.replace(POLICY, catchup_workers=1)
    with postgres_server.fresh_database() as a, postgres_server.fresh_database() as b:
        parallel, serial = stored_archive(a, POLICY, DATA), stored_archive(b, serial_policy, DATA)
        runs = [run_compaction(parallel, POLICY, END), run_compaction(serial, serial_policy, END)]
        assert runs[0].watermark_after == runs[1].watermark_after is not None
        assert runs[0].chunks == runs[1].chunks > 100
        assert chunk_digest(parallel) == chunk_digest(serial)
        assert raw_samples(parallel) == raw_samples(serial)
        with parallel.begin() as conn, pytest.raises(sa.exc.DBAPIError, match=r"holds perfwatch\.lock_raw_write"):
            conn.execute(sa.text("SELECT perfwatch.compact_piece(:lo, :hi, pg_backend_pid())"),
                         {"lo": END, "hi": END + dt.timedelta(hours=1)})
        parallel.dispose()
        serial.dispose()


@pytest.mark.slow
def test_a_migrate_killed_while_packing_resumes_without_loss(postgres_server: PostgresServer) -> None:
    """`perfwatch-archiver migrate` packs what the head holds (an archive written before storage
    v2, or left behind by a stopped archiver). Killed half-way, run again, it finishes the job."""
    import subprocess
    import sys
    import time
    with postgres_server.fresh_database() as dsn:
        engine = stored_archive(dsn, POLICY, DATA)
        expected = raw_samples(engine)
        step = "SELECT * FROM perfwatch.compact_next(:now, interval '1 minute', interval '1 hour')"
        with engine.begin() as conn:  # an earlier run got this far
            while conn.execute(sa.text(step), {"now": END}).one().chunks == 0:
                pass
        argv = [sys.executable, "-m", "perfwatch.archiver", "migrate", "--dsn", dsn]
        with psycopg.connect(dsn) as holder, psycopg.connect(dsn, autocommit=True) as watcher:
            # A write in progress holds the raw-write lock: the next step waits for it, and is killed.
            holder.execute("SELECT * FROM perfwatch.begin_write()")
            migrate = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 30
            waiting = 0
            while not waiting and time.monotonic() < deadline:
                time.sleep(0.1)
                # (a transaction sees one snapshot of pg_stat_activity: ask from outside the holder's)
                waiting = watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                         "AND query LIKE '%compact_%'").fetchone() == (1,)
            activity = watcher.execute("SELECT wait_event_type, wait_event, left(query, 120) FROM pg_stat_activity "
                                      "WHERE datname = current_database()").fetchall()
            if not waiting:
                migrate.kill()
            assert waiting, f"migrate never reached the compaction: {activity} {migrate.communicate()}"
            migrate.kill()
            migrate.communicate(timeout=30)
            holder.rollback()
        with engine.connect() as conn:
            halfway = conn.execute(sa.text("SELECT watermark FROM perfwatch.tier WHERE name = 'packed'")).scalar()
        assert halfway is not None and halfway < END - dt.timedelta(hours=2)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        # everything (then the years up to today, which hold nothing, at once)
        assert "packed raw samples up to " in done.stdout, done.stdout
        with engine.connect() as conn:
            packed_to = conn.execute(sa.text("SELECT watermark FROM perfwatch.tier WHERE name = 'packed'")).scalar_one()
        assert packed_to > END
        assert raw_samples(engine) == expected
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM (SELECT series_id, start FROM perfwatch.sample_chunk "
                                        "GROUP BY 1, 2 HAVING count(*) > 1) d")).scalar() == 0
        engine.dispose()


def test_retention_drops_packed_partitions_once_the_next_tier_has_them(postgres_server: PostgresServer) -> None:
    from perfwatch.archiver.retention import run_retention
    with postgres_server.fresh_database() as dsn:
        engine = stored_archive(dsn, POLICY, DATA)
        later = END + dt.timedelta(hours=2)
        run_compaction(engine, POLICY, later)
        run_rollups(engine, POLICY, later)
        run_compaction(engine, POLICY, later)  # the 5m tier's closed days
        before = read_everything(engine)
        gone = END + dt.timedelta(days=40)  # raw (30 d) has expired, the 5m tier (90 d) has not
        run_rollups(engine, POLICY, gone)
        dropped = run_retention(engine, POLICY, gone).dropped
        assert {"sample_chunk_20240501", "sample_chunk_20240502", "sample_chunk_20240503"} <= set(dropped)
        assert not any(name.startswith("rollup_5m") for name in dropped)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM perfwatch.sample_chunk")).scalar_one() == 0
            assert conn.execute(sa.text("SELECT count(*) FROM perfwatch.rollup_5m_chunk")).scalar_one() > 0
        after = read_everything(engine)
        # steps the 5m tier serves read the same from its chunks; finer ones now come from it too
        for key in before:
            if key.endswith(("5 minutes", "15 minutes", "1 hour", "1 day")):
                assert same(after[key], before[key]), key
        engine.dispose()
