"""Reload (SIGHUP, POST /-/reload) and stop signals, on the exporter and the archiver as real processes."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from support.archiver import ArchiverProcess
from support.httpproc import ExporterProcess, bcrypt_hash
from support.pki import PKI
from support.waiting import wait_until

from perfwatch.common.lifecycle import STOP_SIGNALS

NO_PERF = {"collectors": {"perf": {"enabled": False}}}
OLD, NEW = "old password", "new password"


@pytest.fixture
def exporters() -> Iterator[list[ExporterProcess]]:
    started: list[ExporterProcess] = []
    yield started
    for exporter in started:
        if exporter.service.running:
            exporter.stop()


def auth_exporter(tmp_path: Path, exporters: list[ExporterProcess], *args: str) -> ExporterProcess:
    exporter = ExporterProcess(tmp_path, "reload", *args, config=NO_PERF,
                               web_config={"basic_auth_users": {"prometheus": bcrypt_hash(OLD)}}).start()
    exporters.append(exporter)
    return exporter


def status(exporter: ExporterProcess, password: str) -> int:
    return exporter.get("/metrics", auth=("prometheus", password)).status_code


def test_sighup_reloads_the_web_config_and_refuses_a_broken_one(
        tmp_path: Path, exporters: list[ExporterProcess], pki: PKI) -> None:
    exporter = auth_exporter(tmp_path, exporters)
    assert status(exporter, OLD) == 200 and status(exporter, NEW) == 401
    exporter.write_web_config({"basic_auth_users": {"prometheus": bcrypt_hash(NEW)}})
    exporter.service.send_signal(signal.SIGHUP)
    wait_until(lambda: "reloaded (SIGHUP)" in exporter.log(), "the reload", details=exporter.log)
    assert status(exporter, NEW) == 200 and status(exporter, OLD) == 401
    # A broken file: refused with the key, the config in force stays, the process lives.
    missing = tmp_path / "missing.pem"
    exporter.write_web_config({"tls_server_config": {"cert_file": str(missing), "key_file": str(missing)},
                               "basic_auth_users": {"prometheus": bcrypt_hash(OLD)}})
    exporter.service.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload refused" in exporter.log(), "the refusal", details=exporter.log)
    assert f"reload refused: tls_server_config.cert_file: cannot read {missing}" in exporter.log()
    assert exporter.service.running
    assert status(exporter, NEW) == 200 and status(exporter, OLD) == 401
    # A good file that turns TLS on: that needs a restart, so it is refused too.
    tls = {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)}
    exporter.write_web_config({"tls_server_config": tls, "basic_auth_users": {"prometheus": bcrypt_hash(OLD)}})
    exporter.service.send_signal(signal.SIGHUP)
    wait_until(lambda: exporter.log().count("reload refused") == 2, "the second refusal", details=exporter.log)
    assert "reload refused: tls_server_config: TLS is off and the new web config turns it on: that needs a " \
           "restart" in exporter.log()
    assert status(exporter, NEW) == 200
    assert exporter.stop() == 0 and "stopped" in exporter.log()


def test_reload_endpoint_without_the_flag_is_refused_as_prometheus_does(
        tmp_path: Path, exporters: list[ExporterProcess]) -> None:
    exporter = auth_exporter(tmp_path, exporters)
    auth = ("prometheus", OLD)
    exporter.write_web_config({"basic_auth_users": {"prometheus": bcrypt_hash(NEW)}})
    for method in ("POST", "PUT"):
        refused = requests.request(method, exporter.url + "/-/reload", auth=auth, timeout=10)
        assert (refused.status_code, refused.text) == (403, "Lifecycle API is not enabled.")
    wrong_method = exporter.get("/-/reload", auth=auth)
    assert (wrong_method.status_code, wrong_method.text) == (405, "Only POST or PUT requests allowed")
    assert requests.post(exporter.url + "/-/reload", timeout=10).status_code == 401  # credentials first
    assert status(exporter, OLD) == 200  # nothing was reloaded
    assert "reloaded" not in exporter.log()


def test_reload_endpoint_with_the_flag_answers_200_or_500_with_the_error(
        tmp_path: Path, exporters: list[ExporterProcess]) -> None:
    exporter = auth_exporter(tmp_path, exporters, "--web.enable-lifecycle")
    exporter.write_web_config({"basic_auth_users": {"prometheus": bcrypt_hash(NEW)}})
    done = requests.post(exporter.url + "/-/reload", auth=("prometheus", OLD), timeout=10)
    assert (done.status_code, done.text) == (200, "")
    assert status(exporter, NEW) == 200 and status(exporter, OLD) == 401
    exporter.write_web_config({"basic_auth_users": {"prometheus": "not a hash"}})
    failed = requests.put(exporter.url + "/-/reload", auth=("prometheus", NEW), timeout=10)
    assert failed.status_code == 500
    assert failed.text.startswith("failed to reload config: basic_auth_users.prometheus: not a bcrypt hash")
    assert status(exporter, NEW) == 200
    assert "reloaded (POST /-/reload)" in exporter.log() and "reload refused" in exporter.log()


def test_sighup_applies_the_exporters_log_level(tmp_path: Path, exporters: list[ExporterProcess]) -> None:
    exporter = ExporterProcess(tmp_path, "level", config={**NO_PERF, "log_level": "info"}).start()
    exporters.append(exporter)
    exporter.get("/-/healthy")
    assert "GET /-/healthy" not in exporter.log()  # the access log is at debug
    exporter.write_config({**NO_PERF, "log_level": "debug", "max_connections": 5})
    exporter.service.send_signal(signal.SIGHUP)
    wait_until(lambda: "reloaded (SIGHUP)" in exporter.log(), "the reload", details=exporter.log)
    exporter.get("/-/healthy")
    wait_until(lambda: "GET /-/healthy" in exporter.log(), "a debug line", details=exporter.log)
    assert "changes to max_connections take effect at the next start" in exporter.log()
    exporter.write_config({**NO_PERF, "log_level": "verbose"})
    exporter.service.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload refused: log_level: must be one of" in exporter.log(), "the refusal",
               details=exporter.log)
    assert exporter.stop() == 0


@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_every_stop_signal_stops_the_exporter_cleanly(
        tmp_path: Path, exporters: list[ExporterProcess], signum: int) -> None:
    exporter = ExporterProcess(tmp_path, "signals", config=NO_PERF).start()
    exporters.append(exporter)
    exporter.service.send_signal(signal.SIGHUP)  # never a stop
    wait_until(lambda: "reloaded (SIGHUP)" in exporter.log(), "the reload", details=exporter.log)
    assert exporter.get("/-/healthy").status_code == 200
    assert exporter.stop(signum) == 0
    log = exporter.log()
    assert f"received {signal.Signals(signum).name}, shutting down" in log and 'msg="stopped"' in log


# -- the archiver ----------------------------------------------------------------------------

def start_archiver(tmp_path: Path, dsn: str, password: str) -> tuple[ArchiverProcess, Path]:
    """An archiver (a target that never answers) with basic auth and --web.enable-lifecycle."""
    web_config = tmp_path / "web.yml"
    web_config.write_text(f"basic_auth_users:\n  prometheus: '{bcrypt_hash(password)}'\n")
    archiver = ArchiverProcess(tmp_path, {"targets": [{"url": "http://127.0.0.1:9/metrics"}], "database": {"dsn": dsn}},
                               "--web-config", str(web_config), "--web.enable-lifecycle")
    archiver.service.ready_url = None  # /-/ready needs the password: wait below
    archiver.start()
    archiver.wait_for(lambda: archiver_get(archiver, "/-/ready", password).status_code == 200, "readiness")
    return archiver, web_config


def archiver_get(archiver: ArchiverProcess, path: str, password: str) -> requests.Response:
    try:
        return requests.get(archiver.url + path, auth=("prometheus", password), timeout=10)
    except requests.ConnectionError:
        return requests.Response()  # not listening yet: status_code None


@pytest.mark.slow
@pytest.mark.usefixtures("stop_leftover_archivers")
def test_archiver_reloads_its_web_config_on_sighup_and_post(tmp_path: Path, pg_dsn: str) -> None:
    archiver, web_config = start_archiver(tmp_path, pg_dsn, OLD)
    text = archiver_get(archiver, "/metrics", OLD).text
    assert "perfwatch_http_auth_failures_total" in text and "perfwatch_http_connections" in text
    web_config.write_text(f"basic_auth_users:\n  prometheus: '{bcrypt_hash(NEW)}'\n")
    archiver.service.send_signal(signal.SIGHUP)
    archiver.wait_for(lambda: "reloaded (SIGHUP)" in archiver.service.log(), "the reload")
    assert archiver_get(archiver, "/metrics", NEW).status_code == 200
    assert archiver_get(archiver, "/metrics", OLD).status_code == 401
    web_config.write_text("basic_auth_users: [\n")
    refused = requests.post(archiver.url + "/-/reload", auth=("prometheus", NEW), timeout=10)
    assert refused.status_code == 500 and "not valid YAML" in refused.text
    assert archiver_get(archiver, "/metrics", NEW).status_code == 200
    assert archiver.stop() == 0


@pytest.mark.slow
@pytest.mark.usefixtures("stop_leftover_archivers")
@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_every_stop_signal_stops_the_archiver_cleanly(tmp_path: Path, pg_dsn: str, signum: int) -> None:
    archiver, _ = start_archiver(tmp_path, pg_dsn, OLD)
    archiver.service.send_signal(signal.SIGHUP)  # never a stop
    archiver.wait_for(lambda: "reloaded (SIGHUP)" in archiver.service.log(), "the reload")
    assert archiver.service.running
    assert archiver.stop(signum) == 0, archiver.service.log()
    log = archiver.service.log()
    assert f"received {signal.Signals(signum).name}, shutting down" in log and 'msg="stopped"' in log, log
