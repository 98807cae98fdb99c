"""Alert history: Alertmanager's webhook (`POST /alertmanager/webhook`, JSON, version "4") into the archive.

Each alert of a notification is one occurrence of that alert, keyed by (fingerprint, startsAt), in
perfwatch.alert_occurrence (schema 0008): a re-delivered notification, Alertmanager's repeats and
its regroupings find their row and add nothing; a `resolved` alert sets ends_at, which stays NULL
while firing (a firing alert's endsAt is Alertmanager's expiry, not an end) and is kept once set.

Written directly, in one short transaction per request, not through the spool: the spool holds
sample batches, and Alertmanager already keeps what it has not delivered. While PostgreSQL is
unreachable the answer is 503 and Alertmanager tries again (webhooks retry 5xx, with backoff, and
the next group_interval sends the group's state again); a 2xx comes only once committed.
- 200: stored. 400: not JSON, not version 4, or a field missing or of the wrong type (named);
  nothing of the request is stored. 413: over receive.alertmanager_body_size_limit (the server
  answers before reading the body). 415: a content type other than JSON, or any content encoding.
- Characters PostgreSQL cannot hold in text or jsonb (NUL, lone surrogates) are replaced with
  U+FFFD and the alert is stored: a 400 would make Alertmanager drop the whole group's notification.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import re
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from perfwatch.archiver import db
from perfwatch.archiver.database import Database
from perfwatch.archiver.db import DatabaseUnavailable
from perfwatch.archiver.selfmetrics import ArchiverMetrics
from perfwatch.common.httpserver import Request, Response

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/alertmanager/webhook"
DEFAULT_BODY_SIZE_LIMIT = 8 << 20  # ~8,000 alerts of 1 KB in one notification
RETRY_AFTER_SECONDS = 5
STATUSES = ("firing", "resolved")
OUTCOMES = ("new", "resolved", "repeated")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_REPLACEMENT = "\ufffd"
_ZERO_TIME = dt.datetime(1, 1, 1, tzinfo=dt.UTC)  # Go's zero time: Alertmanager's "no end yet"

# One statement for the whole request: the rows as arrays (no bind-parameter limit), the rows as they
# were before (the statement's snapshot: to count resolutions), the upsert (xmax 0: a row inserted).
# ends_at: kept once set; else the resolution's.
_UPSERT = sa.text("""
WITH incoming AS (
    SELECT * FROM unnest(CAST(:fingerprint AS text[]), CAST(:starts_at AS timestamptz[]),
                         CAST(:ends_at AS timestamptz[]), CAST(:labels AS jsonb[]), CAST(:annotations AS jsonb[]),
                         CAST(:generator_url AS text[]))
        AS i(fingerprint, starts_at, ends_at, labels, annotations, generator_url)
), old AS (
    SELECT o.fingerprint, o.starts_at, o.ends_at FROM perfwatch.alert_occurrence o
    JOIN incoming i USING (fingerprint, starts_at)
), upsert AS (
    INSERT INTO perfwatch.alert_occurrence AS o (fingerprint, starts_at, ends_at, labels, annotations, receiver,
                                                 generator_url, first_notified_at, last_notified_at)
    SELECT i.fingerprint, i.starts_at, i.ends_at, i.labels, i.annotations, :receiver, i.generator_url, now(), now()
    FROM incoming i
    ON CONFLICT (fingerprint, starts_at) DO UPDATE SET
        ends_at = coalesce(o.ends_at, EXCLUDED.ends_at),
        annotations = EXCLUDED.annotations,
        receiver = EXCLUDED.receiver,
        generator_url = EXCLUDED.generator_url,
        last_notified_at = greatest(o.last_notified_at, EXCLUDED.last_notified_at),
        notifications = o.notifications + 1
    RETURNING o.fingerprint, o.starts_at, o.ends_at, o.xmax <> 0 AS existed
)
SELECT u.ends_at IS NOT NULL AS ended, u.existed, coalesce(old.ends_at IS NOT NULL, false) AS was_ended
FROM upsert u LEFT JOIN old USING (fingerprint, starts_at)
""")


class NotificationError(Exception):
    """A notification answered with 400 (or `status`), naming what is wrong; nothing of it stored."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclasses.dataclass(frozen=True)
class Occurrence:
    fingerprint: str
    starts_at: dt.datetime
    ends_at: dt.datetime | None  # set only for a resolved alert
    labels: dict[str, str]
    annotations: dict[str, str]
    generator_url: str


@dataclasses.dataclass(frozen=True)
class Notification:
    receiver: str
    status: str
    alerts: list[Occurrence]
    replaced: int  # strings whose unstorable characters were replaced


def parse_notification(body: bytes) -> Notification:
    """The webhook body as a Notification; NotificationError names the first thing wrong."""
    try:
        data = json.loads(body)
    except ValueError as err:  # UnicodeDecodeError (not UTF-8) is one too
        raise NotificationError(f"the body is not JSON: {err}") from None
    if not isinstance(data, dict):
        raise NotificationError("the body is not a JSON object (Alertmanager's webhook notification)")
    version = data.get("version")
    if version != "4":
        raise NotificationError(f"version: {version!r}; only Alertmanager's webhook version \"4\" is understood")
    cleaner = _Cleaner()
    receiver = cleaner.text(_field(data, "receiver", str, ""), "receiver")
    status = _field(data, "status", str, "")
    if status not in STATUSES:
        raise NotificationError(f"status: {status!r} is neither firing nor resolved")
    alerts = _field(data, "alerts", list)
    found: dict[tuple[str, dt.datetime], Occurrence] = {}
    for i, alert in enumerate(alerts):
        where = f"alerts[{i}]"
        if not isinstance(alert, dict):
            raise NotificationError(f"{where}: not a JSON object")
        occurrence = _occurrence(alert, where, cleaner)
        key = (occurrence.fingerprint, occurrence.starts_at)
        # The same occurrence twice in one notification: one row (the resolution wins), as the upsert
        # cannot touch a row twice in one statement.
        if key not in found or occurrence.ends_at is not None:
            found[key] = occurrence
    return Notification(receiver, status, list(found.values()), cleaner.replaced)


def _occurrence(alert: dict[str, Any], where: str, cleaner: _Cleaner) -> Occurrence:
    status = _field(alert, "status", str, where=where)
    if status not in STATUSES:
        raise NotificationError(f"{where}.status: {status!r} is neither firing nor resolved")
    labels = cleaner.mapping(_field(alert, "labels", dict, where=where), f"{where}.labels")
    if not labels:
        raise NotificationError(f"{where}.labels: an alert has labels (alertname at least)")
    annotations = cleaner.mapping(_field(alert, "annotations", dict, {}, where=where), f"{where}.annotations")
    fingerprint = cleaner.text(_field(alert, "fingerprint", str, where=where), f"{where}.fingerprint")
    if not fingerprint:
        raise NotificationError(f"{where}.fingerprint: empty")
    starts_at = _time(_field(alert, "startsAt", str, where=where), f"{where}.startsAt")
    ends_at = None
    if status == "resolved":
        ends_at = _time(_field(alert, "endsAt", str, where=where), f"{where}.endsAt")
        if ends_at == _ZERO_TIME:
            raise NotificationError(f"{where}.endsAt: a resolved alert needs the time it ended")
        if ends_at < starts_at:
            raise NotificationError(f"{where}.endsAt: {ends_at.isoformat()} is before startsAt")
    generator_url = cleaner.text(_field(alert, "generatorURL", str, "", where=where), f"{where}.generatorURL")
    return Occurrence(fingerprint, starts_at, ends_at, labels, annotations, generator_url)


def _field(data: dict[str, Any], name: str, kind: type, default: Any = ..., *, where: str = "") -> Any:
    key = f"{where}.{name}" if where else name
    value = data.get(name, default)
    if value is ...:
        raise NotificationError(f"{key}: missing")
    if value is None and default is not ...:
        return default
    if not isinstance(value, kind):
        raise NotificationError(f"{key}: must be a JSON {_JSON_KIND[kind]}, not {type(value).__name__}")
    return value


_JSON_KIND: dict[type, str] = {str: "string", dict: "object", list: "array"}


def _time(text: str, key: str) -> dt.datetime:
    """RFC 3339 as Go writes it (nanoseconds allowed: Python keeps microseconds)."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", text)
    if match is None:
        raise NotificationError(f"{key}: {text[:40]!r} is not an RFC 3339 time")
    whole, fraction, zone = match.groups()
    try:
        moment = dt.datetime.fromisoformat(whole + (fraction or "")[:7] + ("+00:00" if zone == "Z" else zone))
    except ValueError as err:
        raise NotificationError(f"{key}: {text[:40]!r}: {err}") from None
    return moment.astimezone(dt.UTC)


class _Cleaner:
    """Strings as PostgreSQL can store them, counting those that had to change."""

    def __init__(self) -> None:
        self.replaced = 0

    def text(self, value: str, key: str) -> str:
        if _UNSTORABLE.search(value) is None:
            return value
        self.replaced += 1
        log.debug("%s: NUL or lone surrogate replaced with U+FFFD", key)
        return _UNSTORABLE.sub(_REPLACEMENT, value)

    def mapping(self, value: dict[str, Any], key: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, text in value.items():
            if not isinstance(text, str):
                raise NotificationError(f"{key}.{name[:100]}: must be a JSON string, not {type(text).__name__}")
            out[self.text(name, key)] = self.text(text, f"{key}.{name[:100]}")
        return out


class AlertWebhook:
    """The handler of WEBHOOK_PATH; `database` gives the archiver's Database (None while starting)."""

    def __init__(self, database: Callable[[], Database | None], metrics: ArchiverMetrics) -> None:
        self.database = database
        self.metrics = metrics
        for code in ("200", "400", "413", "415", "500", "503"):
            metrics.alert_webhook_requests.labels(code)
        for status in STATUSES:
            metrics.alert_notifications.labels(status)
            metrics.alerts_received.labels(status)
        for outcome in OUTCOMES:
            metrics.alert_occurrences.labels(outcome)

    def handle(self, request: Request) -> Response:
        response = self._handle(request)
        self.metrics.alert_webhook_requests.labels(str(response.status)).inc()
        return response

    def _handle(self, request: Request) -> Response:
        try:
            _check_content(request)
            notification = parse_notification(request.body)
        except NotificationError as err:
            log.info("refused an Alertmanager notification with %d: %s", err.status, err.message)
            return Response(err.status, f"{err.message}\n".encode())
        database = self.database()
        try:
            if database is None or not database.ready():
                raise DatabaseUnavailable("the archive is not ready")
            outcomes = self._store(database, notification)
        except DatabaseUnavailable as err:
            if database is not None:
                database.mark_down(err)
            return Response(503, f"the archive's database is unavailable ({err}); retry later\n".encode(),
                            headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        except Exception:
            log.exception("cannot store an Alertmanager notification (answered 500: Alertmanager retries)")
            return Response(500, b"cannot store the notification\n")
        database.mark_up()
        self.metrics.alert_notifications.labels(notification.status).inc()
        for occurrence in notification.alerts:
            self.metrics.alerts_received.labels("firing" if occurrence.ends_at is None else "resolved").inc()
        for outcome, count in outcomes.items():
            self.metrics.alert_occurrences.labels(outcome).inc(count)
        if notification.replaced:
            log.warning("an Alertmanager notification had %d strings with NUL or lone surrogates, which PostgreSQL "
                        "cannot store: replaced with U+FFFD", notification.replaced)
        return Response(200, b"stored\n")

    def _store(self, database: Database, notification: Notification) -> dict[str, int]:
        outcomes = dict.fromkeys(OUTCOMES, 0)
        if not notification.alerts:
            return outcomes
        alerts = notification.alerts
        params = {
            "fingerprint": [a.fingerprint for a in alerts], "starts_at": [a.starts_at for a in alerts],
            "ends_at": [a.ends_at for a in alerts],
            "labels": [json.dumps(a.labels, ensure_ascii=False) for a in alerts],
            "annotations": [json.dumps(a.annotations, ensure_ascii=False) for a in alerts],
            "generator_url": [a.generator_url for a in alerts], "receiver": notification.receiver,
        }

        def write() -> list[sa.Row[Any]]:
            with db.unavailable_as("storing alerts"), database.engine.begin() as conn:
                return list(conn.execute(_UPSERT, params))

        for row in db.retry_conflicts("storing alerts", write):
            if not row.existed:
                outcomes["new"] += 1
            elif row.ended and not row.was_ended:
                outcomes["resolved"] += 1
            else:
                outcomes["repeated"] += 1
        return outcomes


def _check_content(request: Request) -> None:
    encoding = request.header("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise NotificationError(f"Content-Encoding {encoding!r} is not supported; send the JSON as it is", 415)
    media = request.header("content-type", "application/json").partition(";")[0].strip().lower()
    if media != "application/json":
        raise NotificationError(f"Content-Type {media!r} is not supported; send application/json", 415)
