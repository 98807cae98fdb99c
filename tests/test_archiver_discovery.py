"""file_sd_configs: the archiver's targets from files in Prometheus' file_sd format, followed as they change."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.archiver import ArchiverProcess, archived
from support.procs import REPO
from support.synthetic import SyntheticExporter

from perfwatch.archiver import discovery
from perfwatch.archiver.discovery import Entry, FileDiscovery, Found, merge, parse_groups
from perfwatch.archiver.scrape import Target
from perfwatch.archiver.selfmetrics import ArchiverMetrics
from perfwatch.archiver.service import Archiver
from perfwatch.archiver.settings import ArchiverSettings, load_settings
from perfwatch.common.config import ConfigError, from_mapping


def write_atomically(path: Path, content: Any) -> None:
    """What a generator of target files should do (and what Prometheus' docs ask): write aside, rename."""
    text = content if isinstance(content, str) else json.dumps(content)
    aside = path.with_name(path.name + ".new")
    aside.write_text(text)
    os.replace(aside, path)


def sd_settings(pattern: Path | str, **entry: Any) -> ArchiverSettings:
    return from_mapping(ArchiverSettings, {"scrape_interval": "5s",
                                           "file_sd_configs": [{"files": [str(pattern)], **entry}]})


class Watch:
    """A FileDiscovery on a clock the test moves, recording what it hands on."""

    def __init__(self, settings: ArchiverSettings) -> None:
        self.now = 1000.0
        self.handed: list[list[Found]] = []
        self.metrics = ArchiverMetrics()
        self.discovery = FileDiscovery(lambda _generation, found: self.handed.append(found), self.metrics,
                                       clock=lambda: self.now)
        _, found = self.discovery.reconfigure(settings)
        self.first = found

    def targets(self) -> list[tuple[str, str, str]]:
        """(job, instance, url) of what it found last, handed on or read at the start."""
        found = self.handed[-1] if self.handed else self.first
        return [(f.target.job, f.target.instance, f.target.url) for f in found]

    def errors(self) -> float:
        return self.metrics.registry.get_sample_value("perfwatch_archiver_sd_file_read_errors_total") or 0.0


# -- a file's groups ---------------------------------------------------------------------------

def test_json_groups_become_targets_with_their_labels_job_and_instance(tmp_path: Path) -> None:
    write_atomically(tmp_path / "nodes.json", [
        {"targets": ["a:9100", "b.example:9100"],
         "labels": {"site": "lab", "job": "node", "__meta_datacenter": "x", "__address__": "elsewhere:1"}},
        {"targets": ["[::1]:10280"], "labels": {"instance": "me", "empty": ""}},
        {"targets": ["c:10280"]},
    ])
    settings = sd_settings(tmp_path / "*.json", scrape_interval="30s", sample_limit=10)
    found = Watch(settings).first
    assert [f.source for f in found] == [str(tmp_path / "nodes.json")] * 4
    a, b, v6, c = (f.target for f in found)
    assert (a.url, a.job, a.instance, a.labels) == ("http://a:9100/metrics", "node", "a:9100", (("site", "lab"),))
    assert (b.job, b.instance, b.url) == ("node", "b.example:9100", "http://b.example:9100/metrics")
    # `instance` overrides host:port; an empty label is no label; the entry's job is the default.
    assert (v6.url, v6.job, v6.instance, v6.labels) == ("http://[::1]:10280/metrics", "perfwatch", "me", ())
    assert (c.job, c.instance, c.labels) == ("perfwatch", "c:10280", ())
    # How to scrape comes from the entry, and from the top level where the entry says nothing.
    assert (a.interval, a.timeout, a.limits.sample_limit, a.limits.label_limit) == (30.0, 10.0, 10, 64)


def test_yaml_groups_are_read_as_prometheus_reads_them(tmp_path: Path) -> None:
    (tmp_path / "a.yml").write_text(
        "- targets: ['h1:9100']\n"
        "  labels: {rack: 12, __scheme__: https, __metrics_path__: /probe}\n"
        "- targets: ['h2:9100']\n")
    (tmp_path / "b.yaml").write_text("")  # empty: no groups, not an error
    settings = from_mapping(ArchiverSettings, {"scrape_interval": "5s", "file_sd_configs": [{
        "files": [str(tmp_path / "*.yml"), str(tmp_path / "*.yaml"), str(tmp_path / "a.yml")],  # a.yml read once
        "scheme": "https", "metrics_path": "/m", "job": "edge", "scrape_timeout": "2s"}]})
    watch = Watch(settings)
    assert watch.targets() == [("edge", "h1:9100", "https://h1:9100/probe"), ("edge", "h2:9100", "https://h2:9100/m")]
    assert watch.first[0].target.labels == (("rack", "12"),)  # a number in YAML is the string it reads as
    assert watch.first[1].target.timeout == 2.0
    assert watch.errors() == 0


def test_unknown_group_keys_fail_a_yaml_file_and_not_a_json_one() -> None:
    """Prometheus reads YAML target files strictly and JSON ones not: so does the archiver."""
    assert parse_groups('[{"targets": ["h:1"], "comment": "x"}]', json_format=True) == [Entry("h:1")]
    with pytest.raises(discovery.GroupError, match=r"\[0\]\.comment: unknown key"):
        parse_groups("- targets: ['h:1']\n  comment: x\n", json_format=False)


@pytest.mark.parametrize(("text", "why"), [
    ('[{"targets": ["a:1"]', "not valid JSON"),
    ('{"targets": ["a:1"]}', "must be a list of target groups, not a mapping"),
    ('["a:1"]', "[0]: a target group is a mapping"),
    ('[{"targets": "a:1"}]', "[0].targets: must be a list"),
    ('[{"targets": ["http://a:1/metrics"]}]', "[0].targets[0]: 'http://a:1/metrics' is not host:port"),
    ('[{"targets": ["a"]}]', "[0].targets[0]: 'a' is not host:port"),
    ('[{"targets": ["a:0"]}]', "is not host:port"),
    ('[{"targets": ["::1:80"]}]', "is not host:port"),
    ('[{"targets": [9100]}]', "[0].targets[0]: 9100 is not host:port"),
    ('[{"targets": ["a:1"], "labels": {"bad-name": "x"}}]', "[0].labels: 'bad-name' is not a valid label name"),
    ('[{"targets": ["a:1"], "labels": {"n": 1}}]', "[0].labels.n: a label value is a string"),
    ('[{"targets": ["a:1"], "labels": {"__scheme__": "ftp"}}]', "neither http nor https"),
    ('[{"targets": ["a:1"], "labels": ["x"]}]', "[0].labels: must be a mapping"),
])
def test_a_file_that_cannot_be_used_keeps_its_last_good_targets_and_says_so_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str, why: str) -> None:
    nodes = tmp_path / "nodes.json"
    write_atomically(nodes, [{"targets": ["a:1", "b:1"]}])
    watch = Watch(sd_settings(tmp_path / "*.json", refresh_interval="1m"))
    assert [t[1] for t in watch.targets()] == ["a:1", "b:1"]

    write_atomically(nodes, text)
    with caplog.at_level(logging.INFO, logger="perfwatch.archiver"):
        for _ in range(3):  # the watcher's passes, a second apart
            assert watch.discovery.poll() is False
        watch.now += 61  # refresh_interval: read again, counted again, not logged again
        assert watch.discovery.poll() is False
    assert watch.handed == []  # nothing lost
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"file_sd: cannot use {nodes}: ") and why in warnings[0], warnings[0]
    assert warnings[0].endswith("its last 2 targets are kept until it is fixed")
    assert watch.errors() == 2

    with caplog.at_level(logging.INFO, logger="perfwatch.archiver"):
        write_atomically(nodes, [{"targets": ["b:1", "c:1"]}])
        assert watch.discovery.poll() is True  # fixed: its targets as they are now
    assert [t[1] for t in watch.targets()] == ["b:1", "c:1"]
    assert f"file_sd: 2 targets from {nodes} (+1 -1)" in caplog.text


def test_a_deleted_file_takes_its_targets_and_a_new_file_is_found(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    write_atomically(tmp_path / "a.json", [{"targets": ["a:1"]}])
    write_atomically(tmp_path / "b.json", [{"targets": ["b:1", "b:2"]}])
    watch = Watch(sd_settings(tmp_path / "*.json"))
    assert [t[1] for t in watch.targets()] == ["a:1", "b:1", "b:2"]
    with caplog.at_level(logging.INFO, logger="perfwatch.archiver"):
        (tmp_path / "b.json").unlink()
        assert watch.discovery.poll() is True
        assert [t[1] for t in watch.targets()] == ["a:1"]
        write_atomically(tmp_path / "c.json", [{"targets": ["c:1"]}])  # the glob is expanded again
        assert watch.discovery.poll() is True
        assert [t[1] for t in watch.targets()] == ["a:1", "c:1"]
        assert watch.discovery.poll() is False  # nothing changed since
    assert f"file_sd: {tmp_path / 'b.json'} is gone (or no longer matched), and its 2 targets with it" in caplog.text
    assert f"file_sd: 1 target from {tmp_path / 'c.json'} (+1 -0)" in caplog.text
    gauge = watch.metrics.registry.get_sample_value("perfwatch_archiver_sd_discovered_targets", {"config": "0"})
    assert gauge == 2


def test_a_missing_file_at_start_is_no_target_and_no_error(tmp_path: Path) -> None:
    watch = Watch(sd_settings(tmp_path / "later.json"))
    assert watch.targets() == [] and watch.errors() == 0
    write_atomically(tmp_path / "later.json", [{"targets": ["h:1"]}])
    assert watch.discovery.poll() is True and watch.targets() == [("perfwatch", "h:1", "http://h:1/metrics")]


def test_what_stat_cannot_see_is_read_at_the_refresh_interval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rewrite of the same size within one timestamp tick looks unchanged to stat: the refresh reads it."""
    monkeypatch.setattr(discovery, "_signature", lambda path: (1, 2, 3))
    nodes = tmp_path / "nodes.json"
    write_atomically(nodes, [{"targets": ["a:1"]}])
    watch = Watch(sd_settings(nodes, refresh_interval="30s"))
    write_atomically(nodes, [{"targets": ["b:1"]}])
    watch.now += 29
    assert watch.discovery.poll() is False and watch.handed == []
    watch.now += 1
    assert watch.discovery.poll() is True and [t[1] for t in watch.targets()] == ["b:1"]


def test_of_targets_with_the_same_job_and_instance_the_first_is_scraped_and_the_others_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    static = [Target(url="http://s:1/metrics", job="node", instance="s:1")]

    def found(url: str, instance: str, source: str) -> Found:
        return Found(Target(url=url, job="node", instance=instance), source)

    listed = [found("http://s:1/other", "s:1", "f1.json"),  # clashes with the static one
              found("http://d:1/metrics", "d:1", "f1.json"),
              found("http://d2:1/metrics", "d:1", "f2.json"),  # clashes with the one before it
              found("http://d:1/metrics", "d:1", "f2.json")]  # the same target twice: one, no word
    with caplog.at_level(logging.WARNING, logger="perfwatch.archiver"):
        wanted, clashes = merge(static, listed, set())
        again, clashes_again = merge(static, listed, clashes)
    assert {i: t.url for i, t in wanted.items()} == {("node", "s:1"): "http://s:1/metrics",
                                                     ("node", "d:1"): "http://d:1/metrics"}
    assert again == wanted and clashes_again == clashes and len(clashes) == 2
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "node/s:1 (http://s:1/other) in f1.json is left out: it has the job and instance of the static " \
           "target node/s:1 (http://s:1/metrics)" in messages[0]
    assert "in f2.json is left out" in messages[1] and "the target found before it" in messages[1]
    with caplog.at_level(logging.WARNING, logger="perfwatch.archiver"):
        merge(static, listed[1:2], clashes_again)  # the clashes are gone...
        merge(static, listed, set())  # ...and back: said again
    assert len(caplog.records) == 4


# -- the config ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("entry", "key", "message"), [
    ({}, "file_sd_configs[0].files", "required"),
    ({"files": []}, "file_sd_configs[0].files", "required"),
    ({"files": "a.json"}, "file_sd_configs[0].files", "must be a list"),
    ({"files": [1]}, "file_sd_configs[0].files[0]", "must be a string"),
    ({"files": ["targets.txt"]}, "file_sd_configs[0].files[0]", "must end in .json, .yml or .yaml"),
    ({"files": ["/etc/*/nodes.json"]}, "file_sd_configs[0].files[0]", "one `*` at most, in the file name"),
    ({"files": ["a.json"], "refresh_interval": "0s"}, "file_sd_configs[0].refresh_interval", "positive"),
    ({"files": ["a.json"], "scheme": "ftp"}, "file_sd_configs[0].scheme", "must be one of http, https"),
    ({"files": ["a.json"], "metrics_path": "metrics"}, "file_sd_configs[0].metrics_path", "must start with /"),
    ({"files": ["a.json"], "job": ""}, "file_sd_configs[0].job", "must not be empty"),
    ({"files": ["a.json"], "scrape_interval": "5s", "scrape_timeout": "6s"},
     "file_sd_configs[0].scrape_timeout", "longer than the target's scrape interval 5s"),
    ({"files": ["a.json"], "sample_limit": -1}, "file_sd_configs[0].sample_limit", "0 (no limit) or more"),
    ({"files": ["a.json"], "basic_auth": {"username": "u", "password": "p"}, "authorization": {"credentials": "t"}},
     "file_sd_configs[0].authorization", "not both"),
    ({"filez": ["a.json"]}, "file_sd_configs[0].filez", "did you mean 'files'?"),
])
def test_config_errors_name_the_key(tmp_path: Path, entry: dict[str, Any], key: str, message: str) -> None:
    path = tmp_path / "archiver.yml"
    path.write_text(yaml.safe_dump({"file_sd_configs": [entry]}))
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert err.value.key == key and message in err.value.message, err.value


def test_file_sd_configs_alone_are_something_to_scrape(tmp_path: Path) -> None:
    assert not ArchiverSettings().has_sources()
    assert from_mapping(ArchiverSettings, {"targets": [{"url": "http://h:1"}]}).has_sources()
    settings = from_mapping(ArchiverSettings, {"file_sd_configs": [{"files": ["nodes.json"]}]})
    assert settings.has_sources() and settings.scrape_targets() == []
    assert float(settings.file_sd_configs[0].refresh_interval) == 300.0  # Prometheus' default
    empty = tmp_path / "archiver.yml"
    empty.write_text("scrape_interval: 5s\n")
    refused = subprocess.run([sys.executable, "-m", "perfwatch.archiver", "--config", str(empty), "run"],
                             capture_output=True, text=True, timeout=60, cwd=REPO)
    assert refused.returncode == 2
    assert "targets: nothing to do" in refused.stderr and "file_sd_configs" in refused.stderr


# -- the archiver --------------------------------------------------------------------------------

def test_the_archiver_scrapes_the_files_targets_beside_its_own_and_a_reload_reads_them_again(tmp_path: Path) -> None:
    """The scrape jobs (no scheduler yet: Archiver before start()) follow the files and the reloads alike."""
    nodes = tmp_path / "nodes.json"
    write_atomically(nodes, [{"targets": ["a:1", "static:1"]}])

    def settings(**entry: Any) -> ArchiverSettings:
        return from_mapping(ArchiverSettings, {
            "data_dir": str(tmp_path / "data"), "scrape_interval": "5s",
            "targets": [{"url": "http://static:1", "job": "node"}],
            "file_sd_configs": [{"files": [str(nodes)], "job": "node", **entry}]})

    archiver = Archiver(settings(), None)
    try:
        def scraped() -> dict[str, tuple[str, float]]:
            return {t.instance: (t.url, t.interval) for t in (s.target for s in archiver.scrapers.values())}

        # static:1 is listed twice: the static target is the one scraped.
        assert scraped() == {"static:1": ("http://static:1/metrics", 5.0), "a:1": ("http://a:1/metrics", 5.0)}
        write_atomically(nodes, [{"targets": ["a:1", "b:1"]}])
        assert archiver.discovery.poll() is True
        assert set(scraped()) == {"static:1", "a:1", "b:1"}

        changes = archiver.reload(settings(scrape_interval="10s"))
        assert sorted(changes.split(", ")) == ["~node/a:1 (http://a:1/metrics)", "~node/b:1 (http://b:1/metrics)"]
        assert scraped()["a:1"] == ("http://a:1/metrics", 10.0) and scraped()["static:1"][1] == 5.0
        assert archiver.reload(settings(scrape_interval="10s")) == "nothing changed"

        changes = archiver.reload(from_mapping(ArchiverSettings, {"data_dir": str(tmp_path / "data"),
                                                                  "targets": [{"url": "http://static:1"}]}))
        assert set(scraped()) == {"static:1"} and "-node/a:1 (http://a:1/metrics)" in changes
        assert archiver.discovery.poll() is False  # no file_sd_configs left to look at
    finally:
        archiver.stop()


@pytest.mark.slow
@pytest.mark.usefixtures("stop_leftover_archivers")
def test_a_running_archiver_follows_its_file_sd_files_without_a_restart(tmp_path: Path, pg_dsn: str) -> None:
    """Started with file_sd_configs and no `targets`, it scrapes what the file lists; a target added
    to the file is scraped within seconds, a broken rewrite loses nothing, a target removed is
    scraped no more, and SIGHUP puts a changed file_sd_config in force."""
    sd_dir = tmp_path / "sd"
    sd_dir.mkdir()
    nodes = sd_dir / "nodes.json"
    with SyntheticExporter() as first, SyntheticExporter() as second:
        write_atomically(nodes, [{"targets": [first.instance], "labels": {"site": "lab"}}])
        config: dict[str, Any] = {"scrape_interval": "300ms", "database": {"dsn": pg_dsn},
                                  "file_sd_configs": [{"files": [str(sd_dir / "*.json")], "job": "synthetic"}]}
        archiver = ArchiverProcess(tmp_path, config).start()

        def up(job: str, instance: str) -> bool:
            return archiver.metric("perfwatch_archiver_target_up", job=job, instance=instance) == 1

        archiver.wait_for(lambda: up("synthetic", first.instance) and archiver.metric(
            "perfwatch_archiver_samples_written_total", instance=first.instance) > 0, "the listed target written")
        assert second.served == []
        assert archiver.metric("perfwatch_archiver_sd_discovered_targets", config="0") == 1

        write_atomically(nodes, [{"targets": [first.instance, second.instance], "labels": {"site": "lab"}}])
        archiver.wait_for(lambda: len(second.served) >= 3 and up("synthetic", second.instance),
                          "the added target scraped", timeout=15)
        log = archiver.service.log()
        assert f"file_sd: 2 targets from {nodes} (+1 -0)" in log
        assert f"file_sd: +synthetic/{second.instance} ({second.url})" in log

        write_atomically(nodes, '[{"targets": ["')  # broken: both go on
        archiver.wait_for(lambda: archiver.metric("perfwatch_archiver_sd_file_read_errors_total") >= 1,
                          "the read error counted")
        served = len(first.served), len(second.served)
        archiver.wait_for(lambda: len(first.served) >= served[0] + 5 and len(second.served) >= served[1] + 5,
                          "both scraped on")
        assert archiver.service.log().count(f"file_sd: cannot use {nodes}: not valid JSON") == 1
        assert archiver.metric("perfwatch_archiver_sd_discovered_targets", config="0") == 2

        write_atomically(nodes, [{"targets": [second.instance], "labels": {"site": "lab"}}])
        archiver.wait_for(lambda: f"-synthetic/{first.instance}" in archiver.service.log(), "the removal")
        removed_at, served_second = len(first.served), len(second.served)
        archiver.wait_for(lambda: len(second.served) >= served_second + 3, "the remaining target scraped on")
        assert len(first.served) <= removed_at + 1  # at most the scrape in flight at the change

        config["file_sd_configs"][0]["job"] = "discovered"
        archiver.config_path.write_text(yaml.safe_dump(
            {"listen": f"127.0.0.1:{archiver.port}", "data_dir": str(tmp_path / "data"), **config}))
        archiver.service.send_signal(signal.SIGHUP)
        archiver.wait_for(lambda: up("discovered", second.instance), "the reloaded file_sd_config in force")
        log = archiver.service.log()
        assert f"reload: -synthetic/{second.instance}" in log and f"+discovered/{second.instance}" in log
        archiver.wait_for(lambda: archiver.metric("perfwatch_archiver_spool_batches") == 0
                          and archiver.metric("perfwatch_archiver_samples_written_total", job="discovered") > 0,
                          "written")
        assert archiver.stop() == 0

    series = {(labels["job"], labels["instance"], labels.get("site"))
              for labels, _, _ in archived(pg_dsn, "synthetic_scrape_number")}
    assert series == {("synthetic", first.instance, "lab"), ("synthetic", second.instance, "lab"),
                      ("discovered", second.instance, "lab")}
