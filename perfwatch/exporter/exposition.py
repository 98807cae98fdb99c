"""The text renderer `/metrics` uses: the same bytes as prometheus_client's generate_latest.

generate_latest re-validates and re-escapes every metric and label name of every sample (1.7 ms
for ~320 series). Here a name is checked once per process, a label value is only escaped when
it holds a character that needs it, and what repeats from one scrape to the next is made once
and kept: each family's HELP/TYPE lines and each series' `name{labels} ` text (0.65 ms instead
of 0.90 ms without those caches, for the ~560 series of every default collector).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, SupportsFloat


class Sample(Protocol):
    """What is read of a sample: perfwatch's (common.families) or prometheus_client's."""

    @property
    def name(self) -> str: ...
    @property
    def labels(self) -> Mapping[str, str]: ...
    @property
    def value(self) -> float: ...
    @property
    def timestamp(self) -> SupportsFloat | None: ...


class Family(Protocol):
    """What is read of a family: perfwatch's or prometheus_client's."""

    @property
    def name(self) -> str: ...
    @property
    def documentation(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def samples(self) -> Sequence[Sample]: ...


class Source(Protocol):
    """A registry, or anything else that yields families."""

    def collect(self) -> Iterable[Family]: ...


# OpenMetrics types as the classic text format names them, and the suffix the family name gets.
_TEXT_TYPES = {"counter": ("_total", "counter"), "info": ("_info", "gauge"), "stateset": ("", "gauge"),
               "gaugehistogram": ("", "histogram"), "unknown": ("", "untyped")}
# Samples that generate_latest moves into a gauge family of their own after their family.
_OPENMETRICS_ONLY = ("_created", "_gsum", "_gcount")
# Names written as they are; generate_latest writes `_` for each other character (below).
_LEGACY_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LEGACY_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_valid_names: set[str] = set()
_valid_label_names: set[str] = set()


def format_value(value: float) -> str:
    """A sample value as Go (and generate_latest) writes it: `+Inf`, `NaN`, `1.2345678e+07`."""
    text = repr(float(value))
    dot = text.find(".")
    if dot > 6 and value > 0:  # Go switches to an exponent sooner than Python
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    if dot < 0 and not math.isfinite(value):  # repr: inf, -inf, nan
        return "NaN" if math.isnan(value) else "+Inf" if value > 0 else "-Inf"
    return text


def _escape_label_value(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def _plain(name: str, pattern: re.Pattern[str] = _LEGACY_NAME, valid: set[str] = _valid_names) -> bool:
    """True if `name` needs no escaping as a metric name (or a label name, with the label name's
    `pattern` and set); checked once per name."""
    if name in valid:
        return True
    if pattern.fullmatch(name):
        if len(valid) >= _CACHE_LIMIT:
            valid.clear()
        valid.add(name)
        return True
    return False


def _escape_name(name: str, colon: bool = True) -> str:
    """A metric name (a label name: `colon` False) as generate_latest escapes it, by default
    ("underscores"): each character outside the legacy set becomes `_`."""
    return "".join(c if "a" <= c <= "z" or "A" <= c <= "Z" or c == "_" or (c == ":" and colon)
                   or ("0" <= c <= "9" and i > 0) else "_" for i, c in enumerate(name))


# Per label-name tuple as a sample's dict holds them (the family's label order): the names
# sorted, as the text format writes them, or None if one needs escaping. A family's samples
# almost always share one tuple, so sorting and checking happen once per process, not per sample.
_label_orders: dict[tuple[str, ...], tuple[str, ...] | None] = {}
# Per (name, type, help): the family's "# HELP" and "# TYPE" lines and its escaped help, or None
# if the name needs escaping.
_headers: dict[tuple[str, str, str], tuple[str, str] | None] = {}
# These caches are bounded by the metric and label names (and series) a process exposes; a
# textfile directory whose files keep inventing new ones would grow them, so they start over past
# this size.
_CACHE_LIMIT = 20_000
# Per (sample name, label names, label values): the sample's line up to its value.
_prefixes: dict[tuple[str, ...], str] = {}
_MISSING: Any = object()


def _label_order(names: tuple[str, ...]) -> tuple[str, ...] | None:
    order = _label_orders.get(names, _MISSING)
    if order is _MISSING:
        if len(_label_orders) >= _CACHE_LIMIT:
            _label_orders.clear()
        order = (tuple(sorted(names)) if all(_plain(n, _LEGACY_LABEL_NAME, _valid_label_names) for n in names)
                 else None)
        _label_orders[names] = order
    return order  # type: ignore[no-any-return]


def _header(family: Family) -> tuple[str, str] | None:
    key = (family.name, family.type, family.documentation)
    header = _headers.get(key, _MISSING)
    if header is _MISSING:
        if len(_headers) >= _CACHE_LIMIT:
            _headers.clear()
        if not _plain(family.name):
            header = None
        else:
            suffix, text_type = _TEXT_TYPES.get(family.type, ("", family.type))
            name = family.name + suffix
            documentation = family.documentation.replace("\\", "\\\\").replace("\n", "\\n")
            header = (f"# HELP {name} {documentation}\n# TYPE {name} {text_type}\n", documentation)
        _headers[key] = header
    return header  # type: ignore[no-any-return]


def _render_family(family: Family, header: tuple[str, str], out: list[str]) -> bool:
    """Append `family`'s text to `out`; False (and nothing appended) if a label name needs escaping."""
    mark = len(out)
    out.append(header[0])
    moved: dict[str, list[str]] | None = None  # made only for the rare family that needs it
    fname = family.name
    prefixes = _prefixes
    for sample in family.samples:
        name, labels, value, timestamp = sample.name, sample.labels, sample.value, sample.timestamp
        text = repr(value) if type(value) is float and 0 <= value < 1e6 else format_value(value)
        if labels:
            # The same series comes back at every scrape: its `name{labels} ` is made once. One
            # tuple of the names then the values (as many of each) keys it.
            key = (name, *labels, *labels.values())
            prefix = prefixes.get(key)
            if prefix is None:
                order = _label_order(tuple(labels))
                if order is None:
                    del out[mark:]
                    return False
                pairs = ",".join([f'{k}="{_escape_label_value(labels[k])}"' for k in order])
                prefix = f"{name}{{{pairs}}} "
                if len(prefixes) >= _CACHE_LIMIT * 5:
                    prefixes.clear()
                prefixes[key] = prefix
        else:
            prefix = f"{name} "
        line = f"{prefix}{text}\n" if timestamp is None else f"{prefix}{text} {int(float(timestamp) * 1000):d}\n"
        # A gauge's samples carry the family's own name object: the identity test spares them the rest.
        if name is not fname and name.endswith(_OPENMETRICS_ONLY) and name[len(fname):] in _OPENMETRICS_ONLY:
            if moved is None:
                moved = {}
            moved.setdefault(name[len(fname):], []).append(line)
        else:
            out.append(line)
    if moved:
        for extra, moved_lines in sorted(moved.items()):
            out.append(f"# HELP {fname}{extra} {header[1]}\n# TYPE {fname}{extra} gauge\n")
            out.extend(moved_lines)
    return True


def _render_escaped(family: Family, out: list[str]) -> None:
    """`family`, one of whose names needs escaping (rare: a UTF-8 name from a textfile), written
    the slow way, each name escaped as generate_latest does."""
    suffix, text_type = _TEXT_TYPES.get(family.type, ("", family.type))
    documentation = family.documentation.replace("\\", "\\\\").replace("\n", "\\n")
    name = _escape_name(family.name + suffix)
    out.append(f"# HELP {name} {documentation}\n# TYPE {name} {text_type}\n")
    moved: dict[str, list[str]] = {}
    for sample in family.samples:
        pairs = ",".join([f'{_escape_name(k, colon=False)}="{_escape_label_value(v)}"'
                          for k, v in sorted(sample.labels.items())])
        line = f"{_escape_name(sample.name)}{{{pairs}}}" if pairs else _escape_name(sample.name)
        line += f" {format_value(sample.value)}"
        if sample.timestamp is not None:
            line += f" {int(float(sample.timestamp) * 1000):d}"
        extra = sample.name[len(family.name):] if sample.name.startswith(family.name) else ""
        if extra in _OPENMETRICS_ONLY:
            moved.setdefault(extra, []).append(line + "\n")
        else:
            out.append(line + "\n")
    for extra, moved_lines in sorted(moved.items()):
        name = _escape_name(family.name + extra)
        out.append(f"# HELP {name} {documentation}\n# TYPE {name} gauge\n")
        out.extend(moved_lines)


def render_families(families: Iterable[Family]) -> bytes:
    """The text exposition format 0.0.4 of `families`, byte for byte what generate_latest writes."""
    out: list[str] = []
    for family in families:
        header = _header(family)
        if header is None or not _render_family(family, header, out):
            _render_escaped(family, out)
    return "".join(out).encode()


def render(registry: Source) -> bytes:
    """What `/metrics` serves: every family of `registry` in the text format (generate_latest's bytes)."""
    return render_families(registry.collect())
