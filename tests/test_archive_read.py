"""The read side (perfwatch.series, perfwatch.panel, perfwatch.plan_tiers) against a real
PostgreSQL: answers stitched from the 1h, 5m and raw levels equal the same answers computed in
Python from the raw samples, including periods raw retention has already dropped."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from support.archive import (
    SyntheticSeries,
    at,
    close,
    floor_ms,
    login_as,
    ms,
    step_stats,
    stored_archive,
    synthetic,
)
from support.postgres import PostgresServer

from perfwatch.archiver.policy import Policy, Tier
from perfwatch.archiver.retention import run_retention
from perfwatch.archiver.rollup import run_rollups
from perfwatch.common.config import Duration

START = dt.datetime(2024, 3, 9, 21, 13, 7, 123000, tzinfo=dt.UTC)
HOURS = 54
NOW = START + dt.timedelta(hours=HOURS, minutes=20)  # 2024-03-12 03:33:07
POLICY = Policy(raw_retention=Duration(86400), tiers=[Tier(Duration(300), Duration(90 * 86400)),
                                                       Tier(Duration(3600), Duration(730 * 86400))])
RAW_FROM = dt.datetime(2024, 3, 11, tzinfo=dt.UTC)  # raw partitions before this are dropped by retention
T_FROM, T_TO = START - dt.timedelta(hours=2), NOW


class Archive:
    def __init__(self, dsn: str, engine: sa.Engine, data: list[SyntheticSeries]) -> None:
        self.dsn = dsn
        self.engine = engine
        self.data = data

    def series(self, metric: str, matchers: dict[str, Any] | None, t_from: dt.datetime, t_to: dt.datetime,
               step: str) -> list[sa.Row[Any]]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.text(
                "SELECT * FROM perfwatch.series(:m, CAST(:matchers AS jsonb), :f, :t, CAST(:step AS interval))"),
                {"m": metric, "matchers": json.dumps(matchers), "f": t_from, "t": t_to, "step": step}))

    def plan(self, t_from: dt.datetime, t_to: dt.datetime, step: str) -> list[tuple[str, dt.datetime, dt.datetime]]:
        with self.engine.connect() as conn:
            return [(r.tier, r.lo, r.hi) for r in conn.execute(sa.text(
                "SELECT * FROM perfwatch.plan_tiers(:f, :t, CAST(:step AS interval))"),
                {"f": t_from, "t": t_to, "step": step})]

    def panel(self, *args: Any) -> list[tuple[dt.datetime, str, float]]:
        placeholders = ", ".join(f":a{i}" for i in range(len(args)))
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(
                sa.text(f"SELECT * FROM perfwatch.panel({placeholders})"), {f"a{i}": a for i, a in enumerate(args)})]


@pytest.fixture(scope="module")
def archive(postgres_server: PostgresServer) -> Iterator[Archive]:
    with postgres_server.fresh_database() as dsn:
        data = synthetic(START, HOURS, seed=3)
        engine = stored_archive(dsn, POLICY, data)
        run_rollups(engine, POLICY, NOW)
        dropped = run_retention(engine, POLICY, NOW).dropped
        assert dropped == ["sample_20240309", "sample_20240310"]
        yield Archive(dsn, engine, data)
        engine.dispose()


def check_against_raw(archive: Archive, step_s: int, bucket_of: Callable[[int], int] | None = None,
                      width_of: Callable[[int], int] | None = None) -> int:
    """series() for every synthetic series equals the computation from its raw points."""
    checked = 0
    for s in archive.data:
        rows = archive.series(s.name, dict(s.labels), T_FROM, T_TO, f"{step_s} seconds")
        expected = step_stats(s.points, ms(T_FROM), ms(T_TO), step_s * 1000, bucket_of)
        assert [ms(r.time) for r in rows] == sorted(expected), (s.name, dict(s.labels), step_s)
        for r in rows:
            want = expected[ms(r.time)]
            assert dict(r.labels) == dict(s.labels)
            assert r.samples == want.count
            assert close(r.avg, want.avg) and close(r.min, want.min) and close(r.max, want.max)
            assert close(r.last, want.last)
            if s.kind == "counter":
                width = width_of(ms(r.time)) if width_of else step_s * 1000
                assert close(r.increase, want.increase), (s.name, r.time, r.increase, want.increase)
                assert close(r.rate, want.increase / (width / 1000))
                assert r.resets == want.resets
            else:
                assert r.increase is None and r.rate is None
            checked += 1
    return checked


@pytest.mark.parametrize("step_s", [300, 900, 3600, 7200, 86400])
def test_series_equals_raw_for_steps_the_tiers_serve(archive: Archive, step_s: int) -> None:
    assert check_against_raw(archive, step_s) > 0


def test_the_step_picks_the_tier_and_recent_data_comes_from_finer_ones(archive: Archive) -> None:
    w5, w1h = dt.datetime(2024, 3, 12, 3, 30, tzinfo=dt.UTC), dt.datetime(2024, 3, 12, 3, tzinfo=dt.UTC)
    lo1h = dt.datetime(2024, 3, 9, 19, tzinfo=dt.UTC)
    assert archive.plan(T_FROM, T_TO, "1 hour") == [("1h", lo1h, w1h), ("5m", w1h, w5),
                                                    ("raw", w5, dt.datetime(2024, 3, 12, 4, tzinfo=dt.UTC))]
    assert archive.plan(T_FROM, T_TO, "2 hours")[0][0] == "1h"
    assert [p[0] for p in archive.plan(T_FROM, T_TO, "5 minutes")] == ["5m", "raw"]
    # 90 s: no tier divides it; raw serves what it holds, 5m the period raw retention dropped
    assert archive.plan(T_FROM, T_TO, "90 seconds") == [
        ("raw", RAW_FROM, dt.datetime(2024, 3, 12, 3, 34, 30, tzinfo=dt.UTC)),
        ("5m", dt.datetime(2024, 3, 9, 19, 12, tzinfo=dt.UTC), RAW_FROM)]
    # the latest hour only: raw for a 1m step
    assert [p[0] for p in archive.plan(NOW - dt.timedelta(hours=1), NOW, "1 minute")] == ["raw"]


def test_periods_raw_dropped_come_from_the_5m_tier(archive: Archive) -> None:
    """A 1m step over the whole range: raw where it still holds samples, 5m buckets (one row
    each, rate over 300 s) for the period retention dropped from raw."""
    raw_from = ms(RAW_FROM)

    def bucket_of(t: int) -> int:
        return floor_ms(t, 300_000 if t < raw_from else 60_000)

    def width_of(t: int) -> int:
        return 300_000 if t < raw_from else 60_000

    assert check_against_raw(archive, 60, bucket_of, width_of) > 0


def test_matchers(archive: Archive) -> None:
    def codes(matchers: dict[str, Any] | None) -> set[str]:
        rows = archive.series("synthetic_requests_total", matchers, NOW - dt.timedelta(hours=1), NOW, "1 hour")
        return {r.labels["code"] for r in rows}

    assert codes(None) == codes({}) == {"200", "500"}
    assert codes({"code": "200"}) == {"200"}
    assert codes({"code": ["200", "404"]}) == {"200"}
    assert codes({"code": {"!=": "200"}}) == {"500"}
    assert codes({"code": {"=~": "5.."}}) == {"500"}
    assert codes({"code": {"=~": "5"}}) == set()  # anchored, as in PromQL
    assert codes({"code": {"!~": "2.*"}}) == {"500"}
    assert codes({"job": "synthetic", "instance": "host:1", "code": "500"}) == {"500"}
    assert codes({"absent": ""}) == {"200", "500"}  # a missing label matches as ""
    assert codes({"absent": "x"}) == set()
    assert archive.series("no_such_metric", {}, T_FROM, T_TO, "1 hour") == []
    with pytest.raises(sa.exc.DBAPIError, match="unknown operator"):
        codes({"code": {"~": "2"}})
    with pytest.raises(sa.exc.DBAPIError, match="must be a string, a list"):
        codes({"code": 200})
    with pytest.raises(sa.exc.DBAPIError, match="matchers must be a JSON object"):
        codes(["code", "200"])  # type: ignore[arg-type]  # deliberately not a dict
    with pytest.raises(sa.exc.DBAPIError, match="step must be a positive interval"):
        archive.series("synthetic_requests_total", {}, T_FROM, T_TO, "0 seconds")


def test_panel_for_grafana(archive: Archive) -> None:
    t_from, t_to = NOW - dt.timedelta(hours=3), NOW
    rate = archive.panel("synthetic_requests_total", '{"code": "200"}', t_from, t_to, "1 hour")
    series = archive.series("synthetic_requests_total", {"code": "200"}, t_from, t_to, "1 hour")
    assert rate == [(r.time, '{code="200", instance="host:1", job="synthetic"}', r.rate) for r in series]
    assert [t for t, _, _ in rate] == sorted(t for t, _, _ in rate)
    temps = archive.panel("synthetic_temperature_celsius", "{}", t_from, t_to, "30 minutes", "auto", "{{sensor}}")
    assert {name for _, name, _ in temps} == {"a"}  # sensor b stopped early
    assert all(v is not None for _, _, v in temps)
    maxes = archive.panel("synthetic_temperature_celsius", "{}", t_from, t_to, "30 minutes", "max",
                          "{{job}} {{ sensor }}/{{nothing}}")
    rows = archive.series("synthetic_temperature_celsius", {}, t_from, t_to, "30 minutes")
    assert maxes == [(r.time, "synthetic /", r.max) for r in rows]  # only exact {{name}} is filled
    assert archive.panel("no_such_metric", "{}", t_from, t_to, "1 hour") == []
    with pytest.raises(sa.exc.DBAPIError, match="agg must be one of"):
        archive.panel("synthetic_requests_total", "{}", t_from, t_to, "1 hour", "median")


def test_grafana_role_reads_through_the_functions(archive: Archive) -> None:
    with login_as("perfwatch_grafana", archive.dsn) as dsn, psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT * FROM panel('synthetic_requests_total', '{}', %s, %s, '1 hour')",
                            (NOW - dt.timedelta(hours=2), NOW)).fetchall()
        assert len(rows) >= 4
        levels = conn.execute("SELECT tier, bytes_per_row FROM tier_status() ORDER BY level").fetchall()
        assert [t for t, _ in levels] == ["raw", "5m", "1h"]


def test_times_are_epoch_aligned(archive: Archive) -> None:
    for step in (60, 300, 3600, 86400):
        rows = archive.series("synthetic_bytes_total", {}, T_FROM, T_TO, f"{step} seconds")
        assert rows and all(ms(r.time) % (step * 1000) == 0 for r in rows)
        assert ms(rows[0].time) >= floor_ms(ms(T_FROM), step * 1000)
        assert at(ms(rows[-1].time)) < T_TO


def test_untyped_series_get_counter_maths_and_gauges_none(postgres_server: PostgresServer) -> None:
    """PromQL's rate() works on an untyped series (47 of node_exporter's families have no TYPE):
    the archive's increase and rate do too; a series declared a gauge has none."""
    start = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)
    points = [(ms(start) + 15_000 * i, float(i * 3 if i < 100 else (i - 100) * 2)) for i in range(240)]  # a reset
    labels = (("instance", "host:1"), ("job", "node"))
    untyped = SyntheticSeries("node_vmstat_pgfault", labels, "untyped", points)
    gauge = SyntheticSeries("node_load1", labels, "gauge", points)
    policy = Policy(tiers=[Tier(Duration(300), Duration(90 * 86400))])
    with postgres_server.fresh_database() as dsn:
        engine = stored_archive(dsn, policy, [untyped, gauge])
        run_rollups(engine, policy, start + dt.timedelta(hours=2))
        for step in ("1 minute", "5 minutes", "1 hour"):  # raw, the 5m tier, the 5m tier merged
            expected = step_stats(points, ms(start), ms(start) + 3600_000, int(dt.timedelta(
                **{"minutes" if "minute" in step else "hours": int(step.split()[0])}).total_seconds() * 1000))
            with engine.connect() as conn:
                rows = conn.execute(sa.text(
                    "SELECT * FROM perfwatch.series(:m, '{}', :f, :t, CAST(:s AS interval))"),
                    {"m": untyped.name, "f": start, "t": start + dt.timedelta(hours=1), "s": step}).all()
                gauges = conn.execute(sa.text(
                    "SELECT * FROM perfwatch.series(:m, '{}', :f, :t, CAST(:s AS interval))"),
                    {"m": gauge.name, "f": start, "t": start + dt.timedelta(hours=1), "s": step}).all()
            assert rows and [ms(r.time) for r in rows] == sorted(expected)
            assert all(close(r.increase, expected[ms(r.time)].increase) for r in rows), step
            assert sum(r.resets for r in rows) == 1
            assert gauges and all(g.increase is None and g.rate is None for g in gauges)
        engine.dispose()
