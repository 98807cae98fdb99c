"""The fast parser (archiver.parse) gives what prometheus_client's parser gives (the reference,
support/reference_parse.py): the same Batch — samples in the same order, labels, values bit for
bit (±Inf, -0), timestamps, metadata — or the same failure reason, on every exposition the tests
serve, on real exporters' output, on hostile input and on random bodies. Where the reference
accepts what Prometheus refuses, the fast parser refuses it (MALFORMED), and each such case is
named here."""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.registry import CollectorRegistry
from support.exposition import MALFORMED_BODIES
from support.reference_parse import node_exporter_exposition, perfwatch_exposition, reference_parse_lines
from support.synthetic import NASTY_VALUES, escape, exposition, filler
from test_collectors_render import Fixed, tricky_families

from perfwatch.archiver import scrape
from perfwatch.archiver.parse import (
    LABEL_LIMIT,
    MALFORMED,
    SAMPLE_LIMIT,
    OpenMetricsError,
    ScrapeError,
    ScrapeLimits,
    iter_openmetrics,
    parse_lines,
)
from perfwatch.archiver.settings import DEFAULT_LIMITS

TARGET = {"job": "node", "instance": "host:9100"}
NO_LIMITS = ScrapeLimits()

Outcome = Any  # a failure's reason, or the batch as comparable data


def outcome(parse: Any, text: str | list[str], limits: ScrapeLimits = NO_LIMITS, *, openmetrics: bool = False,
            target: dict[str, str] = TARGET) -> Outcome:
    lines = text.splitlines(keepends=True) if isinstance(text, str) else text
    try:
        batch = parse(lines, target, 1_000, limits, openmetrics=openmetrics)
    except ScrapeError as err:
        return err.reason
    return ([(s.name, s.labels, s.value.hex(), s.timestamp_ms) for s in batch.samples],  # hex: -0.0, ±Inf
            [(m.name, m.kind, m.family_type, m.help, m.unit) for m in batch.metadata.values()],
            (batch.job, batch.instance, batch.scraped_at_ms))


def both(text: str | list[str], limits: ScrapeLimits = NO_LIMITS, *, openmetrics: bool = False,
         target: dict[str, str] = TARGET) -> tuple[Outcome, Outcome]:
    return (outcome(reference_parse_lines, text, limits, openmetrics=openmetrics, target=target),
            outcome(parse_lines, text, limits, openmetrics=openmetrics, target=target))


def assert_same(text: str | list[str], limits: ScrapeLimits = NO_LIMITS, *, openmetrics: bool = False) -> Outcome:
    reference, fast = both(text, limits, openmetrics=openmetrics)
    assert fast == reference
    return fast


# --- every exposition the tests have -----------------------------------------------------------

# The bodies tests/test_archiver_scrape.py parses, as it writes them.
SCRAPE_TEST_BODIES = [
    "# HELP a_total Things.\n# TYPE a_total counter\na_total 5\n"
    "# TYPE legacy counter\nlegacy 7\n"
    "# TYPE g gauge\ng 1.5\n"
    "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.5\nh_count 2\n"
    "# TYPE s summary\ns{quantile=\"0.9\"} 0.2\ns_sum 3\ns_count 4\n"
    "untyped_thing 3\n",
    "a NaN\nb +Inf\nc -Inf\nd 4 1700000000123\ne 1e-300\n",
    'm{job="theirs",instance="x",exported_job="old",zone=""} 1\n',
    "m{a=\"1\"} 1\nm{a=\"1\"} 2\n",
    *MALFORMED_BODIES,
    'a{x="é☃"} 1\nlong' + "x" * 500 + ' 2\n\n# TYPE b gauge\nb 3',
]

# What support/synthetic.py's SyntheticExporter serves, in each of its modes.
SYNTHETIC_BODIES = {
    **{f"scrape {n}": exposition(n) for n in range(8)},
    "reset every 3": exposition(5, reset_every=3),
    "wide": exposition(4, wide=300),
    "bad timestamp": exposition(2, bad_timestamp=True),
    "malformed": '# TYPE broken gauge\nbroken{unterminated="x} 1\n',
    "slow": "late 1\n",
    "huge": filler(20_000).decode(),
    "endless": "# TYPE synthetic_endless gauge\n" + "".join(
        f'synthetic_endless{{i="{i}",pad="{"x" * 2000}"}} 1\n' for i in range(25)),
    "trickle": "a 1\n" * 64,
    "webauth": "# TYPE up gauge\nup 1\n",
}


def rendered(openmetrics: bool) -> str:
    """test_collectors_render's tricky families (every type, odd label values and HELP), as
    prometheus_client writes them."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed(tricky_families()))
    return (generate_openmetrics if openmetrics else generate_latest)(registry).decode()


@pytest.mark.parametrize("text", SCRAPE_TEST_BODIES, ids=range(len(SCRAPE_TEST_BODIES)))
def test_the_scrape_tests_bodies_parse_as_the_reference_parses_them(text: str) -> None:
    assert_same(text)


@pytest.mark.parametrize("name", list(SYNTHETIC_BODIES))
def test_the_synthetic_exporters_bodies_parse_as_the_reference_parses_them(name: str) -> None:
    got = assert_same(SYNTHETIC_BODIES[name])
    if name.startswith("scrape"):
        nasty = {dict(labels)["value"] for sample, labels, *_ in got[0] if sample == "synthetic_nasty_info"}
        assert nasty == set(NASTY_VALUES)


def test_the_tricky_families_parse_as_the_reference_parses_them() -> None:
    assert_same(rendered(openmetrics=False))


@pytest.fixture(scope="module")
def perfwatch_body() -> str:
    return perfwatch_exposition()


@pytest.fixture(scope="module")
def node_body() -> str:
    body = node_exporter_exposition()
    assert body is not None, "prometheus-node-exporter is missing: scripts/test installs it"
    return body


def test_the_perfwatch_exporters_output_parses_as_the_reference_parses_it(perfwatch_body: str) -> None:
    got = assert_same(perfwatch_body)
    assert len(got[0]) > 100


def test_node_exporters_output_parses_as_the_reference_parses_it(node_body: str) -> None:
    got = assert_same(node_body)
    assert len(got[0]) > 100
    kinds = {name: (kind, family_type) for name, kind, family_type, *_ in got[1]}
    assert kinds["node_cpu_seconds_total"] == ("counter", "counter")
    assert "unknown" in {family_type for _, family_type in kinds.values()}  # node_exporter's untyped families


LIMITS = [
    ScrapeLimits(sample_limit=1), ScrapeLimits(sample_limit=7), ScrapeLimits(sample_limit=300),
    ScrapeLimits(label_limit=3), ScrapeLimits(label_limit=4), ScrapeLimits(label_name_length_limit=5),
    ScrapeLimits(label_value_length_limit=3), ScrapeLimits(label_value_length_limit=12),
    ScrapeLimits(sample_limit=20, label_limit=3, label_value_length_limit=10), DEFAULT_LIMITS,
]


@pytest.mark.parametrize("limits", LIMITS, ids=str)
def test_limits_fail_the_same_bodies_with_the_same_reason(limits: ScrapeLimits, perfwatch_body: str) -> None:
    bodies = [*SCRAPE_TEST_BODIES, *SYNTHETIC_BODIES.values(), rendered(openmetrics=False), perfwatch_body]
    reasons = set()
    for text in bodies:
        fast = assert_same(text, limits)
        reasons.add(fast if isinstance(fast, str) else "ok")
    if limits is not DEFAULT_LIMITS:
        assert reasons & {SAMPLE_LIMIT, LABEL_LIMIT}  # each of these limits is met somewhere


def test_a_limit_broken_in_a_family_counts_once_the_family_ends_as_in_the_reference() -> None:
    # The reference sees a family's samples only once the family is complete: a sample over a
    # label limit fails the scrape then, unless the family is malformed (or too long) first.
    long_value = 'm{a="' + "x" * 50 + '"} 1\n'
    limits = ScrapeLimits(label_value_length_limit=10, sample_limit=3)
    for text in (
        "# TYPE m gauge\n" + long_value + "m{a=\"b\"} 2\nm 1 x\n",  # malformed in the same family
        "# TYPE m gauge\n" + long_value + "# TYPE n gauge\nn 1 x\n",  # malformed in the next
        "# TYPE m gauge\n" + long_value + "m{a=\"b\"} 2\nm{a=\"c\"} 3\nm{a=\"d\"} 4\n",  # too many first
        long_value + "n 1 x\n",  # a sample of no family: a family of its own, over at once
        "# TYPE m bogus\n" + long_value + "# TYPE n gauge\n",  # the family's type first
    ):
        assert_same(text, limits)


# --- hostile input -----------------------------------------------------------------------------

LONG = "x" * 100_000
HOSTILE = {
    # escapes and quotes
    "escapes": 'm{a="x\\\\y\\"z\\nw"} 1\n',
    "unknown escape kept": 'm{a="t\\tab \\x"} 1\n',
    "escaped backslash before the closing quote": 'm{a="x\\\\"} 1\n',
    "quote inside a value": 'm{a="x"y"} 1\n',
    "comma and brace inside a value": 'm{a="x,}{=y",b="2"} 1\n',
    "label value only quotes": 'm{a=""""} 1\n',
    "label value not quoted": "m{a=x} 1\n",
    "single quotes": "m{a='x'} 1\n",
    "NUL in a value": 'm{a="x\x00y"} 1\n',
    "NUL in a name": "m\x00 1\n",
    "NUL line": "\x00\n",
    "unicode value": 'm{a="☃ 中文 🙂"} 1\n',
    "unicode label name": 'm{é="1"} 1\n',
    "unicode metric name": "mé 1\n",
    "unicode digits": "m ١٢\n",
    "unicode digits with labels": 'm{a="\\n"} ١٢\n',
    "non-breaking space before the value": "m \xa01\n",
    "non-breaking space as the separator": "m\xa01\n",
    "line separator inside a value": 'm{a="x\u2028y"} 1\n',
    # line ends, blank lines, comments
    "CRLF": "# HELP m h\r\n# TYPE m gauge\r\nm 1\r\nn{a=\"b\"} 2\r\n",
    "blank and whitespace lines": "\n   \n\t\nm 1\n\n",
    "indented sample": "   m 1\n",
    "comments": "# a comment\n#\n#nospace\n# HELPER m x\nm 1\n",
    "indented comment": "  # HELP m x\nm 1\n",
    "HELP alone": "# TYPE m gauge\nm 1\n# HELP\nm 2\n",
    "TYPE alone": "# TYPE\n",
    "HELP without text": "# HELP m\nm 1\n",
    "TYPE without a type": "# TYPE m\nm 1\n",
    "double spaces in comments": "#  HELP  m  the  help\n#\tTYPE\tm\tgauge\nm 1\n",
    "HELP with escapes": "# HELP m a\\nb \\\\ c \\\" d \\t e\\\nm 1\n",
    "HELP of an invalid name": "# HELP m-x help\nm 1\n",
    "HELP of a quoted name": '# HELP "m" help\nm 1\n',
    "HELP with an unterminated quote": '# HELP "m help\nm 1\n',
    "HELP between samples": "# TYPE m gauge\nm 1\n# HELP n other\nm 2\n",
    "TYPE after its samples": "# HELP m h\nm 1\n# TYPE m counter\n",
    "TYPE twice": "# TYPE m gauge\n# TYPE m counter\nm 1\n",
    "TYPE invalid": "# TYPE m bogus\nm 1\n",
    "TYPE invalid then valid": "# TYPE m bogus\n# TYPE m gauge\nm 1\n",
    "TYPE upper case": "# TYPE m COUNTER\nm 1\n",
    "TYPE with trailing words": "# TYPE m counter extra\nm 1\n",
    "TYPE info, stateset, gaugehistogram": "# TYPE i info\ni 1\n# TYPE s stateset\ns{s=\"a\"} 1\n"
                                           "# TYPE g gaugehistogram\ng 1\ng_bucket 2\n",
    "histogram samples not of the family": "# TYPE h histogram\nh 1\nh_bucket{le=\"1\"} 1\nh_created 5\n",
    "summary": "# TYPE s summary\ns{quantile=\"0.5\"} 1\ns_sum 2\ns_count 3\ns_bucket 4\n",
    # duplicates, timestamps, values
    "duplicate series": 'm{a="1"} 1\nm{a="1"} 2\n',
    "duplicate series written differently": 'm{b="2",a="1"} 1\nm{a="1",b="2",} 2\nm{ a = "1" , b="2"} 3\n',
    "duplicate through an empty value": 'm{a="1",b=""} 1\nm{a="1"} 2\n',
    "duplicate of a NaN": "m NaN\nm 1\n",
    "timestamps": "m 1 1700000000123\nn 2 -5\no 3 +5\np 4 0\n",
    "a huge timestamp": "m 1 " + "9" * 400 + "\n",
    "a huge timestamp with labels": 'm{a="b"} 1 ' + "9" * 30 + "\n",
    "infinities and NaNs": "a +Inf\nb -Inf\nc Inf\nd inf\ne infinity\nf NaN\ng nan\nh -NaN\ni +inf\n",
    "numbers": "a 1e-3\nb .5\nc +1\nd 5.\ne 1E5\nf -0\ng -0.0\nh 0\ni 0001\nj -1.5e+308\nk 4e-320\n",
    "negative zero with labels": 'm{a="b"} -0\nn{a="b"} -0.0\n',
    "hex": "m 0x10\n",
    "underscore": "m 1_000\n",
    "underscore with labels": 'm{a="b"} 1_000\n',
    "an integer too large for a float": "m 1" + "0" * 400 + "\n",
    "a float too large": "m 1e400\nn -1" + "0" * 400 + ".0\n",
    "value missing": "m\n",
    "value missing with labels": 'm{a="b"}\n',
    "tab separated": "m\t1\nn 1\t2\no{a=\"b\"}\t3\n",
    "many spaces": "m    1\nn{a=\"b\"}    2\n",
    "no space after the labels": 'm{a="b"}1\n',
    "space before the labels": 'm {a="b"} 1\n',
    # names and label names
    "invalid names": "1m 1\n",
    "dash in a name": "m-x 1\n",
    "dot in a name": "m.x 1\n",
    "colons in names": ":m 1\nm:x:y 2\n",
    "label name starting with a digit": 'm{1a="x"} 1\n',
    "dash in a label name": 'm{a-b="x"} 1\n',
    "colon in a label name": 'm{a:b="x"} 1\n',
    "reserved label name": 'm{__x="1"} 1\n',
    "__name__ beside a name": 'm{__name__="n"} 1\n',
    "__name__ instead of a name": '{__name__="n",a="b"} 1\n',
    "a quoted name": '{"n",a="b"} 1\n',
    "a quoted label name": 'm{"a"="b"} 1\n',
    "a quoted reserved label name": 'm{"__a"="b"} 1\n',
    "a quoted label name ending in a newline": 'm{"a\\n"="b"} 1\n',
    "a quoted name ending in a newline": '{"m\\n"} 1\n',
    "an empty name": '{__name__=""} 1\n',
    "no name": '{a="b"} 1\n',
    "label twice": 'm{a="1",a="2"} 1\n',
    "target labels clash": 'm{job="x",instance="",exported_job="y"} 1\n',
    # label sets
    "trailing comma": 'm{a="b",} 1\n',
    "leading comma": 'm{,a="b"} 1\n',
    "only a comma": "m{,} 1\n",
    "empty label set": "m{} 1\n",
    "spaces in a label set": 'm{ a = "b" , c="d" } 1\n',
    "double comma": 'm{a="b",,c="d"} 1\n',
    "missing comma": 'm{a="b"c="d"} 1\n',
    "missing closing brace": 'm{a="b" 1\n',
    "missing opening brace": 'ma="b"} 1\n',
    "two label sets": 'm{a="b"}{c="d"} 1\n',
    # long lines
    "a long label value": 'm{a="' + LONG + '"} 1\n',
    "a long name": "m" + LONG + " 1\n",
    "a long HELP": "# HELP m " + LONG + "\nm 1\n",
    "many labels": "m{" + ",".join(f'l{i}="{i}"' for i in range(500)) + "} 1\n",
    "a long line of spaces": "m" + " " * 50_000 + "1\n",
    "a long line of backslashes": 'm{a="' + "\\\\" * 20_000 + '"} 1\n',
    "a long line of quotes": "m{a=" + '"' * 20_001 + "} 1\n",
    # counters: a counter is stored under the name it is exposed with
    "counter without _total": "# TYPE foo counter\nfoo 1\n",
    "counter with _total": "# TYPE foo_total counter\nfoo_total 1\n",
    "counter declared without _total, exposed with it": "# TYPE foo counter\nfoo_total 1\n",
}

# Where the reference accepts what Prometheus refuses: the fast parser says MALFORMED.
REFUSED = {
    "three fields": "m 1 2 3\n",
    "three fields with labels": 'm{a="b"} 1 2 3\n',
    "a timestamp with a fraction": "m 1 1.5\n",
    "a timestamp with an exponent": "m 1 1e3\n",
    "an exemplar in the text format": 'm{a="b"} 1 # {trace="x"} 2\n',
    "an empty term": 'm{a=,b="c"} 1\n',
    "a blank term": 'm{a="b", ,c="d"} 1\n',
    "a name only, read as a value": "inf\n",
    "an integer of more than 4,300 digits (the reference: +Inf)": "m " + "9" * 5000 + "\n",
    "NaN of an empty name after a bare HELP": "# TYPE x gauge\nx 1\n# HELP\n{__name__=\"\"} 1\n",
}

# Where the reference renames a sample (prometheus_client's parser appends `_total` to a counter's
# samples, and the reference takes it off again only by name): the fast parser keeps the name the
# target exposed, as Prometheus does.
RENAMED = {
    "a counter and its _total both declared": (
        "# TYPE foo counter\nfoo 1\n# TYPE foo_total counter\nfoo_total 2\n", ["foo", "foo_total"]),
    "the same, the other way round": (
        "# TYPE foo_total counter\nfoo_total 2\n# TYPE foo counter\nfoo 1\n", ["foo_total", "foo"]),
    "a counter whose TYPE line quotes its name": ('# TYPE "foo" counter\nfoo 1\n', ["foo"]),
    "a TYPE line whose # is not alone": ("#x TYPE foo counter\nfoo 1\n", ["foo"]),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_input_parses_as_the_reference_parses_it(name: str) -> None:
    assert_same(HOSTILE[name])


@pytest.mark.parametrize("name", list(REFUSED))
def test_what_prometheus_refuses_is_malformed_though_the_reference_reads_it(name: str) -> None:
    reference, fast = both(REFUSED[name])
    assert fast == MALFORMED
    assert reference != MALFORMED


@pytest.mark.parametrize("name", list(RENAMED))
def test_a_sample_keeps_the_name_it_was_exposed_with(name: str) -> None:
    text, names = RENAMED[name]
    reference, fast = both(text)
    assert [sample[0] for sample in fast[0]] == names
    assert reference != fast  # the reference's renaming, pinned: this list is where the two differ
    assert all(m[1:] == ("counter", "counter", "", "") for m in fast[1])


def test_hostile_bodies_and_lines_never_escape_as_another_error_nor_hang() -> None:
    rng = random.Random(7)
    alphabet = ['"', "\\", "{", "}", "=", ",", " ", "\t", "#", "\n", "\r", "\x00", "a", "_", "1", ".", "e", "+",
                "-", "é", "\u2028", "\xa0", "HELP ", "TYPE ", "NaN", "Inf"]
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60)))
        reference, fast = both(text)
        assert fast in (reference, MALFORMED), repr(text)
    for text in (" " * 1_000_000 + "x", '"' * 1_000_000, "\\" * 1_000_000 + '"', "{" * 1_000_000,
                 'm{a="' + "\\\"" * 300_000 + '"} 1', "# HELP " + '"' * 500_000 + " x",
                 "m{" + "a=\"b\"," * 200_000 + "} 1", "m{" + " " * 1_000_000 + "} 1"):
        started = time.process_time()
        got = outcome(parse_lines, [text])
        assert time.process_time() - started < 5, text[:20]
        assert got == MALFORMED or isinstance(got, tuple)


# --- random bodies -----------------------------------------------------------------------------

LABEL_NAMES = ["a", "b", "code", "le", "quantile", "job", "instance", "exported_job", "_x", "zone", "x_1"]
LABEL_VALUES = ["", "0", "1", "+Inf", "0.5", "say \"hi\"", "back\\slash", "two\nlines", "ünï ☃ 🙂", "{}=,",
                "'; DROP TABLE x; --", "a b", "x" * 40]
HELP_TEXTS = ["Help.", "a\\\\b \\n c \\\" d", "ünï", ""]
VALUES = ["0", "1", "-1", "1.5", "-0", "-0.0", "1e-3", ".5", "+1", "5.", "1E5", "+Inf", "-Inf", "NaN", "nan",
          "123456789012345678901234567890", "1.7976931348623157e308", "4.9e-324", "0.1", "3.14159"]


def random_label_set(rng: random.Random) -> str:
    names = rng.sample(LABEL_NAMES, rng.randint(0, 3))
    terms = [f'{n}="{escape(rng.choice(LABEL_VALUES))}"' for n in names]
    if not terms and rng.random() < 0.5:
        return ""
    if rng.random() < 0.1:  # what prometheus_client also reads: spaces, a trailing comma
        return "{ " + " , ".join(t.replace("=", " = ") for t in terms) + " }"
    return "{" + ",".join(terms) + ("," if terms and rng.random() < 0.1 else "") + "}"


def random_exposition(rng: random.Random) -> str:
    lines: list[str] = []
    for f in range(rng.randint(1, 8)):
        family = rng.choice(["fam", "node_thing", "x", "job"]) + str(f)
        kind = rng.choice(["counter", "gauge", "histogram", "summary", "untyped", None])
        if rng.random() < 0.6:
            lines.append(f"# HELP {family} {rng.choice(HELP_TEXTS)}")
        if kind is not None:
            lines.append(f"# TYPE {family} {kind}")
        names = {"counter": [family, family + "_total"],
                 "histogram": [family + s for s in ("_bucket", "_sum", "_count")],
                 "summary": [family, family + "_sum", family + "_count"]}.get(kind or "", [family])
        if kind == "counter" and rng.random() < 0.5:
            lines[-1] = f"# TYPE {family}_total counter"
            names = [family + "_total"]
        for _ in range(rng.randint(0, 6)):
            name = rng.choice(names) if rng.random() < 0.9 else "stray" + str(rng.randint(0, 2))
            line = f"{name}{random_label_set(rng)} {rng.choice(VALUES)}"
            if rng.random() < 0.1:
                line += f" {rng.choice(['1700000000123', '-5', '0'])}"
            lines.append(line)
        if rng.random() < 0.1:
            lines.append(rng.choice(["", "# a comment", "   "]))
    end = rng.choice(["\n", "\n", "\r\n"])
    return end.join(lines) + end


def mutate(rng: random.Random, text: str) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(chars) + 1)
        what = rng.random()
        if what < 0.4 and chars:
            del chars[min(i, len(chars) - 1)]
        elif what < 0.7:
            chars.insert(i, rng.choice('"\\{}=, \t#\n_.e+-x1é'))
        elif chars:
            chars[min(i, len(chars) - 1)] = rng.choice('"\\{}=, \t#\n_.e+-x1é')
    return "".join(chars)


def test_random_bodies_parse_as_the_reference_parses_them() -> None:
    rng = random.Random(20261201)
    target = {"job": "j", "instance": "i:1", "zone": "eu"}
    for _ in range(400):
        text = random_exposition(rng)
        limits = rng.choice([NO_LIMITS, NO_LIMITS, ScrapeLimits(sample_limit=rng.randint(1, 20)),
                             ScrapeLimits(label_limit=rng.randint(3, 6)),
                             ScrapeLimits(label_value_length_limit=rng.randint(1, 20))])
        reference, fast = both(text, limits, target=target)
        assert fast == reference, text


def test_randomly_broken_bodies_parse_as_the_reference_parses_them_or_are_malformed() -> None:
    rng = random.Random(5)
    for _ in range(400):
        text = mutate(rng, random_exposition(rng))
        reference, fast = both(text)
        assert fast in (reference, MALFORMED), text


# --- OpenMetrics -------------------------------------------------------------------------------

OPENMETRICS = {
    "counter with _created": "# HELP c Things.\n# TYPE c counter\nc_total{a=\"1\"} 3 1700000000\n"
                             "c_created{a=\"1\"} 1699999000.5 1700000000\n# EOF\n",
    "unit, timestamps in seconds": "# TYPE t_seconds gauge\n# UNIT t_seconds seconds\n"
                                   "t_seconds 1.5 1700000000.123\n"
                                   "t_seconds{a=\"b\"} 2 1700000000.123456789123\n# EOF\n",
    "info": '# TYPE i info\n# HELP i Host.\ni_info{os="debian",name="a\\"b"} 1\n# EOF\n',
    "stateset": '# TYPE s stateset\ns{s="on"} 1\ns{s="off"} 0\n# EOF\n',
    "gaugehistogram": '# TYPE g gaugehistogram\ng_bucket{le="1.0"} 2\ng_bucket{le="+Inf"} 5\ng_gcount 5\n'
                      "g_gsum 7\n# EOF\n",
    "histogram": '# TYPE h histogram\nh_bucket{le="0.1"} 1\nh_bucket{le="+Inf"} 3\nh_count 3\nh_sum 0.5\n'
                 "h_created 1700000000\n# EOF\n",
    "summary": '# TYPE s summary\ns{quantile="0.5"} 1.5\ns_sum 3\ns_count 2\n# EOF\n',
    "unknown": "# TYPE u unknown\nu 1\nv{a=\"1\"} 2\n# EOF\n",
    "exemplars": '# TYPE c counter\nc_total 3 # {trace_id="abc"} 1 1700000000.5\n# TYPE h histogram\n'
                 'h_bucket{le="+Inf"} 3 # {t="x"} 0.5\nh_count 3\nh_sum 1\n# EOF\n',
    "only EOF": "# EOF\n",
    "EOF without a newline": "m 1\n# EOF",
    "NaN and infinities": "a NaN\nb +Inf\nc -Inf\n# EOF\n",
    "escapes": 'm{a="x\\\\y\\"z\\nw"} 1\n# HELP n a\\nb \\" \\\\ \\t\n# TYPE n gauge\nn 2\n# EOF\n',
    "duplicates": 'm{a="1"} 1\nm{a="1"} 2\n# EOF\n',
    "a sample repeated at the same time in a group": "m 1 10\nm 2 10\n# EOF\n",
    # malformed
    "no EOF": "m 1\n",
    "after EOF": "m 1\n# EOF\nm 2\n",
    "blank line": "m 1\n\n# EOF\n",
    "CRLF": "m 1\r\n# EOF\r\n",
    "a comment": "# a comment here\nm 1\n# EOF\n",
    "metadata after samples": "# TYPE m gauge\nm 1\n# HELP m late\n# EOF\n",
    "two HELP": "# HELP m a\n# HELP m b\nm 1\n# EOF\n",
    "two TYPE": "# TYPE m gauge\n# TYPE m counter\n# EOF\n",
    "two UNIT": "# UNIT m_s s\n# UNIT m_s s\n# EOF\n",
    "untyped": "# TYPE m untyped\nm 1\n# EOF\n",
    "invalid type": "# TYPE m bogus\nm 1\n# EOF\n",
    "unit not in the name": "# TYPE m gauge\n# UNIT m seconds\nm 1\n# EOF\n",
    "unit of an info": "# TYPE m_s info\n# UNIT m_s s\n# EOF\n",
    "counter sample without _total": "# TYPE c counter\nc 1\n# EOF\n",
    "clashing names": "# TYPE c counter\nc_total 1\n# TYPE c_total gauge\nc_total 2\n# EOF\n",
    "stateset without its label": '# TYPE s stateset\ns{a="on"} 1\n# EOF\n',
    "stateset value": '# TYPE s stateset\ns{s="on"} 2\n# EOF\n',
    "info value": "# TYPE i info\ni_info 2\n# EOF\n",
    "+Inf bucket missing": '# TYPE h histogram\nh_bucket{le="1"} 1\n# EOF\n',
    "buckets out of order": '# TYPE h histogram\nh_bucket{le="2"} 1\nh_bucket{le="1"} 1\n'
                            'h_bucket{le="+Inf"} 1\n# EOF\n',
    "bucket values going down": '# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\n# EOF\n',
    "count not the +Inf bucket": '# TYPE h histogram\nh_bucket{le="+Inf"} 1\nh_count 2\nh_sum 1\n# EOF\n',
    "sum without count": '# TYPE h histogram\nh_bucket{le="+Inf"} 1\nh_sum 1\n# EOF\n',
    "le NaN": '# TYPE h histogram\nh_bucket{le="NaN"} 1\n# EOF\n',
    "le +inf": '# TYPE h histogram\nh_bucket{le="+inf"} 1\n# EOF\n',
    "le missing": "# TYPE h histogram\nh_bucket 1\n# EOF\n",
    "bucket not an integer": '# TYPE h histogram\nh_bucket{le="+Inf"} 1.5\n# EOF\n',
    "negative count": '# TYPE h histogram\nh_bucket{le="+Inf"} 1\nh_count -1\nh_sum 1\n# EOF\n',
    "NaN sum": '# TYPE h histogram\nh_bucket{le="+Inf"} 1\nh_count 1\nh_sum NaN\n# EOF\n',
    "quantile out of range": '# TYPE s summary\ns{quantile="1.5"} 1\n# EOF\n',
    "quantile missing": "# TYPE s summary\ns 1\n# EOF\n",
    "negative quantile value": '# TYPE s summary\ns{quantile="0.5"} -1\n# EOF\n',
    "NaN counter": "# TYPE c counter\nc_total NaN\n# EOF\n",
    "negative counter": "# TYPE c counter\nc_total -1\n# EOF\n",
    "exemplar on a gauge": '# TYPE g gauge\ng 1 # {a="b"} 1\n# EOF\n',
    "exemplar too long": '# TYPE c counter\nc_total 1 # {a="' + "x" * 130 + '"} 1\n# EOF\n',
    "exemplar without a value": '# TYPE c counter\nc_total 1 # {a="b"}\n# EOF\n',
    "groups interleaved": 'm{a="1"} 1\nm{a="2"} 1\nm{a="1"} 2\n# EOF\n',
    "timestamps going backwards": "m 1 20\nm 2 10\n# EOF\n",
    "timestamps mixed": "m 1 20\nm 2\n# EOF\n",
    "timestamp with an exponent": "m 1 1e3\nn 1 1.5e3\n# EOF\n",
    "timestamp without its integer part": "m 1 .5\nn 1 -.5\n# EOF\n",
    "timestamps as a decimal and as a float in a group": "m 1 1.5\nm 2 2e0\n# EOF\n",
    "a TYPE line whose # is not alone": "#x TYPE m gauge\nm 1\n# EOF\n",
    "timestamp NaN": "m 1 NaN\n# EOF\n",
    "timestamp with a trailing dot": "m 1 10.\n# EOF\n",
    "negative timestamps": "m 1 -1.5\nn 1 -2\n# EOF\n",
    "value with an underscore": "m 1_0\n# EOF\n",
    "trailing comma": 'm{a="b",} 1\n# EOF\n',
    "leading comma": 'm{,a="b"} 1\n# EOF\n',
    "two spaces": "m  1\n# EOF\n",
    "no space after the labels": 'm{a="b"}1\n# EOF\n',
    "trailing space": "m 1 \n# EOF\n",
    "reserved label": 'm{__a="b"} 1\n# EOF\n',
    "HELP with no text": "# HELP m\n# EOF\n",
    "HELP with an empty text": "# HELP m \nm 1\n# EOF\n",
    "a quoted name": '# TYPE "m" gauge\nm 1\n# EOF\n',
}

OPENMETRICS_REFUSED = {
    "a fractional timestamp above -1 s (the reference loses its sign)": "m 1 -0.5\n# EOF\n",
    "nine decimals of a timestamp, then anything": "m 1 1.123456789xyz\n# EOF\n",
    "one character, not a space, after the labels": 'm{a="b"}x1\n# EOF\n',
}


@pytest.mark.parametrize("name", list(OPENMETRICS))
def test_openmetrics_parses_as_the_reference_parses_it(name: str) -> None:
    assert_same(OPENMETRICS[name], openmetrics=True)


@pytest.mark.parametrize("name", list(OPENMETRICS_REFUSED))
def test_openmetrics_that_the_reference_misreads_is_malformed(name: str) -> None:
    reference, fast = both(OPENMETRICS_REFUSED[name], openmetrics=True)
    assert fast == MALFORMED
    assert reference != MALFORMED


def test_the_tricky_families_in_openmetrics_parse_as_the_reference_parses_them() -> None:
    text = rendered(openmetrics=True)
    assert "# EOF" in text and "_created" in text
    got = assert_same(text, openmetrics=True)
    assert {family_type for _, _, family_type, *_ in got[1]} >= {"counter", "info", "stateset", "gaugehistogram"}


def test_the_perfwatch_exporters_output_in_openmetrics_parses_as_the_reference_parses_it(perfwatch_body: str) -> None:
    from perfwatch.exporter.collect import CollectorSet, build_registry
    from perfwatch.exporter.collectors import REGISTRY
    from perfwatch.exporter.settings import load_settings

    settings, collectors = load_settings(None)
    collector_set = CollectorSet([REGISTRY[n](e.options, settings.paths) for n, e in collectors.items() if e.enabled])
    try:
        registry = build_registry(collector_set, version="1.2.3")
        text = generate_openmetrics(registry).decode()  # type: ignore[no-untyped-call]
    finally:
        collector_set.close()
    got = assert_same(text, openmetrics=True)
    assert len(got[0]) > 100


def random_openmetrics(rng: random.Random) -> str:
    lines: list[str] = []
    for f in range(rng.randint(1, 6)):
        family = f"om{f}"
        kind = rng.choice(["counter", "gauge", "histogram", "gaugehistogram", "summary", "info", "stateset",
                           "unknown"])
        unit = rng.random() < 0.2 and kind not in ("info", "stateset")
        if unit:
            family += "_seconds"
        lines.append(f"# TYPE {family} {kind}")
        if rng.random() < 0.5:
            lines.append(f"# HELP {family} {rng.choice(HELP_TEXTS)}")
        if unit:
            lines.append(f"# UNIT {family} seconds")
        for g in range(rng.randint(0, 3)):
            labels = f'g="{g}"' + (f',v="{escape(rng.choice(LABEL_VALUES))}"' if rng.random() < 0.5 else "")
            ts = rng.choice(["", " 1700000000", " 1700000000.25", " 1700000000.123456789"])
            if kind == "counter":
                exemplar = ' # {trace="t"} 1' if rng.random() < 0.2 else ""
                lines.append(f"{family}_total{{{labels}}} {rng.choice(['0', '1', '2.5', '+Inf'])}{ts}{exemplar}")
                if rng.random() < 0.5:
                    lines.append(f"{family}_created{{{labels}}} 1699999999.5{ts}")
            elif kind in ("histogram", "gaugehistogram"):
                total = 0
                for le in ("0.1", "1.0", "+Inf"):
                    total += rng.randint(0, 3)
                    lines.append(f'{family}_bucket{{{labels},le="{le}"}} {total}{ts}')
                prefix = "_g" if kind == "gaugehistogram" else "_"
                lines.append(f"{family}{prefix}count{{{labels}}} {total}{ts}")
                lines.append(f"{family}{prefix}sum{{{labels}}} {rng.choice(['0', '1.5'])}{ts}")
            elif kind == "summary":
                lines.append(f'{family}{{{labels},quantile="0.5"}} {rng.choice(["0", "1.5", "NaN"])}{ts}')
                lines.append(f"{family}_count{{{labels}}} 3{ts}")
                lines.append(f"{family}_sum{{{labels}}} 4.5{ts}")
            elif kind == "info":
                lines.append(f"{family}_info{{{labels}}} 1{ts}")
            elif kind == "stateset":
                lines.append(f'{family}{{{labels},{family}="a"}} {rng.choice(["0", "1"])}{ts}')
            else:
                lines.append(f"{family}{{{labels}}} {rng.choice(VALUES)}{ts}")
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def test_random_openmetrics_parses_as_the_reference_parses_it() -> None:
    rng = random.Random(11)
    for _ in range(300):
        text = random_openmetrics(rng)
        limits = rng.choice([NO_LIMITS, ScrapeLimits(sample_limit=rng.randint(1, 10)),
                             ScrapeLimits(label_value_length_limit=rng.randint(1, 20))])
        reference, fast = both(text, limits, openmetrics=True)
        assert fast == reference, text
        broken = mutate(rng, text)
        reference, fast = both(broken, openmetrics=True)
        assert fast in (reference, MALFORMED), broken


# --- iter_openmetrics: the backfill's stream ---------------------------------------------------

def reference_stream(text: str) -> list[tuple[Any, ...]]:
    """prometheus_client's OpenMetrics samples, as iter_openmetrics yields them."""
    out = []
    for family in openmetrics_families(text):  # type: ignore[no-untyped-call]
        for s in family.samples:
            ts = s.timestamp
            if ts is None or isinstance(ts, float):
                ms = None if ts is None else int(ts * 1000)
            else:
                ms = int(ts.sec) * 1000 + int(ts.nsec) // 1_000_000
            out.append((s.name, tuple(sorted(s.labels.items())), float(s.value).hex(), ms,
                        family.type, family.documentation, family.unit))
    return out


def stream(text: str | Iterable[str]) -> list[tuple[Any, ...]]:
    lines = text.splitlines(keepends=True) if isinstance(text, str) else text
    return [(name, labels, value.hex(), ms, meta.family_type, meta.help, meta.unit)
            for meta, name, labels, value, ms in iter_openmetrics(lines)]


def test_iter_openmetrics_yields_the_samples_prometheus_client_reads() -> None:
    rng = random.Random(3)
    # Not where prometheus_client drops a sample repeated at the same time (iter_openmetrics keeps it)
    texts = [t for name, t in OPENMETRICS.items() if name not in ("duplicates", "a sample repeated at the same "
                                                                  "time in a group")] + [rendered(openmetrics=True)]
    texts += [random_openmetrics(rng) for _ in range(100)]
    compared = 0
    for text in texts:
        try:
            expected = reference_stream(text)
        except Exception:
            continue  # malformed: below
        assert stream(text) == expected, text
        compared += 1
    assert compared > 100


def test_iter_openmetrics_reads_a_histograms_history_which_prometheus_client_cannot() -> None:
    # A backfill file holds many timestamps of each group; prometheus_client keeps of the second
    # only the first bucket (and fails on a missing +Inf bucket).
    lines = ["# TYPE h histogram\n"]
    for t in range(3):
        lines += [f'h_bucket{{le="1"}} {t} {100 + t}.5\n', f'h_bucket{{le="+Inf"}} {2 * t} {100 + t}.5\n',
                  f"h_count {2 * t} {100 + t}.5\n", f"h_sum {t} {100 + t}.5\n"]
    lines.append("# EOF\n")
    with pytest.raises(ValueError, match="Inf bucket missing"):
        reference_stream("".join(lines))
    got = stream(lines)
    assert [(name, ms) for name, _, _, ms, *_ in got] == [
        (name, 100_500 + 1000 * t) for t in range(3) for name in ("h_bucket", "h_bucket", "h_count", "h_sum")]


@pytest.mark.parametrize(("text", "line"), [
    ("m 1\nm{ 2\n# EOF\n", 2),
    ("# TYPE m gauge\nm 1\n\n# EOF\n", 3),
    ("# TYPE c counter\nc_total -1\n# EOF\n", 2),
    ("m 1\n# EOF\nm 2\n", 3),
])
def test_iter_openmetrics_names_the_line_of_malformed_input(text: str, line: int) -> None:
    with pytest.raises(OpenMetricsError, match=f"^line {line}: ") as err:
        stream(text)
    assert err.value.line == line and isinstance(err.value, ValueError)


def test_iter_openmetrics_without_eof_fails_at_the_end() -> None:
    with pytest.raises(OpenMetricsError, match="EOF") as err:
        stream("m 1\nm 2\n")
    assert err.value.line == 3


def test_iter_openmetrics_streams_a_sample_at_a_time() -> None:
    read = 0

    def endless() -> Iterator[str]:
        nonlocal read
        yield "# TYPE big gauge\n"
        for i in itertools.count():
            read += 1
            yield f'big{{i="{i}"}} {i} 1700000000.{i % 1000:03d}\n'

    samples = iter_openmetrics(endless())
    first = [next(samples) for _ in range(3)]
    assert read <= 4  # a family of a million samples is not read whole first
    assert [(name, labels, value, ms) for _, name, labels, value, ms in first] == [
        ("big", (("i", str(i)),), float(i), 1_700_000_000_000 + i) for i in range(3)]
    assert first[0][0].family_type == "gauge" and first[0][0].kind == "gauge"


def test_parse_lines_stops_at_sample_limit_while_reading() -> None:
    def endless() -> Iterator[str]:
        yield "# TYPE big gauge\n"
        for i in itertools.count():
            yield f'big{{i="{i}"}} 1\n'

    for openmetrics in (False, True):
        with pytest.raises(ScrapeError) as err:
            parse_lines(endless(), TARGET, 1_000, ScrapeLimits(sample_limit=1000), openmetrics=openmetrics)
        assert err.value.reason == SAMPLE_LIMIT


def test_scrape_parses_with_the_fast_parser() -> None:
    assert scrape.parse_lines is parse_lines
    batch = scrape.parse_exposition('m{a="b"} 1\n', TARGET, 5)
    assert [(s.name, s.labels, s.value, s.timestamp_ms) for s in batch.samples] == [
        ("m", (("a", "b"), ("instance", "host:9100"), ("job", "node")), 1.0, 5)]
