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
import itertools
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import requests

from perfwatch import __version__
from perfwatch.archiver.model import Batch

# The parse step and what it shares with scraping live in archiver.parse; the names stay importable
# from here, where they were first.
from perfwatch.archiver.parse import BODY_SIZE_LIMIT as BODY_SIZE_LIMIT
from perfwatch.archiver.parse import HTTP_STATUS as HTTP_STATUS
from perfwatch.archiver.parse import LABEL_LIMIT as LABEL_LIMIT
from perfwatch.archiver.parse import LABEL_NAME_RE as LABEL_NAME_RE
from perfwatch.archiver.parse import MALFORMED as MALFORMED
from perfwatch.archiver.parse import METRIC_NAME_RE as METRIC_NAME_RE
from perfwatch.archiver.parse import REASONS as REASONS
from perfwatch.archiver.parse import SAMPLE_LIMIT as SAMPLE_LIMIT
from perfwatch.archiver.parse import TIMEOUT as TIMEOUT
from perfwatch.archiver.parse import UNREACHABLE as UNREACHABLE
from perfwatch.archiver.parse import ScrapeError as ScrapeError
from perfwatch.archiver.parse import ScrapeLimits as ScrapeLimits
from perfwatch.archiver.parse import _check_label_limits as _check_label_limits
from perfwatch.archiver.parse import parse_lines as parse_lines
from perfwatch.archiver.parse import relabel as relabel
from perfwatch.archiver.parse import sample_kind as sample_kind
from perfwatch.archiver.scrapeauth import AuthorizationConfig, BasicAuthConfig, TLSClientConfig, apply_client_auth

log = logging.getLogger(__name__)

ACCEPT = "text/plain;version=0.0.4;q=1,*/*;q=0.1"
_READ_CHUNK = 1 << 16
NO_LIMITS = ScrapeLimits()  # Prometheus' default

@dataclasses.dataclass(frozen=True)
class Target:
    url: str
    job: str
    instance: str
    labels: tuple[tuple[str, str], ...] = ()  # extra target labels, beside job and instance
    interval: float = 15.0
    timeout: float = 10.0
    limits: ScrapeLimits = NO_LIMITS
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
    # A chunk's lines at a time, handed out one by one in C: a generator resumed for every line
    # cost a tenth of the parse.
    return itertools.chain.from_iterable(_body_chunks(raw, target, timed_out))


def _body_chunks(raw: Any, target: Target, timed_out: threading.Event) -> Iterator[list[str]]:
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
                yield [line + "\n" for line in complete]
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
        yield [tail]


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


def parse_exposition(text: str, target_labels: dict[str, str], scraped_at_ms: int,
                     limits: ScrapeLimits = NO_LIMITS) -> Batch:
    """Text exposition 0.0.4 → Batch. Raises ScrapeError (MALFORMED, or a limit's reason)."""
    return parse_lines(text.splitlines(keepends=True), target_labels, scraped_at_ms, limits)
