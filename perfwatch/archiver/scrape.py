"""Scrape one target the way Prometheus does, into an `archiver.model.Batch`.

Prometheus' semantics, so the archive holds the same series Prometheus sees: the text format
0.0.4, a total timeout per scrape, `job` and `instance` added to every sample with
`honor_labels: false` (an exposed `job` becomes `exported_job`), empty label values dropped,
NaN (Prometheus' stale marker) kept out, timestamps = scrape start unless the exposition gives one.

What a target sends is bounded as Prometheus bounds it (`ScrapeLimits`, with Prometheus' names):
the body is read and parsed as it arrives, never held whole, and abandoned at body_size_limit;
sample_limit and the label limits fail the scrape with a reason, storing nothing of it.
"""

from __future__ import annotations

import codecs
import dataclasses
import logging
import math
import re
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

import requests
from prometheus_client.parser import text_fd_to_metric_families

from perfwatch import __version__
from perfwatch.archiver.model import Batch, MetricMeta, Sample, SampleKind
from perfwatch.archiver.scrapeauth import AuthorizationConfig, BasicAuthConfig, TLSClientConfig, apply_client_auth

log = logging.getLogger(__name__)

ACCEPT = "text/plain;version=0.0.4;q=1,*/*;q=0.1"
METRIC_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_COUNTER_TYPE_RE = re.compile(r"^\s*#\s*TYPE\s+(\S+)\s+counter\s*$")
_READ_CHUNK = 1 << 16

# Failure reasons, the values of perfwatch_archiver_scrape_failures_total's `reason` label.
UNREACHABLE = "unreachable"  # connection refused/reset, DNS failure
TIMEOUT = "timeout"  # no complete answer within scrape_timeout
HTTP_STATUS = "http_status"  # an answer other than 200
MALFORMED = "malformed"  # not valid text exposition (or not UTF-8)
BODY_SIZE_LIMIT = "body_size_limit"  # the body was larger than body_size_limit (uncompressed)
SAMPLE_LIMIT = "sample_limit"  # more samples than sample_limit
LABEL_LIMIT = "label_limit"  # a sample over label_limit, label_name_length_limit or label_value_length_limit
REASONS = (UNREACHABLE, TIMEOUT, HTTP_STATUS, MALFORMED, BODY_SIZE_LIMIT, SAMPLE_LIMIT, LABEL_LIMIT)


@dataclasses.dataclass(frozen=True)
class ScrapeLimits:
    """Prometheus' scrape_config limits; 0 means no limit, as in Prometheus."""

    body_size_limit: int = 0  # bytes, uncompressed
    sample_limit: int = 0
    label_limit: int = 0  # labels per sample, job and instance included
    label_name_length_limit: int = 0
    label_value_length_limit: int = 0


@dataclasses.dataclass(frozen=True)
class Target:
    url: str
    job: str
    instance: str
    labels: tuple[tuple[str, str], ...] = ()  # extra target labels, beside job and instance
    interval: float = 15.0
    timeout: float = 10.0
    limits: ScrapeLimits = ScrapeLimits()
    # How to authenticate and verify TLS (archiver.scrapeauth), as a Prometheus scrape_config.
    basic_auth: BasicAuthConfig | None = dataclasses.field(default=None, compare=False)
    authorization: AuthorizationConfig | None = dataclasses.field(default=None, compare=False)
    tls_config: TLSClientConfig | None = dataclasses.field(default=None, compare=False)

    @property
    def name(self) -> str:
        """How logs name the target."""
        return f"{self.job}/{self.instance} ({self.url})"

    @property
    def identity(self) -> tuple[str, str]:
        """What makes it this target: its job and instance (the config refuses two with the same)."""
        return (self.job, self.instance)

    def same_as(self, other: Target) -> bool:
        """Scraped the same way, credentials included (which == leaves out)."""
        return self == other and (self.basic_auth, self.authorization, self.tls_config) == (
            other.basic_auth, other.authorization, other.tls_config)

    def target_labels(self) -> dict[str, str]:
        return {"job": self.job, "instance": self.instance, **dict(self.labels)}


def default_instance(url: str) -> str:
    """host:port of the URL, with the scheme's default port filled in (what Prometheus shows)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}"


class ScrapeError(Exception):
    """A failed scrape: `reason` is one of REASONS, the message says what happened."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class TargetScraper:
    """Scrapes one target over a session of its own (keep-alive, like Prometheus)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.session = requests.Session()
        self.session.headers.update({
            "Accept": ACCEPT,
            "User-Agent": f"perfwatch-archiver/{__version__}",
            "X-Prometheus-Scrape-Timeout-Seconds": f"{target.timeout:g}",
        })
        apply_client_auth(self.session, basic_auth=target.basic_auth, authorization=target.authorization,
                          tls_config=target.tls_config)

    def scrape(self) -> Batch:
        """One scrape; raises ScrapeError on any failure."""
        target = self.target
        started = time.time()
        deadline = time.monotonic() + target.timeout
        timed_out = threading.Event()
        try:
            with self.session.get(target.url, timeout=target.timeout, stream=True) as response:
                if response.status_code != 200:
                    raise ScrapeError(HTTP_STATUS, f"HTTP status {response.status_code} {response.reason}")
                # requests' timeout bounds each socket operation; Prometheus bounds the whole scrape,
                # so a body trickling in is cut off at the deadline (shutdown ends a blocked read).
                remaining = deadline - time.monotonic()
                watchdog = threading.Timer(max(0.0, remaining), _cut_off, (response.raw, timed_out))
                watchdog.start()
                try:
                    lines = _body_lines(response.raw, target, timed_out)
                    return parse_lines(lines, target.target_labels(), round(started * 1000), target.limits)
                finally:
                    watchdog.cancel()
        except requests.Timeout as err:
            raise ScrapeError(TIMEOUT, f"no answer within {target.timeout:g}s ({type(err).__name__})") from None
        except requests.RequestException as err:
            if timed_out.is_set():
                raise ScrapeError(TIMEOUT, f"body not complete after {target.timeout:g}s") from None
            if isinstance(err, requests.ConnectionError):
                raise ScrapeError(UNREACHABLE, _connection_reason(err)) from None
            raise ScrapeError(UNREACHABLE, f"{type(err).__name__}: {err}"[:300]) from None

    def close(self) -> None:
        self.session.close()


def _body_lines(raw: Any, target: Target, timed_out: threading.Event) -> Iterator[str]:
    """The body's lines as they arrive (decompressed, decoded), so that neither the body nor its
    text is ever held whole; ScrapeError once it passes body_size_limit, is cut off by the
    timeout, breaks off, or is not UTF-8."""
    limit = target.limits.body_size_limit
    decoder = codecs.getincrementaldecoder("utf-8")()
    size = 0
    # The start of a line that has not ended yet, in pieces: each chunk is scanned once, however
    # long the line a target sends (joining and re-splitting it at every chunk would be quadratic).
    pending: list[str] = []
    try:
        for chunk in raw.stream(_READ_CHUNK, decode_content=True):
            size += len(chunk)
            if limit and size > limit:
                raise ScrapeError(BODY_SIZE_LIMIT, f"body larger than body_size_limit ({limit} bytes); abandoned")
            *complete, rest = decoder.decode(chunk).split("\n")
            if complete:
                complete[0] = "".join(pending) + complete[0]
                pending = []
                for line in complete:
                    yield line + "\n"
            if rest:
                pending.append(rest)
        pending.append(decoder.decode(b"", final=True))
    except UnicodeDecodeError as err:
        raise ScrapeError(MALFORMED, f"body is not UTF-8: {err}") from None
    except ScrapeError:
        raise
    except Exception as err:  # urllib3's and the socket's errors, or the watchdog's shutdown
        if timed_out.is_set():
            raise ScrapeError(TIMEOUT, f"body not complete after {target.timeout:g}s") from None
        raise ScrapeError(UNREACHABLE, f"reading the body failed: {type(err).__name__}: {err}"[:300]) from None
    if tail := "".join(pending):
        yield tail


def _cut_off(raw: Any, timed_out: threading.Event) -> None:
    timed_out.set()
    raw.shutdown()


def _connection_reason(err: requests.ConnectionError) -> str:
    # requests wraps the socket error in two layers of text; keep the part people search for.
    text = str(err)
    for phrase in ("Connection refused", "Connection reset", "Name or service not known", "No route to host"):
        if phrase in text:
            return phrase.lower()
    return text[:300]


def sample_kind(family_type: str, family_name: str, sample_name: str) -> SampleKind:
    """Counters, and histogram/summary _bucket/_sum/_count, roll up as counters; all else as gauges."""
    if family_type == "counter":
        return "counter"
    if family_type in ("histogram", "summary") and sample_name[len(family_name):] in ("_bucket", "_sum", "_count"):
        return "counter"
    return "gauge"


def relabel(exposed: dict[str, str], target_labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """Prometheus' honor_labels: false (scrape.go, resolveConflictingExposedLabels): target labels
    win; a clashing exposed label moves to the first free `exported_<name>`,
    `exported_exported_<name>`, …. Empty values mean absent."""
    labels = {k: v for k, v in exposed.items() if v != ""}
    conflicts = [(name, labels[name]) for name in target_labels if name in labels]
    for name, value in target_labels.items():
        labels.pop(name, None)
        if value != "":
            labels[name] = value
    for name, value in sorted(conflicts, key=lambda c: len(c[0])):
        new = f"exported_{name}"
        while new in labels:
            new = f"exported_{new}"
        labels[new] = value
    return tuple(sorted(labels.items()))


def parse_exposition(text: str, target_labels: dict[str, str], scraped_at_ms: int,
                     limits: ScrapeLimits = ScrapeLimits()) -> Batch:
    """Text exposition 0.0.4 → Batch. Raises ScrapeError (MALFORMED, or a limit's reason)."""
    return parse_lines(text.splitlines(keepends=True), target_labels, scraped_at_ms, limits)


def parse_lines(lines: Iterable[str], target_labels: dict[str, str], scraped_at_ms: int,
                limits: ScrapeLimits = ScrapeLimits()) -> Batch:
    """The exposition's lines (as they arrive) → Batch; see parse_exposition."""
    # prometheus_client's parser renames the samples of a counter declared without `_total`
    # (`# TYPE foo counter` / `foo 1`) to `foo_total`; Prometheus stores `foo`, and so do we. The
    # parser reads a family's TYPE line before it yields the family, so the names are known in time.
    untotalled: set[str] = set()

    def watch(source: Iterable[str]) -> Iterator[str]:
        # sample_limit is counted here, on the lines: the parser yields a family only once it has
        # read all of it, and a body of one family with a million samples would be held whole first.
        sample_lines = 0
        for line in source:
            if line.startswith("#"):
                if (match := _COUNTER_TYPE_RE.match(line)) and not match[1].endswith("_total"):
                    untotalled.add(match[1])
            elif line.strip():
                sample_lines += 1
                if limits.sample_limit and sample_lines > limits.sample_limit:
                    raise ScrapeError(SAMPLE_LIMIT, f"more than sample_limit ({limits.sample_limit}) samples")
            yield line

    samples: list[Sample] = []
    metadata: dict[str, MetricMeta] = {}
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    duplicates = 0
    try:
        # typed as TextIO, but it only iterates over the lines
        for family in text_fd_to_metric_families(watch(lines)):  # type: ignore[arg-type]
            for s in family.samples:
                name = s.name
                if family.type == "counter" and family.name in untotalled and name == family.name + "_total":
                    name = family.name
                if not METRIC_NAME_RE.match(name):
                    raise ValueError(f"invalid metric name {name!r}")
                for label in s.labels:
                    if not LABEL_NAME_RE.match(label) or label.startswith("__"):
                        raise ValueError(f"invalid label name {label!r} on {name}")
                if isinstance(s.value, float) and math.isnan(s.value):
                    continue  # Prometheus' stale marker (or a plain NaN): never archived
                labels = relabel(s.labels, target_labels)
                _check_label_limits(name, labels, limits)
                if (name, labels) in seen:
                    duplicates += 1  # Prometheus keeps the first and rejects the rest
                    continue
                seen.add((name, labels))
                ts = scraped_at_ms if s.timestamp is None else round(float(s.timestamp) * 1000)
                samples.append(Sample(name, labels, float(s.value), ts))
                if name not in metadata:
                    metadata[name] = MetricMeta(name, sample_kind(family.type, family.name, name), family.type,
                                                family.documentation or "", family.unit or "")
    except ScrapeError:
        raise
    except Exception as err:  # the parser raises ValueError, IndexError, … on bad input
        raise ScrapeError(MALFORMED, f"cannot parse exposition: {type(err).__name__}: {err}"[:300]) from None
    if duplicates:
        log.warning("target %s/%s exposed %d duplicate samples; kept the first of each",
                    target_labels.get("job"), target_labels.get("instance"), duplicates)
    return Batch(target_labels.get("job", ""), target_labels.get("instance", ""), scraped_at_ms, samples, metadata)


def _check_label_limits(name: str, labels: tuple[tuple[str, str], ...], limits: ScrapeLimits) -> None:
    """Prometheus' label limits, after the target's labels are added; any excess fails the scrape."""
    if limits.label_limit and len(labels) > limits.label_limit:
        raise ScrapeError(LABEL_LIMIT, f"{name} has {len(labels)} labels, more than label_limit "
                          f"({limits.label_limit})")
    for key, value in labels:
        if limits.label_name_length_limit and len(key) > limits.label_name_length_limit:
            raise ScrapeError(LABEL_LIMIT, f"{name}: a label name is {len(key)} characters long, more than "
                              f"label_name_length_limit ({limits.label_name_length_limit})")
        if limits.label_value_length_limit and len(value) > limits.label_value_length_limit:
            raise ScrapeError(LABEL_LIMIT, f"{name}: label {key} is {len(value)} characters long, more than "
                              f"label_value_length_limit ({limits.label_value_length_limit})")
