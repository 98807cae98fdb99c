"""Prometheus' remote_write into the archive: `POST /api/v1/write`, Remote-Write 1.0.

A request is a snappy-compressed (block format) protobuf `prometheus.WriteRequest`. Its series
become one `Batch`, which goes to the spool like a scrape's, so the same path (spool → writer →
store) and the same guarantees follow: the answer is 2xx only once the spool has fsynced the batch,
and a database outage only makes the spool grow. The answer tells the sender what to do, as the
specification says: 4xx is never retried (a request that can never succeed), 5xx and 429 are.
- 204: spooled. 400 with a message where some series were refused (they are counted and the rest
  is stored, as Prometheus' own receiver does), or the request does not decode (nothing stored).
- 413 for a body over `receive.body_size_limit` (decompressed), 415 for a content type or encoding
  other than protobuf and snappy (Remote-Write 2.0's messages, for one).
- 503 with Retry-After when the spool is nearly full (the sender keeps the samples in its WAL
  and retries; the spool would otherwise drop its oldest batches) or the disk refuses the append.

Metadata (type, help, unit per metric family) comes in its own requests, once a minute by
default; it is remembered here and given to the store with the samples of those names. A name
seen before its metadata is catalogued by a guess (store.py) that the metadata replaces later.
Series are checked as scraped ones are: a metric name, valid label names each once, empty values
meaning absent, and the label limits of the archiver's config.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

import cramjam
from google.protobuf.message import DecodeError

from perfwatch.archiver import prompb
from perfwatch.archiver.model import Batch, MetricMeta, Sample
from perfwatch.archiver.parse import (
    LABEL_NAME_RE,
    METRIC_NAME_RE,
    ScrapeError,
    ScrapeLimits,
    _check_label_limits,
    sample_kind,
)
from perfwatch.archiver.selfmetrics import ArchiverMetrics
from perfwatch.archiver.spool import Spool, SpoolNearlyFull
from perfwatch.common.httpserver import Request, Response

log = logging.getLogger(__name__)

WRITE_PATH = "/api/v1/write"
JOB = "remote_write"  # how the batches of remote_write are named in logs and per-target metrics
INSTANCE = "receiver"
# Refuse (503) while the spool holds more than this share of its max_bytes: past it an append would
# drop the oldest batches, which the sender still holds and would gladly send again later.
SPOOL_HIGH_WATER = 0.9
RETRY_AFTER_SECONDS = 5
MAX_FAMILIES = 100_000
# Series whose checked labels are remembered (~0.5 KB each: 100 MB at most); past it, forgotten at once.
MAX_CHECKED_SERIES = 200_000  # metadata remembered; a sender with more families gets guesses for the rest
# The suffixes a sample name adds to its family's name (OpenMetrics and the text format).
_SUFFIXES = ("_total", "_created", "_bucket", "_count", "_sum", "_gcount", "_gsum", "_info")
_PROTOBUF = "application/x-protobuf"


class RequestError(Exception):
    """A request answered with `status` and `message`, nothing of it stored."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def decode_request(request: Request, message_type: type, limit: int, proto: str) -> object:
    """The protobuf message of a remote-protocol request: its body snappy-decompressed (within
    `limit` bytes) and parsed as `message_type`; RequestError says why it is not one."""
    encoding = request.header("content-encoding", "snappy").strip().lower()
    if encoding != "snappy":
        raise RequestError(415, f"Content-Encoding {encoding!r} is not supported; send snappy")
    content_type = request.header("content-type", _PROTOBUF).strip().lower()
    media, _, params = content_type.partition(";")
    wanted_proto = f"proto={proto.lower()}"
    other = [p.strip() for p in params.split(";") if p.strip().startswith("proto=") and p.strip() != wanted_proto]
    if media.strip() != _PROTOBUF or other:
        raise RequestError(415, f"Content-Type {content_type!r} is not supported; send {_PROTOBUF} ({proto})")
    try:
        size = cramjam.snappy.decompress_raw_len(request.body)
    except Exception as err:  # cramjam raises its own DecompressionError (a subclass of Exception)
        raise RequestError(400, f"the body is not snappy-compressed (block format): {err}") from None
    if size > limit:
        raise RequestError(413, f"the request is {size} bytes decompressed, more than receive.body_size_limit "
                           f"({limit})")
    try:
        raw = bytes(cramjam.snappy.decompress_raw(request.body))
        return message_type.FromString(raw)  # type: ignore[attr-defined]
    except DecodeError as err:
        raise RequestError(400, f"the body is not a protobuf {proto}: {err}") from None
    except Exception as err:  # a snappy stream that breaks inside
        raise RequestError(400, f"the body is not valid snappy (block format): {err}") from None


class RemoteWriteReceiver:
    def __init__(self, spool: Spool, metrics: ArchiverMetrics, limits: ScrapeLimits, body_size_limit: int) -> None:
        self.spool = spool
        self.metrics = metrics
        self.limits = limits
        self.body_size_limit = body_size_limit
        self._families: dict[str, tuple[str, str, str]] = {}  # family name → (type, help, unit)
        # Labels as sent → (metric name, labels to store, why refused or None); see _batch.
        self._checked: dict[tuple[tuple[str, str], ...], tuple[str, tuple[tuple[str, str], ...], str | None]] = {}
        self._lock = threading.Lock()
        self._logged: set[str] = set()  # problems logged at warning once; later ones at debug
        for code in ("204", "400", "413", "415", "503"):
            metrics.remote_requests.labels(WRITE_PATH, code)
        for reason in ("invalid", "label_limit", "native_histogram"):
            metrics.remote_write_refused.labels(reason)

    def configure(self, limits: ScrapeLimits, body_size_limit: int) -> None:
        """A reload's new limits, for the next requests."""
        with self._lock:
            self.limits, self.body_size_limit = limits, body_size_limit
            self._checked.clear()  # checked against the old limits

    def handle(self, request: Request) -> Response:
        response = self._handle(request)
        self.metrics.remote_requests.labels(WRITE_PATH, str(response.status)).inc()
        return response

    def _handle(self, request: Request) -> Response:
        try:
            message = decode_request(request, prompb.WriteRequest, self.body_size_limit, "prometheus.WriteRequest")
        except RequestError as err:
            self._note(f"refused a remote_write request with {err.status}: {err.message}")
            return Response(err.status, f"{err.message}\n".encode())
        self._learn(message.metadata)  # type: ignore[attr-defined]
        batch, refused = self._batch(message.timeseries)  # type: ignore[attr-defined]
        if batch.samples:
            try:
                spooled = self.spool.append(batch, below=int(SPOOL_HIGH_WATER * self.spool.max_bytes))
            except SpoolNearlyFull as full:
                self._note(f"answering remote_write with 503: {full}, and this request would take it over "
                           f"{SPOOL_HIGH_WATER:.0%} of its max_bytes (is the database down?)")
                return Response(503, b"the archiver's spool is nearly full; retry later\n",
                                headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
            except OSError as err:
                log.error("cannot spool a remote_write request of %d samples (answered 503, the sender retries): %s",
                          len(batch.samples), err)
                return Response(503, f"cannot spool the samples: {err.strerror or err}\n".encode(),
                                headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
            if not spooled:  # larger than the whole spool: it can never be stored
                return Response(413, b"the request is larger than the archiver's spool (spool.max_bytes)\n")
            self.metrics.remote_write_samples.inc(len(batch.samples))
        if refused:
            total = sum(refused.values())
            first = next(iter(refused))
            self._note(f"remote_write: refused {total} series ({first}); the rest of the request is stored")
            return Response(400, f"{total} series refused, the rest stored; first: {first}\n".encode())
        return Response(204)

    def _learn(self, metadata: Iterable[object]) -> None:
        with self._lock:
            for m in metadata:
                family = m.metric_family_name  # type: ignore[attr-defined]
                if family not in self._families and len(self._families) >= MAX_FAMILIES:
                    self._note(f"remote_write: metadata of more than {MAX_FAMILIES} metric families; the kind of "
                               "the rest is guessed from their names")
                    continue
                self._families[family] = (prompb.METRIC_TYPES.get(m.type, "unknown"),  # type: ignore[attr-defined]
                                          m.help, m.unit)  # type: ignore[attr-defined]

    def _meta(self, name: str) -> MetricMeta | None:
        """The catalog facts of sample name `name` from its family's metadata, if it was sent."""
        family = self._families.get(name)
        family_name = name
        if family is None:
            for suffix in _SUFFIXES:
                if name.endswith(suffix) and (family := self._families.get(name[:-len(suffix)])) is not None:
                    family_name = name[:-len(suffix)]
                    break
            else:
                return None
        family_type, help_text, unit = family
        return MetricMeta(name, sample_kind(family_type, family_name, name), family_type, help_text, unit)

    def _batch(self, timeseries: Iterable[object]) -> tuple[Batch, dict[str, int]]:
        """The request's samples, and the series refused (first reason of each kind → count)."""
        samples: list[Sample] = []
        metadata: dict[str, MetricMeta] = {}
        refused: dict[str, int] = {}
        checked = self._checked
        looked_up: set[str] = set()  # names whose metadata was looked up (found or not)
        with self._lock:
            for series in timeseries:
                # The same series come in every request: their checked labels are remembered,
                # keyed by the labels as sent (checking them again was most of a request's cost).
                key = tuple([(p.name, p.value) for p in series.labels])  # type: ignore[attr-defined]
                found = checked.get(key)
                if found is None:
                    found = self._labels(key)
                    if len(checked) >= MAX_CHECKED_SERIES:
                        checked.clear()
                    checked[key] = found
                name, labels, problem = found
                histograms = len(series.histograms)  # type: ignore[attr-defined]
                if problem is None and histograms and not series.samples:  # type: ignore[attr-defined]
                    reason, problem = "native_histogram", f"{name} holds native histogram samples only"
                elif problem is not None:
                    reason = "label_limit" if problem.startswith("label limit") else "invalid"
                if problem is not None:
                    self.metrics.remote_write_refused.labels(reason).inc()
                    refused[problem] = refused.get(problem, 0) + 1
                    continue
                if name not in looked_up:
                    looked_up.add(name)
                    if (meta := self._meta(name)) is not None:
                        metadata[name] = meta
                samples.extend([Sample(name, labels, s.value, s.timestamp)
                                for s in series.samples])  # type: ignore[attr-defined]
        return Batch(JOB, INSTANCE, time.time_ns() // 1_000_000, samples, metadata), refused

    def _labels(self, pairs: Iterable[tuple[str, str]]) -> tuple[str, tuple[tuple[str, str], ...], str | None]:
        """(metric name, the other labels sorted, why the series cannot be stored or None)."""
        labels: dict[str, str] = {}
        name = ""
        for key, value in pairs:
            if key in labels or (key == "__name__" and name):
                return name, (), f"label {key!r} given twice"
            if key == "__name__":
                name = value
                continue
            if not LABEL_NAME_RE.match(key) or key.startswith("__"):
                return name, (), f"invalid label name {key[:100]!r}"
            if value != "":
                labels[key] = value
        if not name:
            return name, (), "a series without a metric name (__name__)"
        if not METRIC_NAME_RE.match(name):
            return name, (), f"invalid metric name {name[:100]!r}"
        ordered = tuple(sorted(labels.items()))
        try:
            _check_label_limits(name, ordered, self.limits)
        except ScrapeError as err:
            return name, (), f"label limit: {err.message}"
        return name, ordered, None

    def _note(self, message: str) -> None:
        """Logged at warning the first time its kind is seen, then at debug: a sender retries."""
        kind = message.split(":", 1)[0]
        if kind in self._logged or len(self._logged) > 1000:
            log.debug("%s", message)
            return
        self._logged.add(kind)
        log.warning("%s (more like it are logged at debug)", message)
