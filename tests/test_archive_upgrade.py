"""An archive made by perfwatch 0.1 upgrades in place, nothing lost.

0.1's migrations 0001-0006 also defined the functions; today the migrations hold tables and the
functions live in sql/functions/. The fixture is a pg_dump of an archive 0.1 made, with data in
raw, 5m and 1h and raw's oldest days dropped by retention (tests/fixtures/README.md). Restored,
it is read with 0.1's own functions, migrated by today's code, and read again: the answers must
not change, and match what the raw samples say. Then the archive keeps working.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from support.archive import batches, close, ms, same, step_stats, synthetic
from support.postgres import PostgresServer

from perfwatch.archiver import db
from perfwatch.archiver.compact import run_compaction
from perfwatch.archiver.embedded import bin_dir
from perfwatch.archiver.migrate import apply_migrations, discover, function_files
from perfwatch.archiver.policy import Policy, Tier, mirror_policy
from perfwatch.archiver.retention import run_retention
from perfwatch.archiver.rollup import run_rollups
from perfwatch.archiver.store import Store
from perfwatch.common.config import Duration

DUMP = Path(__file__).parent / "fixtures" / "archive-0.1.dump"
START = dt.datetime(2024, 3, 9, 21, 13, 7, 123000, tzinfo=dt.UTC)
HOURS = 54
NOW = START + dt.timedelta(hours=HOURS, minutes=20)
POLICY = Policy(raw_retention=Duration(86400), tiers=[Tier(Duration(300), Duration(90 * 86400)),
                                                       Tier(Duration(3600), Duration(730 * 86400))])
DATA = synthetic(START, HOURS, interval_s=60.0, seed=3)
T_FROM, T_TO = START - dt.timedelta(hours=1), NOW
STEPS = ["5 minutes", "15 minutes", "1 hour", "6 hours", "1 day", "90 seconds"]


def read_everything(dsn: str) -> dict[str, Any]:
    """Every answer a reader gets: series() of each series at each step, panel(), plan_tiers()."""
    out: dict[str, Any] = {}
    with psycopg.connect(dsn) as conn:
        for s in DATA:
            for step in STEPS:
                out[f"series {s.name} {dict(s.labels)} {step}"] = conn.execute(
                    "SELECT time, labels, avg, min, max, last, samples, increase, rate, resets "
                    "FROM perfwatch.series(%s, %s::jsonb, %s, %s, %s::interval)",
                    (s.name, json.dumps(dict(s.labels)), T_FROM, T_TO, step)).fetchall()
        for step in STEPS:
            out[f"plan {step}"] = conn.execute("SELECT level, tier, lo, hi FROM perfwatch.plan_tiers(%s, %s, %s)",
                                               (T_FROM, T_TO, step)).fetchall()
            out[f"panel {step}"] = conn.execute(
                "SELECT * FROM perfwatch.panel('synthetic_requests_total', '{\"code\": \"500\"}', %s, %s, %s, "
                "'rate', '{{code}}')", (T_FROM, T_TO, step)).fetchall()
    return out


@pytest.fixture
def legacy_archive(postgres_server: PostgresServer) -> Iterator[str]:
    """The 0.1 archive, restored into a database of its own (its roles made by a migration first:
    roles are the server's, not the dump's)."""
    with postgres_server.fresh_database() as scratch:
        apply_migrations(db.make_engine(scratch))
    with postgres_server.fresh_database() as dsn:
        subprocess.run([str(bin_dir() / "pg_restore"), "--exit-on-error", "--dbname", dsn, str(DUMP)],
                       check=True, capture_output=True, text=True, timeout=120)
        yield dsn


def test_an_archive_made_by_0_1_reads_the_same_after_the_upgrade(legacy_archive: str) -> None:
    before = read_everything(legacy_archive)
    with psycopg.connect(legacy_archive) as conn:
        assert conn.execute("SELECT count(*) FROM perfwatch.schema_migration").fetchone() == (6,)
        legacy_functions = set(conn.execute("SELECT proname FROM pg_proc "
                                            "WHERE pronamespace = 'perfwatch'::regnamespace").fetchall())
    assert ("duration_label",) in legacy_functions
    engine = db.make_engine(legacy_archive)
    applied = apply_migrations(engine)
    # 0.1's six are recorded as today's first three; only what came later is applied.
    assert applied == [m.name for m in discover() if m.version > 3]
    with psycopg.connect(legacy_archive) as conn:
        assert conn.execute("SELECT name FROM perfwatch.schema_migration ORDER BY version").fetchall() == [
            (m.name,) for m in discover()]
        names = {name for (name,) in conn.execute("SELECT proname FROM pg_proc "
                                                  "WHERE pronamespace = 'perfwatch'::regnamespace").fetchall()}
    defined = {line.split("perfwatch.", 1)[1].split("(", 1)[0] for path in function_files()
               for line in path.read_text().splitlines() if line.startswith("CREATE OR REPLACE FUNCTION")}
    assert names == defined | {"labels_hash"}  # nothing of 0.1's bodies is left behind
    after = read_everything(legacy_archive)
    assert before.keys() == after.keys()
    changed = [key for key in before if not same(before[key], after[key])]
    assert changed == []
    # Storage v2: the compaction packs what 0.1 stored a row per sample; the answers stay.
    packed = run_compaction(engine, POLICY, NOW)
    assert packed.chunks > 0 and packed.dropped
    with psycopg.connect(legacy_archive) as conn:
        assert conn.execute("SELECT count(*) FROM perfwatch.sample WHERE ts < date_trunc('day', %s::timestamptz)",
                            (packed.watermark_after,)).fetchone() == (0,)
    after_packing = read_everything(legacy_archive)
    assert [key for key in before if not same(before[key], after_packing[key])] == []
    # ... and both are right: what the raw samples say (raw's dropped days come from the tiers).
    rows = after[f"series synthetic_bytes_total {dict(DATA[2].labels)} 1 hour"]
    expected = step_stats(DATA[2].points, ms(T_FROM), ms(T_TO), 3600_000)
    assert [ms(r[0]) for r in rows] == sorted(expected)
    assert all(close(r[7], expected[ms(r[0])].increase) and r[6] == expected[ms(r[0])].count for r in rows)
    # Applying again is a no-op, and the archive goes on: new samples are stored and rolled up.
    assert apply_migrations(engine) == []
    mirror_policy(engine, POLICY)
    later = synthetic(NOW, 2, interval_s=60.0, seed=4)
    store = Store(engine)
    assert sum(store.write(b) for b in batches(later)) == sum(len(s.points) for s in later)
    runs = run_rollups(engine, POLICY, NOW + dt.timedelta(hours=3))
    assert [r.tier for r in runs] == ["5m", "1h"] and all(r.buckets_written > 0 for r in runs)
    run_retention(engine, POLICY, NOW + dt.timedelta(hours=3))
    with engine.connect() as conn:
        newest = conn.execute(sa.text("SELECT max(bucket) FROM perfwatch.rollup_5m")).scalar()
    assert newest is not None and newest >= NOW + dt.timedelta(hours=1)
    engine.dispose()
