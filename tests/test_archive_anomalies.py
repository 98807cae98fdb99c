"""Anomalies and forecasts (perfwatch/archiver/sql/functions/anomaly.sql, forecast.sql) against a real
PostgreSQL: synthetic series with known answers written through Store, rolled up, raw retention run,
so that the answers come from the tiers; the forecast's line agrees with a real Prometheus'
predict_linear() over the same samples (backfilled with promtool)."""

from __future__ import annotations

import datetime as dt
import json
import math
import random
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
import sqlalchemy as sa
from support.archive import SyntheticSeries, at, close, floor_ms, login_as, ms, stored_archive
from support.postgres import PostgresServer
from support.prometheus import Prometheus, promtool

from perfwatch.archiver.policy import Policy, Tier
from perfwatch.archiver.retention import run_retention
from perfwatch.archiver.rollup import run_rollups
from perfwatch.common.config import Duration

NOW = dt.datetime(2024, 5, 1, 0, 20, tzinfo=dt.UTC)
POLICY = Policy(raw_retention=Duration(3 * 86400), tiers=[Tier(Duration(300), Duration(90 * 86400)),
                                                           Tier(Duration(3600), Duration(730 * 86400))])
HOUR, DAY = 3600_000, 86400_000
# Anomalies: 40 days of a daily pattern every 5 minutes; the series "step:1" rises by 1 at STEP_AT.
FIRST_DAY = ms(NOW) - ms(NOW) % DAY - 40 * DAY  # 2024-03-22
LAST_DAY = FIRST_DAY + 39 * DAY  # 2024-04-30, the day scored
STEP_AT = LAST_DAY + 12 * HOUR
# Forecasts: 7 days of filesystem and memory samples every minute, 17 s past it, up to T_TO.
T_TO = NOW - dt.timedelta(minutes=10)
FS_START = ms(T_TO) - 7 * DAY + 17_000
SIZE = 1e12
GROWTH = 2e5  # bytes a second that /data fills by
MEM_TOTAL, MEM_LEAK = 16 * 2**30, 1000.0


def labels(instance: str, **extra: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"job": "node", "instance": instance, **extra}.items()))


def load_series() -> list[SyntheticSeries]:
    rng = random.Random(14)
    out = []
    for instance in ("step:1", "calm:1"):
        points = []
        for day in range(40):
            effect = rng.gauss(0, 0.1)
            for k in range(288):
                t = FIRST_DAY + day * DAY + k * 300_000 + 40_000
                hour = (t % DAY) // HOUR
                v = 1 + 0.5 * math.sin(2 * math.pi * hour / 24) + effect + rng.gauss(0, 0.05)
                points.append((t, v + (1.0 if instance == "step:1" and t >= STEP_AT else 0.0)))
        out.append(SyntheticSeries("node_load1", labels(instance), "gauge", points))
    # constant: a baseline with no spread, then one different hour at the end
    flat = [(t, 2.5 if t >= LAST_DAY + 23 * HOUR else 2.0)
            for t in range(FIRST_DAY + 40_000, LAST_DAY + DAY, 300_000)]
    out.append(SyntheticSeries("node_load1", labels("flat:1"), "gauge", flat))
    # new: three days of history only
    out.append(SyntheticSeries("node_load1", labels("new:1"), "gauge",
                               [(t, 1.0 + (t // HOUR) % 3) for t in range(LAST_DAY - 3 * DAY + 40_000, LAST_DAY + DAY,
                                                                          300_000)]))
    # a counter: the anomaly of its rate (twice the usual rate from STEP_AT)
    value, points = 0.0, []
    for t in range(FIRST_DAY + 40_000, LAST_DAY + DAY, 300_000):
        value += 300 * (1000 + 100 * rng.random()) * (2 if t >= STEP_AT else 1)
        points.append((t, value))
    out.append(SyntheticSeries("node_network_receive_bytes_total", labels("step:1", device="eth0"), "counter", points))
    return out


def fs_series() -> list[SyntheticSeries]:
    rng = random.Random(41)
    times = list(range(FS_START, ms(T_TO), 60_000))
    mounts: dict[str, list[float]] = {
        "/data": [SIZE * 0.6 - GROWTH * (t - FS_START) / 1000 for t in times],
        "/noisy": [SIZE * 0.5 - 5e4 * (t - FS_START) / 1000 + rng.gauss(0, 2e8) for t in times],
        "/shrink": [SIZE * 0.3 + 1e4 * (t - FS_START) / 1000 for t in times],
        "/flat": [SIZE * 0.2 for _ in times],
    }
    out = []
    for mount, avail in mounts.items():
        fs = labels("disk:1", device=f"/dev/sd{mount[1]}", mountpoint=mount, fstype="ext4")
        out.append(SyntheticSeries("node_filesystem_size_bytes", fs, "gauge", [(t, SIZE) for t in times]))
        out.append(SyntheticSeries("node_filesystem_avail_bytes", fs, "gauge", list(zip(times, avail, strict=True))))
    out.append(SyntheticSeries("node_memory_MemTotal_bytes", labels("disk:1"), "gauge",
                               [(t, float(MEM_TOTAL)) for t in times]))
    out.append(SyntheticSeries("node_memory_MemAvailable_bytes", labels("disk:1"), "gauge",
                               [(t, MEM_TOTAL / 2 - MEM_LEAK * (t - FS_START) / 1000 + rng.gauss(0, 1e6))
                                for t in times]))
    return out


class Archive:
    def __init__(self, dsn: str, engine: sa.Engine, data: list[SyntheticSeries]) -> None:
        self.dsn, self.engine, self.data = dsn, engine, data

    def call(self, function: str, *args: Any, **named: Any) -> list[sa.Row[Any]]:
        params = {f"a{i}": json.dumps(a) if isinstance(a, dict) else a for i, a in enumerate(args)}
        params |= {f"n_{k}": v for k, v in named.items()}
        casts = [f"CAST(:a{i} AS jsonb)" if isinstance(a, dict) else f":a{i}" for i, a in enumerate(args)]
        casts += [f"{k} => :n_{k}" for k in named]
        with self.engine.connect() as conn:
            return list(conn.execute(sa.text(f"SELECT * FROM perfwatch.{function}({', '.join(casts)})"), params))

    def points(self, name: str, instance: str, **extra: str) -> list[tuple[int, float]]:
        return next(s.points for s in self.data if s.name == name and dict(s.labels) == dict(labels(instance, **extra)))


@pytest.fixture(scope="module")
def archive(postgres_server: PostgresServer) -> Iterator[Archive]:
    with postgres_server.fresh_database() as dsn:
        data = load_series() + fs_series()
        engine = stored_archive(dsn, POLICY, data, per_batch_ms=DAY)
        run_rollups(engine, POLICY, NOW)
        assert run_retention(engine, POLICY, NOW).dropped  # the baseline comes from the tiers
        yield Archive(dsn, engine, data)
        engine.dispose()


# -- anomalies ------------------------------------------------------------------------------------------


def hourly(points: list[tuple[int, float]], counter: bool = False) -> dict[int, float]:
    """Per hour: the avg of its samples, or a counter's rate (increase of the pairs ending in it / 3600 s)."""
    sums: dict[int, list[float]] = {}
    prev = None
    for t, v in points:
        h = floor_ms(t, HOUR)
        if counter:
            if prev is not None:
                sums.setdefault(h, []).append(v - prev)
            prev = v
        else:
            sums.setdefault(h, []).append(v)
    return {h: (sum(vs) / 3600 if counter else sum(vs) / len(vs)) for h, vs in sums.items()}


def expected_z(values: dict[int, float], hour: int, days: int = 30) -> tuple[float, float, int]:
    base = [values[hour - k * DAY] for k in range(1, days + 1) if hour - k * DAY in values]
    return statistics.mean(base), statistics.stdev(base), len(base)


def scored(archive: Archive, instance: str, metric: str = "node_load1", **named: Any) -> list[sa.Row[Any]]:
    return archive.call("anomalies", metric, {"instance": instance}, at(LAST_DAY), at(LAST_DAY + DAY), **named)


def test_a_step_is_anomalous_from_the_step_on_and_not_before(archive: Archive) -> None:
    rows = scored(archive, "step:1")
    values = hourly(archive.points("node_load1", "step:1"))
    assert [ms(r.time) for r in rows] == [LAST_DAY + h * HOUR for h in range(24)]
    for r in rows:
        mean, stddev, n = expected_z(values, ms(r.time))
        assert r.instance == "step:1" and dict(r.labels) == {"job": "node", "instance": "step:1"}
        assert close(r.value, values[ms(r.time)]) and close(r.baseline_mean, mean) and close(r.baseline_stddev, stddev)
        assert r.baseline_points == n == 30
        assert close(r.z, (r.value - mean) / stddev)
        assert r.anomalous is (ms(r.time) >= STEP_AT), (r.time, r.z)
    assert min(r.z for r in rows if ms(r.time) >= STEP_AT) > 3 > max(abs(r.z) for r in rows if ms(r.time) < STEP_AT)
    # the same series without the step: nothing anomalous that day
    assert [r.anomalous for r in scored(archive, "calm:1")] == [False] * 24


def test_threshold_baseline_and_season_change_the_verdict_as_defined(archive: Archive) -> None:
    values = hourly(archive.points("node_load1", "step:1"))
    hour = STEP_AT - HOUR  # before the step
    z = next(r.z for r in scored(archive, "step:1") if ms(r.time) == hour)
    lower = [r for r in scored(archive, "step:1", threshold=abs(z) * 0.99) if ms(r.time) == hour]
    assert lower[0].anomalous is True
    # a week of baseline: 7 points
    week = next(r for r in scored(archive, "step:1", baseline="7 days") if ms(r.time) == hour)
    mean, stddev, n = expected_z(values, hour, days=7)
    assert week.baseline_points == n == 7 and close(week.baseline_mean, mean) and close(week.baseline_stddev, stddev)
    # no season: every hour of the day before
    plain = next(r for r in scored(archive, "step:1", baseline="1 day", season=None) if ms(r.time) == hour)
    day_before = [values[hour - k * HOUR] for k in range(1, 25)]
    assert plain.baseline_points == 24 and close(plain.baseline_mean, statistics.mean(day_before))
    assert close(plain.baseline_stddev, statistics.stdev(day_before))


def test_a_counter_is_scored_on_its_rate(archive: Archive) -> None:
    rows = scored(archive, "step:1", "node_network_receive_bytes_total")
    rates = hourly(archive.points("node_network_receive_bytes_total", "step:1", device="eth0"), counter=True)
    for r in rows:
        mean, stddev, _ = expected_z(rates, ms(r.time))
        assert close(r.value, rates[ms(r.time)]) and close(r.z, (r.value - mean) / stddev)
        assert r.anomalous is (ms(r.time) >= STEP_AT)


def test_too_few_baseline_points_and_a_baseline_without_spread(archive: Archive) -> None:
    new = scored(archive, "new:1")
    assert {r.baseline_points for r in new} == {3}
    assert all(r.z is None and r.anomalous is None and r.baseline_mean is not None for r in new)
    assert all(r.anomalous is False for r in scored(archive, "new:1", min_points=3))
    flat = scored(archive, "flat:1")
    assert all(r.baseline_stddev == 0 and r.z is None for r in flat)
    assert [r.anomalous for r in flat] == [False] * 23 + [True]


@pytest.mark.parametrize(("named", "words"), [
    ({"step": "0 seconds"}, "step must be a positive interval"),
    ({"baseline": "10 minutes"}, "baseline must be an interval of at least one step"),
    ({"season": "90 minutes"}, "season must be NULL or a whole number of steps"),
    ({"season": "60 days"}, "season must be NULL or a whole number of steps .* no longer than baseline"),
    ({"threshold": -1.0}, "threshold must be a positive number"),
    ({"threshold": float("nan")}, "threshold must be a positive number"),
    ({"min_points": 1}, r"min_points must be 2 or more"),
    ({"agg": "median"}, "agg must be one of auto, avg"),
])
def test_bad_arguments_of_anomalies_name_the_argument(archive: Archive, named: dict[str, Any], words: str) -> None:
    with pytest.raises(sa.exc.DBAPIError, match=words):
        scored(archive, "step:1", **named)


# -- forecasts ------------------------------------------------------------------------------------------


def forecast(archive: Archive, function: str, mount: str | None, hours: float, step: str) -> sa.Row[Any]:
    matchers = {"mountpoint": mount} if mount else {"instance": "disk:1"}
    rows = archive.call(function, matchers, T_TO - dt.timedelta(hours=hours), T_TO, step)
    assert len(rows) == 1, rows
    return rows[0]


@pytest.mark.parametrize("step", ["1 second", "5 minutes", "1 hour", "2 hours"])
def test_a_linear_fill_gives_the_exact_days_until_full_from_every_tier(archive: Archive, step: str) -> None:
    r = forecast(archive, "filesystem_forecast", "/data", 7 * 24, step)
    used_now = SIZE * 0.4 + GROWTH * (ms(T_TO) - FS_START) / 1000
    days = (SIZE - used_now) / GROWTH / 86400
    assert (r.instance, r.device, r.mountpoint, r.fstype) == ("disk:1", "/dev/sdd", "/data", "ext4")
    assert close(r.slope_per_day, GROWTH * 86400, rel=1e-9) and close(r.used_fitted, used_now, rel=1e-9)
    assert close(r.days_until_full, days, rel=1e-9) and close(r.r2, 1.0, rel=1e-9)
    assert abs((r.full_at - T_TO).total_seconds() - days * 86400) < 1e-3
    last_avail = archive.points("node_filesystem_avail_bytes", "disk:1", device="/dev/sdd", mountpoint="/data",
                                fstype="ext4")[-1][1]
    assert r.size == SIZE and close(r.used, SIZE - last_avail, rel=1e-3)  # the last step's avg
    # one point per step; at 1 s, the raw samples of the three days raw keeps (from 2024-04-28) and
    # the 5-minute buckets before
    assert r.points == {"1 second": 3 * 24 * 60 + 10 + 4 * 24 * 12 - 2, "5 minutes": 7 * 24 * 12,
                        "1 hour": 7 * 24 + 1, "2 hours": 7 * 12 + 1}[step]


@pytest.mark.parametrize("mount", ["/shrink", "/flat"])
def test_a_disk_not_filling_has_no_days_until_full(archive: Archive, mount: str) -> None:
    r = forecast(archive, "filesystem_forecast", mount, 24, "1 hour")
    assert r.slope_per_day is not None and r.slope_per_day <= 0
    assert r.days_until_full is None and r.full_at is None


def test_forecasts_are_ordered_soonest_first_and_grafana_may_run_them(archive: Archive) -> None:
    week = (T_TO - dt.timedelta(days=7), T_TO)
    with login_as("perfwatch_grafana", archive.dsn) as dsn, psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT mountpoint, days_until_full FROM perfwatch.filesystem_forecast("
                            "'{\"instance\": \"disk:1\"}', %s, %s)", week).fetchall()
        memory = conn.execute("SELECT slope_per_day FROM perfwatch.memory_forecast(NULL, %s, %s, '1 hour')",
                              week).fetchall()
        scored_steps = conn.execute("SELECT count(*) FROM perfwatch.anomalies('node_load1', NULL, %s, %s)",
                                    (at(LAST_DAY), at(LAST_DAY + DAY))).fetchone()
    assert [m for m, _ in rows[:2]] == ["/data", "/noisy"] and rows[0][1] < rows[1][1]
    assert sorted(m for m, _ in rows[2:]) == ["/flat", "/shrink"] and rows[2][1] is None is rows[3][1]
    assert len(memory) == 1 and memory[0][0] > 0
    assert scored_steps == (4 * 24,)


@pytest.mark.parametrize(("bad", "words"), [
    ({"t_from": T_TO, "t_to": T_TO}, "t_from must be before t_to"),
    ({"step": "-1 hour"}, "step must be a positive interval"),
    ({"matchers": "[]"}, "matchers must be a JSON object"),
])
def test_bad_arguments_of_forecasts_name_the_argument(archive: Archive, bad: dict[str, Any], words: str) -> None:
    args = {"matchers": "{}", "t_from": T_TO - dt.timedelta(days=1), "t_to": T_TO, "step": "1 hour"} | bad
    with archive.engine.connect() as conn, pytest.raises(sa.exc.DBAPIError, match=words):
        conn.execute(sa.text("SELECT * FROM perfwatch.filesystem_forecast(CAST(:matchers AS jsonb), :t_from, :t_to, "
                             "CAST(:step AS interval))"), args)


def openmetrics(series: list[SyntheticSeries]) -> str:
    lines = []
    for name in dict.fromkeys(s.name for s in series):
        lines.append(f"# TYPE {name} gauge\n")
        for s in (s for s in series if s.name == name):
            label_text = ",".join(f'{k}="{v}"' for k, v in s.labels)
            lines += [f"{name}{{{label_text}}} {v!r} {t / 1000:.3f}\n" for t, v in s.points]
    return "".join(lines) + "# EOF\n"


def test_the_line_is_prometheus_predict_linear_over_the_same_samples(archive: Archive, tmp_path: Path) -> None:
    """Six hours of raw samples (noisy ones): days until full from the archive equal
    predict_linear(avail[6h], 0) / -deriv(avail[6h]) at the same time, from a Prometheus that holds
    the same samples (backfilled with promtool)."""
    lo = ms(T_TO) - 6 * HOUR
    recent = [SyntheticSeries(s.name, s.labels, s.kind, [p for p in s.points if p[0] >= lo])
              for s in archive.data if s.name.startswith(("node_filesystem", "node_memory"))]
    (tmp_path / "samples.om").write_text(openmetrics(recent))
    made = promtool("tsdb", "create-blocks-from", "openmetrics", str(tmp_path / "samples.om"), str(tmp_path / "tsdb"))
    assert made.returncode == 0, made.stderr
    prom = Prometheus(tmp_path, {"global": {"scrape_interval": "15s"}}, args=["--storage.tsdb.retention.time=100y"])
    with prom:
        for function, selector in (("filesystem_forecast", 'node_filesystem_avail_bytes{mountpoint="/noisy"}'),
                                   ("memory_forecast", "node_memory_MemAvailable_bytes")):
            mine = forecast(archive, function, "/noisy" if function == "filesystem_forecast" else None, 6, "1 second")
            assert mine.points == 360
            for expr, want in ((f"predict_linear({selector}[6h], 0) / -deriv({selector}[6h]) / 86400",
                                mine.days_until_full),
                               (f"-deriv({selector}[6h]) * 86400", mine.slope_per_day),
                               (f"predict_linear({selector}[6h], 0)", mine.size - mine.used_fitted)):
                params: dict[str, str | float] = {"query": expr, "time": ms(T_TO) / 1000}
                body = requests.get(f"{prom.url}/api/v1/query", params=params, timeout=30).json()
                assert body["status"] == "success", body
                [result] = body["data"]["result"]
                assert close(want, float(result["value"][1]), rel=1e-9), (expr, want, result)
