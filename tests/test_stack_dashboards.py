"""Every query of every dashboard, run the way Grafana runs it, against a stack built like compose's.

No Grafana server can run here, so this is how the dashboards are proven: a real PostgreSQL set up
by compose's init script (provisioning/postgres/) with passwords from secrets/generate, the real
exporter, the real archiver writing the archive as perfwatch_writer, a real Prometheus loading
provisioning/prometheus/ (rules included) and scraping them, and a real Alertmanager loading
provisioning/alertmanager/ between Prometheus and the archiver's webhook (the alert history).
Each panel's query is expanded as Grafana 11/12 expands it (tests/support/grafana.py: variables,
$__rate_interval, the PostgreSQL macros) and must return data; SQL runs as perfwatch_grafana, the
read-only role Grafana logs in as.

Hardware this VM lacks (a PMU, hwmon sensors, cpufreq) comes from one more target: the real perf,
hwmon and cpufreq collectors over a fake perf_event_open (test_perf_collector.FakeKernel) and a fake
/sys tree. Queries go to the real host wherever the real exporter has the metrics they read, and to
that stand-in only for what the real host does not expose.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import math
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import requests
import yaml
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb
from support.alertmanager import Alertmanager
from support.exposition import names
from support.grafana import (
    ALL,
    TimeRange,
    Variable,
    expand_promql,
    expand_sql,
    load_dashboard,
    panels,
    variable_specs,
)
from support.postgres import scalar
from support.procs import REPO, Service, free_port, python_module
from support.prometheus import Prometheus
from support.waiting import wait_until
from test_collectors_fake_host import HWMON, HWMON_LINKS
from test_perf_collector import FakeKernel

from perfwatch.archiver.embedded import EmbeddedPostgres, bin_dir
from perfwatch.common.config import from_mapping
from perfwatch.common.httpserver import WebServer, metrics_handler
from perfwatch.exporter import perf_events as pe
from perfwatch.exporter.collect import CollectorSet, build_registry
from perfwatch.exporter.collectors import load_all
from perfwatch.exporter.collectors.base import Collector, HostPaths
from perfwatch.exporter.collectors.perf import PerfCollector
from perfwatch.exporter.exposition import render

pytestmark = pytest.mark.slow  # a whole stack: PostgreSQL, exporters, archiver and Prometheus, filled with data

DASHBOARDS = sorted((REPO / "grafana/dashboards").glob("*.json"))
SCRAPE = "1s"  # the test stack scrapes every second; the datasources' timeInterval says the same
RECORDING = [r for g in yaml.safe_load((REPO / "provisioning/prometheus/rules/recording.yml").read_text())["groups"]
             for r in g["rules"]]
PROMETHEUS_OWN = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_samples_post_metric_relabeling",
                  "scrape_series_added"}
METRIC_NAME = re.compile(r"\b((?:instance_cpu|instance_device|instance):[a-zA-Z0-9_:]+|"
                         r"(?:perfwatch|node)_[a-zA-Z0-9_]+|process_[a-z_]+|up|scrape_[a-z_]+)\b")


# -- the hardware this VM lacks ---------------------------------------------------------------------

# Per read of a counter: (value added, share of the time it was on the PMU). The ratios are
# plausible (IPC 1.5, 10 % cache misses, ...); hardware counters are multiplexed half the time.
COUNTING = {
    "cycles": 2e9, "instructions": 3e9, "cache-references": 5e7, "cache-misses": 5e6, "branch-instructions": 5e8,
    "branch-misses": 1e7, "stalled-cycles-frontend": 2e8, "stalled-cycles-backend": 4e8, "ref-cycles": 2e9,
    "L1-dcache-loads": 1e9, "L1-dcache-load-misses": 3e7, "L1-icache-loads": 5e8, "L1-icache-load-misses": 5e6,
    "LLC-loads": 2e7, "LLC-load-misses": 4e6, "dTLB-loads": 1e9, "dTLB-load-misses": 1e6, "iTLB-loads": 3e8,
    "iTLB-load-misses": 3e5, "branch-loads": 5e8, "branch-load-misses": 1e7,
}


class CountingKernel(FakeKernel):
    """The fake kernel of the perf tests, with counters that advance at every read like busy CPUs'."""

    def read(self, fd: int, size: int) -> bytes:
        counter = self.open[fd]
        event = pe.EVENTS[counter.event]
        step = 1e9 if not event.uses_pmu else 1e9 * 0.5
        counter.set(counter.value + int(COUNTING.get(counter.event, 1e6) * (1 + counter.cpu / 2)),
                    counter.enabled + int(1e9), counter.running + int(step))
        return super().read(fd, size)


class HardwareHost:
    """/metrics of a host with a PMU, hwmon sensors and cpufreq (perfwatch's own collectors over fakes),
    and the tcpstat and process_groups collectors that are off by default (the compose exporter turns them on)."""

    def __init__(self, root: Path) -> None:
        sysfs = root / "sys"
        files = {**HWMON, "devices/system/cpu/online": "0-1\n"}
        for cpu in (0, 1):
            files |= {f"devices/system/cpu/cpu{cpu}/cpufreq/scaling_cur_freq": f"{2400000 + cpu * 100000}\n",
                      f"devices/system/cpu/cpu{cpu}/cpufreq/cpuinfo_min_freq": "800000\n",
                      f"devices/system/cpu/cpu{cpu}/cpufreq/cpuinfo_max_freq": "3600000\n"}
        for relative, text in files.items():
            (sysfs / relative).parent.mkdir(parents=True, exist_ok=True)
            (sysfs / relative).write_text(text)
        for link, target in HWMON_LINKS.items():
            (sysfs / link).symlink_to(target)
        paths = HostPaths(sysfs=str(sysfs))
        registry = load_all()
        perf = registry["perf"]
        assert issubclass(perf, PerfCollector)  # the registry only knows it as a Collector
        collectors: list[Collector[Any]] = [perf(from_mapping(perf.Options, {}, "collectors.perf"), paths,
                                                 kernel=CountingKernel())]
        collectors += [registry[n](from_mapping(registry[n].Options, {}, f"collectors.{n}"), paths)
                       for n in ("hwmon", "cpufreq", "tcpstat")]  # tcpstat: off by default, as in node_exporter
        # process_groups: off by default too; with the options compose's exporter.yml gives it, over this /proc.
        compose = yaml.safe_load((REPO / "provisioning/perfwatch/exporter.yml").read_text())["collectors"]
        options = {k: v for k, v in compose["process_groups"].items() if k != "enabled"}
        groups = registry["process_groups"]
        collectors.append(groups(from_mapping(groups.Options, options, "collectors.process_groups"), paths))
        self.collectors = CollectorSet(collectors)
        exposed = build_registry(self.collectors, version="test")
        self.server = WebServer("127.0.0.1", 0, {"/metrics": metrics_handler(exposed, render)},
                                server_name="perfwatch-test-hardware")
        self.server.start()
        self.address = f"127.0.0.1:{self.server.port}"

    def stop(self) -> None:
        self.server.stop()
        self.collectors.close()


# -- the stack ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Stack:
    prometheus: Prometheus
    exporter: str  # host:port, the instance label
    hardware: str
    archiver: str
    postgres: EmbeddedPostgres
    secrets: Path
    real_names: set[str]  # what the real exporter and archiver expose
    hardware_names: set[str]
    started: dt.datetime
    alertmanager: Alertmanager

    def grafana_dsn(self) -> str:
        archive = next(d for d in yaml.safe_load((REPO / "provisioning/grafana/datasources/perfwatch.yaml")
                                                  .read_text())["datasources"] if d["uid"] == "archive")
        return make_conninfo(host="127.0.0.1", port=self.postgres.port, dbname=archive["jsonData"]["database"],
                             user=archive["user"], password=(self.secrets / "grafana_db_password").read_text())

    def superuser_dsn(self) -> str:
        return self.postgres.dsn("perfwatch")

    def writer_dsn(self) -> str:
        return writer_dsn(self.secrets, self.postgres.port)


def writer_dsn(secrets: Path, port: int) -> str:
    """The archiver's DSN as secrets/generate wrote it, compose's host name replaced by this stack's."""
    dsn = conninfo_to_dict((secrets / "archiver_dsn").read_text())
    dsn.update(host="127.0.0.1", port=str(port))
    return make_conninfo("", **dsn)


def run_init_script(postgres: EmbeddedPostgres, secrets: Path) -> subprocess.CompletedProcess[str]:
    """compose's docker-entrypoint-initdb.d script, with the environment the postgres image gives it."""
    env = {**os.environ, "PATH": f"{bin_dir()}:{os.environ['PATH']}", "PGHOST": "127.0.0.1",
           "PGPORT": str(postgres.port), "PGPASSWORD": postgres.password, "POSTGRES_USER": "postgres",
           "POSTGRES_DB": "perfwatch", "PERFWATCH_SECRETS_DIR": str(secrets)}
    return subprocess.run(["bash", str(REPO / "provisioning/postgres/10-perfwatch-roles.sh")], env=env,
                          capture_output=True, text=True, timeout=60)


def archiver_config(stack_dir: Path, exporter: str, port: int, dsn_file: Path, dead: str) -> Path:
    """compose's archiver.yml, pointed at this stack and made fast (1 s scrapes, tiers of 2 s and 10 s).
    Here the archiver scrapes the exporter itself (scripts/run's way, and a target down for its alert)
    instead of receiving Prometheus' remote_write (compose's way; test_archiver_remote.py proves it)."""
    config = yaml.safe_load((REPO / "provisioning/perfwatch/archiver.yml").read_text())
    config.update(listen=f"127.0.0.1:{port}", data_dir=str(stack_dir / "archiver"), scrape_interval=SCRAPE,
                  log_level="info")
    # Only the alert webhook stays open: Alertmanager posts to it as in compose.
    config["receive"] = {"alertmanager_webhook": config["receive"]["alertmanager_webhook"]}
    job = "perfwatch"  # the job Prometheus scrapes the exporter as
    config["targets"] = [{"url": f"http://{exporter}/metrics", "job": job},
                         {"url": f"http://{dead}/metrics", "job": job}]  # nothing listens: a target down
    config["database"]["dsn_file"] = str(dsn_file)
    config["policy"] = {"raw_retention": "1h", "rollup_delay": "1s",
                        "tiers": [{"resolution": "2s", "retention": "1d"}, {"resolution": "10s", "retention": "2d"}]}
    config["schedule"] = {"rollup_interval": "1s", "retention_interval": "1h"}
    path = stack_dir / "archiver.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def alertmanager_config(archiver: str) -> dict[str, Any]:
    """compose's alertmanager.yml posting to this stack's archiver, with 1 s groupings (compose's
    are seconds too, but longer than a test should wait)."""
    config: dict[str, Any] = yaml.safe_load((REPO / "provisioning/alertmanager/alertmanager.yml").read_text())
    config["route"].update(group_wait="1s", group_interval="1s")
    for receiver in config["receivers"]:
        for webhook in receiver.get("webhook_configs", []):
            webhook["url"] = urlsplit(webhook["url"])._replace(netloc=archiver).geturl()
    return config


def prometheus_config(exporter: str, hardware: str, archiver: str, prometheus_port: int,
                      alertmanager: str) -> dict[str, Any]:
    """compose's prometheus.yml with the rules as they are, scraping this stack every second and
    alerting to its Alertmanager."""
    config = yaml.safe_load((REPO / "provisioning/prometheus/prometheus.yml").read_text())
    (alertmanagers,) = config["alerting"]["alertmanagers"]
    alertmanagers["static_configs"] = [{"targets": [alertmanager]}]
    config["global"].update(scrape_interval=SCRAPE, evaluation_interval=SCRAPE, scrape_timeout=SCRAPE)
    config["rule_files"] = [str(REPO / "provisioning/prometheus" / f) for f in config["rule_files"]]
    for door in ("remote_write", "remote_read"):  # the archiver scrapes for itself here (archiver_config)
        config.pop(door)
    targets = {"perfwatch": [exporter, hardware], "perfwatch-archiver": [archiver],
               "prometheus": [f"127.0.0.1:{prometheus_port}"]}
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": targets[job["job_name"]]}]
    prometheus_yml: dict[str, Any] = config
    return prometheus_yml


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("stack")
    secrets = root / "secrets"
    subprocess.run([str(REPO / "secrets/generate"), str(secrets)], check=True, capture_output=True)
    postgres = EmbeddedPostgres(root / "postgres")
    postgres.start()
    services: list[Service] = []
    hardware: HardwareHost | None = None
    try:
        init = run_init_script(postgres, secrets)
        assert init.returncode == 0, init.stderr
        dsn_file = root / "archiver_dsn"
        dsn_file.write_text(writer_dsn(secrets, postgres.port))

        exporter_port = free_port()
        exporter = Service(python_module("perfwatch.exporter", "--listen", f"127.0.0.1:{exporter_port}"),
                           root / "exporter.log", ready_url=f"http://127.0.0.1:{exporter_port}/-/ready")
        services.append(exporter.start())
        hardware = HardwareHost(root)
        archiver_port = free_port()
        config = archiver_config(root, f"127.0.0.1:{exporter_port}", archiver_port, dsn_file,
                                 dead=f"127.0.0.1:{free_port()}")
        archiver = Service(python_module("perfwatch.archiver", "--config", str(config)), root / "archiver.log",
                           ready_url=f"http://127.0.0.1:{archiver_port}/-/ready", ready_timeout=90)
        services.append(archiver.start())

        alertmanager = Alertmanager(root / "alertmanager", alertmanager_config(f"127.0.0.1:{archiver_port}"))
        prometheus_port = free_port()
        (root / "prometheus").mkdir()
        prom = Prometheus(root / "prometheus", prometheus_config(f"127.0.0.1:{exporter_port}", hardware.address,
                                                                 f"127.0.0.1:{archiver_port}", prometheus_port,
                                                                 f"127.0.0.1:{alertmanager.port}"),
                          port=prometheus_port)
        with alertmanager, prom:
            real = names(requests.get(f"http://127.0.0.1:{exporter_port}/metrics", timeout=30).text)
            stack = Stack(prom, f"127.0.0.1:{exporter_port}", hardware.address, f"127.0.0.1:{archiver_port}",
                          postgres, secrets, real, names(requests.get(f"http://{hardware.address}/metrics",
                                                                      timeout=30).text),
                          dt.datetime.now(dt.UTC), alertmanager)
            # Data everywhere: recorded rules for both hosts, the archiver's per-tier metrics, and both
            # rollup tiers of the archive past their first buckets.
            prom.wait_for(f'instance:perfwatch_cpu_utilisation:rate5m{{instance="{stack.exporter}"}}', 90)
            prom.wait_for(f'instance:perfwatch_perf_instructions_per_cycle:ratio_rate5m{{instance="{hardware.address}"}}')
            prom.wait_for('count(perfwatch_archiver_rollup_lag_seconds) == 2 and on () '
                          'count(perfwatch_archiver_scrape_failures_total) > 0', 90)
            with psycopg.connect(stack.superuser_dsn(), autocommit=True) as conn:
                wait_until(lambda: scalar(conn, "SELECT count(*) = 2 FROM perfwatch.tier WHERE name IN ('2s', '10s') "
                                                "AND watermark IS NOT NULL")
                           and scalar(conn, "SELECT count(*) > 0 FROM perfwatch.rollup_10s"),
                           "both tiers rolled up", 90, interval=0.5)
            # Let Prometheus scrape the archiver twice after the tiers are there: with a scrape every
            # second, one that started over 1 s from now had another one after now before it.
            tiers_there = time.time()
            prom.wait_for(f'timestamp(up{{job="perfwatch-archiver"}}) > {tiers_there + 1:.3f}')
            stack.real_names |= names(requests.get(f"http://127.0.0.1:{archiver_port}/metrics", timeout=30).text)
            record_alerts(stack)
            seed_history(stack)
            yield stack
    finally:
        for service in reversed(services):
            if service.running:
                service.stop()
        if hardware is not None:
            hardware.stop()
        postgres.stop()


# Two alerts through Alertmanager's API, as Prometheus sends them: one that fires and resolves, one
# still firing. Whole seconds, so that the archive's times can be compared exactly.
RESOLVED_ALERT = "StackAlertResolved"
FIRING_ALERT = "StackAlertFiring"
RESOLVED_AFTER = 12  # seconds from starting to firing to the resolution


def record_alerts(stack: Stack) -> None:
    """The stack's Alertmanager holds both alerts and has posted them to the archiver's webhook: the
    archive has both, the resolved one with its ends_at (Prometheus' own alerts stay pending here)."""
    starts = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=RESOLVED_AFTER + 8)
    ends = starts + dt.timedelta(seconds=RESOLVED_AFTER)

    def alert(name: str, severity: str, **times: dt.datetime) -> dict[str, Any]:
        return {"labels": {"alertname": name, "job": "perfwatch", "instance": stack.exporter, "severity": severity},
                "annotations": {"summary": f"{name} on {stack.exporter}"},
                **{k: v.isoformat() for k, v in times.items()}}

    stack.alertmanager.post_alerts([alert(RESOLVED_ALERT, "warning", startsAt=starts),
                                    # An endsAt a day on: Alertmanager would resolve it 5 minutes on by itself.
                                    alert(FIRING_ALERT, "critical", startsAt=starts + dt.timedelta(seconds=2),
                                          endsAt=starts + dt.timedelta(days=1))])
    query = "SELECT alertname, starts_at, ends_at FROM perfwatch.alert_occurrence WHERE alertname = %s"
    with psycopg.connect(stack.superuser_dsn(), autocommit=True) as conn:
        wait_until(lambda: all(conn.execute(query, [name]).fetchall() for name in (FIRING_ALERT, RESOLVED_ALERT)),
                   "both alerts archived", 60, interval=0.5)
        stack.alertmanager.post_alerts([alert(RESOLVED_ALERT, "warning", startsAt=starts, endsAt=ends)])
        wait_until(lambda: conn.execute(query, [RESOLVED_ALERT]).fetchall() == [(RESOLVED_ALERT, starts, ends)],
                   "the resolution archived", 60, interval=0.5)


def seed_history(stack: Stack) -> None:
    """What seconds of scraping cannot show (a host whose kernel changed, weeks of baseline, a disk
    filling up): each tests/support/stack_seed_*.py writes it into the archive with its `seed(stack)`."""
    for path in sorted((REPO / "tests/support").glob("stack_seed_*.py")):
        module = importlib.import_module(f"support.{path.stem}")
        module.seed(stack)


# -- running the queries ------------------------------------------------------------------------------


def metrics_in(expr: str) -> set[str]:
    """The metrics a PromQL expression reads, a recording rule standing for what its expression reads."""
    out: set[str] = set()
    for name in set(METRIC_NAME.findall(expr)):
        rule = next((r for r in RECORDING if r.get("record") == name), None)
        out |= metrics_in(rule["expr"]) if rule else {name}
    return out


def hosts_for(stack: Stack, expr: str) -> list[str]:
    """The real host wherever it exposes what the query reads; the hardware stand-in otherwise."""
    needed = metrics_in(expr) - PROMETHEUS_OWN
    if needed <= stack.real_names:
        return [stack.exporter, stack.archiver]
    missing = needed - stack.real_names
    assert missing <= stack.hardware_names, f"no target exposes {sorted(missing - stack.hardware_names)}"
    return [stack.hardware]


def label_values(stack: Stack, definition: str, variables: dict[str, Variable]) -> list[str]:
    """A `label_values(selector, label)` variable query, as Grafana sends it to Prometheus' API."""
    match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", definition)
    assert match, definition
    selector = expand_promql(match.group(1), variables, TimeRange.last(3600), scrape_interval=SCRAPE).expr
    now = time.time()
    params: dict[str, str | float] = {"match[]": selector, "start": now - 3600, "end": now}
    r = requests.get(f"{stack.prometheus.url}/api/v1/label/{match.group(2)}/values", params=params, timeout=30).json()
    assert r["status"] == "success", r
    return sorted(r["data"])


def prometheus_variables(stack: Stack, dashboard: dict[str, Any], hosts: list[str]) -> dict[str, Variable]:
    specs = variable_specs(dashboard)
    jobs = label_values(stack, specs["job"]["definition"], {})
    if specs["job"].get("multi"):
        job = Variable.from_dashboard(specs["job"], [ALL], jobs)
    else:
        assert "perfwatch" in jobs, jobs
        job = Variable.from_dashboard(specs["job"], ["perfwatch"], jobs)
    instances = label_values(stack, specs["instance"]["definition"], {"job": job})
    chosen = [h for h in hosts if h in instances]
    assert chosen, f"$instance offers {instances}, none of {hosts}"
    variables = {"job": job, "instance": Variable.from_dashboard(specs["instance"], chosen, instances)}
    # The detail variables (device, mountpoint, interface): All, as a dashboard opens, of what they offer.
    for name, spec in specs.items():
        if name not in variables and spec["type"] == "query":
            offered = label_values(stack, spec["definition"], variables)
            variables[name] = Variable.from_dashboard(spec, [ALL], offered)
    return variables


def run_promql(stack: Stack, expr: str, variables: dict[str, Variable], instant: bool) -> list[dict[str, Any]]:
    query = expand_promql(expr, variables, TimeRange.last(180), scrape_interval=SCRAPE, instant=instant)
    assert "$" not in query.expr, f"left unexpanded: {query.expr}"
    if instant:
        params: dict[str, Any] = {"query": query.expr, "time": query.end}
        url = f"{stack.prometheus.url}/api/v1/query"
    else:
        params = {"query": query.expr, "start": query.start, "end": query.end, "step": query.step}
        url = f"{stack.prometheus.url}/api/v1/query_range"
    body = requests.post(url, data=params, timeout=30).json()  # POST, as the datasource's httpMethod says
    assert body["status"] == "success", f"{query.expr}: {body}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def values_of(result: list[dict[str, Any]]) -> list[float]:
    return [float(v) for series in result for _, v in (series.get("values") or [series["value"]])]


def sql_variables(conn: psycopg.Connection[Any], dashboard: dict[str, Any],
                  time_range: TimeRange) -> dict[str, Variable]:
    specs = variable_specs(dashboard)
    jobs = [row[0] for row in conn.execute(expand_sql(specs["job"]["query"], {}, time_range, min_interval=SCRAPE))]
    assert "perfwatch" in jobs, jobs
    job = Variable.from_dashboard(specs["job"], ["perfwatch"], jobs)
    instances = [row[0] for row in conn.execute(expand_sql(specs["instance"]["query"], {"job": job}, time_range,
                                                           min_interval=SCRAPE))]
    # The compare panels look `offset` back; the stack's history is seconds long.
    variables = {"job": job, "instance": Variable.from_dashboard(specs["instance"], [ALL], instances),
                 "offset": Variable("offset", selected=["5 seconds"])}
    # The detail variables (alertname, severity): All, as a dashboard opens, of what they offer.
    for name, spec in specs.items():
        if name not in variables and spec["type"] == "query":
            offered = [row[0] for row in conn.execute(expand_sql(spec["query"], variables, time_range,
                                                                 min_interval=SCRAPE))]
            variables[name] = Variable.from_dashboard(spec, [ALL], offered)
    return variables


def run_sql(conn: psycopg.Connection[Any], target: dict[str, Any], variables: dict[str, Variable],
            time_range: TimeRange, max_data_points: int) -> tuple[list[str], list[tuple[Any, ...]]]:
    sql = expand_sql(target["rawSql"], variables, time_range, min_interval=SCRAPE, max_data_points=max_data_points)
    assert "$" not in sql.replace("$__", "") and "$__" not in sql, f"left unexpanded: {sql}"
    cur = conn.execute(sql)
    assert cur.description is not None
    return [c.name for c in cur.description], cur.fetchall()


def check_sql_result(title: str, fmt: str, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    assert rows, f"{title}: no rows"
    if fmt == "time_series":
        assert "time" in columns, f"{title}: no `time` column in {columns}"
        t = columns.index("time")
        times = [row[t] if isinstance(row[t], dt.datetime) else dt.datetime.fromtimestamp(float(row[t]), dt.UTC)
                 for row in rows]
        assert times == sorted(times), f"{title}: Grafana needs the rows sorted by time"
        values = [row[i] for row in rows for i, c in enumerate(columns) if c not in ("time", "metric")]
        assert any(v is not None and math.isfinite(float(v)) for v in values), f"{title}: no value"


PANELS = [(path.name, panel["title"]) for path in DASHBOARDS for panel in panels(load_dashboard(path))]


@pytest.mark.parametrize(("file", "title"), PANELS, ids=[f"{f[:-5]}: {t}" for f, t in PANELS])
def test_panel_returns_data(stack: Stack, file: str, title: str) -> None:
    dashboard = load_dashboard(REPO / "grafana/dashboards" / file)
    panel = next(p for p in panels(dashboard) if p["title"] == title)
    if panel["datasource"]["type"] == "prometheus":
        for target in panel["targets"]:
            variables = prometheus_variables(stack, dashboard, hosts_for(stack, target["expr"]))
            result = run_promql(stack, target["expr"], variables, target.get("instant", False))
            assert result, f"{title} {target['refId']}: no series for {variables['instance'].selected}"
            # A latency is 0/0 = NaN while a device is idle, which Grafana draws as a gap.
            if "latency" not in target["legendFormat"]:
                assert any(math.isfinite(v) for v in values_of(result)), f"{title} {target['refId']}: only NaN"
        return
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    time_range = TimeRange(stack.started - dt.timedelta(minutes=2), now)
    with psycopg.connect(stack.grafana_dsn()) as conn:
        variables = sql_variables(conn, dashboard, time_range)
        for target in panel["targets"]:
            # The default step (1 s here: raw samples) and a 10 s step, which the 10 s tier serves.
            for points in (1000, round(time_range.seconds / 10)):
                columns, rows = run_sql(conn, target, variables, time_range, points)
                check_sql_result(f"{title} {target['refId']} ({points} points)", target["format"], columns, rows)


PROMETHEUS_DASHBOARDS = [path.name for path in DASHBOARDS
                         if variable_specs(load_dashboard(path))["datasource"]["query"] == "prometheus"]


@pytest.mark.parametrize("file", PROMETHEUS_DASHBOARDS)
def test_all_selects_what_the_variable_offers_and_nothing_more(stack: Stack, file: str) -> None:
    """`All` goes into the query as the variable's allValue (a regex): it must select the jobs and
    instances the variable lists, not every target Prometheus scrapes (Prometheus' own, say)."""
    specs = variable_specs(load_dashboard(REPO / "grafana/dashboards" / file))
    jobs = label_values(stack, specs["job"]["definition"], {})
    job = Variable.from_dashboard(specs["job"], [ALL] if specs["job"].get("includeAll") else ["perfwatch"], jobs)
    instances = label_values(stack, specs["instance"]["definition"], {"job": job})
    variables = {"job": job, "instance": Variable.from_dashboard(specs["instance"], [ALL], instances)}
    for label, allowed in (("job", set(job.options if job.selected == [ALL] else job.selected)),
                           ("instance", set(instances))):
        expr = f'count by ({label}) ({{job=~"$job", instance=~"$instance"}})'
        selected = {series["metric"][label] for series in run_promql(stack, expr, variables, instant=True)}
        assert selected == allowed, f"{file}: All selects {label} {sorted(selected)}, not {sorted(allowed)}"


def test_ten_second_steps_are_served_by_the_ten_second_tier(stack: Stack) -> None:
    time_range = TimeRange(stack.started - dt.timedelta(minutes=2), dt.datetime.now(dt.UTC).replace(microsecond=0))
    with psycopg.connect(stack.grafana_dsn()) as conn:
        plan = expand_sql("SELECT tier FROM perfwatch.plan_tiers($__timeFrom(), $__timeTo(), "
                          "make_interval(secs => $__interval_ms / 1000.0))", {}, time_range, min_interval=SCRAPE,
                          max_data_points=round(time_range.seconds / 10))
        assert "10s" in {row[0] for row in conn.execute(plan)}
        plan = expand_sql("SELECT tier FROM perfwatch.plan_tiers($__timeFrom(), $__timeTo(), "
                          "make_interval(secs => $__interval_ms / 1000.0))", {}, time_range, min_interval=SCRAPE)
        assert {row[0] for row in conn.execute(plan)} == {"raw"}


def test_grafana_role_as_compose_creates_it_only_reads(stack: Stack) -> None:
    with psycopg.connect(stack.grafana_dsn(), autocommit=True) as conn:
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        assert conn.execute("SHOW statement_timeout").fetchone() == ("30s",)
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (False,)
        for statement in ("INSERT INTO perfwatch.metric (name, kind, family_type) VALUES ('x', 'gauge', 'gauge')",
                          "DELETE FROM perfwatch.series", "CREATE TABLE perfwatch.x (a int)",
                          "CREATE TEMPORARY TABLE x (a int)", "SET default_transaction_read_only = off; "
                          "CREATE TABLE perfwatch.y (a int)"):
            with pytest.raises(psycopg.Error):
                conn.execute(statement)
        assert scalar(conn, "SELECT count(*) FROM perfwatch.panel('node_load1', '{}', now() - interval '1h', "
                            "now(), '10 seconds')") > 0


def test_writer_role_as_compose_creates_it_owns_the_archive_and_nothing_more(stack: Stack) -> None:
    with psycopg.connect(stack.superuser_dsn(), autocommit=True) as conn:
        writer = conn.execute("SELECT rolsuper, rolcreaterole, rolcreatedb, rolcanlogin FROM pg_roles "
                              "WHERE rolname = 'perfwatch_writer'").fetchone()
        assert writer == (False, False, False, True)
        assert conn.execute("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'perfwatch'"
                            ).fetchone() == ("perfwatch_writer",)
        assert scalar(conn, "SELECT count(*) FROM perfwatch.schema_migration") >= 4


def test_grafana_role_defaults_match_what_the_migrations_give_it(stack: Stack, pg_dsn: str) -> None:
    """The init script creates perfwatch_grafana before the first migration, which then leaves its
    defaults alone: they must be the ones 0001_roles.sql gives the role where it creates it."""
    from perfwatch.archiver.db import make_engine
    from perfwatch.archiver.migrate import apply_migrations

    engine = make_engine(pg_dsn)
    try:
        apply_migrations(engine)  # creates the roles in the shared test server if missing
    finally:
        engine.dispose()
    query = ("SELECT array(SELECT unnest(setconfig) ORDER BY 1) FROM pg_db_role_setting "
             "WHERE setrole = 'perfwatch_grafana'::regrole AND setdatabase = 0")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        migrated = conn.execute(query).fetchone()
    with psycopg.connect(stack.superuser_dsn(), autocommit=True) as conn:
        composed = conn.execute(query).fetchone()
    assert composed == migrated and composed is not None


def test_init_script_fails_loudly_without_its_secrets(tmp_path: Path, stack: Stack) -> None:
    result = run_init_script(stack.postgres, tmp_path / "nothing-here")
    assert result.returncode != 0 and "archiver_db_password" in result.stderr


def test_rules_evaluate_cleanly_and_every_recording_rule_matches_real_series(stack: Stack) -> None:
    """The promtool tests use synthetic series; here the same rules meet the real exposition."""
    groups = requests.get(f"{stack.prometheus.url}/api/v1/rules", timeout=30).json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    in_files = [rule for path in (REPO / "provisioning/prometheus/rules").glob("*.yml")
                for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]
    assert len(rules) == len(in_files) > 0, "Prometheus did not load every rule of provisioning/prometheus/rules/"
    for rule in rules:
        assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
    for rule in (r for r in rules if r["type"] == "recording"):
        if stack.prometheus.query(rule["name"]):
            continue
        # Empty only by the rule's own guard against a zero denominator (this VM has no swap).
        unguarded = re.sub(r"\s*>\s*0\)", ")", rule["query"])
        assert unguarded != rule["query"] and stack.prometheus.query(unguarded), \
            f"{rule['name']} reads nothing from the real exporter or the stand-in"


def test_alerts_see_the_stack_as_it_is(stack: Stack) -> None:
    """The archiver's dead target makes its alert pending (5 minutes before firing), with the target
    in exported_instance; nothing says the exporter, archiver or database is down."""
    alerts = requests.get(f"{stack.prometheus.url}/api/v1/alerts", timeout=30).json()["data"]["alerts"]
    active = {(a["labels"]["alertname"], a["labels"].get("exported_instance", a["labels"].get("instance")))
              for a in alerts}
    dead = [a for a in alerts if a["labels"]["alertname"] == "PerfwatchArchiverTargetDown"]
    assert len(dead) == 1 and dead[0]["state"] == "pending"
    assert dead[0]["labels"]["instance"] == stack.archiver and dead[0]["labels"]["exported_job"] == "perfwatch"
    assert dead[0]["labels"]["exported_instance"] not in (stack.exporter, stack.hardware)
    for name in ("PerfwatchExporterDown", "PerfwatchArchiverDown", "PerfwatchArchiveDatabaseDown",
                 "PerfwatchCollectorFailing", "PerfwatchPerfCountersUnavailable"):
        assert not any(n == name for n, _ in active), (name, active)


def test_prometheus_alerts_to_the_alertmanager_which_archives_every_alert(stack: Stack) -> None:
    """compose's wiring: Prometheus knows the Alertmanager, which posted both alerts to the archiver,
    firing and resolved, with Alertmanager's own times (record_alerts)."""
    found = requests.get(f"{stack.prometheus.url}/api/v1/alertmanagers", timeout=30).json()["data"]
    assert [a["url"] for a in found["activeAlertmanagers"]] == [f"{stack.alertmanager.url}/api/v2/alerts"]
    held = {a["labels"]["alertname"]: a["status"]["state"] for a in stack.alertmanager.alerts()}
    assert held[FIRING_ALERT] == "active" and RESOLVED_ALERT not in held  # the API lists no resolved alert
    # Only these two: the dead target's alert may fire and be archived too on a slow run.
    ours = Jsonb({"alertname": [FIRING_ALERT, RESOLVED_ALERT]})
    with psycopg.connect(stack.grafana_dsn()) as conn:
        rows = conn.execute("SELECT alertname, severity, instance, ends_at - starts_at, firing, receiver "
                            "FROM perfwatch.alert_history(now() - interval '1 hour', now(), %s) ORDER BY alertname",
                            [ours]).fetchall()
        resolve = conn.execute("SELECT alertname, instance, resolved, mean_seconds, p90_seconds "
                               "FROM perfwatch.alert_resolve_times(now() - interval '1 hour', now(), %s)",
                               [ours]).fetchall()
    assert rows == [(FIRING_ALERT, "critical", stack.exporter, None, True, "archive"),
                    (RESOLVED_ALERT, "warning", stack.exporter, dt.timedelta(seconds=RESOLVED_AFTER), False, "archive")]
    assert resolve == [(RESOLVED_ALERT, stack.exporter, 1, RESOLVED_AFTER, RESOLVED_AFTER)]


def test_alert_history_panels_count_exactly_the_alerts_sent(stack: Stack) -> None:
    """The dashboard as it opens (job perfwatch, the rest All) shows record_alerts' two alerts: one
    firing, both started, one resolved after RESOLVED_AFTER seconds, on the exporter's instance."""
    dashboard = load_dashboard(REPO / "grafana/dashboards/alerts.json")
    shown = {p["title"]: p for p in panels(dashboard)}
    time_range = TimeRange(stack.started - dt.timedelta(minutes=2), dt.datetime.now(dt.UTC).replace(microsecond=0))
    expected: dict[str, list[tuple[Any, ...]]] = {
        "Firing now": [(1,)], "Started in range": [(2,)], "Resolved in range": [(1,)],
        "Mean time to resolve": [(RESOLVED_AFTER,)],
        "Time to resolve per alert and host": [(RESOLVED_ALERT, stack.exporter, 1, RESOLVED_AFTER, RESOLVED_AFTER,
                                                RESOLVED_AFTER)],
        "Occurrences by severity": [("critical", 1), ("warning", 1)],
    }
    with psycopg.connect(stack.grafana_dsn()) as conn:
        variables = sql_variables(conn, dashboard, time_range)
        assert variables["alertname"].options == [FIRING_ALERT, RESOLVED_ALERT]
        for title, rows in expected.items():
            (target,) = shown[title]["targets"]
            assert run_sql(conn, target, variables, time_range, 1000)[1] == rows, title
        history = run_sql(conn, shown["Alert history"]["targets"][0], variables, time_range, 1000)
    columns, rows = history
    got = [(row[columns.index("alert")], row[columns.index("state")], row[columns.index("duration")])
           for row in rows]  # latest start first
    assert [g[:2] for g in got] == [(FIRING_ALERT, "firing"), (RESOLVED_ALERT, "resolved")]
    assert got[1][2] == RESOLVED_AFTER and got[0][2] > 0
