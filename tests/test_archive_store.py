"""Store.write against a real PostgreSQL: idempotent replays, NaN, exact values and labels,
unstorable input, and the database going away (before and in the middle of a write)."""

from __future__ import annotations

import datetime as dt
import json
import math
import secrets
import threading
import time
from collections.abc import Iterator, Sequence

import psycopg
import pytest
import sqlalchemy as sa
from support.archive import ms
from support.procs import free_port
from support.synthetic import NASTY_VALUES

from perfwatch.archiver import db
from perfwatch.archiver.migrate import apply_migrations
from perfwatch.archiver.model import Batch, MetricMeta, Sample, SampleKind
from perfwatch.archiver.policy import Policy, mirror_policy
from perfwatch.archiver.retention import run_retention
from perfwatch.archiver.rollup import run_rollups
from perfwatch.archiver.status import tier_status
from perfwatch.archiver.store import Store

T0 = ms(dt.datetime(2024, 6, 1, 12, 0, tzinfo=dt.UTC))
JOB_INSTANCE = (("instance", "host:9100"), ("job", "node"))


def batch(ts: int, samples: Sequence[tuple[str, tuple[tuple[str, str], ...], float]],
          kind: SampleKind = "gauge") -> Batch:
    return Batch("node", "host:9100", ts, [Sample(n, tuple(sorted(labels + JOB_INSTANCE)), v, ts)
                                          for n, labels, v in samples],
                 {n: MetricMeta(n, kind, kind, f"help of {n}") for n, _, _ in samples})


def stored(engine: sa.Engine) -> list[tuple[str, dict[str, str], int, float]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT m.name, s.labels, x.ts, x.value FROM perfwatch.sample x "
            "JOIN perfwatch.series s ON s.id = x.series_id JOIN perfwatch.metric m ON m.id = s.metric_id "
            "ORDER BY m.name, s.id, x.ts"))
        return [(name, labels, ms(ts), value) for name, labels, ts, value in rows]


@pytest.fixture
def engine(pg_dsn: str) -> Iterator[sa.Engine]:
    engine = db.make_engine(pg_dsn)
    apply_migrations(engine)
    mirror_policy(engine, Policy())
    yield engine
    engine.dispose()


def test_a_replayed_batch_adds_nothing(engine: sa.Engine) -> None:
    store = Store(engine)
    first = batch(T0, [("a", (("k", "1"),), 1.0), ("a", (("k", "2"),), 2.0), ("b", (), 3.0)])
    assert store.write(first) == 3
    assert store.write(first) == 0
    assert Store(engine).write(first) == 0  # a fresh process with an empty cache, too
    assert store.replayed_batches == 1
    # Partly stored: only the new samples go in.
    extra = Sample("a", tuple(sorted((("k", "1"), *JOB_INSTANCE))), 4.0, T0 + 15000)
    mixed = Batch("node", "host:9100", T0 + 15000, [*first.samples, extra], first.metadata)
    assert store.write(mixed) == 1
    assert len(stored(engine)) == 4
    # A series repeated inside one batch: stored once, no error.
    twice = batch(T0 + 30000, [("b", (), 5.0), ("b", (), 6.0)])
    assert store.write(twice) == 1
    assert len(stored(engine)) == 5


def test_values_are_exact_and_nan_is_never_stored(engine: sa.Engine) -> None:
    store = Store(engine)
    values = [0.1 + 0.2, 5e-324, 1.7976931348623157e308, -0.0, -123456.789e-7, math.inf, -math.inf,
              2.0**53 + 1, 1e16 + 2]
    samples = [("v", (("i", str(i)),), v) for i, v in enumerate(values)] + [("v", (("i", "nan"),), math.nan)]
    assert store.write(batch(T0, samples)) == len(values)
    assert store.dropped["nan"] == 1
    got = {labels["i"]: value for _, labels, _, value in stored(engine)}
    assert "nan" not in got
    for i, v in enumerate(values):
        assert got[str(i)] == v and math.copysign(1, got[str(i)]) == math.copysign(1, v)
    # A batch of nothing but stale markers writes nothing and does not fail.
    assert store.write(batch(T0 + 1, [("v", (("i", "0"),), math.nan)])) == 0


def test_label_values_round_trip_exactly(engine: sa.Engine) -> None:
    """Quotes, backslashes, newlines, unicode and SQL text: through Store.write, the series catalog,
    perfwatch.series() (matching on them) and perfwatch.panel()'s legend."""
    store = Store(engine)
    nasty = [*NASTY_VALUES, "tab\there", "%(x)s :name ? $$ $q$", '{"json": [1]}', "ends with space ", ""]
    samples = [("synthetic_nasty_info", (("value", v), ("index", str(i))), 1.0) for i, v in enumerate(nasty)]
    assert store.write(batch(T0, samples)) == len(nasty)
    by_index = {labels["index"]: labels["value"] for _, labels, _, _ in stored(engine)}
    assert by_index == {str(i): v for i, v in enumerate(nasty)}
    window = {"f": dt.datetime(2024, 6, 1, 11, tzinfo=dt.UTC), "t": dt.datetime(2024, 6, 1, 13, tzinfo=dt.UTC)}
    with engine.connect() as conn:
        for i, v in enumerate(nasty):
            labels = conn.execute(sa.text(
                "SELECT labels FROM perfwatch.series('synthetic_nasty_info', CAST(:m AS jsonb), :f, :t, '1 minute')"),
                {"m": json.dumps({"value": v}), **window}).scalars().all()
            assert [x["value"] for x in labels] == [v]
            legend = conn.execute(sa.text(
                "SELECT metric FROM perfwatch.panel('synthetic_nasty_info', CAST(:m AS jsonb), :f, :t, '1 minute', "
                "'last', '{{value}}')"), {"m": json.dumps({"index": str(i)}), **window}).scalars().all()
            assert legend == [v]


def test_unstorable_labels_are_dropped_and_counted_the_rest_stored(engine: sa.Engine) -> None:
    store = Store(engine)
    b = batch(T0, [("a", (("k", "nul\x00inside"),), 1.0), ("a", (("k", "fine"),), 2.0),
                   ("a", (("k", "surrogate \udc80"),), 3.0)])
    assert store.write(b) == 1
    assert store.dropped["unstorable"] == 2
    assert [labels["k"] for _, labels, _, _ in stored(engine)] == ["fine"]
    # HELP text with a NUL is cleaned, not a reason to lose the sample.
    b = batch(T0, [("h", (), 1.0)])
    b.metadata["h"] = MetricMeta("h", "gauge", "gauge", "help with \x00 NUL")
    assert store.write(b) == 1
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT help FROM perfwatch.metric WHERE name = 'h'")).scalar() == "help with  NUL"


def test_catalog_keeps_metadata_and_refreshes_last_seen(engine: sa.Engine) -> None:
    store = Store(engine)
    store.write(batch(T0, [("c_total", (), 1.0)], kind="counter"))
    store.write(batch(T0 + 60_000, [("c_total", (), 2.0)], kind="counter"))
    b = batch(T0 + 2 * 3600_000, [("c_total", (), 3.0)], kind="counter")
    b.metadata["c_total"] = MetricMeta("c_total", "counter", "counter", "new help", "seconds")
    store.write(b)
    with engine.connect() as conn:
        m = conn.execute(sa.text("SELECT * FROM perfwatch.metric")).one()
        assert (m.name, m.kind, m.family_type, m.help, m.unit) == ("c_total", "counter", "counter", "new help",
                                                                     "seconds")
        s = conn.execute(sa.text("SELECT * FROM perfwatch.series")).one()
        assert s.labels == dict(JOB_INSTANCE)
        assert (ms(s.first_seen), ms(s.last_seen)) == (T0, T0 + 2 * 3600_000)


def test_samples_before_the_retention_horizon_are_refused(engine: sa.Engine) -> None:
    policy = Policy()
    store = Store(engine)
    day = 86400_000
    for d in range(10):
        store.write(batch(T0 + d * day, [("g", (), float(d))]))
    now = dt.datetime(2024, 6, 11, 12, 30, tzinfo=dt.UTC)
    run_rollups(engine, policy, now)
    assert "sample_20240601" in run_retention(engine, policy, now).dropped
    before = len(stored(engine))
    assert store.write(batch(T0 + 3600_000, [("g", (), 99.0)])) == 0  # 2024-06-01: dropped day
    assert store.dropped["expired"] == 1
    assert len(stored(engine)) == before
    assert Store(engine).write(batch(T0 + 3600_000, [("g", (), 99.0)])) == 0  # an empty cache changes nothing
    with engine.connect() as conn:
        names = conn.execute(sa.text("SELECT table_name FROM perfwatch.partition WHERE tier = 'raw'")).scalars().all()
        assert "sample_20240601" not in names
        with pytest.raises(sa.exc.DBAPIError, match="has dropped everything before"):
            conn.execute(sa.select(db.fn("ensure_partition", "raw", dt.datetime(2024, 6, 1, 5, tzinfo=dt.UTC))))


def test_unreachable_database_raises_database_unavailable() -> None:
    engine = db.make_engine(f"postgresql://perfwatch:secret@127.0.0.1:{free_port()}/perfwatch", connect_timeout=2)
    with pytest.raises(db.DatabaseUnavailable, match="writing the batch of node/host:9100"):
        Store(engine).write(batch(T0, [("a", (), 1.0)]))
    with pytest.raises(db.DatabaseUnavailable):
        apply_migrations(engine)
    with pytest.raises(db.DatabaseUnavailable):
        run_rollups(engine, Policy())
    with pytest.raises(db.DatabaseUnavailable):
        tier_status(engine)


def test_connection_lost_mid_write_leaves_the_cache_consistent(engine: sa.Engine, pg_dsn: str) -> None:
    """The write is cut after it created new series (rolled back with it): the ids must not stay
    in the cache, or later samples would point at series that do not exist."""
    store = Store(engine)
    assert store.write(batch(T0, [("a", (("k", "old"),), 1.0)])) == 1
    blocker = psycopg.connect(pg_dsn, autocommit=False)
    blocker.execute("LOCK TABLE perfwatch.lock_partition IN EXCLUSIVE MODE")  # partition creation waits
    errors: list[BaseException] = []
    next_day = T0 + 86400_000  # needs a new partition: the write blocks after creating the series
    cut = batch(next_day, [("a", (("k", "new"),), 2.0), ("fresh", (), 3.0)])

    def write() -> None:
        try:
            store.write(cut)
        except BaseException as err:
            errors.append(err)

    writer = threading.Thread(target=write)
    writer.start()
    deadline = time.monotonic() + 30
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        while True:
            pids = admin.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'perfwatch-archiver' "
                                 "AND wait_event_type = 'Lock' AND datname = current_database()").fetchall()
            if pids or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert pids, "the write never blocked on partition creation"
        admin.execute("SELECT pg_terminate_backend(%s)", (pids[0][0],))
    writer.join(30)
    blocker.rollback()
    blocker.close()
    assert len(errors) == 1 and isinstance(errors[0], db.DatabaseUnavailable), errors
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM perfwatch.series")).scalar() == 1  # rolled back
    assert store.write(cut) == 2
    assert [(n, labels.get("k"), t, v) for n, labels, t, v in stored(engine)] == [
        ("a", "old", T0, 1.0), ("a", "new", next_day, 2.0), ("fresh", None, next_day, 3.0)]


def test_samples_postgresql_refuses_cost_only_themselves(engine: sa.Engine,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """A metric name over the btree limit of the catalog's unique index (2,704 bytes, after
    compression: hence random) passes every scrape limit but PostgreSQL refuses it: the batch is
    split until that sample is alone; the other 999 are stored, the refusal is counted and logged
    once for the target."""
    long_name = "m" + secrets.token_hex(6000)
    samples = [(f"ok_{i}", (), float(i)) for i in range(999)]
    samples.insert(500, (long_name, (), 1.0))
    store = Store(engine)
    with caplog.at_level("WARNING", logger="perfwatch.archiver.store"):
        assert store.write(batch(T0, samples)) == 999
        assert store.write(batch(T0 + 15_000, samples)) == 999
    assert store.dropped["refused"] == 2
    assert len(stored(engine)) == 2 * 999
    refusals = [r for r in caplog.records if "(refused)" in r.getMessage()]
    assert len(refusals) == 1 and "index row requires" in refusals[0].getMessage()


def test_timestamps_out_of_bounds_are_dropped_before_the_database_sees_them(engine: sa.Engine) -> None:
    store = Store(engine)
    now = int(time.time() * 1000)
    b = Batch("node", "host:9100", now, [Sample("a", JOB_INSTANCE, 1.0, now), Sample("a", JOB_INSTANCE, 2.0, -1),
                                          Sample("b", JOB_INSTANCE, 3.0, 2**53), Sample("c", JOB_INSTANCE, 4.0, 2**62)],
              {n: MetricMeta(n, "gauge", "gauge") for n in "abc"})
    assert store.write(b) == 1
    assert store.dropped["out_of_bounds"] == 3
    assert [(n, t) for n, _, t, _ in stored(engine)] == [("a", now)]
