"""Lint of the provisioned dashboards (grafana/dashboards/*.json) against what file provisioning
and Grafana 11/12 need: classic JSON with pinned unique uids and no `__inputs`, a datasource
variable every panel uses, job and instance variables every query filters on, a unit and a
description on every panel, `$__rate_interval` for every rate. Running the queries is
test_stack_dashboards.py's job."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.grafana import panels, variable_specs

REPO = Path(__file__).resolve().parents[1]
DASHBOARD_FILES = sorted((REPO / "grafana/dashboards").glob("*.json"))
DATASOURCES = {d["type"]: d["uid"] for d in yaml.safe_load(
    (REPO / "provisioning/grafana/datasources/perfwatch.yaml").read_text())["datasources"]}
# Grafana unit ids the dashboards use (Grafana's valueFormats registry).
UNITS = {"percentunit", "none", "short", "bytes", "decbytes", "Bps", "s", "ms", "dtdurations", "hertz", "ops",
         "iops", "pps", "celsius", "rotrpm", "dateTimeAsIso", "dateTimeAsSystem"}
BUILTINS = {"__interval", "__interval_ms", "__rate_interval", "__rate_interval_ms", "__range", "__range_s",
            "__range_ms", "__from", "__to", "__timeFrom", "__timeTo", "__timeFilter", "__timeGroup",
            "__timeGroupAlias", "__unixEpochFilter", "__unixEpochFrom", "__unixEpochTo"}
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
METRIC = re.compile(r"(?<![\w\"$.])((?:perfwatch|instance|instance_cpu|instance_device)[a-zA-Z0-9_:]*|up|"
                    r"scrape_[a-z_]+|process_[a-z_]+)\b(?!\s*\()")


def load(path: Path) -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(path.read_text())
    return dashboard


def targets(dashboard: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(panel, target) for panel in panels(dashboard) for target in panel["targets"]]


def test_there_are_the_nine_dashboards() -> None:
    uids = {load(path)["uid"] for path in DASHBOARD_FILES}
    assert uids == {"perfwatch-host", "perfwatch-perf", "perfwatch-history", "perfwatch-self", "perfwatch-fleet",
                    "perfwatch-alerts", "perfwatch-inventory", "perfwatch-anomalies", "perfwatch-capacity"}


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_classic_json_for_file_provisioning(path: Path) -> None:
    text = path.read_text()
    dashboard = json.loads(text)
    # File provisioning never substitutes ${DS_...} inputs: such a dashboard shows "datasource not found".
    assert "__inputs" not in dashboard and "__requires" not in dashboard and "${DS_" not in text
    assert dashboard["id"] is None and dashboard["editable"] is False
    assert re.fullmatch(r"perfwatch-[a-z]+", dashboard["uid"]) and len(dashboard["uid"]) <= 40
    assert dashboard["title"].startswith("perfwatch / ") and "perfwatch" in dashboard["tags"]
    assert dashboard["schemaVersion"] >= 36 and "elements" not in dashboard  # not the v2 schema
    assert dashboard["description"]


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_variables(path: Path) -> None:
    dashboard = load(path)
    variables = variable_specs(dashboard)
    assert list(variables)[:3] == ["datasource", "job", "instance"]
    source = variables["datasource"]
    assert source["type"] == "datasource" and source["query"] in DATASOURCES
    assert source["current"]["value"] == DATASOURCES[source["query"]], "defaults to the pinned uid"
    for name in ("job", "instance"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == {"type": source["query"], "uid": "${datasource}"}
        assert variables[name]["definition"] and variables[name]["refresh"] in (1, 2)
    assert variables["instance"]["multi"] and variables["instance"]["includeAll"]


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_every_panel_uses_the_datasource_variable_and_has_unit_and_description(path: Path) -> None:
    dashboard = load(path)
    kind = variable_specs(dashboard)["datasource"]["query"]
    ids = [p["id"] for p in dashboard["panels"]] + [p["id"] for p in panels(dashboard)
                                                    if p not in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    shown = list(panels(dashboard))
    assert len(shown) >= 10
    for panel in shown:
        where = f"{path.name}: {panel['title']}"
        assert panel["datasource"] == {"type": kind, "uid": "${datasource}"}, where
        assert len(panel.get("description", "")) >= 20, f"{where}: no description"
        assert panel["fieldConfig"]["defaults"].get("unit") in UNITS, f"{where}: unit"
        assert panel["targets"], where
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24 and position["h"] > 0
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], where
    titles = [p["title"] for p in shown]
    assert len(titles) == len(set(titles)), "panel titles must be unique within a dashboard"


def prometheus_targets() -> list[tuple[str, str, str]]:
    out = []
    for path in DASHBOARD_FILES:
        dashboard = load(path)
        for panel, target in targets(dashboard):
            if "expr" in target:
                out.append((path.name, panel["title"], target["expr"]))
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query" and variable["datasource"]["type"] == "prometheus":
                out.append((path.name, f"${variable['name']}", variable["definition"]))
    return out


@pytest.mark.parametrize(("name", "title", "expr"), prometheus_targets(), ids=lambda v: str(v)[:40])
def test_promql_filters_on_job_and_instance_and_rates_over_rate_interval(name: str, title: str, expr: str) -> None:
    if not title.startswith("$"):
        # predict_linear() and deriv() fit a line over the dashboard's whole range: not a rate over a few scrapes
        fitted = r"\b(?:predict_linear|deriv)\(\s*[a-zA-Z_:][\w:]*(?:\{[^}]*\})?\[\$__range\]"
        for window in re.findall(r"\[([^\]]*)\]", re.sub(fitted, "", expr)):
            assert window == "$__rate_interval", f"{title}: [{window}] — use [$__rate_interval]"
        assert not re.search(r"\b(rate|irate|increase)\(\w+(\{[^}]*\})?\)", expr), "a rate without a window"
    selectors = SELECTOR.findall(expr)
    for metric, matchers in selectors:
        if metric in ("label_values", "sum", "count", "min", "max", "avg", "by", "without"):
            continue
        if title == "$job":
            continue
        assert 'job=~"$job"' in matchers, f"{title}: {metric}{{{matchers}}} does not filter on $job"
        if title != "$instance":
            assert 'instance=~"$instance"' in matchers, f"{title}: {metric}{{{matchers}}} does not filter on $instance"
    without_selectors = SELECTOR.sub("", expr)
    bare = [m for m in METRIC.findall(without_selectors) if m not in ("instance",)]
    assert not bare or title == "$job", f"{title}: metrics without a selector: {bare}"


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_every_variable_a_query_uses_is_defined(path: Path) -> None:
    dashboard = load(path)
    defined = set(variable_specs(dashboard))
    for panel, target in targets(dashboard):
        query = target.get("expr") or target.get("rawSql", "")
        used = set(re.findall(r"\$\{?(\w+)", query))
        assert used - defined - BUILTINS == set(), f"{panel['title']}: undefined {used - defined - BUILTINS}"
        assert "[[" not in query, "deprecated [[var]] syntax"


def sql_targets() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    return [(path.name, panel, target) for path in DASHBOARD_FILES for panel, target in targets(load(path))
            if "rawSql" in target]


def test_sql_panels_are_bounded_by_the_time_range_and_free_of_comments() -> None:
    found = sql_targets()
    assert len(found) >= 8
    for _name, panel, target in found:
        query = target["rawSql"]
        assert target["format"] in ("time_series", "table") and target.get("rawQuery") is True
        # Newer Grafana strips SQL comments before expanding macros; keep the queries free of them.
        assert "--" not in query and "/*" not in query, panel["title"]
        bounded = "$__timeFrom()" in query or "$__timeFilter(" in query
        assert bounded or "tier_status()" in query, f"{panel['title']}: not limited to the dashboard's time range"
        if target["format"] == "time_series":
            assert re.search(r"\btime\b|\$__timeGroupAlias\(|\$__time\(", query), \
                f"{panel['title']}: a time series needs a `time` column"
