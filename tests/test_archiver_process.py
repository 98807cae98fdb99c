"""perfwatch-archiver as a real process against real targets and a real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import bcrypt
import psycopg
import pytest
import requests
import yaml
from support.archiver import ArchiverProcess, archived, scrape_numbers
from support.pki import PKI
from support.procs import REPO, Service, free_port, python_module
from support.prometheus import promtool
from support.synthetic import NASTY_VALUES, SyntheticExporter, counter_value, gauge_value

from perfwatch.archiver.embedded import EmbeddedPostgres
from perfwatch.archiver.model import Batch

if TYPE_CHECKING:
    from conftest import StartExporter

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("stop_leftover_archivers")]

LOGFMT = re.compile(r'^ts=\S+Z level=(debug|info|warning|error) logger=\S+ msg=".*"$')


def test_scrapes_synthetic_and_real_exporter_into_postgres_and_flushes_on_sigterm(
        tmp_path: Path, pg_dsn: str, start_exporter: StartExporter) -> None:
    exporter = start_exporter()
    with SyntheticExporter(reset_every=5) as synth:
        archiver = ArchiverProcess(tmp_path, {
            "scrape_interval": "400ms",
            "targets": [{"url": synth.url, "job": "synthetic", "labels": {"site": "lab"}},
                        # no path: /metrics; job defaults to perfwatch
                        {"url": exporter.url, "scrape_interval": "1s"}],
            "database": {"dsn": pg_dsn},
            "schedule": {"retention_interval": "1s"},
        }).start()
        archiver.wait_for(lambda: len(synth.served) >= 10
                          and archiver.metric("perfwatch_archiver_samples_written_total", job="synthetic") > 0
                          and archiver.metric("perfwatch_archiver_samples_written_total", job="perfwatch") > 0
                          and archiver.metric("perfwatch_archiver_retention_runs_total", result="ok") >= 1
                          and archiver.metric("perfwatch_archiver_utilisation_runs_total", result="ok") >= 1,
                          "10 scrapes, writes from both targets, a retention and a summary pass")

        text = archiver.metrics()
        check = promtool("check", "metrics", stdin=text)
        assert check.returncode == 0 and check.stdout + check.stderr == "", check.stdout + check.stderr
        assert archiver.metric("perfwatch_archiver_target_up", job="synthetic", instance=synth.instance) == 1
        assert archiver.metric("perfwatch_archiver_target_up", job="perfwatch",
                               instance=f"127.0.0.1:{exporter.port}") == 1
        assert archiver.metric("perfwatch_archiver_scrapes_total", job="synthetic") >= 10
        assert archiver.metric("perfwatch_archiver_scrape_failures_total") == 0
        assert archiver.metric("perfwatch_archiver_database_up") == 1
        assert archiver.metric("perfwatch_archiver_write_duration_seconds_count") > 0
        assert archiver.metric("perfwatch_archiver_rollup_runs_total", tier="5m", result="ok") >= 1
        assert archiver.metric("perfwatch_archiver_utilisation_runs_total", result="error") == 0
        assert archiver.metric("perfwatch_archiver_tier_bytes", tier="raw") > 0
        for path in ("/", "/-/healthy", "/-/ready"):
            assert requests.get(archiver.url + path, timeout=10).status_code == 200

        assert archiver.stop() == 0  # SIGTERM: what was scraped is written before the exit

    # Every scrape the synthetic exporter answered is archived, exactly once, with its values.
    numbers = scrape_numbers(pg_dsn)
    assert numbers == synth.served_numbers()
    scrape_at = {ms: int(v) for _, ms, v in archived(pg_dsn, "synthetic_scrape_number")}
    requests_200 = [(ms, v) for lab, ms, v in archived(pg_dsn, "synthetic_requests_total") if lab["code"] == "200"]
    assert [v for _, v in requests_200] == [counter_value(scrape_at[ms], 5) for ms, _ in requests_200]
    temperatures = archived(pg_dsn, "synthetic_temperature_celsius")
    assert [v for _, _, v in temperatures] == [gauge_value(scrape_at[ms]) for _, ms, _ in temperatures]
    labels = temperatures[0][0]
    assert labels == {"job": "synthetic", "instance": synth.instance, "site": "lab"}

    # Label values with quotes, backslashes, newlines, unicode and SQL come back byte for byte.
    nasty = {(lab["index"], lab["value"]) for lab, _, _ in archived(pg_dsn, "synthetic_nasty_info")}
    assert nasty == {(str(i), v) for i, v in enumerate(NASTY_VALUES)}

    with psycopg.connect(pg_dsn) as conn:
        kinds: dict[str, str] = dict(conn.execute("SELECT name, kind || '/' || family_type FROM perfwatch.metric"
                                  " WHERE name LIKE 'synthetic%'").fetchall())
    assert kinds == {
        "synthetic_requests_total": "counter/counter", "synthetic_temperature_celsius": "gauge/gauge",
        "synthetic_scrape_number": "gauge/gauge", "synthetic_nasty_info": "gauge/gauge",
        "synthetic_latency_seconds_bucket": "counter/histogram", "synthetic_latency_seconds_sum": "counter/histogram",
        "synthetic_latency_seconds_count": "counter/histogram",
    }  # synthetic_stale is always NaN: never stored

    # The real exporter: its counters under job="perfwatch" and its host:port.
    cpu = archived(pg_dsn, "node_cpu_seconds_total")
    assert cpu and all(lab["job"] == "perfwatch" and lab["instance"] == f"127.0.0.1:{exporter.port}"
                       and "cpu" in lab and "mode" in lab for lab, _, _ in cpu)

    log = archiver.service.log().splitlines()
    assert log and all(LOGFMT.match(line) for line in log), log


def test_failing_targets_are_logged_counted_and_the_rest_keeps_going(tmp_path: Path, pg_dsn: str) -> None:
    down_url = f"http://127.0.0.1:{free_port()}/metrics"
    with SyntheticExporter() as malformed, SyntheticExporter() as erroring, \
            SyntheticExporter(slow_seconds=2.0) as slow, SyntheticExporter() as good:
        malformed.mode, erroring.mode, slow.mode = "malformed", "error", "slow"
        archiver = ArchiverProcess(tmp_path, {
            "scrape_interval": "1s", "scrape_timeout": "800ms",
            "targets": [{"url": t.url, "job": job} for t, job in
                        ((malformed, "malformed"), (erroring, "erroring"), (slow, "slow"), (good, "good"))]
                       + [{"url": down_url, "job": "down"}],
            "database": {"dsn": pg_dsn},
        }).start()

        def failures(job: str, reason: str) -> float:
            return archiver.metric("perfwatch_archiver_scrape_failures_total", job=job, reason=reason)

        expected = {"malformed": "malformed", "erroring": "http_status", "slow": "timeout", "down": "unreachable"}
        archiver.wait_for(lambda: all(failures(job, reason) >= 2 for job, reason in expected.items())
                          and archiver.metric("perfwatch_archiver_samples_written_total", job="good") > 0,
                          "two failures of each kind and writes from the good target")
        for job in expected:
            assert archiver.metric("perfwatch_archiver_target_up", job=job) == 0
            other = [r for r in ("malformed", "http_status", "timeout", "unreachable") if r != expected[job]]
            assert all(failures(job, r) == 0 for r in other)
        assert archiver.metric("perfwatch_archiver_target_up", job="good") == 1

        malformed.mode = "ok"  # a target that recovers is scraped and archived again
        archiver.wait_for(lambda: archiver.metric("perfwatch_archiver_target_up", job="malformed") == 1
                          and archiver.metric("perfwatch_archiver_samples_written_total", job="malformed") > 0,
                          "the malformed target, fixed, archived")
        assert archiver.stop() == 0

    log = archiver.service.log()
    for target, job, reason, detail in ((malformed, "malformed", "malformed", "cannot parse"),
                                        (erroring, "erroring", "http_status", "HTTP status 500"),
                                        (slow, "slow", "timeout", "0.8s")):
        assert re.search(rf"scrape of {job}/{target.instance} \({re.escape(target.url)}\) failed: {reason}: "
                         rf".*{detail}", log), log
    assert re.search(rf"scrape of down/\S+ \({re.escape(down_url)}\) failed: unreachable: connection refused", log)
    assert f"scrape of malformed/{malformed.instance} ({malformed.url}) works again" in log
    # One line when a target starts failing, not one per scrape.
    assert log.count(f"({erroring.url}) failed") == 1
    assert scrape_numbers(pg_dsn)  # the good target's scrapes are archived


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "perfwatch.archiver", *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO)


def test_embedded_database_by_default_and_operator_commands(tmp_path: Path) -> None:
    with SyntheticExporter() as synth:
        archiver = ArchiverProcess(tmp_path, {"scrape_interval": "200ms", "targets": [{"url": synth.url}]}).start()
        archiver.wait_for(lambda: archiver.metric("perfwatch_archiver_samples_written_total") > 0, "writes")
        config = str(archiver.config_path)

        second = run_cli("--config", config)  # the same data dir: refused, the first one unharmed
        assert second.returncode == 1 and "another perfwatch-archiver uses data dir" in second.stderr

        status = run_cli("--config", config, "status")  # beside the running archiver, on its database
        assert status.returncode == 0, status.stderr
        tiers = [line.split()[0] for line in status.stdout.splitlines()[1:]]
        assert tiers == ["raw", "5m", "1h"], status.stdout
        assert archiver.stop() == 0

    embedded = EmbeddedPostgres(tmp_path / "data" / "postgres")
    assert not embedded.running()  # the archiver stopped the server it started
    dsn = embedded.start()
    try:
        assert len(scrape_numbers(dsn)) >= 1
    finally:
        embedded.stop()

    migrate = run_cli("--config", config, "migrate")
    assert migrate.returncode == 0 and "up to date" in migrate.stdout, migrate.stdout + migrate.stderr
    rollup = run_cli("--config", config, "rollup")
    assert rollup.returncode == 0 and "tier 5m:" in rollup.stdout and "tier 1h:" in rollup.stdout, rollup.stderr
    retention = run_cli("--config", config, "retention")
    assert retention.returncode == 0 and "dropped 0 expired partitions" in retention.stdout, retention.stderr
    assert not embedded.running()  # each command stops the server it had to start


def test_scrapes_an_exporter_behind_mutual_tls_and_basic_auth(tmp_path: Path, pg_dsn: str) -> None:
    pki = PKI(tmp_path / "pki")
    password = "pä55 \"word\" '; --"
    web_config = tmp_path / "web.yml"
    web_config.write_text(yaml.safe_dump({
        "tls_server_config": {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key),
                              "client_auth_type": "RequireAndVerifyClientCert", "client_ca_file": str(pki.client_ca)},
        "basic_auth_users": {"archiver": bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()},
    }, allow_unicode=True))
    port = free_port()
    exporter = Service(python_module("perfwatch.exporter", "--listen", f"127.0.0.1:{port}",
                                     "--web-config", str(web_config)), tmp_path / "exporter.log").start()
    password_file = tmp_path / "password"
    password_file.write_text(password + "\n")
    cert, key = pki.client_pair
    try:
        archiver = ArchiverProcess(tmp_path, {
            "scrape_interval": "1s", "database": {"dsn": pg_dsn},
            "targets": [{"url": f"https://127.0.0.1:{port}/metrics",
                         "basic_auth": {"username": "archiver", "password_file": str(password_file)},
                         "tls_config": {"ca_file": str(pki.ca), "cert_file": cert, "key_file": key}}],
        }).start()
        archiver.wait_for(lambda: archiver.metric("perfwatch_archiver_samples_written_total") > 0,
                          "writes from the TLS exporter")
        assert archiver.metric("perfwatch_archiver_target_up", instance=f"127.0.0.1:{port}") == 1
        assert archiver.stop() == 0
    finally:
        exporter.stop()
    assert archived(pg_dsn, "node_scrape_collector_success")


REFUSE_SCRAPE_3 = """
CREATE FUNCTION public.refuse_scrape_3() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.value = 3 AND EXISTS (SELECT FROM perfwatch.series s JOIN perfwatch.metric m ON m.id = s.metric_id
                                 WHERE s.id = NEW.series_id AND m.name = 'synthetic_scrape_number') THEN
        RAISE EXCEPTION 'the test refuses scrape 3';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER refuse_scrape_3 BEFORE INSERT ON perfwatch.sample FOR EACH ROW EXECUTE FUNCTION public.refuse_scrape_3();
"""


def test_a_batch_the_database_refuses_is_set_aside_and_the_rest_written(tmp_path: Path, pg_dsn: str) -> None:
    with SyntheticExporter() as synth:
        synth.mode = "error"  # nothing to write until the trigger is in place
        archiver = ArchiverProcess(tmp_path, {
            "scrape_interval": "400ms", "targets": [{"url": synth.url, "job": "synthetic"}],
            "database": {"dsn": pg_dsn, "retry_interval": "200ms"},
        }).start()
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(REFUSE_SCRAPE_3)
        synth.mode = "ok"
        archiver.wait_for(lambda: archiver.metric("perfwatch_archiver_batches_rejected_total") == 1
                          and len(synth.served) >= 8 and archiver.metric("perfwatch_archiver_spool_batches") == 0,
                          "scrape 3 set aside and later scrapes written")
        assert archiver.metric("perfwatch_archiver_database_up") == 1  # refused, not unreachable
        assert archiver.stop() == 0

    served = synth.served_numbers()
    assert scrape_numbers(pg_dsn) == [n for n in served if n != 3]
    rejected = (tmp_path / "data" / "spool" / "rejected.jsonl").read_text().splitlines()
    assert len(rejected) == 1
    kept = Batch.from_json(rejected[0])
    assert [s.value for s in kept.samples if s.name == "synthetic_scrape_number"] == [3.0]
    assert "the test refuses scrape 3" in archiver.service.log()


def test_own_endpoints_take_the_exporters_web_config(tmp_path: Path, pg_dsn: str) -> None:
    web_config = tmp_path / "web.yml"
    web_config.write_text(yaml.safe_dump({"basic_auth_users": {
        "prometheus": bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4)).decode()}}))
    with SyntheticExporter() as synth:
        archiver = ArchiverProcess(tmp_path, {"targets": [{"url": synth.url}], "database": {"dsn": pg_dsn}},
                                   "--web-config", str(web_config))
        archiver.service.ready_url = f"{archiver.url}/-/healthy"  # the one path left open, as in the exporter
        archiver.start()
        assert requests.get(f"{archiver.url}/-/ready", timeout=10).status_code == 401
        assert requests.get(f"{archiver.url}/metrics", timeout=10).status_code == 401
        r = requests.get(f"{archiver.url}/metrics", auth=("prometheus", "secret"), timeout=10)
        assert r.status_code == 200 and "perfwatch_archiver_target_up" in r.text
        assert archiver.stop() == 0


def test_sighup_reloads_targets_labels_and_policy_and_refuses_a_config_with_a_typo(tmp_path: Path,
                                                                                 pg_dsn: str) -> None:
    """SIGHUP killed the archiver (and left an embedded server running). Now it reloads: a config with
    a typo is refused naming the key, and the old one goes on; a good one adds, removes and changes
    targets and the policy without a restart; POST /-/reload (with --web.enable-lifecycle) too."""
    with SyntheticExporter() as first, SyntheticExporter() as second:
        def config(**extra: object) -> dict[str, object]:
            return {"listen": f"127.0.0.1:{archiver.port}", "data_dir": str(tmp_path / "data"),
                    "scrape_interval": "300ms", "database": {"dsn": pg_dsn},
                    "schedule": {"rollup_interval": "500ms"}, **extra}

        archiver = ArchiverProcess(tmp_path, {"scrape_interval": "300ms", "database": {"dsn": pg_dsn},
                                              "targets": [{"url": first.url, "job": "synthetic"}]},
                                   "--web.enable-lifecycle")
        archiver.start()
        archiver.wait_for(lambda: len(first.served) >= 2, "the first target scraped")
        log_before = len(archiver.service.log())

        archiver.config_path.write_text(yaml.safe_dump(config(
            targets=[{"url": first.url, "job": "synthetic"}, {"url": second.url, "job": "synthetic"}],
            scrape_intervall="1s")))
        archiver.service.send_signal(signal.SIGHUP)
        archiver.wait_for(lambda: "reload refused" in archiver.service.log()[log_before:], "the refusal")
        assert "scrape_intervall: unknown key; did you mean 'scrape_interval'?" in archiver.service.log()
        served = len(first.served)
        archiver.wait_for(lambda: len(first.served) >= served + 3, "the old config goes on")
        assert second.served == []

        archiver.config_path.write_text(yaml.safe_dump(config(
            targets=[{"url": second.url, "job": "synthetic", "labels": {"site": "lab"}}],
            policy={"raw_retention": "3d"})))
        archiver.service.send_signal(signal.SIGHUP)
        archiver.wait_for(lambda: len(second.served) >= 3, "the added target scraped")
        stopped_at = len(first.served)
        archiver.wait_for(lambda: archiver.metric("perfwatch_archiver_spool_batches") == 0, "written")
        assert len(first.served) <= stopped_at + 1  # at most one scrape was in flight when it was removed
        with psycopg.connect(pg_dsn) as conn:
            archiver.wait_for(lambda: conn.execute("SELECT retention FROM perfwatch.archive_policy WHERE "
                                                   "tier = 'raw'").fetchone() == (dt.timedelta(days=3),),
                              "the new policy mirrored")
        assert {labels.get("site") for labels, _, _ in archived(pg_dsn, "synthetic_scrape_number")
                if labels["instance"] == second.instance} == {"lab"}
        log = archiver.service.log()
        assert "reload: -synthetic/" in log and "+synthetic/" in log and "policy" in log

        r = requests.post(f"{archiver.url}/-/reload", timeout=10)
        assert r.status_code == 200 and "reload: nothing changed" in archiver.service.log()
        assert archiver.stop() == 0
