"""Alert history: Alertmanager's webhook into the archive, and the SQL functions over it.

- End to end: a real Prometheus (Debian's 2.42) evaluates a rule every second over a target this test
  serves and flips; a real Alertmanager (Debian's 0.25, group_wait/group_interval 1 s, repeats every
  2 s, resolutions on) delivers to a real archiver behind basic auth. The test drives two firings and
  their resolutions; the history and time to resolve match the timeline within SLACK (a scrape, an
  evaluation and a notification, each about a second). Alertmanager's repeats and a hand re-delivery
  add no row.
- The protocol in-process over a real PostgreSQL: what is refused (400/415, naming the field,
  nothing stored), hostile strings, idempotency, 503 while the database is down.
- The SQL functions on a known history, as the Grafana role.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
import yaml
from support.alertmanager import Alertmanager, webhook_config
from support.archiver import ArchiverProcess
from support.httpproc import bcrypt_hash
from support.prometheus import Prometheus
from support.waiting import wait_until

from perfwatch.archiver.alerthistory import WEBHOOK_PATH, AlertWebhook, parse_notification
from perfwatch.archiver.database import Database
from perfwatch.archiver.embedded import EmbeddedPostgres
from perfwatch.archiver.policy import Policy
from perfwatch.archiver.selfmetrics import ArchiverMetrics
from perfwatch.common.httpserver import METRICS_CONTENT_TYPE, Request, Response, WebServer

pytestmark = pytest.mark.usefixtures("stop_leftover_archivers")

USER, PASSWORD = "alertmanager", 'hook "secret" 42'
SLACK = 4.0  # seconds: scrape (1 s) + rule evaluation (1 s) + group_wait/interval (1 s) + delivery
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def rfc3339(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def alert(fingerprint: str, starts: dt.datetime, ends: dt.datetime | None = None, *, status: str | None = None,
          **labels: str) -> dict[str, Any]:
    """An alert as Alertmanager's webhook writes it (a firing one has Go's zero time as endsAt)."""
    return {"status": status or ("resolved" if ends else "firing"),
            "labels": {"alertname": "Probe", **labels}, "annotations": {"summary": f"probe {fingerprint}"},
            "startsAt": rfc3339(starts), "endsAt": rfc3339(ends) if ends else "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus/graph?g0.expr=x", "fingerprint": fingerprint}


def notification(*alerts: dict[str, Any], status: str | None = None) -> bytes:
    status = status or ("firing" if any(a["status"] == "firing" for a in alerts) else "resolved")
    return json.dumps({"version": "4", "groupKey": "{}:{}", "truncatedAlerts": 0, "status": status,
                       "receiver": "archive", "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
                       "externalURL": "http://alertmanager:9093", "alerts": list(alerts)}).encode()


def post(body: bytes, content_type: str = "application/json", **headers: str) -> Request:
    return Request("POST", WEBHOOK_PATH, "", {"content-type": content_type, **headers}, body)


def rows(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT fingerprint, starts_at, ends_at, alertname, labels, annotations, notifications "
                            "FROM perfwatch.alert_occurrence ORDER BY starts_at, fingerprint").fetchall()


def counted(dsn: str, n: int, *, resolved: bool) -> bool:
    """Whether the archive holds n occurrences (resolved ones, if `resolved`)."""
    return sum(1 for r in rows(dsn) if r[2] or not resolved) == n


@pytest.fixture
def webhook(pg_dsn: str) -> Iterator[AlertWebhook]:
    database = Database(pg_dsn, Policy(), ArchiverMetrics())
    assert database.ready(strict=True)
    yield AlertWebhook(lambda: database, database.metrics)  # type: ignore[arg-type]
    database.dispose()


# -- the protocol -----------------------------------------------------------------------------------


def test_firing_then_resolved_is_one_occurrence_and_redelivery_adds_nothing(webhook: AlertWebhook,
                                                                           pg_dsn: str) -> None:
    firing = alert("a1", T0, instance="h:1")
    firing["endsAt"] = rfc3339(T0 + dt.timedelta(minutes=5))  # an expiry in the future: not an end
    for _ in range(2):
        assert webhook.handle(post(notification(firing))).status == 200
    ((_, starts, ends, name, labels, _, notified),) = rows(pg_dsn)
    assert (starts, ends, name, labels, notified) == (T0, None, "Probe", {"alertname": "Probe", "instance": "h:1"}, 2)
    resolved = alert("a1", T0, T0 + dt.timedelta(seconds=90), instance="h:1")
    for _ in range(2):
        assert webhook.handle(post(notification(resolved))).status == 200
    # An old firing notification delivered late does not reopen it.
    assert webhook.handle(post(notification(alert("a1", T0, instance="h:1")))).status == 200
    ((_, starts, ends, *_rest, notified),) = rows(pg_dsn)
    assert (starts, ends, notified) == (T0, T0 + dt.timedelta(seconds=90), 5)
    m = webhook.metrics
    assert [m.alert_occurrences.labels(o)._value.get() for o in ("new", "resolved", "repeated")] == [1, 1, 3]
    assert m.alerts_received.labels("resolved")._value.get() == 2
    assert m.alert_notifications.labels("firing")._value.get() == 3
    assert m.alert_webhook_requests.labels("200")._value.get() == 5


def test_a_new_start_is_a_second_occurrence_and_a_duplicate_in_one_request_is_one(webhook: AlertWebhook,
                                                                                  pg_dsn: str) -> None:
    later = T0 + dt.timedelta(hours=1)
    body = notification(alert("a1", T0), alert("a1", T0, T0 + dt.timedelta(seconds=5)), alert("a1", later))
    assert webhook.handle(post(body)).status == 200
    assert [(r[1], r[2]) for r in rows(pg_dsn)] == [(T0, T0 + dt.timedelta(seconds=5)), (later, None)]


@pytest.mark.parametrize(("body", "words"), [
    (b"{not json", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[]", "not a JSON object"),
    (json.dumps({"version": "1", "status": "firing", "alerts": []}).encode(), "version"),
    (notification(alert("a", T0), {**alert("b", T0), "fingerprint": None}), "alerts[1].fingerprint"),
    (notification(alert("a", T0), {k: v for k, v in alert("b", T0).items() if k != "startsAt"}),
     "alerts[1].startsAt: missing"),
    (notification({**alert("a", T0), "startsAt": "yesterday"}), "alerts[0].startsAt"),
    (notification({**alert("a", T0), "labels": {"alertname": 3}}), "alerts[0].labels.alertname"),
    (notification({**alert("a", T0), "labels": {}}), "alerts[0].labels"),
    (notification(alert("a", T0, T0 - dt.timedelta(seconds=1))), "alerts[0].endsAt"),
    (notification({**alert("a", T0), "status": "resolved"}), "alerts[0].endsAt"),
    (notification({**alert("a", T0), "status": "pending"}), "alerts[0].status"),
])
def test_a_malformed_notification_is_refused_with_400_naming_it_and_nothing_is_stored(
        webhook: AlertWebhook, pg_dsn: str, body: bytes, words: str) -> None:
    response = webhook.handle(post(body))
    assert response.status == 400 and words in response.body.decode(), response.body
    assert rows(pg_dsn) == []
    assert webhook.metrics.alert_webhook_requests.labels("400")._value.get() == 1


@pytest.mark.parametrize("headers", [{"content_type": "text/plain"},
                                     {"content_type": "application/x-www-form-urlencoded"},
                                     {"content-encoding": "gzip"}])
def test_other_content_is_refused_with_415(webhook: AlertWebhook, pg_dsn: str, headers: dict[str, str]) -> None:
    request = post(notification(alert("a", T0)), headers.pop("content_type", "application/json; charset=utf-8"),
                   **headers)
    response = webhook.handle(request)
    assert response.status == 415, response.body
    assert rows(pg_dsn) == []


def test_hostile_strings_are_kept_and_nul_is_replaced(webhook: AlertWebhook, pg_dsn: str) -> None:
    """jsonb refuses \\u0000: a NUL (and a lone surrogate) becomes U+FFFD and the alert is stored, since
    a 400 would make Alertmanager drop the whole group. Quotes, backslashes and unicode stay exact."""
    odd = 'quote " \' backslash \\ newline \n ünïcode ✓ 𝄞 $1 {{ x }}'
    hostile = alert("h1", T0, instance=odd, nul="a\x00b", surrogate="x\ud800y")
    hostile["annotations"] = {"summary": "NUL \x00 here", "description": odd}
    body = json.dumps(json.loads(notification(hostile))).encode()  # \u0000 and \ud800 as JSON escapes
    assert webhook.handle(post(body)).status == 200
    ((_, _, _, _, labels, annotations, _),) = rows(pg_dsn)
    assert labels == {"alertname": "Probe", "instance": odd, "nul": "a\ufffdb", "surrogate": "x\ufffdy"}
    assert annotations == {"summary": "NUL \ufffd here", "description": odd}
    assert parse_notification(body).replaced == 3


def test_database_down_answers_503_and_stores_once_it_is_back(own_postgres: EmbeddedPostgres) -> None:
    metrics = ArchiverMetrics()
    database = Database(own_postgres.dsn("postgres"), Policy(), metrics)
    assert database.ready(strict=True)
    webhook = AlertWebhook(lambda: database, metrics)
    try:
        own_postgres.stop()
        response = webhook.handle(post(notification(alert("d1", T0))))
        assert response.status == 503 and response.headers["Retry-After"] == "5", response.body
        assert metrics.database_up._value.get() == 0
        own_postgres.start()
        database.use_dsn(own_postgres.dsn("postgres"))
        assert webhook.handle(post(notification(alert("d1", T0)))).status == 200
        assert [r[0] for r in rows(own_postgres.dsn("postgres"))] == ["d1"]
    finally:
        database.dispose()


def test_an_archiver_starting_answers_503() -> None:
    webhook = AlertWebhook(lambda: None, ArchiverMetrics())
    assert webhook.handle(post(notification(alert("s", T0)))).status == 503


# -- the SQL functions ------------------------------------------------------------------------------


def test_sql_functions_on_a_known_history(webhook: AlertWebhook, pg_dsn: str) -> None:
    """Ten resolved occurrences of Slow on h:1 lasting 10, 20, ... 100 s (one every 200 s from T0),
    two of Down on h:2 (30 s, and one still firing since T0 + 1000 s)."""
    alerts = [alert(f"s{i}", T0 + dt.timedelta(seconds=200 * i), T0 + dt.timedelta(seconds=200 * i + 10 * (i + 1)),
                    alertname="Slow", instance="h:1", severity="warning") for i in range(10)]
    alerts += [alert("d0", T0 + dt.timedelta(seconds=50), T0 + dt.timedelta(seconds=80), alertname="Down",
                     instance="h:2", severity="critical"),
               alert("d1", T0 + dt.timedelta(seconds=1000), alertname="Down", instance="h:2", severity="critical")]
    assert webhook.handle(post(notification(*alerts))).status == 200
    end = T0 + dt.timedelta(seconds=2000)
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("SET ROLE perfwatch_grafana")
        history = conn.execute("SELECT alertname, instance, severity, starts_at, ends_at, duration_seconds, firing, "
                               "summary FROM perfwatch.alert_history(%s, %s)", (T0, end)).fetchall()
        assert len(history) == 12
        assert sum(1 for h in history if h[6]) == 1 and [h[4] for h in history if h[6]] == [None]
        assert {h[5] for h in history if h[0] == "Slow"} == {10.0 * (i + 1) for i in range(10)}
        # Overlap: [T0 + 205, T0 + 215) meets s1 ([200, 220)) only, plus d1 (firing from 1000)? no: it starts later.
        window = conn.execute("SELECT alertname, starts_at FROM perfwatch.alert_history(%s, %s)",
                              (T0 + dt.timedelta(seconds=205), T0 + dt.timedelta(seconds=215))).fetchall()
        assert window == [("Slow", T0 + dt.timedelta(seconds=200))]
        only_h2 = conn.execute("SELECT count(*) FROM perfwatch.alert_history(%s, %s, '{\"instance\": \"h:2\"}')",
                               (T0, end)).fetchone()
        assert only_h2 == (2,)
        firing = conn.execute("SELECT alertname, instance, firing_seconds FROM perfwatch.alerts_firing(%s)",
                              (T0 + dt.timedelta(seconds=1205),)).fetchall()
        assert firing == [("Down", "h:2", 205.0), ("Slow", "h:1", 5.0)]  # s6 runs [1200, 1270)
        times = conn.execute("SELECT alertname, instance, resolved, mean_seconds, p90_seconds, max_seconds "
                             "FROM perfwatch.alert_resolve_times(%s, %s)", (T0, end)).fetchall()
        # percentile_cont(0.9) of 10..100: 91 (90 + 0.1 * 10).
        assert times == [("Slow", "h:1", 10, 55.0, pytest.approx(91.0), 100.0), ("Down", "h:2", 1, 30.0, 30.0, 30.0)]
        frequent = conn.execute("SELECT alertname, occurrences, instances FROM perfwatch.alerts_most_frequent(%s, %s)",
                                (T0, end)).fetchall()
        assert frequent == [("Slow", 10, 1), ("Down", 2, 1)]
        buckets = conn.execute("SELECT time, alertname, firing FROM perfwatch.alerts_over_time(%s, %s, '100 s')",
                               (T0, T0 + dt.timedelta(seconds=300))).fetchall()
        assert buckets == [(T0, "Down", 1), (T0, "Slow", 1), (T0 + dt.timedelta(seconds=100), "Down", 0),
                           (T0 + dt.timedelta(seconds=100), "Slow", 0), (T0 + dt.timedelta(seconds=200), "Down", 0),
                           (T0 + dt.timedelta(seconds=200), "Slow", 1)]


# -- end to end: Prometheus → Alertmanager → archiver --------------------------------------------------


class Probe:
    """A target serving `probe_value`, which the test sets."""

    def __init__(self) -> None:
        self.value = 0
        self.lock = threading.Lock()

        def metrics(_request: Request) -> Response:
            with self.lock:
                text = f"# TYPE probe_value gauge\nprobe_value {self.value}\n"
            return Response(200, text.encode(), METRICS_CONTENT_TYPE)

        self.server = WebServer("127.0.0.1", 0, {"/metrics": metrics}, server_name="probe")
        self.server.start()
        self.address = f"127.0.0.1:{self.server.port}"

    def set(self, value: int) -> float:
        with self.lock:
            self.value = value
        return time.time()


@pytest.mark.slow
def test_prometheus_alerts_reach_the_history_through_a_real_alertmanager(tmp_path: Path, pg_dsn: str) -> None:
    web = tmp_path / "web.yml"
    web.write_text(yaml.safe_dump({"basic_auth_users": {USER: bcrypt_hash(PASSWORD)}}, allow_unicode=True))
    archiver = ArchiverProcess(tmp_path, {"database": {"dsn": pg_dsn}, "receive": {
        "alertmanager_webhook": True, "alertmanager_body_size_limit": "64KiB"}}, "--web-config", str(web),
        auth=(USER, PASSWORD)).start()
    hook = f"{archiver.url}{WEBHOOK_PATH}"
    # Credentials before the body is read; a body over the limit is refused from its Content-Length.
    r = requests.post(hook, data=b"x" * 60_000, headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 401
    r = requests.post(hook, data=b"x" * 100_000, auth=(USER, PASSWORD), timeout=10)
    assert r.status_code == 413
    r = requests.post(hook, data=b"{", auth=(USER, PASSWORD), headers={"Content-Type": "application/json"},
                      timeout=10)
    assert r.status_code == 400 and "not JSON" in r.text

    probe = Probe()
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "probe", "interval": "1s", "rules": [
        {"alert": "ProbeHigh", "expr": "probe_value > 0", "for": "0s", "labels": {"severity": "warning"},
         "annotations": {"summary": "probe is {{ $value }} on {{ $labels.instance }}"}}]}]}))
    am = Alertmanager(tmp_path / "am", webhook_config(hook, repeat_interval="2s", basic_auth=(USER, PASSWORD)))
    with am:
        prom_config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                       "rule_files": [str(rules)],
                       "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am.port}"]}]}]},
                       "scrape_configs": [{"job_name": "probe", "static_configs": [{"targets": [probe.address]}]}]}
        (tmp_path / "prom").mkdir()
        with Prometheus(tmp_path / "prom", prom_config) as prom:
            try:
                prom.wait_for('probe_value == 0')  # scraped, and the rule evaluated over it, before the timeline starts
                time.sleep(1.5)
                timeline: list[tuple[float, float]] = []
                for hold in (4.0, 8.0):
                    fired = probe.set(1)
                    n = len(timeline) + 1
                    wait_until(functools.partial(counted, pg_dsn, n, resolved=False), "the firing in the archive", 30)
                    time.sleep(max(0.0, fired + hold - time.time()))
                    resolved = probe.set(0)
                    wait_until(functools.partial(counted, pg_dsn, n, resolved=True),
                               "the resolution in the archive", 30)
                    timeline.append((fired, resolved))
                time.sleep(3)  # Alertmanager repeats (every 2 s) and Prometheus re-sends resolutions meanwhile
            finally:
                probe.server.stop()
    history = rows(pg_dsn)
    assert len(history) == 2, history
    for (fired, resolved), (_, starts, ends, name, labels, notes, _) in zip(timeline, history, strict=True):
        assert (name, labels["severity"], labels["instance"]) == ("ProbeHigh", "warning", probe.address)
        assert notes["summary"] == f"probe is 1 on {probe.address}"
        assert fired <= starts.timestamp() + 0.001 <= fired + SLACK, (fired, starts)
        assert resolved <= ends.timestamp() + 0.001 <= resolved + SLACK, (resolved, ends)
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("SET ROLE perfwatch_grafana")
        ((count, mean, p90),) = conn.execute(
            "SELECT resolved, mean_seconds, p90_seconds FROM perfwatch.alert_resolve_times(now() - interval '1 hour', "
            "now() + interval '1 minute') WHERE alertname = 'ProbeHigh'").fetchall()
    driven = [resolved - fired for fired, resolved in timeline]
    assert count == 2 and abs(mean - sum(driven) / 2) <= SLACK, (mean, driven)
    assert abs(p90 - (driven[0] + 0.9 * (driven[1] - driven[0]))) <= SLACK, (p90, driven)
    # Alertmanager's repeats reached the archive and added no row; so does a hand re-delivery.
    assert archiver.metric("perfwatch_archiver_alert_occurrences_total", outcome="repeated") > 0
    assert archiver.metric("perfwatch_archiver_alert_occurrences_total", outcome="new") == 2
    assert archiver.metric("perfwatch_archiver_alert_occurrences_total", outcome="resolved") == 2
    assert archiver.metric("perfwatch_archiver_alerts_received_total", status="resolved") >= 2
    fingerprint, starts, ends = history[0][0], history[0][1], history[0][2]
    again = notification(alert(fingerprint, starts, ends, **{k: str(v) for k, v in history[0][4].items()}))
    r = requests.post(hook, data=again, auth=(USER, PASSWORD), headers={"Content-Type": "application/json"},
                      timeout=10)
    assert r.status_code == 200
    assert [(h[0], h[1], h[2]) for h in rows(pg_dsn)] == [(h[0], h[1], h[2]) for h in history]
    archiver.stop()


def test_the_door_is_closed_unless_the_config_opens_it(tmp_path: Path, pg_dsn: str) -> None:
    archiver = ArchiverProcess(tmp_path, {"database": {"dsn": pg_dsn}, "receive": {"remote_write": True}}).start()
    r = requests.post(f"{archiver.url}{WEBHOOK_PATH}", data=notification(alert("x", T0)),
                      headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 405  # as for any path without a POST route
    assert "perfwatch_archiver_alert_webhook_requests_total{" not in archiver.metrics()
    archiver.stop()
