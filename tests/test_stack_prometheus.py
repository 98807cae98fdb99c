"""Prometheus' config and rules, checked and unit-tested by the real promtool (Debian's 2.42).

promtool's own unit tests (provisioning/prometheus/tests/*.yml) hold the expectations; these
tests run them, make sure every alert and recording rule has one, that they can fail, and that
every alert points at a runbook section that exists in README.md.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.prometheus import promtool

REPO = Path(__file__).resolve().parents[1]
PROM_DIR = REPO / "provisioning/prometheus"
RULE_FILES = sorted((PROM_DIR / "rules").glob("*.yml"))
TEST_FILES = sorted((PROM_DIR / "tests").glob("*_test.yml"))
RUNBOOK_BASE = "https://github.com/perfwatch/perfwatch/blob/main/README.md"  # where the README is published


def rules() -> list[dict[str, Any]]:
    return [rule for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"]]


def unit_tests() -> list[dict[str, Any]]:
    return [test for path in TEST_FILES for test in yaml.safe_load(path.read_text())["tests"]]


def readme_anchors() -> set[str]:
    """GitHub's anchors for README.md's headings: lower case, punctuation dropped, spaces → -."""
    anchors = set()
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def test_promtool_check_config() -> None:
    result = promtool("check", "config", str(PROM_DIR / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in result.stdout


def test_promtool_check_rules_lint_all() -> None:
    result = promtool("check", "rules", "--lint=all", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_FILES)


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda p: p.name)
def test_promtool_test_rules(path: Path) -> None:
    result = promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    fired: set[tuple[str, str]] = set()
    quiet: set[str] = set()
    for test in unit_tests():
        for case in test.get("alert_rule_test", []):
            if case["exp_alerts"]:
                fired |= {(case["alertname"], alert["exp_labels"]["severity"]) for alert in case["exp_alerts"]}
            else:
                quiet.add(case["alertname"])
    alerts = {(rule["alert"], rule["labels"]["severity"]) for rule in rules() if "alert" in rule}
    assert len(alerts) >= 20
    assert alerts - fired == set(), "alerts (name, severity) never shown firing"
    assert {name for name, _ in alerts} - quiet == set(), "alerts never shown staying quiet"
    assert fired <= alerts, "tests expect alerts that do not exist"


def test_every_recording_rule_is_tested() -> None:
    tested = set()
    for test in unit_tests():
        for case in test.get("promql_expr_test", []):
            assert case["exp_samples"], f"{case['expr']}: a recording-rule test must expect samples"
            tested.add(case["expr"].split("{")[0].strip())
    records = {rule["record"] for rule in rules() if "record" in rule}
    assert records - tested == set(), "recording rules without a promtool test"
    # Each test file names the rule files it needs; a recording rule the alerts use is loaded too.
    for path in TEST_FILES:
        for rule_file in yaml.safe_load(path.read_text())["rule_files"]:
            assert (path.parent / rule_file).resolve() in RULE_FILES


def test_every_alert_has_a_summary_description_and_runbook_in_the_readme() -> None:
    anchors = readme_anchors()
    for rule in rules():
        if "alert" not in rule:
            continue
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        # node-mixin's convention: an absolute runbook_url, here the README's runbook section.
        assert annotations["runbook_url"] == f"{RUNBOOK_BASE}#{rule['alert'].lower()}", rule["alert"]
        assert "runbook" not in annotations, rule["alert"]
        assert rule["alert"].lower() in anchors, f"README.md has no runbook section for {rule['alert']}"


def test_alert_pairs_are_a_warning_then_a_critical() -> None:
    by_name: dict[str, list[dict[str, Any]]] = {}
    for rule in rules():
        if "alert" in rule:
            by_name.setdefault(rule["alert"], []).append(rule)
    for name, pair in by_name.items():
        severities = [rule["labels"]["severity"] for rule in pair]
        assert severities in (["warning"], ["critical"], ["warning", "critical"]), name


def test_the_unit_tests_can_fail(tmp_path: Path) -> None:
    """A rule with a changed threshold must make promtool's tests fail: they are not vacuous."""
    shutil.copytree(PROM_DIR, tmp_path / "prometheus")
    alerts = tmp_path / "prometheus/rules/alerts.yml"
    text = alerts.read_text()
    weakened = text.replace("rate(node_pressure_cpu_waiting_seconds_total[5m]) > 0.5",
                            "rate(node_pressure_cpu_waiting_seconds_total[5m]) > 0.7", 1)
    assert weakened != text
    alerts.write_text(weakened)
    recording = tmp_path / "prometheus/rules/recording.yml"
    text = recording.read_text()
    swapped = text.replace('mode=~"idle|iowait|steal"', 'mode=~"idle|iowait"', 1)
    assert swapped != text
    recording.write_text(swapped)
    for name, needle in (("host_alerts_test.yml", "PerfwatchCPUPressureHigh"),
                         ("recording_test.yml", "instance_cpu:perfwatch_cpu_utilisation:rate5m")):
        result = promtool("test", "rules", str(tmp_path / "prometheus/tests" / name))
        assert result.returncode != 0
        assert "FAILED" in result.stdout + result.stderr and needle in result.stdout + result.stderr
