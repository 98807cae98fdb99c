"""Metrics that other programs write to `*.prom` files, node_exporter's textfile collector.

`--collector.textfile.directory DIR` (config `collectors: textfile: directory:`; a glob pattern
matching several directories works too, as in node_exporter 1.5). Every `*.prom` file there is
read at each scrape as text exposition format 0.0.4, by the rules of Go's expfmt.TextParser (the
parser node_exporter uses), and exposed unchanged, plus:

- `node_textfile_mtime_seconds{file}`: the modification time (whole seconds) of each file read
  successfully; `file` is the path as `directory/name`.
- `node_textfile_scrape_error`: 1 if the directory or any file could not be read or parsed.

A file is skipped whole (and counted as an error) when it cannot be opened or read (permission
denied), is not a regular file (a FIFO or a device: node_exporter would block on a FIFO for
ever; a directory named x.prom reads as an empty file, as there), is larger than MAX_FILE_BYTES
(16 MiB; node_exporter has no limit), does not parse, or carries client-side timestamps.

What node_exporter's registry does with families that conflict, this collector does with the
files' families, in file-name order: a sample whose family was already seen with another HELP or
another type, a series (name and label values) seen before, a name that collides with a summary's
or histogram's `_count`/`_sum`/`_bucket`, is dropped (logged), and the first one stays. As in
node_exporter, such a drop does not set node_textfile_scrape_error. Labels a family's samples in
one file lack are added with empty values; a family without HELP gets "Metric read from <files>".
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import math
import os
import re
import stat
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal

from perfwatch.common.families import Metric
from perfwatch.exporter.collectors.base import READ_CHUNK, Collector, register

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 16 << 20  # a bigger file is an error: a scrape must not read without end
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_TYPES = {"counter": "counter", "gauge": "gauge", "untyped": "unknown", "summary": "summary",
          "histogram": "histogram"}
_BLANK = " \t"


@dataclasses.dataclass
class TextfileOptions:
    directory: str | None = dataclasses.field(default=None, metadata={
        "help": "Directory (or glob pattern) of `*.prom` files to expose; none: only "
                "node_textfile_scrape_error 0, as node_exporter without the flag. "
                "The command line's --collector.textfile.directory overrides it."})


class _ExactType(str):
    """A family type written as is: the renderer (like generate_latest) appends `_total` to every
    counter family's name, but a textfile counter keeps the name its file gives it."""

    __hash__ = str.__hash__

    def __eq__(self, other: object) -> bool:
        return self is other

    def __ne__(self, other: object) -> bool:
        return self is not other


COUNTER = _ExactType("counter")


class ParseError(ValueError):
    pass


@dataclasses.dataclass
class Series:
    labels: dict[str, str]
    value: float = math.nan
    count: float = 0.0  # summary and histogram
    total: float = 0.0
    quantiles: dict[float, float] = dataclasses.field(default_factory=dict)
    buckets: dict[float, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Family:
    name: str
    help: str | None = None
    type: str | None = None
    series: list[Series] = dataclasses.field(default_factory=list)
    has_timestamps: bool = False


def _split_token(line: str, start: int) -> tuple[str, int]:
    end = start
    while end < len(line) and line[end] not in _BLANK:
        end += 1
    return line[start:end], end


def _skip_blank(line: str, i: int) -> int:
    while i < len(line) and line[i] in _BLANK:
        i += 1
    return i


def _unescape(text: str, quotes: bool) -> str:
    out, i = [], 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            following = text[i + 1:i + 2]
            if following == "\\" or (quotes and following == '"'):
                out.append(following)
            elif following == "n":
                out.append("\n")
            else:
                raise ParseError(f"invalid escape sequence '\\{following}'")
            i += 2
        else:
            out.append(char)
            i += 1
    return "".join(out)


def _float(text: str) -> float:
    lowered = text.lower().lstrip("+-")
    if lowered in ("inf", "infinity", "nan"):
        return float(text)
    if "_" in text:  # Go allows underscores only with a base prefix
        raise ValueError(text)
    if lowered.startswith("0x"):  # expfmt refuses hexadecimal floats, even with an exponent
        raise ValueError(text)
    return float(text)


def go_float(value: float) -> str:
    """strconv.FormatFloat(value, 'g', -1, 64), as Go writes `le` and `quantile`: 1, 0.5, 1e+06."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    negative, digit_tuple, exponent = Decimal(repr(value)).as_tuple()  # repr: the shortest round trip
    assert isinstance(exponent, int)
    exp = len(digit_tuple) + exponent - 1  # of the leading digit
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    sign = "-" if negative else ""
    if exp < -4 or exp >= 6:  # shortest 'g': an exponent from 1e+06 on
        head = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{head}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if exp < 0:
        return f"{sign}0.{'0' * (-exp - 1)}{digits}"
    if len(digits) <= exp + 1:
        return f"{sign}{digits}{'0' * (exp + 1 - len(digits))}"
    return f"{sign}{digits[:exp + 1]}.{digits[exp + 1:]}"


class TextParser:
    """Go's expfmt.TextParser (common v0.37, node_exporter 1.5) as far as a file can tell."""

    def __init__(self) -> None:
        self.families: dict[str, Family] = {}

    def parse(self, text: str) -> dict[str, Family]:
        lines = text.split("\n")
        if lines[-1].strip(_BLANK):  # Go: the last line must end in a newline
            raise ParseError("unexpected end of input stream")
        for number, line in enumerate(lines[:-1], 1):
            try:
                self._line(line)
            except ParseError as err:
                raise ParseError(f"text format parsing error in line {number}: {err}") from None
        return {name: f for name, f in self.families.items() if f.series}

    def _family(self, name: str) -> tuple[Family, str]:
        """The family a name belongs to and which part of it: "", "_count", "_sum", "_bucket"."""
        family = self.families.get(name)
        if family is not None:
            return family, ""
        for suffix, kinds in (("_count", ("summary", "histogram")), ("_sum", ("summary", "histogram")),
                              ("_bucket", ("histogram",))):
            if name.endswith(suffix):
                base = self.families.get(name[:-len(suffix)])
                if base is not None and base.type in kinds:
                    return base, suffix
        family = self.families[name] = Family(name)
        return family, ""

    def _line(self, line: str) -> None:
        i = _skip_blank(line, 0)
        if i == len(line):
            return
        if line[i] == "#":
            self._comment(line, _skip_blank(line, i + 1))
        else:
            self._sample(line, i)

    def _comment(self, line: str, i: int) -> None:
        keyword, i = _split_token(line, i)
        if keyword not in ("HELP", "TYPE"):
            return
        i = _skip_blank(line, i)
        match = _METRIC_NAME.match(line, i)
        end = match.end() if match else i
        if end == len(line):
            return  # "# HELP" or "# TYPE" without a name: not an error
        if line[end] not in _BLANK:
            raise ParseError("invalid metric name in comment")
        family, _ = self._family(line[i:end])
        i = _skip_blank(line, end)
        if i == len(line):
            return
        if keyword == "HELP":
            if family.help is not None:
                raise ParseError(f"second HELP line for metric name {family.name!r}")
            family.help = _unescape(line[i:], quotes=False)
            return
        if family.type is not None:
            raise ParseError(f"second TYPE line for metric name {family.name!r}, or TYPE reported after samples")
        token, end = _split_token(line, i)
        kind = _TYPES.get(token.lower())
        if kind is None:
            raise ParseError(f"unknown metric type {token!r}")
        if line[end:].strip(_BLANK):
            raise ParseError(f"unexpected text after the type: {line[end:]!r}")
        family.type = kind

    def _sample(self, line: str, i: int) -> None:
        match = _METRIC_NAME.match(line, i)
        if not match:
            raise ParseError("invalid metric name")
        family, part = self._family(match[0])
        if family.type is None:
            family.type = "unknown"
        composite = family.type in ("summary", "histogram")
        special = {"summary": "quantile", "histogram": "le"}.get(family.type or "", "") if not part else (
            "le" if part == "_bucket" else "")
        i = _skip_blank(line, match.end())
        labels: dict[str, str] = {}
        bound: float | None = None
        if i < len(line) and line[i] == "{":
            i, labels, bound = self._labels(line, i + 1, special)
        token, i = _split_token(line, _skip_blank(line, i))
        try:
            value = _float(token)
        except ValueError:
            raise ParseError(f"expected float as value, got {token!r}") from None
        if i < len(line):  # a blank, then a timestamp (trailing blanks without one: an error in Go)
            stamp, j = _split_token(line, _skip_blank(line, i))
            if not re.fullmatch(r"[+-]?[0-9]+", stamp):
                raise ParseError(f"expected integer as timestamp, got {stamp!r}")
            if line[j:]:
                raise ParseError(f"spurious string after timestamp: {line[j:]!r}")
            family.has_timestamps = True
        if not composite:
            family.series.append(Series(labels, value))
            return
        series = next((s for s in family.series if s.labels == labels), None)
        if series is None:
            series = Series(labels)
            family.series.append(series)
        if part == "_count":
            series.count = float(int(value)) if math.isfinite(value) else value
        elif part == "_sum":
            series.total = value
        elif bound is not None and family.type == "summary":
            series.quantiles[bound] = value
        elif bound is not None:
            series.buckets[bound] = float(int(value)) if math.isfinite(value) else value

    def _labels(self, line: str, i: int, special: str) -> tuple[int, dict[str, str], float | None]:
        labels: dict[str, str] = {}
        bound: float | None = None
        while True:
            i = _skip_blank(line, i)
            if i < len(line) and line[i] == "}":
                return i + 1, labels, bound
            match = _LABEL_NAME.match(line, i)
            if not match:
                raise ParseError("invalid label name for metric")
            name = match[0]
            i = _skip_blank(line, match.end())
            if i >= len(line) or line[i] != "=":
                raise ParseError(f"expected '=' after label name, found {line[i:i + 1]!r}")
            if name.startswith("__"):  # __name__: Go's parser; other __*: node_exporter 1.5 panics on them
                raise ParseError(f"label name {name!r} is reserved")
            if name in labels or (name == special and bound is not None):
                raise ParseError("duplicate label names for metric")
            i = _skip_blank(line, i + 1)
            if i >= len(line) or line[i] != '"':
                raise ParseError("expected '\"' at start of label value")
            j = i + 1
            while j < len(line) and line[j] != '"':
                j += 2 if line[j] == "\\" else 1
            if j >= len(line):
                raise ParseError("label value contains unescaped new-line or is unterminated")
            text = _unescape(line[i + 1:j], quotes=True)
            if any("\udc80" <= c <= "\udcff" for c in text):
                raise ParseError(f"invalid label value {text!r}")
            if name == special:
                try:
                    bound = _float(text)
                except ValueError:
                    raise ParseError(f"expected float as value for {name!r} label, got {text!r}") from None
            else:
                labels[name] = text
            i = _skip_blank(line, j + 1)
            if i < len(line) and line[i] == ",":
                i += 1
            elif i < len(line) and line[i] == "}":
                return i + 1, labels, bound
            else:
                raise ParseError("unexpected end of label value")


def read_limited(path: str, limit: int | None = None) -> tuple[bytes, os.stat_result]:
    """The file's bytes and its stat; never blocks on a FIFO or reads a device without end."""
    limit = MAX_FILE_BYTES if limit is None else limit
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):  # node_exporter reads a directory named x.prom as an empty file
            return b"", info
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{path} is not a regular file")
        chunks, size = [], 0
        while chunk := os.read(fd, min(READ_CHUNK, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise OSError(f"{path} is larger than {limit} bytes")
    finally:
        os.close(fd)
    return b"".join(chunks), info


class Merger:
    """node_exporter's registry rules: the first family of a name fixes its HELP and type; a later
    sample with another, or a series seen before, or a summary/histogram suffix clash, is dropped."""

    def __init__(self) -> None:
        self.kinds: dict[str, tuple[str, str]] = {}
        self.seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        self.families: dict[str, list[Series]] = {}

    def _clashes(self, name: str, kind: str) -> bool:
        for suffix, kinds in (("_count", ("summary", "histogram")), ("_sum", ("summary", "histogram")),
                              ("_bucket", ("histogram",))):
            if name.endswith(suffix) and self.kinds.get(name[:-len(suffix)], ("", ""))[0] in kinds:
                return True
            if kind in kinds and name + suffix in self.kinds:
                return True
        return False

    def reserve(self, family: Metric) -> None:
        """A family another collector exposes: it comes first, the files' samples conflict with it."""
        name, kind = family.name, str(family.type)
        if kind == "counter" and not name.endswith("_total"):
            name += "_total"
        elif kind == "info":
            name, kind = f"{name}_info", "gauge"
        self.kinds.setdefault(name, (kind, family.documentation))
        for sample in family.samples:
            self.seen.add((sample.name, tuple(sorted(sample.labels.items()))))

    def add(self, name: str, kind: str, doc: str, series: Series) -> str | None:
        """Keep the sample, or say why it is dropped."""
        known = self.kinds.get(name)
        if known is None:
            if self._clashes(name, kind):
                return f"{name} collides with a summary's or histogram's _count/_sum/_bucket"
            self.kinds[name] = (kind, doc)
        elif known[1] != doc:
            return f"collected metric {name} has help {doc!r} but should have {known[1]!r}"
        elif known[0] != kind:
            return f"collected metric {name} is a {kind} but should be a {known[0]}"
        key = (name, tuple(sorted(series.labels.items())))
        if key in self.seen:
            return f"collected metric {name}{dict(key[1])} was collected before with the same name and label values"
        self.seen.add(key)
        self.families.setdefault(name, []).append(series)
        return None

    def metrics(self) -> Iterator[Metric]:
        for name in sorted(self.families):
            kind, doc = self.kinds[name]
            family = Metric(name, doc, kind)
            if kind == "counter":
                family.type = COUNTER
            for series in sorted(self.families[name], key=lambda s: sorted(s.labels.items())):
                _add_samples(family, kind, series)
            yield family


def _add_samples(family: Metric, kind: str, series: Series) -> None:
    name, labels = family.name, series.labels
    if kind == "summary":
        for quantile, value in sorted(series.quantiles.items()):
            family.add_sample(name, {**labels, "quantile": go_float(quantile)}, value)
    elif kind == "histogram":
        buckets = dict(series.buckets)
        buckets.setdefault(math.inf, series.count)
        for bound, count in sorted(buckets.items()):
            family.add_sample(f"{name}_bucket", {**labels, "le": go_float(bound)}, count)
    else:
        family.add_sample(name, labels, series.value)
        return
    family.add_sample(f"{name}_sum", labels, series.total)
    family.add_sample(f"{name}_count", labels, series.count)


@register
class TextfileCollector(Collector[TextfileOptions]):
    name = "textfile"
    description = "Metrics from *.prom files in --collector.textfile.directory (node_exporter's textfile)."
    node_collectors = ("textfile",)
    runs_last = True
    exposed: Sequence[Metric] = ()

    def expose_after(self, families: Sequence[Metric]) -> None:
        """What the other collectors expose in this scrape, for the next collect(): a file's sample
        that conflicts with one of them (name with another HELP or type, or the same series) is
        dropped. node_exporter drops one of the two as well, but which one depends on the order its
        parallel collectors finish in; here the exporter's own metric always stays."""
        self.exposed = families

    def collect(self) -> Iterator[Metric]:
        directory = self.options.directory or ""
        errored = False
        parsed: list[tuple[str, dict[str, Family]]] = []
        mtimes: dict[str, float] = {}
        # As node_exporter: the directory may be a glob pattern; no match: the path itself.
        paths = sorted(glob.glob(directory)) if directory and glob.has_magic(directory) else []
        for path in paths or [directory]:
            try:
                entries = sorted(os.listdir(path)) if path else []
            except OSError as err:
                log.error("textfile: cannot read directory %s: %s", path, err)
                errored = True
                continue
            for entry in entries:
                if not entry.endswith(".prom"):
                    continue
                file = os.path.normpath(os.path.join(path, entry))
                try:
                    data, info = read_limited(file)
                    families = TextParser().parse(data.decode("utf-8", "surrogateescape"))
                    if any(f.has_timestamps for f in families.values()):
                        raise ParseError("contains unsupported client-side timestamps, skipping entire file")
                except (OSError, ParseError) as err:
                    log.error("textfile: failed to collect %s: %s", file, err)
                    errored = True
                    continue
                parsed.append((file, families))
                mtimes[file] = float(info.st_mtime_ns // 1_000_000_000)
        yield from self._merge(parsed, mtimes, errored)

    def _merge(self, parsed: Iterable[tuple[str, dict[str, Family]]], mtimes: dict[str, float],
               errored: bool) -> Iterator[Metric]:
        files_by_name: dict[str, list[str]] = {}
        for file, families in parsed:
            for name in families:
                files_by_name.setdefault(name, []).append(file)
        merger = Merger()
        if files_by_name:  # only a file's metrics can clash with the exporter's (0.7 ms a scrape)
            for exposed in self.exposed:
                merger.reserve(exposed)
        for _, families in parsed:
            for family in families.values():
                doc = family.help
                if doc is None:
                    doc = f"Metric read from {', '.join(files_by_name[family.name])}"
                doc = doc.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                names = sorted({name for s in family.series for name in s.labels})
                for series in family.series:
                    series.labels = {name: series.labels.get(name, "") for name in names}
                    dropped = merger.add(family.name, family.type or "unknown", doc, series)
                    if dropped:
                        log.warning("textfile: %s", dropped)
        mtime_doc = "Unixtime mtime of textfiles successfully read."
        for file, mtime in sorted(mtimes.items()):
            dropped = merger.add("node_textfile_mtime_seconds", "gauge", mtime_doc, Series({"file": file}, mtime))
            if dropped:
                log.warning("textfile: %s", dropped)
        error_doc = "1 if there was an error opening or reading a file, 0 otherwise"
        dropped = merger.add("node_textfile_scrape_error", "gauge", error_doc, Series({}, 1.0 if errored else 0.0))
        if dropped:
            log.warning("textfile: %s", dropped)
        yield from merger.metrics()

