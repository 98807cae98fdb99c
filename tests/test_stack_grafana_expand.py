"""The expander that stands in for Grafana (tests/support/grafana.py), checked against Grafana's own
expected outputs (pkg/tsdb/grafana-postgresql-datasource/macros_test.go, pkg/promlib) and against
the real PostgreSQL and Prometheus it feeds, with label values that need escaping."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest
from support.grafana import (
    ALL,
    MacroError,
    TimeRange,
    Variable,
    expand_promql,
    expand_sql,
    format_interval,
    go_duration,
    go_float,
    interval,
    rate_interval,
    round_interval,
)

if TYPE_CHECKING:
    from conftest import StartExporter

APRIL = TimeRange(dt.datetime(2018, 4, 12, 18, 0, tzinfo=dt.UTC), dt.datetime(2018, 4, 12, 18, 5, tzinfo=dt.UTC))


def sql(text: str, variables: dict[str, Variable] | None = None, time_range: TimeRange = APRIL) -> str:
    return expand_sql(text, variables or {}, time_range, min_interval="1s")


# Grafana's macros_test.go, case by case.
@pytest.mark.parametrize(("query", "expected"), [
    ("select $__time(time_column)", 'select time_column AS "time"'),
    ("WHERE $__timeFilter(time_column)",
     "WHERE time_column BETWEEN '2018-04-12T18:00:00Z' AND '2018-04-12T18:05:00Z'"),
    ("select $__timeFrom()", "select '2018-04-12T18:00:00Z'"),
    ("select $__timeTo()", "select '2018-04-12T18:05:00Z'"),
    ("SELECT $__timeGroup(time_column,'5m'), value",
     'SELECT floor(extract(epoch from time_column)/300)*300 AS "time", value'),
    ("SELECT $__timeGroup(time_column,'5m') as time, value",
     "SELECT floor(extract(epoch from time_column)/300)*300 as time, value"),
    ("SELECT $__timeGroup(time_column,'5m')", "SELECT floor(extract(epoch from time_column)/300)*300"),
    ("SELECT $__timeGroupAlias(time_column,'5m')", 'SELECT floor(extract(epoch from time_column)/300)*300 AS "time"'),
    ("$__timeGroup(time_column , '5m')", "floor(extract(epoch from time_column)/300)*300"),
    ("$__timeGroupAlias(time_column , '1d')", 'floor(extract(epoch from time_column)/86400)*86400 AS "time"'),
    ("$__timeGroup(t, '12d')", "floor(extract(epoch from t)/1.0368e+06)*1.0368e+06"),
    ("select $__unixEpochFilter(time)", "select time >= 1523556000 AND time <= 1523556300"),
    ("select $__unixEpochFrom(), $__unixEpochTo()", "select 1523556000, 1523556300"),
])
def test_postgres_macros_as_grafana_expands_them(query: str, expected: str) -> None:
    assert sql(query) == expected


def test_time_filter_keeps_fractions_like_rfc3339nano() -> None:
    half = TimeRange(dt.datetime(1960, 2, 1, 7, 0, 0, 500000, tzinfo=dt.UTC),
                     dt.datetime(1980, 2, 3, 8, 0, 0, 500000, tzinfo=dt.UTC))
    assert sql("$__timeFilter(t)", time_range=half) == \
        "t BETWEEN '1960-02-01T07:00:00.5Z' AND '1980-02-03T08:00:00.5Z'"


def test_unknown_macro_and_missing_interval_are_errors() -> None:
    with pytest.raises(MacroError, match="unknown macro"):
        sql("select $__nope(x)")
    with pytest.raises(MacroError, match="needs time column and interval"):
        sql("select $__timeGroup(x)")


def test_interval_rounding_and_formats() -> None:
    six_hours = TimeRange.last(6 * 3600)
    assert interval(six_hours, 1000, "15s") == 20  # 21.6 s rounds to 20 s
    assert interval(TimeRange.last(300), 1000, "15s") == 15  # 0.3 s, raised to the minimum
    assert interval(TimeRange.last(7 * 86400), 1000, None) == 600  # 604.8 s → 10m
    assert interval(TimeRange.last(365 * 86400), 1000, None) == 21600  # 8.76 h → 6h
    assert round_interval(0.3) == 0.2 and round_interval(90) == 60 and round_interval(91) == 120
    assert [format_interval(s) for s in (0.2, 15, 60, 90, 3600, 86400 * 3)] == ["200ms", "15s", "1m", "1m", "1h", "3d"]
    assert [go_duration(s) for s in (4, 60, 75, 3600, 1.5, 0.5)] == ["4s", "1m0s", "1m15s", "1h0m0s", "1.5s", "500ms"]
    assert rate_interval(20, "15s") == 60 and rate_interval(120, "15s") == 135
    assert go_float(0.02) == "0.02" and go_float(86400) == "86400"


def test_promql_builtins() -> None:
    query = expand_promql("rate(x[$__rate_interval]) + y[$__interval] + z[$__range] + $__interval_ms",
                          {}, TimeRange.last(6 * 3600), scrape_interval="15s")
    assert query.expr == "rate(x[1m0s]) + y[20s] + z[21600s] + 20000"
    assert query.step == 20 and query.start % 20 == 0 and query.end % 20 == 0


# Grafana's classic escaping leaves '"' alone, so a value with a double quote breaks a PromQL
# selector in Grafana itself (its prometheusSpecialCharsInLabelValues toggle changes that); the
# SQL test below has one.
NASTY = ["plain", "a.b:9100", "back\\slash", "it's", "(x|y)*", "ü☃", "[a-z]+ ^$"]


@pytest.mark.slow
def test_prometheus_variables_are_escaped_like_grafana_and_match_in_prometheus(start_exporter: StartExporter,
                                                                               tmp_path: Path) -> None:
    """Multi-value regex escaping as Grafana writes it, run by a real Prometheus over a series
    whose label values need it: each selected value matches itself and nothing else."""
    from support.prometheus import Prometheus

    # Grafana's own expected outputs (datasource.test.ts): regex metacharacters escaped twice.
    one = Variable("v", multi=True, selected=["a.b"])
    assert expand_promql('x{v=~"$v"}', {"v": one}, TimeRange.last(60), scrape_interval="1s").expr == 'x{v=~"a\\\\.b"}'
    single = Variable("v", selected=["it's \\ here"])
    assert expand_promql("$v", {"v": single}, TimeRange.last(60), scrape_interval="1s").expr == "it\\\\'s \\\\ here"
    custom_all = Variable("v", multi=True, include_all=True, all_value=".+", selected=[ALL], options=["a"])
    assert expand_promql('x{v=~"$v"}', {"v": custom_all}, TimeRange.last(60), scrape_interval="1s").expr == 'x{v=~".+"}'

    exporter = start_exporter({"collectors": {name: {"enabled": name == "loadavg"} for name in _collectors()}})
    config = {"global": {"scrape_interval": "1s"}, "scrape_configs": [
        {"job_name": name, "static_configs": [{"targets": [exporter.url.removeprefix("http://")],
                                               "labels": {"instance": name}}]} for name in NASTY]}
    with Prometheus(tmp_path, config) as prometheus:
        prometheus.wait_for(f"count(up == 1) == {len(NASTY)}")
        for chosen in (["a.b:9100"], ["(x|y)*", "back\\slash"], ["it's", "ü☃", "[a-z]+ ^$"], NASTY):
            variable = Variable("instance", multi=True, include_all=True, selected=chosen)
            # PromQL double-quoted strings take the escaped regex as Grafana writes it.
            query = expand_promql('up{instance=~"$instance"}', {"instance": variable}, TimeRange.last(60),
                                  scrape_interval="1s", instant=True)
            got = {r["metric"]["instance"] for r in prometheus.query(query.expr)}
            assert got == set(chosen), (query.expr, got)
        every = Variable("instance", multi=True, include_all=True, selected=[ALL], options=NASTY)
        query = expand_promql('up{instance=~"$instance"}', {"instance": every}, TimeRange.last(60),
                              scrape_interval="1s", instant=True)
        assert {r["metric"]["instance"] for r in prometheus.query(query.expr)} == set(NASTY)


def _collectors() -> list[str]:
    from perfwatch.exporter.collectors import load_all

    return list(load_all())


def test_sql_variables_are_quoted_like_grafana_and_safe_in_postgresql(pg_dsn: str) -> None:
    nasty = [*NASTY, 'say "hi"', "'; DROP TABLE t; --", "two\nlines"]
    single = Variable("v", selected=["it's"])
    assert sql("'$v'", {"v": single}) == "'it''s'"
    multi = Variable("v", multi=True, selected=["a", "it's"])
    assert sql("($v)", {"v": multi}) == "('a','it''s')"
    every = Variable("v", multi=True, include_all=True, selected=[ALL], options=["a", "b"])
    assert sql("IN ($v)", {"v": every}) == "IN ('a','b')"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (v text)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO t VALUES (%s)", [(v,) for v in nasty])
        for chosen in (nasty[:2], nasty[2:5], nasty):
            variable = Variable("v", multi=True, include_all=True, selected=chosen)
            rows = conn.execute(sql("SELECT v FROM t WHERE v IN ($v)", {"v": variable})).fetchall()
            assert sorted(r[0] for r in rows) == sorted(chosen)
        for value in nasty:
            query = sql("SELECT v FROM t WHERE v = '$v'", {"v": Variable("v", selected=[value])})
            assert conn.execute(query).fetchall() == [(value,)]
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (len(nasty),)
