"""The remote protocols' own rules, in-process: what a remote_write request becomes (or why it is
refused, with which status), and how remote_read chooses its level and turns buckets into samples.
The real senders and readers (Prometheus) are in test_archiver_remote.py."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import threading
import time
from pathlib import Path
from typing import Any

import cramjam
import pytest
from support.archive import stored_archive

from perfwatch.archiver import prompb
from perfwatch.archiver.model import Batch, MetricMeta, Sample
from perfwatch.archiver.parse import ScrapeLimits
from perfwatch.archiver.policy import Policy
from perfwatch.archiver.receive import JOB, RemoteWriteReceiver, RequestError, decode_request
from perfwatch.archiver.remoteread import RAW, RemoteReader, _samples, choose_resolution, matchers_json
from perfwatch.archiver.selfmetrics import ArchiverMetrics
from perfwatch.archiver.spool import Spool
from perfwatch.archiver.store import Store
from perfwatch.common.httpserver import Request

FIVE_MIN, HOUR = dt.timedelta(minutes=5), dt.timedelta(hours=1)
LIMITS = ScrapeLimits(label_limit=5, label_name_length_limit=20, label_value_length_limit=40)


def write_request(*series: tuple[dict[str, str], list[tuple[float, int]]], metadata: tuple[Any, ...] = ()) -> Any:
    message = prompb.WriteRequest()
    for labels, samples in series:
        ts = message.timeseries.add()
        for name, value in labels.items():
            ts.labels.add(name=name, value=value)
        for number, t in samples:
            ts.samples.add(value=number, timestamp=t)
    message.metadata.extend(metadata)
    return message


def post(body: bytes, **headers: str) -> Request:
    base = {"content-encoding": "snappy", "content-type": "application/x-protobuf"}
    return Request("POST", "/api/v1/write", "", {**base, **{k.replace("_", "-"): v for k, v in headers.items()}}, body)


def snappy(data: bytes) -> bytes:
    return bytes(cramjam.snappy.compress_raw(data))


@pytest.fixture
def receiver(tmp_path: Path) -> RemoteWriteReceiver:
    spool = Spool(tmp_path / "spool")
    return RemoteWriteReceiver(spool, ArchiverMetrics(spool), LIMITS, 1 << 20)


def spooled(receiver: RemoteWriteReceiver) -> list[Batch]:
    batches = []
    while (entry := receiver.spool.peek()) is not None:
        batches.append(entry.batch)
        receiver.spool.commit(entry)
    return batches


def test_a_request_is_spooled_with_its_labels_samples_and_metadata(receiver: RemoteWriteReceiver) -> None:
    odd = 'quote " backslash \\ newline \n ünïcode ✓'
    message = write_request(
        ({"__name__": "http_requests_total", "job": "api", "path": odd, "empty": ""}, [(1.0, 1000), (3.5, 2000)]),
        ({"__name__": "latency_seconds_bucket", "le": "0.5", "job": "api"}, [(7.0, 1000)]),
        ({"__name__": "temperature", "job": "api"}, [(21.5, 1000), (float("nan"), 2000)]),
        metadata=(prompb.MetricMetadata(type=1, metric_family_name="http_requests_total", help="Requests."),
                  prompb.MetricMetadata(type=3, metric_family_name="latency_seconds", unit="seconds"),
                  prompb.MetricMetadata(type=2, metric_family_name="temperature")))
    response = receiver.handle(post(snappy(message.SerializeToString())))
    assert response.status == 204, response.body
    (batch,) = spooled(receiver)
    got = [(s.name, s.labels, s.value, s.timestamp_ms) for s in batch.samples]
    assert got[:4] == [
        ("http_requests_total", (("job", "api"), ("path", odd)), 1.0, 1000),  # the empty label is no label
        ("http_requests_total", (("job", "api"), ("path", odd)), 3.5, 2000),
        ("latency_seconds_bucket", (("job", "api"), ("le", "0.5")), 7.0, 1000),
        ("temperature", (("job", "api"),), 21.5, 1000),
    ]
    assert got[4][2] != got[4][2]  # NaN reaches the store, which drops and counts it
    kinds = {name: (meta.kind, meta.family_type, meta.help, meta.unit) for name, meta in batch.metadata.items()}
    assert kinds == {"http_requests_total": ("counter", "counter", "Requests.", ""),
                     "latency_seconds_bucket": ("counter", "histogram", "", "seconds"),
                     "temperature": ("gauge", "gauge", "", "")}


def test_metadata_sent_before_is_remembered_and_a_name_without_any_gets_none(receiver: RemoteWriteReceiver) -> None:
    first = write_request(metadata=(prompb.MetricMetadata(type=5, metric_family_name="rpc_seconds"),))
    assert receiver.handle(post(snappy(first.SerializeToString()))).status == 204
    assert spooled(receiver) == []  # metadata alone: nothing to spool
    second = write_request(({"__name__": "rpc_seconds", "quantile": "0.9"}, [(0.2, 5)]),
                           ({"__name__": "rpc_seconds_count"}, [(10.0, 5)]),
                           ({"__name__": "unannounced_total"}, [(1.0, 5)]))
    assert receiver.handle(post(snappy(second.SerializeToString()))).status == 204
    (batch,) = spooled(receiver)
    assert {n: m.kind for n, m in batch.metadata.items()} == {"rpc_seconds": "gauge", "rpc_seconds_count": "counter"}


@pytest.mark.parametrize(("labels", "reason", "words"), [
    ({"job": "x"}, "invalid", "without a metric name"),
    ({"__name__": "1bad"}, "invalid", "invalid metric name"),
    ({"__name__": "ok", "bad-name": "v"}, "invalid", "invalid label name"),
    ({"__name__": "ok", "a": "1", "b": "2", "c": "3", "d": "4", "e": "5", "f": "6"}, "label_limit", "label_limit"),
    ({"__name__": "ok", "a": "x" * 41}, "label_limit", "label_value_length_limit"),
])
def test_a_bad_series_is_refused_with_400_and_the_rest_stored(receiver: RemoteWriteReceiver, labels: dict[str, str],
                                                                reason: str, words: str) -> None:
    message = write_request((labels, [(1.0, 1)]), ({"__name__": "good"}, [(2.0, 1)]))
    response = receiver.handle(post(snappy(message.SerializeToString())))
    assert response.status == 400 and words in response.body.decode(), response.body
    (batch,) = spooled(receiver)
    assert [s.name for s in batch.samples] == ["good"]
    assert receiver.metrics.remote_write_refused.labels(reason)._value.get() == 1


def test_a_label_given_twice_is_refused(receiver: RemoteWriteReceiver) -> None:
    message = prompb.WriteRequest()
    ts = message.timeseries.add()
    for name, value in (("__name__", "x"), ("a", "1"), ("a", "2")):
        ts.labels.add(name=name, value=value)
    ts.samples.add(value=1.0, timestamp=1)
    response = receiver.handle(post(snappy(message.SerializeToString())))
    assert response.status == 400 and b"given twice" in response.body
    assert spooled(receiver) == []


def test_native_histograms_are_counted_and_not_stored(receiver: RemoteWriteReceiver) -> None:
    message = prompb.WriteRequest()
    ts = message.timeseries.add()
    ts.labels.add(name="__name__", value="native")
    ts.histograms.append(b"\x08\x01")  # field 4 as raw bytes: what the receiver sees of a histogram
    response = receiver.handle(post(snappy(message.SerializeToString())))
    assert response.status == 400 and b"native histogram" in response.body
    assert receiver.metrics.remote_write_refused.labels("native_histogram")._value.get() == 1


@pytest.mark.parametrize(("body", "headers", "status", "words"), [
    (b"not snappy at all \xff\xff\xff\xff\xff", {}, 400, "snappy"),
    (snappy(b"\xff\xff\xff garbage protobuf"), {}, 400, "protobuf"),
    (snappy(b""), {"content_encoding": "gzip"}, 415, "Content-Encoding"),
    (snappy(b""), {"content_type": "application/json"}, 415, "Content-Type"),
    (snappy(b""), {"content_type": "application/x-protobuf;proto=io.prometheus.write.v2.Request"}, 415,
     "Content-Type"),
    (snappy(b"\0" * (2 << 20)), {}, 413, "body_size_limit"),
])
def test_a_malformed_request_is_refused_and_stores_nothing(receiver: RemoteWriteReceiver, body: bytes,
                                                           headers: dict[str, str], status: int, words: str) -> None:
    response = receiver.handle(post(body, **headers))
    assert response.status == status and words in response.body.decode(), response.body
    assert spooled(receiver) == []
    assert receiver.metrics.remote_requests.labels("/api/v1/write", str(status))._value.get() == 1


def test_a_snappy_length_that_lies_is_caught_before_decompressing() -> None:
    lying = b"\xff\xff\xff\xff\x0f" + b"\0" * 10  # says 4 GiB
    with pytest.raises(RequestError) as err:
        decode_request(post(lying), prompb.WriteRequest, 1 << 20, "prometheus.WriteRequest")
    assert err.value.status == 413


def test_a_nearly_full_spool_answers_503_so_the_sender_retries(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=1 << 16)
    receiver = RemoteWriteReceiver(spool, ArchiverMetrics(spool), ScrapeLimits(), 1 << 20)
    big = write_request(*(({"__name__": "x", "i": str(i)}, [(1.0, 1)]) for i in range(600)))
    body = snappy(big.SerializeToString())
    statuses = [receiver.handle(post(body)).status for _ in range(5)]
    assert statuses[0] == 204 and 503 in statuses, statuses
    assert spool.dropped_batches == 0  # refused rather than dropping the oldest
    response = receiver.handle(post(body))
    assert response.status == 503 and response.headers["Retry-After"].isdigit()


def test_concurrent_requests_cannot_overshoot_the_high_water_together(tmp_path: Path) -> None:
    """The high-water check and the append are one step under the spool's lock: 8 senders at once
    never take the spool past 90 % of max_bytes, so it never drops a batch it accepted."""
    spool = Spool(tmp_path / "spool", max_bytes=1 << 18)
    receiver = RemoteWriteReceiver(spool, ArchiverMetrics(spool), ScrapeLimits(), 1 << 20)
    bodies = [snappy(write_request(*(({"__name__": "x", "i": str(i), "s": str(n)}, [(1.0, 1)])
                                     for i in range(300))).SerializeToString()) for n in range(8)]
    statuses: list[int] = []
    start = threading.Barrier(8)

    def sender(body: bytes) -> None:
        start.wait()
        for _ in range(12):
            statuses.append(receiver.handle(post(body)).status)

    threads = [threading.Thread(target=sender, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(statuses) == 96 and set(statuses) == {204, 503}, statuses
    assert spool.dropped_batches == 0
    assert spool.stats().bytes <= 0.9 * spool.max_bytes
    assert spool.stats().batches == statuses.count(204)


# -- remote_read ---------------------------------------------------------------------------------

@dataclasses.dataclass
class Hints:
    step_ms: int = 0
    range_ms: int = 0
    func: str = ""


@pytest.mark.parametrize(("hints", "want"), [
    (Hints(), RAW),  # an instant query
    (Hints(step_ms=15_000), RAW),
    (Hints(step_ms=3600_000), FIVE_MIN),  # a long range at an hour's step
    (Hints(step_ms=3600_000, range_ms=3600_000, func="rate"), FIVE_MIN),
    (Hints(step_ms=86400_000, range_ms=86400_000, func="avg_over_time"), HOUR),
    (Hints(step_ms=86400_000, range_ms=300_000, func="rate"), RAW),  # rate(x[5m]) needs every sample
    (Hints(step_ms=86400_000, range_ms=86400_000, func="count_over_time"), RAW),
    (Hints(step_ms=86400_000, func="changes"), RAW),
])
def test_the_level_is_the_coarsest_tier_that_fits_five_times(hints: Hints, want: dt.timedelta) -> None:
    assert choose_resolution(hints, [FIVE_MIN, HOUR]) == want


@dataclasses.dataclass
class Row:
    level: str
    ts: dt.datetime
    count: int
    sum: float
    min: float
    max: float
    first_value: float
    last_value: float
    increase: float | None


T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def bucket(i: int, values: list[float]) -> Row:
    """A 5-minute bucket of counter values (the increase of the pairs inside it)."""
    inc = sum(b - a if b >= a else b for a, b in itertools.pairwise(values))
    return Row("5m", T0 + dt.timedelta(minutes=5 * i + 4), len(values), sum(values), min(values), max(values),
               values[0], values[-1], inc)


def test_a_tier_counter_becomes_a_running_total_whose_differences_are_the_increases() -> None:
    # 10, 20, 30 | 35, 5 (reset), 15 | 25, 2 (reset)
    rows = [bucket(0, [10, 20, 30]), bucket(1, [35, 5, 15]), bucket(2, [25, 2])]
    values = [s.value for s in _samples(rows, "counter", "rate")]
    assert values == [30, 30 + 5 + 5 + 10, 30 + 20 + 10 + 2]
    assert [s.timestamp for s in _samples(rows, "counter", "rate")] == [
        int((r.ts - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)).total_seconds() * 1000) for r in rows]


def test_raw_samples_stay_as_stored_resets_and_all() -> None:
    rows = [Row("raw", T0 + dt.timedelta(seconds=i), 1, v, v, v, v, v, 0.0) for i, v in enumerate([5.0, 9.0, 1.0])]
    assert [s.value for s in _samples(rows, "counter", "rate")] == [5.0, 9.0, 1.0]


@pytest.mark.parametrize(("func", "want"), [("", [20.0, 5.0]), ("avg_over_time", [20.0, 5.0]),
                                            ("max_over_time", [30.0, 8.0]), ("min_over_time", [10.0, 2.0]),
                                            ("sum_over_time", [60.0, 10.0]), ("last_over_time", [30.0, 2.0])])
def test_a_tier_gauge_becomes_the_value_its_function_reads(func: str, want: list[float]) -> None:
    rows = [Row("5m", T0, 3, 60.0, 10.0, 30.0, 10.0, 30.0, None), Row("5m", T0 + FIVE_MIN, 2, 10.0, 2.0, 8.0, 8.0,
                                                                      2.0, None)]
    assert [s.value for s in _samples(rows, "gauge", func)] == want


def test_an_untyped_series_is_a_counter_under_rate_and_a_gauge_otherwise() -> None:
    rows = [bucket(0, [1, 2, 3]), bucket(1, [4, 5])]
    assert [s.value for s in _samples(rows, "untyped", "rate")] == [3, 5]
    assert [s.value for s in _samples(rows, "untyped", "avg_over_time")] == [2, 4.5]


def test_matchers_become_one_object_each() -> None:
    m = prompb.LabelMatcher
    got = matchers_json([m(type=0, name="__name__", value="up"), m(type=2, name="job", value="a.*"),
                         m(type=3, name="job", value="ab"), m(type=1, name="x", value="")])
    assert got == '[{"__name__": "up"}, {"job": {"=~": "a.*"}}, {"job": {"!~": "ab"}}, {"x": {"!=": ""}}]'


# -- against a real PostgreSQL: matchers, and what a guess may not replace ---------------------------

def store_some(dsn: str) -> tuple[Any, Store]:
    engine = stored_archive(dsn, Policy())
    store = Store(engine)
    now = int(time.time() * 1000)
    samples = [Sample("up", (("instance", "a:1"), ("job", "node")), 1.0, now),
               Sample("up", (("instance", "b:1"), ("job", "nodes")), 1.0, now),
               Sample("up", (("instance", "c:1"), ("job", "api"), ("zone", "eu")), 0.0, now),
               Sample("load1", (("instance", "a:1"), ("job", "node")), 0.5, now)]
    meta = {"up": MetricMeta("up", "gauge", "gauge"), "load1": MetricMeta("load1", "gauge", "gauge")}
    assert store.write(Batch("t", "t", now, samples, meta)) == 4
    return engine, store


def matched(engine: Any, matchers: list[tuple[int, str, str]]) -> list[tuple[str, str]]:
    m = [prompb.LabelMatcher(type=kind, name=name, value=value) for kind, name, value in matchers]
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT metric, labels FROM perfwatch.match_series(%s::jsonb)",
                                    (matchers_json(m),)).fetchall()
    return sorted((metric, labels["instance"]) for metric, labels in rows)


EQ, NEQ, RE, NRE = 0, 1, 2, 3


def test_matchers_select_series_as_promql_does(pg_dsn: str) -> None:
    engine, _ = store_some(pg_dsn)
    try:
        assert matched(engine, [(EQ, "__name__", "up")]) == [("up", "a:1"), ("up", "b:1"), ("up", "c:1")]
        assert matched(engine, [(EQ, "__name__", "up"), (EQ, "job", "node")]) == [("up", "a:1")]
        assert matched(engine, [(RE, "job", "node")]) == [("load1", "a:1"), ("up", "a:1")]  # anchored
        assert matched(engine, [(RE, "job", "node.*"), (NRE, "__name__", "load.*")]) == [("up", "a:1"), ("up", "b:1")]
        assert matched(engine, [(EQ, "zone", "")]) == [("load1", "a:1"), ("up", "a:1"), ("up", "b:1")]  # lacks it
        assert matched(engine, [(NEQ, "zone", ""), (RE, "__name__", ".+")]) == [("up", "c:1")]
        assert matched(engine, [(EQ, "__name__", "up"), (EQ, "__name__", "load1")]) == []
    finally:
        engine.dispose()


def test_a_guessed_kind_never_replaces_what_the_catalog_knows(pg_dsn: str) -> None:
    engine, _ = store_some(pg_dsn)
    try:
        fresh = Store(engine)  # a restarted archiver: nothing cached
        now = int(time.time() * 1000)
        unannounced = [Sample("up", (("instance", "d:1"), ("job", "node")), 1.0, now),
                       Sample("new_thing", (), 2.0, now), Sample("new_total", (), 3.0, now)]
        assert fresh.write(Batch(JOB, "r", now, unannounced, {})) == 3
        with engine.connect() as conn:
            kinds = dict(conn.exec_driver_sql("SELECT name, kind FROM perfwatch.metric").fetchall())
        assert kinds["up"] == "gauge"  # known: kept
        assert kinds["new_thing"] == "untyped" and kinds["new_total"] == "counter"  # guessed by name
        # The metadata, when it comes, replaces the guess.
        later = [Sample("new_thing", (), 4.0, now + 1000)]
        fresh.write(Batch(JOB, "r", now + 1000, later, {"new_thing": MetricMeta("new_thing", "gauge", "gauge")}))
        with engine.connect() as conn:
            kind = conn.exec_driver_sql("SELECT kind FROM perfwatch.metric WHERE name = 'new_thing'").scalar()
        assert kind == "gauge"
    finally:
        engine.dispose()


def test_remote_read_refusals(tmp_path: Path) -> None:
    reader = RemoteReader(lambda: None, ArchiverMetrics(), body_size_limit=1 << 20, sample_limit=10, concurrency=1)
    streamed_only = prompb.ReadRequest(accepted_response_types=[1])
    streamed_only.queries.add(start_timestamp_ms=0, end_timestamp_ms=1)
    request = Request("POST", "/api/v1/read", "", {}, snappy(streamed_only.SerializeToString()))
    response = reader.handle(request)
    assert response.status == 400 and b"SAMPLES" in response.body
    samples = prompb.ReadRequest()
    samples.queries.add(start_timestamp_ms=0, end_timestamp_ms=1)
    response = reader.handle(Request("POST", "/api/v1/read", "", {}, snappy(samples.SerializeToString())))
    assert response.status == 503 and "Retry-After" in response.headers  # no database yet: try again
    assert reader.handle(Request("POST", "/api/v1/read", "", {}, b"\x05junk")).status == 400
