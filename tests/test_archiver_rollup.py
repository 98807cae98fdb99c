"""Scrape a synthetic exporter, roll it up on the archiver's schedule, and check that every tier
answers increase, rate, avg, min and max as the raw samples do.

The policy uses 1 s and 2 s tiers (rollup_delay 1ms) so that a few seconds of 200 ms scrapes fill
several buckets of each, with counter resets inside buckets and on their edges.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from support.archiver import ArchiverProcess, archived
from support.postgres import scalar
from support.procs import REPO
from support.synthetic import SyntheticExporter

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("stop_leftover_archivers")]

POLICY = {"raw_retention": "1h", "rollup_delay": "1ms",
          "tiers": [{"resolution": "1s", "retention": "1h"}, {"resolution": "2s", "retention": "1h"}]}
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def read_series(dsn: str, metric: str, matchers: dict[str, str], lo_ms: int, hi_ms: int,
                step_s: float) -> list[tuple[int, float, float, float, float | None, float | None]]:
    """(bucket ms, avg, min, max, increase, rate) from perfwatch.series, the read function Grafana uses."""
    lo, hi = EPOCH + dt.timedelta(milliseconds=lo_ms), EPOCH + dt.timedelta(milliseconds=hi_ms)
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT (extract(epoch FROM time) * 1000)::bigint, avg, min, max, increase, rate"
            " FROM perfwatch.series(%s, %s::jsonb, %s, %s, make_interval(secs => %s))",
            (metric, json.dumps(matchers), lo, hi, step_s)).fetchall()
    return [(int(r[0]), *r[1:]) for r in rows]


def raw_buckets(samples: list[tuple[int, float]], lo_ms: int, hi_ms: int, step_ms: int) -> dict[int, dict[str, float]]:
    """The same figures from raw samples: increase = Σ over consecutive samples a, b (both in
    [lo, hi)) with b in the bucket of b - a, or b after a reset."""
    inside = [(t, v) for t, v in samples if lo_ms <= t < hi_ms]
    out: dict[int, dict[str, float]] = {}
    for i, (t, v) in enumerate(inside):
        b = out.setdefault(t // step_ms * step_ms, {"n": 0, "sum": 0.0, "min": v, "max": v, "increase": 0.0})
        b["n"] += 1
        b["sum"] += v
        b["min"], b["max"] = min(b["min"], v), max(b["max"], v)
        if i:
            prev = inside[i - 1][1]
            b["increase"] += v - prev if v >= prev else v
    return out


def test_every_tier_gives_raws_increase_rate_avg_min_max(tmp_path: Path, pg_dsn: str) -> None:
    with SyntheticExporter(reset_every=7) as synth:
        archiver = ArchiverProcess(tmp_path, {
            "scrape_interval": "200ms", "targets": [{"url": synth.url, "job": "synthetic"}],
            "database": {"dsn": pg_dsn}, "policy": POLICY, "schedule": {"rollup_interval": "1s"},
        }).start()
        archiver.wait_for(lambda: len(synth.served) >= 40
                          and archiver.metric("perfwatch_archiver_rollup_runs_total", tier="2s", result="ok") >= 3,
                          "40 scrapes and three scheduled rollup passes", timeout=60)
        assert archiver.metric("perfwatch_archiver_rollup_runs_total", result="error") == 0
        lags = {t: archiver.metric("perfwatch_archiver_rollup_lag_seconds", tier=t) for t in ("1s", "2s")}
        assert all(0 < lag < 10 for lag in lags.values()), lags
        assert archiver.metric("perfwatch_archiver_rollup_last_success_timestamp_seconds") > 0
        assert archiver.metric("perfwatch_archiver_tier_bytes", tier="1s") > 0
        assert archiver.stop() == 0

    # One more pass by hand (the operator command) rolls up what the last scrapes added.
    rollup = subprocess.run([sys.executable, "-m", "perfwatch.archiver", "--config", str(archiver.config_path),
                             "rollup"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert rollup.returncode == 0, rollup.stderr
    with psycopg.connect(pg_dsn) as conn:
        watermark = scalar(conn, "SELECT watermark FROM perfwatch.tier WHERE name = '2s'")
    counter = [(ms, v) for lab, ms, v in archived(pg_dsn, "synthetic_requests_total") if lab["code"] == "200"]
    gauge = [(ms, v) for _, ms, v in archived(pg_dsn, "synthetic_temperature_celsius")]
    lo = -(-counter[0][0] // 2000) * 2000  # the first whole 2 s bucket
    hi = int((watermark - EPOCH).total_seconds() * 1000)  # rolled up to here in every tier
    assert hi - lo >= 4000, (lo, hi)
    inside = [v for t, v in counter if lo <= t < hi]
    assert any(b < a for a, b in itertools.pairwise(inside)), "no counter reset in the range"

    totals: dict[str, float] = {}
    for step_s, served_by in ((0.5, "raw"), (1.0, "1s"), (2.0, "2s")):
        step_ms = int(step_s * 1000)
        got = read_series(pg_dsn, "synthetic_requests_total", {"code": "200"}, lo, hi, step_s)
        want = raw_buckets(counter, lo, hi, step_ms)
        assert [t for t, *_ in got] == sorted(want), served_by  # buckets on the epoch grid, none missing
        for t, _avg, _min, _max, increase, rate in got:
            assert increase == pytest.approx(want[t]["increase"], rel=1e-9, abs=1e-12), (served_by, t)
            assert rate == pytest.approx(want[t]["increase"] / step_s, rel=1e-9, abs=1e-12), (served_by, t)
        totals[served_by] = sum(r[4] or 0.0 for r in got)  # never None: each was compared with raw above

        gauge_got = read_series(pg_dsn, "synthetic_temperature_celsius", {}, lo, hi, step_s)
        gauge_want = raw_buckets(gauge, lo, hi, step_ms)
        assert [t for t, *_ in gauge_got] == sorted(gauge_want)
        for t, avg, mn, mx, increase, _rate in gauge_got:
            w = gauge_want[t]
            assert avg == pytest.approx(w["sum"] / w["n"], rel=1e-9), (served_by, t)
            assert (mn, mx) == (w["min"], w["max"]), (served_by, t)
            assert increase is None  # gauges have no increase
    assert totals["1s"] == pytest.approx(totals["raw"], rel=1e-9)
    assert totals["2s"] == pytest.approx(totals["raw"], rel=1e-9)
