"""Backfill: write the samples of an OpenMetrics file into the archive (`perfwatch-archiver import`).

The input is what `promtool tsdb create-blocks-from openmetrics` reads: OpenMetrics text with a
timestamp on every sample and `# EOF` at the end. It is read as a stream (files of GBs: never
held whole), its samples grouped into Batches of BATCH_SAMPLES and written with `Store.write`,
not through the spool: an import is run by hand and run again by hand, and the store is
idempotent (a sample already stored is skipped), so an import that stopped half way is simply
started again. Samples the store will not keep are counted in `Store.dropped` by its reasons
(an `expired` sample is older than what retention has already dropped from raw).

A malformed line stops the import with MalformedInput naming the line: nothing after it is
written, what was read before it is. A sample without a timestamp is malformed here (promtool
refuses such a file too): there is no scrape time to give it. So is a last line without its
newline (a copy cut short: its timestamp may be cut too), and an input without `# EOF`, which
is found at its end, when all of it is written.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from prometheus_client.openmetrics.parser import _parse_sample, _unescape_help

from perfwatch.archiver.model import Batch, MetricMeta, Sample
from perfwatch.archiver.scrape import LABEL_NAME_RE, METRIC_NAME_RE, relabel, sample_kind
from perfwatch.archiver.store import Store

log = logging.getLogger(__name__)

BATCH_SAMPLES = 20_000  # samples per Store.write: one transaction each
PROGRESS_SECONDS = 5.0  # at most one progress line this often
MAX_LINE_BYTES = 1 << 20  # a longer line is refused rather than read into memory whole
# What the parser yields: (catalog facts, sample name, labels sorted by name, value, ms or None).
ParsedSample = tuple[MetricMeta, str, tuple[tuple[str, str], ...], float, int | None]


class MalformedInput(Exception):  # noqa: N818 - it is what the file is, not an error of ours
    """The input is not valid OpenMetrics for an import; `line` is where (1-based)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


@dataclasses.dataclass
class ImportStats:
    """What an import has done so far; complete once it returns (or raises)."""

    lines: int = 0  # lines read
    read: int = 0  # samples parsed
    written: int = 0  # samples newly stored
    skipped: int = 0  # samples the archive held already
    dropped: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)  # by Store reason
    first_ms: int | None = None  # the time range of the samples read
    last_ms: int | None = None
    started: float = dataclasses.field(default_factory=time.monotonic)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    def rate(self) -> float:
        """Samples read per second."""
        return self.read / max(self.seconds, 1e-9)


@dataclasses.dataclass(frozen=True)
class ImportJob:
    """What `perfwatch-archiver import` is asked to do."""

    file: str  # a path, or - for standard input
    labels: dict[str, str] = dataclasses.field(default_factory=dict)  # added to every sample
    rollup: bool = True  # one rollup pass after writing

    @property
    def source(self) -> str:
        return "standard input" if self.file == "-" else self.file

    def open(self) -> IO[bytes]:
        """The input, binary (read_lines decodes it); raises OSError."""
        return sys.stdin.buffer if self.file == "-" else open(self.file, "rb")  # the caller closes it


def read_lines(stream: IO[bytes]) -> Iterator[str]:
    """The stream's lines, decoded as UTF-8 one at a time (so an error can name its line), each
    at most MAX_LINE_BYTES."""
    number = 0
    while raw := stream.readline(MAX_LINE_BYTES + 1):
        number += 1
        if len(raw) > MAX_LINE_BYTES:
            raise MalformedInput(number, f"longer than {MAX_LINE_BYTES} bytes")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise MalformedInput(number, f"not UTF-8 ({err.reason} at byte {err.start})") from None
        yield line


def import_lines(store: Store, lines: Iterable[str], source: str, labels: dict[str, str], stats: ImportStats, *,
                 batch_samples: int = BATCH_SAMPLES) -> None:
    """Parse `lines` (OpenMetrics, `source` names it in logs) and write every sample through `store`
    with `labels` added (as a target's labels: one the file has too moves to `exported_NAME`).

    Updates `stats` as it goes. Raises MalformedInput (after writing what was read before the
    bad line), db.DatabaseUnavailable, or what Store.write raises."""
    counted = _Counted(lines, stats)
    job = labels.get("job", "import")
    instance = labels.get("instance", source)
    pending: list[Sample] = []
    metadata: dict[str, MetricMeta] = {}
    next_progress = time.monotonic() + PROGRESS_SECONDS

    def flush() -> None:
        if not pending:
            return
        batch = Batch(job, instance, max(s.timestamp_ms for s in pending), list(pending), dict(metadata))
        before = sum(store.dropped.values())
        inserted = store.write(batch)
        dropped = sum(store.dropped.values()) - before
        stats.written += inserted
        stats.skipped += len(batch.samples) - inserted - dropped
        pending.clear()
        metadata.clear()

    parsed = PARSE(counted)
    try:
        while True:
            try:
                item = next(parsed, None)
            except ValueError as err:  # a parser that names the line in its message only
                raise MalformedInput(counted.number, _LINE_PREFIX.sub("", str(err))) from None
            if item is None:
                break
            meta, name, file_labels, value, ts = item
            if ts is None:
                raise MalformedInput(counted.number, f"{name} has no timestamp; every sample of an import needs one "
                                     "(promtool refuses such a file too)")
            _check_names(name, file_labels, counted.number)
            pending.append(Sample(name, relabel(dict(file_labels), labels), value, ts))
            metadata.setdefault(name, meta)
            stats.read += 1
            if stats.first_ms is None or ts < stats.first_ms:
                stats.first_ms = ts
            if stats.last_ms is None or ts > stats.last_ms:
                stats.last_ms = ts
            if len(pending) >= batch_samples:
                flush()
                if time.monotonic() >= next_progress:
                    log.info("import %s: line %d, %d samples read, %d written, %d skipped as already stored; "
                             "%s so far; %.0f samples/s", source, stats.lines, stats.read, stats.written,
                             stats.skipped, describe_range(stats), stats.rate())
                    next_progress = time.monotonic() + PROGRESS_SECONDS
        flush()
    except MalformedInput:
        flush()  # what came before the bad line
        raise
    finally:
        stats.dropped = collections.Counter(store.dropped)


_LINE_PREFIX = re.compile(r"^line \d+: ")


def describe_range(stats: ImportStats) -> str:
    if stats.first_ms is None or stats.last_ms is None:
        return "no samples"
    return f"{_when(stats.first_ms)} to {_when(stats.last_ms)}"


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def _check_names(name: str, labels: tuple[tuple[str, str], ...], line: int) -> None:
    """Prometheus' names (what the archive's scrapes accept too); `__` names are Prometheus' own."""
    if not METRIC_NAME_RE.match(name):
        raise MalformedInput(line, f"{name!r} is not a valid metric name")
    for label, _ in labels:
        if not LABEL_NAME_RE.match(label) or label.startswith("__"):
            raise MalformedInput(line, f"{label!r} on {name} is not a valid label name")


class _Counted:
    """The input's lines, counting them (in `stats.lines` and `number`) as the parser reads them."""

    def __init__(self, lines: Iterable[str], stats: ImportStats) -> None:
        self.lines = lines
        self.stats = stats
        self.number = 0

    def __iter__(self) -> Iterator[str]:
        for line in self.lines:
            self.number += 1
            self.stats.lines = self.number
            yield line


# -- the parser ---------------------------------------------------------------------------------
#
# prometheus_client's OpenMetrics parser, a line at a time: its text_fd_to_metric_families holds a
# family whole before yielding it (and a backfill file's family is all of a metric's history), and
# it drops samples of a histogram, summary or a counter with `_created` seen at an earlier
# timestamp of the same group (prometheus_client 0.26: a histogram with two timestamps fails
# "+Inf bucket missing"). So its line parser reads each sample and this loop follows the families
# as it does (a sample outside the declared family's names starts a family of type unknown).
# Like promtool, it does not check a family's structure (bucket order, +Inf, counts).

_TYPES = frozenset(("counter", "gauge", "histogram", "gaugehistogram", "summary", "info", "stateset", "unknown"))
_SUFFIXES = {"counter": ("_total", "_created"), "summary": ("", "_count", "_sum", "_created"),
             "histogram": ("_count", "_sum", "_bucket", "_created"), "gaugehistogram": ("_gcount", "_gsum", "_bucket"),
             "info": ("_info",)}


def _samples(lines: Iterable[str]) -> Iterator[ParsedSample]:
    """OpenMetrics lines → (meta, name, sorted labels, value, timestamp ms or None), with
    prometheus_client's OpenMetrics line parser; raises MalformedInput naming the line."""
    family, typ, help_text, unit = "", "unknown", "", ""
    allowed: tuple[str, ...] = ("",)
    in_samples = False  # the family's samples have begun: no more metadata for it
    metas: dict[str, MetricMeta] = {}
    eof = False
    number = 0
    for number, text in enumerate(lines, 1):
        line = text[:-1] if text.endswith("\n") else text
        if eof:
            raise MalformedInput(number, "text after # EOF")
        try:
            if line == "# EOF":
                eof = True
                continue
            if not line:
                raise ValueError("a blank line (OpenMetrics has none)")
            if line.startswith("#"):
                parts = line.split(" ", 3)
                if len(parts) < 4 or parts[0] != "#" or parts[1] not in ("HELP", "TYPE", "UNIT"):
                    raise ValueError("not a HELP, TYPE or UNIT line, nor # EOF")
                if parts[2] != family:
                    family, typ, help_text, unit, allowed = parts[2], "unknown", "", "", (parts[2],)
                    in_samples, metas = False, {}
                elif in_samples:
                    raise ValueError(f"{parts[1]} of {family} after its samples")
                if parts[1] == "TYPE":
                    if parts[3] not in _TYPES:
                        raise ValueError(f"{parts[3]!r} is not an OpenMetrics type")
                    typ = parts[3]
                    allowed = tuple(family + suffix for suffix in _SUFFIXES.get(typ, ("",)))
                elif parts[1] == "HELP":
                    help_text = _unescape_help(parts[3])  # type: ignore[no-untyped-call]
                else:
                    unit = parts[3]
                continue
            if line is text:  # no newline: the input stops inside this line (a copy cut short?)
                raise ValueError("the input ends inside this line, without a newline (is it complete?)")
            sample = _parse_sample(line)  # type: ignore[no-untyped-call]
            value = float(sample.value)
        except Exception as err:  # the parser raises ValueError, IndexError, … on bad input
            message = str(err).strip() or "not valid OpenMetrics"
            if line[:60] not in message:
                message = f"{message}: {line[:200]!r}"
            raise MalformedInput(number, message[:400]) from None
        name = sample.name
        if name not in allowed:
            family, typ, help_text, unit, allowed, metas = name, "unknown", "", "", (name,), {}
        in_samples = True
        meta = metas.get(name)
        if meta is None:
            meta = metas[name] = MetricMeta(name, sample_kind(typ, family, name), typ, help_text, unit)
        yield meta, name, tuple(sorted(sample.labels.items())), value, _ms(sample.timestamp)
    if not eof:
        raise MalformedInput(number + 1, "the input ends without `# EOF` (is it complete?)")


def _ms(timestamp: Any) -> int | None:
    """prometheus_client's timestamp (Timestamp, float seconds, None) → ms. Truncated, as promtool
    does; from the exact decimal where the parser kept it (a float product can lose a millisecond)."""
    if timestamp is None:
        return None
    if isinstance(timestamp, float):
        return int(timestamp * 1000)
    return int(timestamp.sec) * 1000 + int(timestamp.nsec) // 1_000_000


# THE place to swap parsers. perfwatch.archiver.parse.iter_openmetrics(lines) has the same yield
# shape and is faster (8 against 13 µs a sample, measured), and import_lines turns its ValueError into
# MalformedInput at the line it read last; but it is made to agree with prometheus_client's parser
# sample for sample, and so, like it, drops a group's samples seen at an earlier timestamp (a
# histogram of two timestamps fails "+Inf bucket missing") and refuses a family's series
# interleaved (promtool takes both). Swap once it reads histories: tests/test_archiver_import.py
# says when it does.
PARSE: Callable[[Iterable[str]], Iterator[ParsedSample]] = _samples
