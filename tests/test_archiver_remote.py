"""Prometheus' remote protocols against real Prometheus servers (Debian's 2.42), a real archiver
process and a real PostgreSQL.

- remote_write: Prometheus scrapes node_exporter (Debian's prometheus-node-exporter), itself and a
  perfwatch exporter every second and remote-writes to the archiver, behind basic auth, while the
  database goes away for a while. The spool is small, so the receiver answers 503 and Prometheus
  retries. At the end every sample Prometheus stored is in the archive, once, with the same labels,
  timestamp and value (NaN aside: the archive stores none).
- remote_read: a second Prometheus with no data of its own and `remote_read` to the archive answers
  the same range queries as the first over its own data, equal to 1e-9 (the same samples go into the
  same PromQL; the tolerance only allows for the last digit of the JSON's numbers).
- a long range from a tier: a history of 20 days is given to Prometheus (promtool's backfill) and to
  the archive (`perfwatch-archiver import`); over it at an hour's step the reader, answered from
  the 5 m tier and never from raw, agrees with Prometheus within 2 % (rate) and 0.2 on a gauge that
  swings from 15 to 25 (avg/max_over_time): a tier's window starts and ends up to one raw sample
  from where Prometheus' does (bucket [t-1h, t) against samples in [t-1h, t]), and rate()
  extrapolates from the samples nearest the window's ends.
"""

from __future__ import annotations

import math
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
import yaml
from conftest import StartExporter
from support.archiver import ArchiverProcess
from support.httpproc import bcrypt_hash
from support.procs import REPO, Service, free_port
from support.prometheus import Prometheus, promtool
from support.waiting import wait_until

from perfwatch.archiver.embedded import EmbeddedPostgres

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("stop_leftover_archivers")]

USER, PASSWORD = "prometheus", 'remote "secret" 42'
NODE_EXPORTER = "prometheus-node-exporter"
Key = tuple[frozenset[tuple[str, str]], int]


@pytest.fixture
def node_exporter(tmp_path: Path) -> Iterator[str]:
    exe = shutil.which(NODE_EXPORTER)
    assert exe is not None, f"{NODE_EXPORTER} is missing: scripts/test installs it"
    port = free_port()
    service = Service([exe, f"--web.listen-address=127.0.0.1:{port}"], tmp_path / "node_exporter.log",
                      ready_url=f"http://127.0.0.1:{port}/metrics").start()
    yield f"127.0.0.1:{port}"
    service.stop()


def web_config(tmp_path: Path) -> Path:
    path = tmp_path / "web-config.yml"
    path.write_text(yaml.safe_dump({"basic_auth_users": {USER: bcrypt_hash(PASSWORD)}}, allow_unicode=True))
    return path


def remote(url: str, path: str, **extra: Any) -> dict[str, Any]:
    return {"url": url + path, "basic_auth": {"username": USER, "password": PASSWORD}, **extra}


def prometheus_samples(prom: Prometheus, start: float, end: float) -> dict[Key, float]:
    """Every sample Prometheus stored in [start, end] (2.42's range selectors include both ends), NaN left out."""
    selector = f'{{__name__=~".+"}}[{round((end - start) * 1000)}ms]'
    r = requests.get(f"{prom.url}/api/v1/query", params={"query": selector, "time": f"{end:.3f}"}, timeout=60)
    body = r.json()
    assert body["status"] == "success", body
    out = {}
    for series in body["data"]["result"]:
        labels = frozenset(series["metric"].items())
        for t, v in series["values"]:
            if not math.isnan(float(v)):
                out[(labels, round(float(t) * 1000))] = float(v)
    return out


def archived_samples(dsn: str, start: float, end: float) -> tuple[dict[Key, float], int]:
    """Every sample the archive holds in [start, end] through its read functions, and how many rows."""
    with psycopg.connect(dsn) as conn:
        series = {row[0]: frozenset({**row[3], "__name__": row[1]}.items())
                  for row in conn.execute("SELECT * FROM perfwatch.match_series('[]')")}
        rows = conn.execute("SELECT series_id, (extract(epoch FROM ts) * 1000)::bigint, last_value FROM "
                            "perfwatch.read_samples(%s, to_timestamp(%s), to_timestamp(%s), '1 millisecond')",
                            (sorted(series), start, end)).fetchall()
    return {(series[sid], int(t)): float(v) for sid, t, v in rows}, len(rows)


def remote_sent_up_to(prom: Prometheus) -> float:
    """The newest sample time Prometheus' remote-write queue has sent (0 before the first)."""
    result = prom.query("max(prometheus_remote_storage_queue_highest_sent_timestamp_seconds)")
    return float(result[0]["value"][1]) if result else 0.0


def range_query(prom: Prometheus, expr: str, start: float, end: float, step: str) -> dict[frozenset[Any], Any]:
    r = requests.get(f"{prom.url}/api/v1/query_range",
                     params={"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": step}, timeout=120)
    body = r.json()
    assert body["status"] == "success", (expr, body)
    return {frozenset(s["metric"].items()): {float(t): float(v) for t, v in s["values"]}
            for s in body["data"]["result"]}


def assert_same_answers(expr: str, want: dict[frozenset[Any], Any], got: dict[frozenset[Any], Any], *,
                        rel: float, abs_: float = 0.0) -> None:
    assert want, f"{expr}: the first Prometheus has no answer (the test would prove nothing)"
    assert got.keys() == want.keys(), f"{expr}: series differ: {sorted(map(sorted, got.keys() ^ want.keys()))[:5]}"
    for series, points in want.items():
        assert points.keys() == got[series].keys(), f"{expr} {dict(series)}: steps differ"
        for t, v in points.items():
            close = math.isclose(got[series][t], v, rel_tol=rel, abs_tol=abs_)
            assert close, (expr, dict(series), t, v, got[series][t])


def test_prometheus_remote_writes_everything_through_an_outage_and_reads_it_back(
        tmp_path: Path, own_postgres: EmbeddedPostgres, node_exporter: str, start_exporter: StartExporter) -> None:
    dsn = own_postgres.dsn()
    exporter = start_exporter()
    archiver = ArchiverProcess(tmp_path, {
        "receive": {"remote_write": True, "remote_read": True},
        "database": {"dsn": dsn, "retry_interval": "300ms"},
        "spool": {"max_bytes": 256 << 10},  # small: the outage fills it, and the receiver answers 503
    }, "--web.config.file", str(web_config(tmp_path)), auth=(USER, PASSWORD)).start()
    prom_port = free_port()
    scrape = [{"job_name": job, "static_configs": [{"targets": [target]}]}
              for job, target in (("node", node_exporter), ("prometheus", f"127.0.0.1:{prom_port}"),
                                  ("perfwatch", f"127.0.0.1:{exporter.port}"))]
    (tmp_path / "writer").mkdir()
    writer = Prometheus(tmp_path / "writer", {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": scrape,
        "remote_write": [remote(archiver.url, "/api/v1/write", queue_config={
            "max_samples_per_send": 200, "batch_send_deadline": "1s", "min_backoff": "100ms", "max_backoff": "1s"},
            metadata_config={"send_interval": "5s"})],
    }, port=prom_port)
    with writer:
        started = time.time()
        writer.wait_for('up{job="node"} == 1')
        archiver.wait_for(lambda: archiver.metric("perfwatch_archiver_samples_written_total", job="remote_write") > 0,
                          "remote_write samples in the database")

        # Wrong credentials, and a request that is not a WriteRequest: refused, nothing stored.
        wrong = requests.post(f"{archiver.url}/api/v1/write", data=b"x", auth=(USER, "wrong"), timeout=10)
        assert wrong.status_code == 401
        bad = requests.post(f"{archiver.url}/api/v1/write", data=b"\x07garbage", auth=(USER, PASSWORD), timeout=10,
                            headers={"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf"})
        assert bad.status_code == 400, bad.text
        assert archiver.metric("perfwatch_archiver_remote_requests_total", code="400") == 1  # Prometheus' were fine

        time.sleep(5)
        own_postgres.stop()
        archiver.wait_for(lambda: archiver.metric("perfwatch_archiver_remote_requests_total", code="503") > 0,
                          "the receiver to answer 503 once the spool is nearly full", timeout=60)
        time.sleep(5)
        assert own_postgres.start() == dsn
        time.sleep(8)
        cut = time.time()
        wait_until(lambda: remote_sent_up_to(writer) >= cut, "Prometheus to have sent every sample up to the cut",
                   90, interval=0.5, details=writer.service.log)
        archiver.wait_for(lambda: archiver.metric("perfwatch_archiver_spool_batches") == 0, "the spool to drain", 60)
        retried = writer.query("sum(prometheus_remote_storage_samples_retried_total)")
        assert float(retried[0]["value"][1]) > 0, "Prometheus never retried: the outage proved nothing"

        begin, cut = round(started - 60, 3), round(cut, 3)  # before Prometheus' first sample; whole ms
        want = prometheus_samples(writer, begin, cut)
        got, rows = archived_samples(dsn, begin, cut)
        assert len(want) > 20_000  # three targets for 25 s and more
        missing = want.keys() - got.keys()
        assert not missing, f"{len(missing)} of {len(want)} samples missing, e.g. {sorted(missing, key=str)[:3]}"
        extra = got.keys() - want.keys()
        assert not extra, f"{len(extra)} samples Prometheus does not have, e.g. {sorted(extra, key=str)[:3]}"
        assert rows == len(got), "a sample is stored twice"
        differ = [k for k in want if got[k] != want[k]]
        assert not differ, f"{len(differ)} values differ, e.g. {[(k, want[k], got[k]) for k in differ[:3]]}"

        # The same PromQL over the archive, from a Prometheus with nothing of its own.
        (tmp_path / "reader").mkdir()
        reader = Prometheus(tmp_path / "reader", {
            "global": {"scrape_interval": "1s"},
            "remote_read": [remote(archiver.url, "/api/v1/read", read_recent=True)]})
        with reader:
            start, end = started + 12, cut - 2
            for expr in ('rate(node_cpu_seconds_total{mode="idle"}[10s])',
                         'increase(prometheus_http_requests_total[10s])',
                         "avg_over_time(process_resident_memory_bytes[10s])",
                         "max_over_time(go_goroutines[10s])",
                         "histogram_quantile(0.9, sum by (le, job) "
                         "(rate(prometheus_http_request_duration_seconds_bucket[10s])))",
                         'count by (job) ({__name__=~"node_.+|perfwatch_.+", job=~"node|perf.*"})'):
                assert_same_answers(expr, range_query(writer, expr, start, end, "2s"),
                                    range_query(reader, expr, start, end, "2s"), rel=1e-9)
    assert archiver.stop() == 0


def history_file(path: Path, end_s: int, days: int = 20, step_s: int = 120, seed: int = 3) -> None:
    """OpenMetrics with timestamps: a counter with resets, and a gauge, every `step_s` for `days`."""
    rng = random.Random(seed)
    counter = 0.0
    lines = ["# TYPE hist_requests counter\n"]
    gauge_lines = ["# TYPE hist_temperature gauge\n"]
    start_s = end_s - days * 86400
    for i, t in enumerate(range(start_s, end_s, step_s)):
        counter = 0.0 if i % 2000 == 1999 else counter + rng.uniform(50, 70)
        lines.append(f'hist_requests_total{{job="history",instance="old:1"}} {counter} {t}\n')
        gauge = 20 + 5 * math.sin(t / 43200 * math.pi) + rng.uniform(-0.05, 0.05)
        gauge_lines.append(f'hist_temperature{{job="history",instance="old:1"}} {gauge} {t}\n')
    path.write_text("".join(lines) + "".join(gauge_lines) + "# EOF\n")


def test_a_long_range_is_answered_from_a_tier_as_prometheus_answers_it_from_every_sample(
        tmp_path: Path, pg_dsn: str) -> None:
    end_s = int(time.time()) // 3600 * 3600 - 86400
    source = tmp_path / "history.om"
    history_file(source, end_s)
    blocks = tmp_path / "prom" / "tsdb"
    blocks.mkdir(parents=True)
    made = promtool("tsdb", "create-blocks-from", "openmetrics", str(source), str(blocks))
    assert made.returncode == 0, made.stdout + made.stderr
    imported = subprocess.run([sys.executable, "-m", "perfwatch.archiver", "import", "--dsn", pg_dsn, str(source)],
                              capture_output=True, text=True, timeout=300, cwd=REPO)
    assert imported.returncode == 0, imported.stdout + imported.stderr

    archiver = ArchiverProcess(tmp_path, {"receive": {"remote_read": True}, "database": {"dsn": pg_dsn}}).start()
    reading = {"remote_read": [{"url": archiver.url + "/api/v1/read"}]}
    with Prometheus(tmp_path / "prom", {"global": {"scrape_interval": "15s"}},
                    args=["--storage.tsdb.retention.time=400d"]) as full, \
            Prometheus(_fresh(tmp_path / "reader"), reading) as reader:
        start, end = end_s - 19 * 86400, end_s - 3600
        raw_before = archiver.metric("perfwatch_archiver_remote_read_samples_total", level="raw")
        for expr, rel, abs_ in (("rate(hist_requests_total[1h])", 0.02, 0.0),
                                ("avg_over_time(hist_temperature[1h])", 0.0, 0.2),
                                ("max_over_time(hist_temperature[1h])", 0.0, 0.2)):
            assert_same_answers(expr, range_query(full, expr, start, end, "1h"),
                                range_query(reader, expr, start, end, "1h"), rel=rel, abs_=abs_)
        assert archiver.metric("perfwatch_archiver_remote_read_samples_total", level="5m") > 10_000
        assert archiver.metric("perfwatch_archiver_remote_read_samples_total", level="raw") == raw_before
    assert archiver.stop() == 0


def _fresh(path: Path) -> Path:
    path.mkdir()
    return path
