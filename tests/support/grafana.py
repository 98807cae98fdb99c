"""Grafana's query expansion, for running dashboard queries without a Grafana server.

No Grafana can be installed here, so the tests expand every panel's query the way Grafana 11/12
does before it reaches the datasource, and run it against the real Prometheus or PostgreSQL:

- template variables ($job, $instance, ...), escaped per datasource: Prometheus' frontend
  (`prometheusRegularEscape` for a single value, `prometheusSpecialRegexEscape` joined as
  `(a|b)` for multi-value and All; a custom allValue verbatim) and the SQL datasources'
  `interpolateVariable` (a single value with `'` doubled; multi-value and All each quoted
  `'v'`, joined with `,`);
- the interval: range / max data points, rounded by Grafana's table (gtime.RoundInterval), at
  least the datasource's `timeInterval`; `$__rate_interval` = max($__interval + scrape interval,
  4 * scrape interval) (pkg/promlib/models/query.go); `$__range` in whole seconds;
- the PostgreSQL macros of pkg/tsdb/grafana-postgresql-datasource/macros.go and sqleng's global
  ones: `$__timeFilter(c)` → `c BETWEEN 'from' AND 'to'` (RFC 3339, UTC), `$__timeFrom()`,
  `$__timeTo()`, `$__timeGroup(c, '5m')` → `floor(extract(epoch from c)/300)*300` (with `AS
  "time"` for `$__timeGroupAlias`, or when a comma follows, as Grafana does for pre-5.3 queries),
  `$__unixEpochFilter(c)`, `$__unixEpochFrom()`/`$__unixEpochTo()`, `$__interval`, `$__interval_ms`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ALL = "$__all"
MS = 0.001

# gtime.RoundInterval: (upper bound inclusive, rounded value), in seconds.
_ROUNDING = [
    (0.010, 0.001), (0.015, 0.010), (0.035, 0.020), (0.075, 0.050), (0.150, 0.100), (0.350, 0.200),
    (0.750, 0.500), (1.5, 1), (3.5, 2), (7.5, 5), (12.5, 10), (17.5, 15), (25, 20), (45, 30), (90, 60),
    (210, 120), (450, 300), (750, 600), (1050, 900), (1500, 1200), (2700, 1800), (5400, 3600), (9000, 7200),
    (16200, 10800), (32400, 21600), (86400, 43200), (172800, 86400), (604800, 86400), (1814400, 604800),
]
_MONTH, _YEAR = 2592000, 31536000
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
_UNITS = {"ms": MS, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": _YEAR}


def parse_duration(text: str) -> float:
    """'15s', '1m30s', '500ms', '2h' → seconds."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def round_interval(seconds: float) -> float:
    for bound, rounded in _ROUNDING:
        if seconds <= bound:
            return rounded
    return _MONTH if seconds < 3628800 else _YEAR


def format_interval(seconds: float) -> str:
    """gtime.FormatInterval: the largest whole unit (1y, 3d, 2h, 5m, 15s, 200ms)."""
    ms = round(seconds * 1000)
    for unit, size in (("y", _YEAR * 1000), ("d", 86400_000), ("h", 3600_000), ("m", 60_000), ("s", 1000)):
        if ms >= size:
            return f"{ms // size}{unit}"
    return f"{max(ms, 1)}ms"


def go_duration(seconds: float) -> str:
    """Go's time.Duration.String() for whole milliseconds: 4s, 1m0s, 1h2m3s, 1.5s, 500ms."""
    ms = round(seconds * 1000)
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    h, rest = divmod(ms, 3600_000)
    m, rest = divmod(rest, 60_000)
    s = f"{rest / 1000:g}s"
    if h:
        return f"{h}h{m}m{s}"
    if m:
        return f"{m}m{s}"
    return s


@dataclasses.dataclass(frozen=True)
class TimeRange:
    start: dt.datetime  # timezone-aware
    end: dt.datetime

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()

    @classmethod
    def last(cls, seconds: float, now: dt.datetime | None = None) -> TimeRange:
        end = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
        return cls(end - dt.timedelta(seconds=seconds), end)


def interval(time_range: TimeRange, max_data_points: int, min_interval: str | None) -> float:
    """$__interval in seconds: the range spread over the data points, rounded, at least the minimum."""
    calculated = round_interval(time_range.seconds / max_data_points)
    low = parse_duration(min_interval) if min_interval else MS
    return max(calculated, low)


def rate_interval(interval_s: float, scrape_interval: str | None) -> float:
    scrape = parse_duration(scrape_interval or "15s")
    return max(interval_s + scrape, 4 * scrape)


# -- template variables ----------------------------------------------------------------------------


@dataclasses.dataclass
class Variable:
    name: str
    multi: bool = False
    include_all: bool = False
    all_value: str | None = None
    selected: list[str] = dataclasses.field(default_factory=list)  # or [ALL]
    options: list[str] = dataclasses.field(default_factory=list)  # what All stands for

    @classmethod
    def from_dashboard(cls, spec: dict[str, Any], selected: Sequence[str], options: Sequence[str] = ()) -> Variable:
        return cls(spec["name"], bool(spec.get("multi")), bool(spec.get("includeAll")), spec.get("allValue") or None,
                   list(selected), list(options))


def _prometheus_regular_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\\\'")


def _prometheus_regex_escape(value: str) -> str:
    value = value.replace("\\", "\\\\\\\\")
    return re.sub(r"[$^*{}\[\]+?.()|]", lambda m: "\\\\" + m.group(0), value)


def _sql_quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def format_variable(variable: Variable, datasource_type: str) -> str:
    values = variable.selected
    if values == [ALL]:
        if variable.all_value is not None:
            return variable.all_value  # a custom all value goes in verbatim
        values = variable.options
    prometheus = datasource_type == "prometheus"
    if not variable.multi and not variable.include_all:
        (value,) = values
        return _prometheus_regular_escape(value) if prometheus else value.replace("'", "''")
    if prometheus:
        escaped = [_prometheus_regex_escape(v) for v in values]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    return ",".join(_sql_quote(v) for v in values)


_VARIABLE_REF = re.compile(r"\$(\w+)|\$\{(\w+)\}|\[\[(\w+)\]\]")


def replace_variables(text: str, variables: dict[str, Variable], datasource_type: str) -> str:
    """Grafana's templateSrv.replace for the dashboard's own variables; built-ins ($__…) are kept."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name.startswith("__") or name not in variables:
            return match.group(0)
        return format_variable(variables[name], datasource_type)

    return _VARIABLE_REF.sub(substitute, text)


# -- Prometheus ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PromQuery:
    expr: str
    start: float
    end: float
    step: float
    instant: bool


def expand_promql(expr: str, variables: dict[str, Variable], time_range: TimeRange, *, scrape_interval: str,
                  max_data_points: int = 1000, instant: bool = False) -> PromQuery:
    """The query Grafana sends to Prometheus for a panel target (range or instant)."""
    expr = replace_variables(expr, variables, "prometheus")
    frontend = interval(time_range, max_data_points, scrape_interval)
    # The backend's safe resolution: never more than 11000 points.
    step = max(frontend, round_interval(time_range.seconds / 11000))
    rate = rate_interval(frontend, scrape_interval)
    range_s = round(time_range.seconds)
    for name, value in (("$__interval_ms", str(round(step * 1000))), ("$__interval", format_interval(step)),
                        ("$__range_ms", str(round(time_range.seconds * 1000))), ("$__range_s", str(range_s)),
                        ("$__range", f"{range_s}s"), ("$__rate_interval_ms", str(round(rate * 1000))),
                        ("$__rate_interval", go_duration(rate))):
        expr = expr.replace(name, value).replace("${" + name[1:] + "}", value)
    start, end = time_range.start.timestamp(), time_range.end.timestamp()
    # Grafana aligns a range query to its step (models.AlignTimeRange).
    return PromQuery(expr, start // step * step, end // step * step, step, instant)


# -- PostgreSQL ------------------------------------------------------------------------------------

_MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^)]*)\)")


def _rfc3339(t: dt.datetime) -> str:
    text = t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if "." in text:  # Go's RFC3339Nano trims trailing zeros of the fraction
        whole, frac = text[:-1].split(".")
        frac = frac.rstrip("0")
        text = f"{whole}.{frac}Z" if frac else f"{whole}Z"
    return text


def go_float(value: float) -> str:
    """Go's %v of a float64 (strconv 'g', shortest): 300, 0.02, 1.0368e+06 (exponent from 1e6 up)."""
    digits = decimal.Decimal(repr(float(value))).normalize()
    exponent = digits.adjusted()
    if -4 <= exponent < 6:
        text = format(digits, "f")
        return text
    mantissa = format(digits.scaleb(-exponent), "f")
    return f"{mantissa}e{'+' if exponent >= 0 else '-'}{abs(exponent):02d}"


class MacroError(ValueError):
    pass


def expand_sql(sql: str, variables: dict[str, Variable], time_range: TimeRange, *, min_interval: str | None,
               max_data_points: int = 1000) -> str:
    """The SQL Grafana's PostgreSQL datasource runs for a panel target."""
    sql = replace_variables(sql, variables, "grafana-postgresql-datasource")
    step = interval(time_range, max_data_points, min_interval)
    sql = sql.replace("$__interval_ms", str(round(step * 1000))).replace("$__interval", format_interval(step))
    sql = sql.replace("$__unixEpochFrom()", str(int(time_range.start.timestamp())))
    sql = sql.replace("$__unixEpochTo()", str(int(time_range.end.timestamp())))
    start, end = _rfc3339(time_range.start), _rfc3339(time_range.end)
    original = sql

    def macro(match: re.Match[str]) -> str:
        name, args = match.group(1), [a.strip() for a in match.group(2).split(",")]
        if name == "__timeGroup":
            # Grafana < 5.3 compatibility: a comma right after the macro means "with AS time".
            after = original.find(match.group(0)) + len(match.group(0))
            if after < len(original) and original[after] == ",":
                name = "__timeGroupAlias"
        if name == "__time":
            return f'{args[0]} AS "time"'
        if name == "__timeEpoch":
            return f'extract(epoch from {args[0]}) as "time"'
        if name == "__timeFilter":
            return f"{args[0]} BETWEEN '{start}' AND '{end}'"
        if name == "__timeFrom":
            return f"'{start}'"
        if name == "__timeTo":
            return f"'{end}'"
        if name in ("__timeGroup", "__timeGroupAlias"):
            if len(args) < 2:
                raise MacroError(f"macro {name} needs time column and interval and optional fill value")
            seconds = go_float(parse_grafana_interval(args[1].strip("'")))
            group = f"floor(extract(epoch from {args[0]})/{seconds})*{seconds}"
            return group + ' AS "time"' if name == "__timeGroupAlias" else group
        if name == "__unixEpochFilter":
            return (f"{args[0]} >= {int(time_range.start.timestamp())} AND "
                    f"{args[0]} <= {int(time_range.end.timestamp())}")
        raise MacroError(f"unknown macro {name!r}")

    return _MACRO.sub(macro, sql)


def parse_grafana_interval(text: str) -> float:
    """gtime.ParseInterval for the units panels use: Go durations plus d, w (M and y vary by date)."""
    match = re.fullmatch(r"(\d+)([dw])", text)
    if match:
        return int(match.group(1)) * (86400 if match.group(2) == "d" else 604800)
    return parse_duration(text)


# -- dashboards ------------------------------------------------------------------------------------


def load_dashboard(path: Path) -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(path.read_text())
    return dashboard


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that shows data (rows' nested panels included, rows themselves left out)."""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panels({"panels": panel.get("panels", [])})
        else:
            yield panel


def variable_specs(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}
