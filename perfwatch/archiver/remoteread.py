"""Prometheus' remote_read out of the archive: `POST /api/v1/read`, sampled responses.

A Prometheus with `remote_read` pointing here evaluates PromQL over the archive: each query of the
snappy protobuf `ReadRequest` (label matchers, a time range, read hints) is answered with its series
and samples (`ReadResponse`, SAMPLES; the streamed XOR-chunk type is not offered, and a request
accepting only that gets 400). SQL does the selection and the reading (sql/functions/read.sql:
match_series, read_samples); this module chooses the level and turns buckets into samples.

Which level answers (`choose_resolution`): raw for instant queries and short ranges; where the hints
give a step (and a range, for `rate(x[1h])`), the coarsest tier whose resolution fits five times
into the smaller of the two (Thanos' rule), so a year at a 1 h step reads the 5 m tier and a year
at a day's step the 1 h tier. Functions that count samples (count_over_time, changes, resets, the
quantile and deviation ones) always read raw. Raw is also what plan_tiers stitches in where a tier
has not rolled up yet, and coarser tiers where raw no longer holds the period.

A tier bucket becomes one sample at the time of its last raw sample:
- a counter (and an untyped series under a counter function: rate, increase, irate, delta, ...):
  the running reset-corrected total — the first bucket's last value plus every increase since,
  pairs across buckets included — so differences between the samples are the exact increases
  between those instants, and PromQL sees no resets. Where a series' answer holds no tier bucket
  it is the raw samples as stored, resets and all;
- a gauge: the bucket's average, or, under max_over_time / min_over_time / sum_over_time /
  last_over_time (and the max / min aggregations), its max, min, sum or last value.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import cramjam
import sqlalchemy as sa

from perfwatch.archiver import db, prompb
from perfwatch.archiver.database import Database
from perfwatch.archiver.db import DatabaseUnavailable, make_engine
from perfwatch.archiver.model import datetime_to_ms as _ms
from perfwatch.archiver.model import ms_to_datetime as _ts
from perfwatch.archiver.receive import RequestError, decode_request
from perfwatch.archiver.selfmetrics import ArchiverMetrics
from perfwatch.common.httpserver import Request, Response

log = logging.getLogger(__name__)

READ_PATH = "/api/v1/read"
RAW = dt.timedelta(milliseconds=1)  # the resolution that makes plan_tiers read raw
TIER_FIT = 5  # a tier serves a step (or range) at least this many times its resolution
# PromQL functions whose answer counts or orders every sample: a bucket cannot stand in for them.
NEEDS_RAW = frozenset({"count_over_time", "changes", "resets", "quantile_over_time", "stddev_over_time",
                       "stdvar_over_time", "present_over_time", "timestamp", "absent_over_time"})
# Functions under which an untyped series is read as a counter (reset-corrected running total).
COUNTER_FUNCS = frozenset({"rate", "irate", "increase", "delta", "idelta", "resets"})
# A gauge bucket's value under these functions (the rest: its average).
GAUGE_VALUE = {"max_over_time": "max", "min_over_time": "min", "sum_over_time": "sum", "last_over_time": "last",
               "max": "max", "min": "min"}
STATEMENT_TIMEOUT_MS = 120_000
_CONTENT_TYPE = "application/x-protobuf"


def choose_resolution(hints: Any, tiers: Sequence[dt.timedelta]) -> dt.timedelta:
    """The resolution of the level a query reads (RAW or a tier's), from its read hints."""
    step_ms, range_ms, func = int(hints.step_ms), int(hints.range_ms), str(hints.func)
    if step_ms <= 0 or func in NEEDS_RAW:
        return RAW
    fit_ms = min(step_ms, range_ms) if range_ms > 0 else step_ms
    fitting = [t for t in tiers if t.total_seconds() * 1000 * TIER_FIT <= fit_ms]
    return max(fitting) if fitting else RAW


def matchers_json(matchers: Iterable[Any]) -> str:
    """The query's matchers as match_series takes them: one labels_match object each."""
    out = []
    for m in matchers:
        op = prompb.MATCHER_OPS.get(int(m.type))
        if op is None:
            raise RequestError(400, f"unknown matcher type {m.type} for label {m.name!r}")
        out.append({m.name: m.value if op == "=" else {op: m.value}})
    return json.dumps(out, ensure_ascii=False)


class RemoteReader:
    def __init__(self, database: Callable[[], Database | None], metrics: ArchiverMetrics, *, body_size_limit: int,
                 sample_limit: int, concurrency: int) -> None:
        self.database = database
        self.metrics = metrics
        self.body_size_limit = body_size_limit
        self.sample_limit = sample_limit
        self._slots = threading.BoundedSemaphore(concurrency)
        self._concurrency = concurrency
        self._engine: sa.Engine | None = None
        self._engine_dsn = ""
        self._lock = threading.Lock()
        for code in ("200", "400", "413", "415", "503"):
            metrics.remote_requests.labels(READ_PATH, code)

    def configure(self, body_size_limit: int, sample_limit: int) -> None:
        self.body_size_limit, self.sample_limit = body_size_limit, sample_limit

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()

    def handle(self, request: Request) -> Response:
        with self._slots:
            response = self._handle(request)
        self.metrics.remote_requests.labels(READ_PATH, str(response.status)).inc()
        return response

    def _handle(self, request: Request) -> Response:
        try:
            message: Any = decode_request(request, prompb.ReadRequest, self.body_size_limit, "prometheus.ReadRequest")
            accepted = list(message.accepted_response_types)
            if accepted and prompb.SAMPLES_RESPONSE not in accepted:
                raise RequestError(400, "only the SAMPLES response type is served; the request accepts "
                                   f"{accepted} (STREAMED_XOR_CHUNKS is 1)")
            response = prompb.ReadResponse()
            engine = self._engine_now()
            if engine is None:
                raise DatabaseUnavailable("the archiver is starting")
            with db.unavailable_as("answering a remote_read"), engine.connect() as conn:
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                conn.exec_driver_sql(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}")
                tiers = list(conn.exec_driver_sql(
                    "SELECT resolution FROM perfwatch.tier_coverage() WHERE level > 0").scalars())
                budget = [self.sample_limit]
                for query in message.queries:
                    self._answer(conn, query, tiers, response.results.add(), budget)
        except RequestError as err:
            log.info("remote_read refused with %d: %s", err.status, err.message)
            return Response(err.status, f"{err.message}\n".encode())
        except DatabaseUnavailable as err:
            return Response(503, f"the archive's database is unavailable: {err}\n".encode(),
                            headers={"Retry-After": "5"})
        body = bytes(cramjam.snappy.compress_raw(response.SerializeToString()))
        return Response(200, body, content_type=_CONTENT_TYPE, headers={"Content-Encoding": "snappy"})

    def _engine_now(self) -> sa.Engine | None:
        """The reader's own pool (reads never take the writer's connections), on the database's
        address of the moment (an embedded server started again may have moved)."""
        database = self.database()
        if database is None:
            return None
        with self._lock:
            if self._engine is None or self._engine_dsn != database.dsn:
                if self._engine is not None:
                    self._engine.dispose()
                self._engine_dsn = database.dsn
                self._engine = make_engine(self._engine_dsn, application_name="perfwatch-archiver-read",
                                           pool_size=self._concurrency)
            return self._engine

    def _answer(self, conn: sa.Connection, query: Any, tiers: list[dt.timedelta], result: Any,
                budget: list[int]) -> None:
        start_ms, end_ms = int(query.start_timestamp_ms), int(query.end_timestamp_ms)
        if end_ms < start_ms:
            raise RequestError(400, f"the query ends ({end_ms}) before it starts ({start_ms})")
        hints = query.hints
        resolution = choose_resolution(hints, tiers)
        func = str(hints.func)
        series = {row.series_id: row for row in conn.exec_driver_sql(
            "SELECT * FROM perfwatch.match_series(%s::jsonb)", (matchers_json(query.matchers),))}
        if not series:
            return
        rows = list(conn.exec_driver_sql("SELECT * FROM perfwatch.read_samples(%s, %s, %s, %s)",
                                         (sorted(series), _ts(start_ms), _ts(end_ms), resolution)))
        if self.sample_limit and len(rows) > budget[0]:
            raise RequestError(400, f"exceeded sample limit ({self.sample_limit}): narrow the matchers or the range, "
                               "or raise receive.remote_read_sample_limit")
        budget[0] -= len(rows)
        levels: dict[str, int] = {}
        i = 0
        while i < len(rows):
            j = i
            while j < len(rows) and rows[j].series_id == rows[i].series_id:
                j += 1
            info = series[rows[i].series_id]
            ts = result.timeseries.add()
            labels = {**info.labels, "__name__": info.metric}
            for name in sorted(labels):
                ts.labels.add(name=name, value=labels[name])
            ts.samples.extend(_samples(rows[i:j], info.kind, func))
            for row in rows[i:j]:
                levels[row.level] = levels.get(row.level, 0) + 1
            i = j
        for level, count in levels.items():
            self.metrics.remote_read_samples.labels(level).inc(count)


def _samples(rows: Sequence[Any], kind: str, func: str) -> list[Any]:
    """One series' rows (time order) as prompb samples, as the module's docstring says."""
    make = prompb.Sample
    if all(row.level == "raw" for row in rows):
        return [make(value=row.last_value, timestamp=_ms(row.ts)) for row in rows]
    if kind == "counter" or (kind == "untyped" and func in COUNTER_FUNCS):
        out = []
        total = prev = None
        for row in rows:
            if total is None:
                total = row.last_value
            else:
                first = row.first_value
                total += (first - prev if first >= prev else first) + (row.increase or 0.0)
            prev = row.last_value
            out.append(make(value=total, timestamp=_ms(row.ts)))
        return out
    pick = GAUGE_VALUE.get(func, "avg")
    if pick == "avg":
        return [make(value=row.sum / row.count, timestamp=_ms(row.ts)) for row in rows]
    if pick == "last":
        return [make(value=row.last_value, timestamp=_ms(row.ts)) for row in rows]
    return [make(value=getattr(row, pick), timestamp=_ms(row.ts)) for row in rows]

