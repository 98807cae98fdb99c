"""The exposition's lines → a `Batch`: the `parse` step of scrape → parse → spool → store.

Prometheus' text format 0.0.4 (what targets serve) and OpenMetrics 1.0 text (what a backfill
reads), each with the semantics prometheus_client's parsers give it — which family a sample
belongs to, its type, HELP and UNIT, which lines fail — so that the reference this is tested
against (tests/support/reference_parse.py, prometheus_client's parser under the same rules) and
this agree sample for sample, bit for bit. The reference costs ~40 µs a sample, the archiver's
largest cost. Here a plain line (`name{a="b"} value`, what exporters write) is cut with
str.partition, and a label set is read once per scrape, by its shape (its names), which is read
once; a target sends the same names, HELP and TYPE lines at every scrape, so those are kept
between scrapes (bounded). A line with escapes, spaces in its label set, a timestamp or
`__name__` takes a general path of whole-line regular expressions, linear in the line whatever
it holds.

Where prometheus_client reads what Prometheus refuses, this refuses it (MALFORMED): more than a
value and a timestamp after the labels (`m 1 2 3`, or an exemplar in the text format), a text
timestamp that is not an integer (`1.5`, `1e3`), an empty term in a label set (`{a=,b="c"}`), a
name alone (`inf`, read as `in` = +Inf), an integer of more than 4,300 digits (read as +Inf);
in OpenMetrics, a timestamp in (-1, 0) s (whose sign prometheus_client loses), more than nine
decimals followed by anything, any character but a space after a label set. And a sample keeps
the name it was exposed with, as in Prometheus: the reference renames a counter's `foo_total` to
`foo` when another family declares a counter `foo`, and keeps the `_total` that prometheus_client
appends to a counter `foo` whose TYPE line the reference did not recognise (`# TYPE "foo" counter`).

The archiver's own rules on top of the format: `relabel()` (honor_labels: false), metric and label
names of the classic character set (a label name starting with `__` refused), NaN kept out,
Prometheus' label limits, duplicates dropped (the first kept), sample_limit counted on the lines as
they arrive so that a huge body fails early; a limit broken inside a family fails the scrape once
the family ends, as in the reference (which sees a family only whole).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TypeAlias

from perfwatch.archiver.model import Batch, MetricMeta, Sample, SampleKind

log = logging.getLogger(__name__)

METRIC_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

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


class ScrapeError(Exception):
    """A failed scrape: `reason` is one of REASONS, the message says what happened."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class OpenMetricsError(ValueError):
    """Input that is not valid OpenMetrics: `line` is where (1-based; the line after the last for
    what is missing at the end). The message starts `line N: `."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


def sample_kind(family_type: str, family_name: str, sample_name: str) -> SampleKind:
    """Counters, and histogram/summary _bucket/_sum/_count, roll up as counters; untyped samples
    (no TYPE) get counter maths too, as PromQL's rate() gives them; all else as gauges."""
    if family_type == "counter":
        return "counter"
    if family_type in ("histogram", "summary") and sample_name[len(family_name):] in ("_bucket", "_sum", "_count"):
        return "counter"
    if family_type in ("unknown", "untyped"):
        return "untyped"
    return "gauge"


def relabel(exposed: Mapping[str, str], target_labels: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
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



def _limit_broken(name: str, labels: tuple[tuple[str, str], ...], limits: ScrapeLimits) -> ScrapeError | None:
    """The label limit `labels` break, as the error the scrape fails with once its family ends."""
    try:
        _check_label_limits(name, labels, limits)
    except ScrapeError as err:
        return err
    return None


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


def _within_label_limits(labels: tuple[tuple[str, str], ...], limits: ScrapeLimits) -> bool:
    if limits.label_limit and len(labels) > limits.label_limit:
        return False
    names, values = limits.label_name_length_limit, limits.label_value_length_limit
    return not any((names and len(k) > names) or (values and len(v) > values) for k, v in labels)


# --- the grammar -------------------------------------------------------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
_QUOTED = r'"[^"\\]*(?:\\[\s\S][^"\\]*)*"'  # the closing quote is the first one not escaped
# A value: float() decides what is one (prometheus_client tries int(), then float(), on a token
# without whitespace); `_`, which both read and prometheus_client refuses, is refused after.
_NUMBER = r'[^\s{}"]+'

# The general path: escapes, quoted label names, `{"name"}` and `{__name__="name"}`, whitespace
# around terms (prometheus_client strips each term). Each run of whitespace is read by one `\s*`
# only, so that a line of a million spaces fails in linear time.
_TERM = rf"(?:(?:{_LABEL}|{_QUOTED})\s*=\s*{_QUOTED}|{_QUOTED})"
_TERMS_TEXT = rf"\s*(?:,\s*)?(?:{_TERM}\s*(?:,\s*{_TERM}\s*)*(?:,\s*)?)?"  # a leading or trailing comma
_TERMS_OM = rf"\s*(?:{_TERM}\s*(?:,\s*{_TERM}\s*)*)?"
_TEXT_GENERAL = re.compile(
    rf"(?:({_NAME})[ \t]\s*({_NUMBER})|({_NAME})?\s*\{{({_TERMS_TEXT})\}}\s*({_NUMBER}))"
    rf"(?:[ \t]+([-+]?[0-9]+))?\Z")
_TERM_PARTS = re.compile(
    rf'(?:({_LABEL})|"([^"\\]*(?:\\[\s\S][^"\\]*)*)")\s*=\s*"([^"\\]*(?:\\[\s\S][^"\\]*)*)"'
    rf'|"([^"\\]*(?:\\[\s\S][^"\\]*)*)"')

# OpenMetrics: single spaces, a timestamp in seconds, an optional exemplar (read and checked,
# then dropped).
_OM_SAMPLE = re.compile(
    rf"({_NAME})?(?:\{{({_TERMS_OM})\}})? ({_NUMBER})(?: ({_NUMBER}))?"
    rf"(?: # \{{({_TERMS_OM})\}} ({_NUMBER})(?: ({_NUMBER}))?)?\Z")
_OM_TIMESTAMP = re.compile(r"([-+]?[0-9]+)(?:\.([0-9]*))?\Z")

_WHITESPACE = " \t\n\r\x0b\x0c"  # string.whitespace: what prometheus_client splits comments on
_KEYWORDS = ("HELP", "TYPE")
_TEXT_COMMENT = re.compile(rf"#[{_WHITESPACE}]+(HELP|TYPE)[{_WHITESPACE}]+({_NAME})(?:[{_WHITESPACE}]+([\s\S]*))?\Z")
_OM_COMMENT = re.compile(rf"# +(HELP|TYPE|UNIT) +({_NAME}) +([\s\S]*)\Z")

_ESCAPE = re.compile(r'\\[\\n"]')
_METRIC_NAME = re.compile(rf"{_NAME}\Z")
_LABEL_NAME = re.compile(rf"{_LABEL}\Z")
_HELP_ESCAPE = re.compile(r"\\[\\n]")
_UNESCAPED = {"\\\\": "\\", "\\n": "\n", '\\"': '"'}

# Family type → the sample names it holds (suffixes of the family name), as prometheus_client has them.
_OM_SUFFIXES = {"counter": ("_total", "_created"), "summary": ("", "_count", "_sum", "_created"),
                "histogram": ("_count", "_sum", "_bucket", "_created"),
                "gaugehistogram": ("_gcount", "_gsum", "_bucket"), "info": ("_info",)}
_METRIC_TYPES = ("counter", "gauge", "summary", "histogram", "gaugehistogram", "unknown", "info", "stateset")
_COUNTER_LIKE = ("_total", "_sum", "_count", "_bucket", "_gcount", "_gsum")
_INF = math.inf

# An OpenMetrics timestamp: (sec, nsec) as prometheus_client's Timestamp holds it, or a float.
_Time: TypeAlias = tuple[int, int] | float
_Labelled: TypeAlias = tuple[tuple[str, str], ...]
# A label set read: its labels (the target's added), within the limits or not, its number.
_Found: TypeAlias = tuple[_Labelled, bool, int]
# A label-set shape: its names, how to sort them in among the target's labels (None: they clash,
# relabel() decides), and whether the names are within the limits on count and length.
_Shape: TypeAlias = tuple[tuple[str, ...], Callable[[list[tuple[str, str]]], _Labelled] | None, bool]


def _unescaped(match: re.Match[str]) -> str:
    return _UNESCAPED[match[0]]


def _unescape(text: str) -> str:
    return _ESCAPE.sub(_unescaped, text) if "\\" in text else text


def _unescape_om_help(text: str) -> str:
    # OpenMetrics HELP: \\, \" and \n; any other backslash stays, as prometheus_client keeps it.
    return re.sub(r'\\([\\"n]?)', lambda m: {"\\": "\\", '"': '"', "n": "\n"}.get(m[1], "\\" + m[1]), text)


def _number(text: str) -> float:
    """A sample value as prometheus_client reads it (int() first, then float()), as a float."""
    if "_" in text:
        raise ValueError(f"invalid value {text[:30]!r}")
    value = float(text)
    if not value or value - value:
        return _special_number(text, value, 0)
    return value


def _special_number(text: str, value: float, number: int) -> float:
    """Zero, ±Inf or NaN from float(): where int() (which prometheus_client tries first) differs."""
    if text.lstrip("+-").isdigit():
        if value:
            where = f"line {number}: " if number else ""
            raise ValueError(f"{where}integer {text[:20]}… too large for a float")
        return 0.0  # int("-0") is 0: no negative zero
    return value


def _text_timestamp(text: str, number: int) -> int:
    try:
        return round(int(text) / 1000 * 1000)  # prometheus_client's seconds, back to ms
    except (OverflowError, ValueError):
        raise ValueError(f"line {number}: timestamp {text[:30]} out of range") from None


def _om_timestamp(text: str) -> _Time:
    """An OpenMetrics timestamp as prometheus_client holds it: Timestamp(sec, nsec) for an integer
    or a decimal, else (an exponent, no integer part) a float."""
    match = _OM_TIMESTAMP.match(text)
    if not match:
        if "_" in text:
            raise ValueError(f"invalid timestamp {text[:30]!r}")
        seconds = float(text)
        if seconds != seconds or seconds - seconds:
            raise ValueError(f"invalid timestamp {text[:30]!r}")
        return seconds
    sec = int(match[1])
    if match[2] is None:
        return (sec, 0)
    if sec == 0 and text[0] == "-":
        raise ValueError(f"negative timestamp above -1 s: {text!r}")  # prometheus_client loses its sign
    nsec = int(match[2][:9].ljust(9, "0"))
    return (sec, -nsec if sec < 0 else nsec)


def _ms(timestamp: _Time) -> int:
    try:
        if isinstance(timestamp, float):
            return round(timestamp * 1000)
        sec, nsec = timestamp
        return round((float(sec) + float(nsec) / 1e9) * 1000)
    except OverflowError:
        raise ValueError("timestamp out of range") from None


def _truncated_ms(timestamp: _Time) -> int:
    """Seconds → ms as promtool has them (truncated), from the exact decimal where there is one
    (through a float, .123 s would become 122 ms)."""
    if isinstance(timestamp, float):
        return int(timestamp * 1000)
    sec, nsec = timestamp
    return sec * 1000 + nsec // 1_000_000


def _terms(text: str) -> dict[str, str]:
    """A label set's terms (already known to be well-formed) → labels; `__name__` included."""
    labels: dict[str, str] = {}
    for term in _TERM_PARTS.finditer(text):
        name, quoted_name, value, bare = term.groups()
        if bare is not None:  # `{"metric_name"}`
            name, value = "__name__", bare
        elif quoted_name is not None:
            name = _unescape(quoted_name)
        if name != "__name__" and (not LABEL_NAME_RE.match(name) or name.startswith("__")):
            raise ValueError(f"invalid label name {name[:50]!r}")
        if name in labels:
            raise ValueError(f"label {name} given twice")
        labels[name] = _unescape(value)
    return labels


def _name_and_labels(name: str | None, terms: str) -> tuple[str, dict[str, str]]:
    labels = _terms(terms)
    if "__name__" in labels:
        if name:
            raise ValueError("metric name given twice")
        name = labels.pop("__name__")
        if not METRIC_NAME_RE.match(name):
            raise ValueError(f"invalid metric name {name!r}")
    elif not name:
        raise ValueError("no metric name")
    return name, labels


def _split_comment(line: str, separators: str) -> list[str]:
    """prometheus_client's _split_quoted(line, separators, 3), in linear time: up to three tokens
    split at runs of unquoted separators, then the rest of the line (empty where the line ends on
    separators)."""
    tokens: list[str] = []
    n, x = len(line), 0
    while True:
        while x < n and line[x] in separators:
            x += 1
        if x >= n:
            tokens.append("")
            return tokens
        if len(tokens) == 3:
            tokens.append(line[x:])
            return tokens
        start, quoted = x, False
        while x < n:
            c = line[x]
            if c == '"':
                backslashes = 0
                while x > backslashes and line[x - 1 - backslashes] == "\\":
                    backslashes += 1
                if backslashes % 2 == 0:
                    quoted = not quoted
            elif not quoted and c in separators:
                break
            x += 1
        tokens.append(line[start:x])
        if x >= n:
            return tokens
        x += 1


def _comment_name(token: str) -> str:
    """A HELP/TYPE/UNIT line's metric name: plain, or in quotes (then unescaped)."""
    text = token.strip()
    if text[:1] == '"':
        if len(text) == 1 or text[-1] != '"':
            raise ValueError(f"missing close quote in {token[:50]!r}")
        return _unescape(text[1:-1])
    if not METRIC_NAME_RE.match(text):
        raise ValueError(f"invalid metric name {text[:50]!r}")
    return text


# --- the text format ---------------------------------------------------------------------------

class _Labels:
    """A sample's label set → its stored labels (target labels added, relabelled) and whether they
    are within the label limits, cached by the set's text: most label sets of a scrape recur (a
    device, a CPU, a mode), and the batch's samples then share one tuple. A set not seen before
    is read by its shape, its text with the values cut out (`device=",mode="`), which recurs
    even more: the shape knows its names are valid, and where the target's labels sort in."""

    def __init__(self, target_labels: Mapping[str, str], limits: ScrapeLimits) -> None:
        self.target_labels = dict(target_labels)
        self.limits = limits
        self.target_items = [(k, v) for k, v in target_labels.items() if v != ""]
        self.target_names = frozenset(target_labels)
        # Each distinct label set gets a number, so that telling a duplicate series needs no hash
        # of its labels (which, spread over memory, cost more than all the parsing).
        self.numbers: dict[tuple[tuple[str, str], ...], int] = {}
        bare = tuple(sorted(self.target_items))
        self.bare: _Found = (bare, _within_label_limits(bare, limits), self.number(bare))
        self.value_limit = limits.label_value_length_limit or 1 << 62
        self.cache: dict[str, _Found] = {}
        # Shapes depend on the target's label names and the limits only: kept between scrapes.
        key = (tuple(target_labels), tuple(k for k, _ in self.target_items), self.bare[1], limits.label_limit,
               limits.label_name_length_limit)
        if len(_shapes) >= 1_000:
            _shapes.clear()
        self.shapes = _shapes.setdefault(key, {})

    def number(self, labels: tuple[tuple[str, str], ...]) -> int:
        return self.numbers.setdefault(labels, len(self.numbers))

    def plain(self, text: str) -> _Found | None:
        """The label set of a plain line with its closing brace (`a="b",c="d"}`: no escapes, no
        whitespace, a trailing comma allowed), or None for the general path to read."""
        if "\\" in text:
            return None
        parts = text[:-1].split('"')  # a plain set alternates `name=` (`,name=` after the first) and values
        skeleton = '"'.join(parts[::2])
        try:
            shape = self.shapes[skeleton]
        except KeyError:
            if len(self.shapes) >= 10_000:
                self.shapes.clear()
            shape = self.shapes[skeleton] = self._shape(parts[::2])
        if shape is None:
            return None
        names, order, names_ok = shape
        values = parts[1::2]
        if order is None or "" in values:
            labels = relabel(dict(zip(names, values, strict=True)), self.target_labels)
            within = _within_label_limits(labels, self.limits)
        else:
            labels = order([*zip(names, values), *self.target_items])  # noqa: B905 - one length, by its shape
            limit = self.value_limit
            within = names_ok and (len(text) <= limit or max(map(len, values)) <= limit)
        numbers = self.numbers
        found = (labels, within, numbers.setdefault(labels, len(numbers)))
        cache = self.cache
        if len(cache) < 100_000:  # bounded, whatever a target sends
            cache[text] = found
        return found

    def _shape(self, heads: list[str]) -> _Shape | None:
        if heads[-1] not in ("", ","):
            return None
        names: list[str] = []
        for k, head in enumerate(heads[:-1]):
            if k:
                if head[:1] != ",":
                    return None
                head = head[1:]
            name = head[:-1]
            if head[-1:] != "=" or not _LABEL_NAME.match(name) or name.startswith("__") or name in names:
                return None  # the general path says what is wrong
            names.append(name)
        names_ok = all(len(n) <= (self.limits.label_name_length_limit or 1 << 62) for n in names)
        if self.target_names.isdisjoint(names):
            merged = [*names, *(k for k, _ in self.target_items)]
            if self.limits.label_limit and len(merged) > self.limits.label_limit:
                names_ok = False
            positions = sorted(range(len(merged)), key=merged.__getitem__)
            order = operator.itemgetter(*positions) if len(positions) > 1 else tuple
            return tuple(names), order, names_ok and self.bare[1]
        return tuple(names), None, names_ok  # a clash with a target label: relabel() each time

    def general(self, labels: dict[str, str]) -> _Found:
        relabelled = relabel(labels, self.target_labels)
        return relabelled, _within_label_limits(relabelled, self.limits), self.number(relabelled)


def parse_lines(lines: Iterable[str], target_labels: dict[str, str], scraped_at_ms: int,
                limits: ScrapeLimits = ScrapeLimits(), *, openmetrics: bool = False) -> Batch:
    """The exposition's lines (as they arrive) → Batch; text format 0.0.4, or OpenMetrics 1.0 text
    (`# EOF` required, timestamps in seconds). Raises ScrapeError: MALFORMED, or a limit's reason."""
    try:
        if openmetrics:
            return _parse_openmetrics(lines, target_labels, scraped_at_ms, limits)
        return _parse_text(lines, target_labels, scraped_at_ms, limits)
    except ScrapeError:
        raise
    except Exception as err:  # ValueError from the grammar; anything else is a bug kept in bounds
        raise ScrapeError(MALFORMED, f"cannot parse exposition: {err}"[:300]) from None


def _parse_text(lines: Iterable[str], target_labels: dict[str, str], scraped_at_ms: int,
                limits: ScrapeLimits) -> Batch:
    samples: list[Sample] = []
    append = samples.append
    metadata: dict[str, MetricMeta] = {}
    seen: set[tuple[str, int]] = set()
    duplicates = 0
    label_sets = _Labels(target_labels, limits)
    cache_get = label_sets.cache.get
    plain = label_sets.plain
    bare = label_sets.bare
    names = _valid_names
    sample_limit = limits.sample_limit

    # The family being read, as prometheus_client's parser tracks it: its samples are made at
    # once, but what it is (its TYPE may come after its samples) and the limits its samples broke
    # only count once it ends, in the reference's order.
    family = ""  # "": none (a sample of no declared family is a family of its own)
    family_type = "untyped"
    family_help = ""
    allowed: tuple[str, ...] = ()
    new_names: list[str] = []  # sample names first stored in this family: its metadata
    deferred: ScrapeError | None = None  # the first limit this family broke

    last_name = ""  # the name of the last sample stored, known to be in new_names or metadata
    # sample_limit counts lines as the reference counts them as they arrive, before a family ends:
    # all but blank lines and those starting with # (an indented comment counts).
    skipped = 0
    check_from = sample_limit or 1 << 62  # until then, there cannot be too many
    comment_get = _comments.get
    for number, raw in enumerate(lines, 1):
        if raw[:1] == "#":
            skipped += 1
            line = raw.strip()
        else:
            line = raw.strip()
            if not line:
                skipped += 1
                continue
            if number > check_from and number - skipped > sample_limit:
                raise ScrapeError(SAMPLE_LIMIT, f"more than sample_limit ({sample_limit}) samples")
            if line[0] != "#":
                # The fast reading: `name{a="b",c="d"} value`, plain label values, one space. A line it
                # does not fit (escapes, spaces, a timestamp, …) goes the general way, which also says what
                # is wrong with a line that is.
                found = None
                head, _, value_text = line.rpartition(" ")
                name, brace, text = head.partition("{")
                if name in names or _valid_name(name, names):
                    if not brace:
                        found = bare
                    elif text[-1:] == "}":  # the label set, with its closing brace: a cache key as good
                        found = cache_get(text) or plain(text)
                if found is not None:
                    if "_" in value_text:  # float() reads 1_000, prometheus_client does not
                        found = None
                    else:
                        try:
                            value = float(value_text)
                        except ValueError:
                            found = None
                        else:
                            # Zero, ±Inf or NaN: where int() (which prometheus_client tries first) and
                            # float() differ: no -0 from an integer, no +Inf from a long one.
                            if not value:
                                if value_text[0] == "-":
                                    value = _special_number(value_text, value, number)
                            elif value - value:
                                value = _special_number(value_text, value, number)
                            timestamp = scraped_at_ms
                if found is None:
                    name, found, value, timestamp = _general_text_sample(line, number, label_sets, scraped_at_ms)
                labels, within, label_set = found

                single = name not in allowed
                if single:  # a sample of no declared family: a family of its own, ended at once
                    if family:
                        _end_text_family(metadata, new_names, family, family_type, family_help, deferred)
                    family, family_type, family_help, allowed, new_names, deferred = "", "untyped", "", (), [], None
                if value == value:  # NaN: Prometheus' stale marker (or a plain NaN), never archived
                    if not within:
                        deferred = deferred or _limit_broken(name, labels, limits)
                    elif (key := (name, label_set)) in seen:
                        duplicates += 1  # Prometheus keeps the first and rejects the rest
                    else:
                        seen.add(key)
                        append(Sample(name, labels, value, timestamp))
                        if name != last_name:
                            last_name = name
                            if name not in metadata and name not in new_names:
                                new_names.append(name)
                if single:
                    _end_text_family(metadata, new_names, name, "untyped", "", deferred)
                    new_names, deferred = [], None
                continue

        # A HELP or TYPE line, read once (the reference's family logic below, line by line).
        comment = comment_get(line) or _read_comment(line, number, names)
        if comment is None:
            continue  # a comment
        keyword, name, text, names_allowed = comment
        if name != family:
            if family:
                _end_text_family(metadata, new_names, family, family_type, family_help, deferred)
            family, new_names, deferred = name, [], None
            if keyword == "HELP":
                family_type, allowed = "untyped", names_allowed
            else:
                family_help = ""
        if keyword == "HELP":
            family_help = text
        else:
            family_type, allowed = text, names_allowed
    if family:
        _end_text_family(metadata, new_names, family, family_type, family_help, deferred)
    if duplicates:
        log.warning("target %s/%s exposed %d duplicate samples; kept the first of each",
                    target_labels.get("job"), target_labels.get("instance"), duplicates)
    return Batch(target_labels.get("job", ""), target_labels.get("instance", ""), scraped_at_ms, samples, metadata)


# Kept between scrapes, as the exporter keeps its valid names: a target sends the same names and
# HELP texts every time. Bounded, whatever targets send.
_valid_names: set[str] = set()
_metas: dict[tuple[str, str, str, str], MetricMeta] = {}
_shapes: dict[tuple[object, ...], dict[str, _Shape | None]] = {}
_Comment: TypeAlias = tuple[str, str, str, tuple[str, ...]]
_comments: dict[str, _Comment] = {}


def _valid_name(name: str, names: set[str]) -> bool:
    if _METRIC_NAME.match(name):
        if len(names) >= 100_000:
            names.clear()
        names.add(name)
        return True
    return False


def _read_comment(line: str, number: int, names: set[str]) -> _Comment | None:
    """A HELP or TYPE line: (keyword, metric name, the HELP text unescaped or the type, the names
    of the family's samples), or None for a comment that is neither. Kept if plain."""
    parts = line.split(" ", 3)
    rest: str | None
    if (len(parts) == 4 and parts[0] == "#" and parts[1] in _KEYWORDS and parts[3][:1] not in _WHITESPACE
            and (parts[2] in names or _valid_name(parts[2], names))):
        keyword, name, rest = parts[1], parts[2], parts[3]
        plain: bool = True
    else:
        keyword, name, rest = _text_comment(line)
        plain = False
        if not keyword:
            return None
    if keyword == "HELP":
        text = _HELP_ESCAPE.sub(_unescaped, rest) if rest and "\\" in rest else rest or ""
        allowed: tuple[str, ...] = (name,)
    elif rest is None:
        raise ValueError(f"line {number}: TYPE without a type")
    else:
        text = rest
        if rest == "histogram":
            allowed = (name + "_count", name + "_sum", name + "_bucket")
        elif rest == "summary":
            allowed = (name + "_count", name + "_sum", name)
        else:
            allowed = (name,)
    comment = (keyword, name, text, allowed)
    if plain:
        if len(_comments) >= 20_000:
            _comments.clear()
        _comments[line] = comment
    return comment


def _text_comment(line: str) -> tuple[str, str, str | None]:
    """A comment line as prometheus_client reads it: ("HELP" or "TYPE", metric name, the rest or
    None), or ("", "", None) for a comment that is neither."""
    if comment := _TEXT_COMMENT.match(line):
        keyword, name, rest = comment.groups()
        return keyword, name, rest
    if "HELP" not in line and "TYPE" not in line:
        return "", "", None
    parts = _split_comment(line, _WHITESPACE)
    if len(parts) < 2 or parts[1] not in ("HELP", "TYPE"):
        return "", "", None
    return parts[1], _comment_name(parts[2]) if len(parts) > 2 else "", parts[3] if len(parts) > 3 else None


def _general_text_sample(line: str, number: int, label_sets: _Labels, scraped_at_ms: int
                         ) -> tuple[str, _Found, float, int]:
    match = _TEXT_GENERAL.match(line)
    if not match:
        raise ValueError(f"line {number}: not a sample: {line[:100]!r}")
    plain_name, plain_value, name, terms, value_text, timestamp_text = match.groups()
    try:
        if plain_name:
            name, found, value_text = plain_name, label_sets.bare, plain_value
        else:
            name, exposed = _name_and_labels(name, terms)
            found = label_sets.general(exposed)
        value = _number(value_text)
    except ValueError as err:
        raise ValueError(f"line {number}: {err}") from None
    timestamp = scraped_at_ms if timestamp_text is None else _text_timestamp(timestamp_text, number)
    return name, found, value, timestamp


def _end_text_family(metadata: dict[str, MetricMeta], new_names: list[str], family: str, family_type: str,
                     family_help: str, deferred: ScrapeError | None) -> None:
    """A family is complete: its type is checked, the first limit it broke fails the scrape, and
    the names it brought get its metadata."""
    if family_type == "untyped":
        family_type = "unknown"
    if family_type not in _METRIC_TYPES:
        raise ValueError(f"family {family}: invalid type {family_type[:50]!r}")
    if deferred is not None:
        raise deferred
    kind: SampleKind = sample_kind(family_type, family, family)
    for name in new_names:
        if family_type in ("histogram", "summary"):
            kind = sample_kind(family_type, family, name)
        key = (name, kind, family_type, family_help)
        meta = _metas.get(key)
        if meta is None:
            if len(_metas) >= 100_000:
                _metas.clear()
            meta = _metas[key] = MetricMeta(name, kind, family_type, family_help, "")
        metadata[name] = meta


# --- OpenMetrics -------------------------------------------------------------------------------

class _Family:
    """An OpenMetrics family being read, with what prometheus_client's parser checks in it."""

    def __init__(self, name: str, family_type: str | None = None) -> None:
        self.name = name
        self.type = family_type
        self.help: str | None = None
        self.unit: str | None = None
        self.allowed: tuple[str, ...] = (name,)
        self.samples = 0
        self.group: tuple[tuple[str, str], ...] | None = None
        self.seen_groups: set[int] = set()  # hashes: the label sets of a family are not all kept
        self.group_timestamp: _Time | None = None
        self.group_series: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        self.histogram = _HistogramCheck(name) if family_type in ("histogram", "gaugehistogram") else None
        self.metas: dict[str, MetricMeta] = {}

    def meta(self, sample_name: str) -> MetricMeta:
        meta = self.metas.get(sample_name)
        if meta is None:
            family_type = self.type or "unknown"
            meta = MetricMeta(sample_name, sample_kind(family_type, self.name, sample_name), family_type,
                              self.help or "", self.unit or "")
            self.metas[sample_name] = meta
        return meta


class _HistogramCheck:
    """prometheus_client's _check_histogram, sample by sample."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.group: object = None
        self.timestamp: _Time | None = None
        self.started = False
        self.reset()

    def reset(self) -> None:
        self.count: float | None = None
        self.bucket: float | None = None
        self.value = 0.0
        self.negative_buckets = self.has_sum = self.has_gsum = self.negative_gsum = False

    def add(self, suffix: str, labels: dict[str, str], value: float, timestamp: _Time | None) -> None:
        group = {k: v for k, v in labels.items() if k != "le"} if suffix == "_bucket" else labels
        if not self.started or group != self.group or timestamp != self.timestamp:
            if self.started:
                self.check()
            self.reset()
        self.started, self.group, self.timestamp = True, group, timestamp
        if suffix == "_bucket":
            bound = float(labels["le"])
            if bound < 0:
                self.negative_buckets = True
            if self.bucket is not None and bound <= self.bucket:
                raise ValueError(f"buckets out of order: {self.name}")
            if value < self.value:
                raise ValueError(f"bucket values out of order: {self.name}")
            self.bucket, self.value = bound, value
        elif suffix in ("_count", "_gcount"):
            self.count = value
        elif suffix == "_sum":
            self.has_sum = True
        elif suffix == "_gsum":
            self.has_gsum = True
            if value < 0:
                self.negative_gsum = True

    def end(self) -> None:
        if self.started:
            self.check()

    def check(self) -> None:
        name = self.name
        if self.bucket != _INF:
            raise ValueError(f"+Inf bucket missing: {name}")
        if self.count is not None and self.value != self.count:
            raise ValueError(f"count does not match the +Inf bucket: {name}")
        if self.has_sum and self.count is None:
            raise ValueError(f"_count must be present if _sum is present: {name}")
        if self.has_gsum and self.count is None:
            raise ValueError(f"_gcount must be present if _gsum is present: {name}")
        if not (self.has_sum or self.has_gsum) and self.count is not None:
            raise ValueError(f"_sum/_gsum must be present if _count is present: {name}")
        if self.negative_buckets and self.has_sum:
            raise ValueError(f"cannot have _sum with negative buckets: {name}")
        if not self.negative_buckets and self.negative_gsum:
            raise ValueError(f"cannot have a negative _gsum with non-negative buckets: {name}")


def _check_group(family: _Family, name: str, labels: tuple[tuple[str, str], ...],
                 timestamp: _Time | None) -> bool:
    """prometheus_client's checks on a sample's group (its series less `le`, `quantile` or a
    stateset's label; an info's samples are one group); False for a sample it drops."""
    family_name, family_type = family.name, family.type
    if family_type == "info":
        group: tuple[tuple[str, str], ...] = ()
    elif family_type == "summary" and name == family_name:
        group = tuple(kv for kv in labels if kv[0] != "quantile")
    elif family_type == "stateset":
        group = tuple(kv for kv in labels if kv[0] != family_name)
    elif family_type in ("histogram", "gaugehistogram") and name == family_name + "_bucket":
        group = tuple(kv for kv in labels if kv[0] != "le")
    else:
        group = labels
    if family.group is not None and group != family.group and hash(group) in family.seen_groups:
        raise ValueError("samples of a group not together")
    if family.group is not None and group == family.group:
        if (timestamp is None) != (family.group_timestamp is None):
            raise ValueError("a group with and without timestamps")
        if (family.group_timestamp is not None and timestamp is not None and family_type != "info"
                and _later(family.group_timestamp, timestamp)):
            raise ValueError("timestamps going backwards in a group")
    else:
        family.group_series = set()
    series = (name, labels)
    keep = timestamp != family.group_timestamp or series not in family.group_series
    family.group_series.add(series)
    family.group = group
    family.group_timestamp = timestamp
    family.seen_groups.add(hash(group))
    return keep


def _later(a: _Time, b: _Time) -> bool:
    if isinstance(a, float) != isinstance(b, float):
        raise ValueError("timestamps as a decimal and as a float in one group")  # prometheus_client fails there
    return a > b  # type: ignore[operator]  # both floats, or both (sec, nsec)


def _uncanonical(text: str) -> bool:
    return float(text) == _INF and text != "+Inf"


# What the OpenMetrics reader yields: a sample, or None where a family ends.
_OMSample: TypeAlias = tuple[_Family, str, tuple[tuple[str, str], ...], dict[str, str], float, _Time | None]


def _openmetrics(lines: Iterable[str], sample_limit: int = 0, *, strict: bool) -> Iterator[_OMSample | None]:
    """OpenMetrics text → its samples one at a time, with None after each family (once the checks
    on the whole family have passed). ValueError names the line.

    `strict`: also what prometheus_client checks across a family's samples — groups together,
    timestamps not going backwards in a group, a histogram's buckets in order and ending at +Inf —
    and the samples it drops: a series repeated at the time of the sample before it in a group.
    (Its set of the group's series is only emptied when the group changes, so of a histogram with
    two timestamps it keeps the first bucket of the second, and then finds its +Inf missing.)"""
    family: _Family | None = None
    seen_names: set[str] = set()
    eof = False
    number = 0
    sample_lines = 0

    def end(family: _Family) -> None:
        family_type = family.type or "unknown"
        for suffix in {*_OM_SUFFIXES.get(family_type, ()), ""}:
            if family.name + suffix in seen_names:
                raise ValueError(f"clashing name: {family.name + suffix}")
            seen_names.add(family.name + suffix)
        if family.unit and not family.name.endswith("_" + family.unit):
            raise ValueError(f"unit {family.unit[:50]!r} does not match metric name {family.name}")
        if family.unit and family_type in ("info", "stateset"):
            raise ValueError(f"units not allowed for type {family_type}: {family.name}")
        if strict and family.histogram is not None:
            family.histogram.end()
        if not family.name:
            raise ValueError("empty metric name")
        if family_type not in _METRIC_TYPES:
            raise ValueError(f"invalid type {family_type[:50]!r} of {family.name}")

    for raw in lines:
        number += 1
        line = raw[:-1] if raw[-1:] == "\n" else raw
        if raw[:1] != "#" and raw.strip():
            sample_lines += 1
            if sample_limit and sample_lines > sample_limit:
                raise ScrapeError(SAMPLE_LIMIT, f"more than sample_limit ({sample_limit}) samples")
        try:
            if eof:
                raise ValueError("a line after # EOF")
            if not line:
                raise ValueError("a blank line")
            if line == "# EOF":
                eof = True
                continue
            if line[0] == "#":
                if comment := _OM_COMMENT.match(line):
                    keyword, name, rest = comment.groups()
                else:
                    parts = _split_comment(line, " ")
                    if len(parts) < 4:
                        raise ValueError(f"invalid line {line[:100]!r}")
                    keyword, name, rest = parts[1], _comment_name(parts[2]), parts[3]
                if family is not None and name == family.name and family.samples:
                    raise ValueError(f"metadata after samples: {line[:100]!r}")
                if family is None or name != family.name:
                    if family is not None:
                        end(family)
                        yield None
                    family = _Family(name)
                if keyword == "HELP":
                    if family.help is not None:
                        raise ValueError(f"a second HELP for {name}")
                    family.help = _unescape_om_help(rest) if "\\" in rest else rest
                elif keyword == "TYPE":
                    if family.type is not None:
                        raise ValueError(f"a second TYPE for {name}")
                    if rest == "untyped":
                        raise ValueError(f"invalid type untyped of {name}")
                    family.type = rest
                    family.allowed = tuple(name + suffix for suffix in _OM_SUFFIXES.get(rest, ("",)))
                    if rest in ("histogram", "gaugehistogram"):
                        family.histogram = _HistogramCheck(name)
                elif keyword == "UNIT":
                    if family.unit is not None:
                        raise ValueError(f"a second UNIT for {name}")
                    family.unit = rest
                else:
                    raise ValueError(f"invalid line {line[:100]!r}")
                continue

            match = _OM_SAMPLE.match(line)
            if not match:
                raise ValueError(f"not a sample: {line[:100]!r}")
            name, terms, value_text, timestamp_text, exemplar_terms, exemplar_value, exemplar_time = match.groups()
            if terms is None:
                if not name:
                    raise ValueError(f"not a sample: {line[:100]!r}")
                labels: dict[str, str] = {}
            else:
                name, labels = _name_and_labels(name, terms)
            value = _number(value_text)
            timestamp = None if timestamp_text is None else _om_timestamp(timestamp_text)
            if exemplar_value is not None:
                exemplar = _terms(exemplar_terms)
                if "__name__" in exemplar:
                    raise ValueError("an exemplar with __name__")
                if sum(len(k) + len(v) for k, v in exemplar.items()) > 128:
                    raise ValueError("exemplar labels too long")
                _number(exemplar_value)
                if exemplar_time is not None:
                    _om_timestamp(exemplar_time)

            if family is None or name not in family.allowed:
                if family is not None:
                    end(family)
                    yield None
                family = _Family(name, "unknown")
            family_name, family_type = family.name, family.type
            suffix = name[len(family_name):]
            if family_type == "stateset" and family_name not in labels:
                raise ValueError(f"stateset without its label {family_name}")
            if suffix == "_bucket" and name == family_name + "_bucket":
                le = labels.get("le", "NaN")
                if le == "NaN" or _uncanonical(le):
                    raise ValueError(f"invalid le label {le[:30]!r}")
                if not value.is_integer():
                    raise ValueError("a bucket's value must be an integer")
            if (suffix in ("_count", "_gcount") and name == family_name + suffix) and not value.is_integer():
                raise ValueError("a count must be an integer")
            if family_type == "summary" and name == family_name:
                quantile = labels.get("quantile", "-1")
                if not 0 <= float(quantile) <= 1 or _uncanonical(quantile):
                    raise ValueError(f"invalid quantile label {quantile[:30]!r}")

            sorted_labels = tuple(sorted(labels.items()))
            keep = True
            if strict:
                keep = _check_group(family, name, sorted_labels, timestamp)

            if family_type == "stateset" and value not in (0, 1):
                raise ValueError("a stateset's value must be 0 or 1")
            if family_type == "info" and value != 1:
                raise ValueError("an info's value must be 1")
            if family_type == "summary" and name == family_name and value < 0:
                raise ValueError("a quantile cannot be negative")
            if suffix in _COUNTER_LIKE and value != value:
                raise ValueError("a counter-like sample cannot be NaN")
            if suffix in _COUNTER_LIKE[:5] and value < 0:
                raise ValueError("a counter-like sample cannot be negative")
            if exemplar_value is not None and not (
                    (family_type in ("histogram", "gaugehistogram") and name.endswith("_bucket"))
                    or (family_type == "counter" and name.endswith("_total"))):
                raise ValueError("only buckets and counters can have exemplars")
            if keep:  # prometheus_client drops a series repeated at the same time within a group
                family.samples += 1
                if strict and family.histogram is not None and suffix:
                    family.histogram.add(suffix, labels, value, timestamp)
                yield family, name, sorted_labels, labels, value, timestamp
        except ValueError as err:
            raise OpenMetricsError(number, str(err)) from None
    try:
        if family is not None:
            end(family)
            yield None
    except ValueError as err:
        raise OpenMetricsError(number, str(err)) from None
    if not eof:
        raise OpenMetricsError(number + 1, "no # EOF at the end")


def iter_openmetrics(lines: Iterable[str]) -> Iterator[tuple[MetricMeta, str, tuple[tuple[str, str], ...], float,
                                                             int | None]]:
    """OpenMetrics 1.0 text, one sample at a time: (meta, sample name, labels sorted by name, value,
    timestamp in ms or None), in the order of the lines. Nothing of a family is held but its
    metadata: a file of any size streams.

    Accepts what prometheus_client.openmetrics.parser accepts line by line, with its checks on
    metadata (before the family's samples, one HELP, TYPE and UNIT each, the unit a suffix of the
    name, no clashing names), on each sample (its name one of its family's, `le` and `quantile`
    labels, integer buckets and counts, info 1, stateset 0 or 1, counter-like samples neither NaN
    nor negative, exemplars only on buckets and counters) and `# EOF` last. Like promtool, and not
    like prometheus_client, it does not check a family's structure across samples (groups
    together, timestamps rising, buckets in order up to +Inf), which a file holding each
    series' history breaks, and it drops no sample (prometheus_client drops a series repeated at
    the time of the sample before it, and so all but the first bucket of a histogram's second
    timestamp). Metric and label names are of the classic character set (no quoted UTF-8 names);
    no native histograms; exemplars are checked and not returned; NaN values are yielded.
    Timestamps are seconds, as OpenMetrics writes them (`1700000000.123`), truncated to the ms
    as promtool does, from the decimal itself (no float error).

    Raises OpenMetricsError, a ValueError whose `line` says where (and whose message starts
    `line 12: `); a family's name clash or wrong unit, found when it ends, names the line that
    ended it, a missing `# EOF` the line after the last.
    """
    for item in _openmetrics(lines, strict=False):
        if item is not None:
            family, name, labels, _, value, timestamp = item
            yield family.meta(name), name, labels, value, None if timestamp is None else _truncated_ms(timestamp)


def _parse_openmetrics(lines: Iterable[str], target_labels: dict[str, str], scraped_at_ms: int,
                       limits: ScrapeLimits) -> Batch:
    samples: list[Sample] = []
    metadata: dict[str, MetricMeta] = {}
    seen: set[tuple[str, int]] = set()
    duplicates = 0
    label_sets = _Labels(target_labels, limits)
    deferred: ScrapeError | None = None
    for item in _openmetrics(lines, limits.sample_limit, strict=True):
        if item is None:  # a family ended: the first limit it broke fails the scrape now, as in the reference
            if deferred is not None:
                raise deferred
            continue
        family, name, _, exposed, value, timestamp = item
        if value != value:
            continue
        labels, within, label_set = label_sets.general(exposed)
        if not within:
            deferred = deferred or _limit_broken(name, labels, limits)
            continue
        if (name, label_set) in seen:
            duplicates += 1
            continue
        seen.add((name, label_set))
        samples.append(Sample(name, labels, value, scraped_at_ms if timestamp is None else _ms(timestamp)))
        if name not in metadata:
            metadata[name] = family.meta(name)
    if duplicates:
        log.warning("target %s/%s exposed %d duplicate samples; kept the first of each",
                    target_labels.get("job"), target_labels.get("instance"), duplicates)
    return Batch(target_labels.get("job", ""), target_labels.get("instance", ""), scraped_at_ms, samples, metadata)
