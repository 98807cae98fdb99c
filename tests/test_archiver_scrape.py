"""Scraping with Prometheus' semantics: parsing, labels, kinds, and every way a target fails."""

from __future__ import annotations

import datetime as dt
import math
import socket
import threading
import time

import pytest
from support.exposition import MALFORMED_BODIES
from support.procs import free_port
from support.synthetic import NASTY_VALUES, SyntheticExporter, counter_value, exposition, gauge_value

from perfwatch.archiver.scrape import (
    HTTP_STATUS,
    MALFORMED,
    TIMEOUT,
    UNREACHABLE,
    ScrapeError,
    Target,
    TargetScraper,
    _body_lines,
    default_instance,
    parse_exposition,
    relabel,
)
from perfwatch.archiver.service import first_scrape

TARGET_LABELS = {"job": "node", "instance": "h:9"}


def by_key(text: str, labels: dict[str, str] | None = None) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    batch = parse_exposition(text, labels or TARGET_LABELS, 1_000)
    return {(s.name, frozenset(s.labels)): s.value for s in batch.samples}


def test_counter_names_kinds_and_help() -> None:
    batch = parse_exposition(
        "# HELP a_total Things.\n# TYPE a_total counter\na_total 5\n"
        "# TYPE legacy counter\nlegacy 7\n"  # a counter without _total: stored as exposed, like Prometheus
        "# TYPE g gauge\ng 1.5\n"
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.5\nh_count 2\n"
        "# TYPE s summary\ns{quantile=\"0.9\"} 0.2\ns_sum 3\ns_count 4\n"
        "untyped_thing 3\n",
        TARGET_LABELS, 1_000)
    kinds = {name: (meta.kind, meta.family_type) for name, meta in batch.metadata.items()}
    assert kinds == {
        "a_total": ("counter", "counter"), "legacy": ("counter", "counter"), "g": ("gauge", "gauge"),
        "h_bucket": ("counter", "histogram"), "h_sum": ("counter", "histogram"), "h_count": ("counter", "histogram"),
        "s": ("gauge", "summary"), "s_sum": ("counter", "summary"), "s_count": ("counter", "summary"),
        "untyped_thing": ("untyped", "unknown"),  # counter maths, as PromQL rate() gives it
    }
    assert batch.metadata["a_total"].help == "Things."
    assert {s.name for s in batch.samples} == set(kinds)
    assert (batch.job, batch.instance, batch.scraped_at_ms) == ("node", "h:9", 1_000)


def test_nan_never_archived_inf_kept_and_exposed_timestamps_used() -> None:
    batch = parse_exposition("a NaN\nb +Inf\nc -Inf\nd 4 1700000000123\ne 1e-300\n", TARGET_LABELS, 1_000)
    got = {s.name: (s.value, s.timestamp_ms) for s in batch.samples}
    assert got == {"b": (math.inf, 1_000), "c": (-math.inf, 1_000), "d": (4.0, 1_700_000_000_123),
                   "e": (1e-300, 1_000)}
    assert "a" not in batch.metadata


def test_target_labels_win_and_clashing_ones_become_exported() -> None:
    got = by_key('m{job="theirs",instance="x",exported_job="old",zone=""} 1\n',
                 {"job": "node", "instance": "h:9", "zone": "eu"})
    assert got == {("m", frozenset({("job", "node"), ("instance", "h:9"), ("zone", "eu"),
                                   ("exported_job", "old"), ("exported_exported_job", "theirs"),
                                   ("exported_instance", "x")})): 1.0}


def test_empty_label_values_mean_absent() -> None:
    assert relabel({"a": "", "b": "1"}, {"job": "j", "instance": ""}) == (("b", "1"), ("job", "j"))


def test_label_values_with_quotes_backslashes_newlines_unicode_sql() -> None:
    batch = parse_exposition(exposition(3), TARGET_LABELS, 1_000)
    values = {dict(s.labels)["value"] for s in batch.samples if s.name == "synthetic_nasty_info"}
    assert values == set(NASTY_VALUES)


def test_duplicate_series_keep_the_first() -> None:
    got = by_key("m{a=\"1\"} 1\nm{a=\"1\"} 2\n")
    assert list(got.values()) == [1.0]


@pytest.mark.parametrize("text", MALFORMED_BODIES)
def test_malformed_exposition_raises_malformed(text: str) -> None:
    with pytest.raises(ScrapeError) as err:
        parse_exposition(text, TARGET_LABELS, 1_000)
    assert err.value.reason == MALFORMED


def test_default_instance_is_host_port() -> None:
    assert default_instance("http://example.org/metrics") == "example.org:80"
    assert default_instance("https://example.org/metrics") == "example.org:443"
    assert default_instance("http://[::1]:9/x") == "[::1]:9"


def target_for(url: str, timeout: float = 1.0) -> Target:
    return Target(url=url, job="synthetic", instance=default_instance(url), labels=(("site", "lab"),),
                  interval=1.0, timeout=timeout)


def test_scrape_real_http_target() -> None:
    with SyntheticExporter(reset_every=5) as exporter:
        scraper = TargetScraper(target_for(exporter.url))
        before = time.time()
        for n in range(7):
            batch = scraper.scrape()
            values = {(s.name, dict(s.labels).get("code")): s.value for s in batch.samples}
            assert values[("synthetic_requests_total", "200")] == counter_value(n, 5)
            assert values[("synthetic_temperature_celsius", None)] == gauge_value(n)
        scraper.close()
    assert before * 1000 - 1 <= batch.scraped_at_ms <= time.time() * 1000
    sample = batch.samples[0]
    assert dict(sample.labels)["job"] == "synthetic" and dict(sample.labels)["site"] == "lab"
    assert dict(sample.labels)["instance"] == exporter.instance
    assert all(s.timestamp_ms == batch.scraped_at_ms for s in batch.samples)


@pytest.mark.parametrize(("mode", "reason", "detail"), [
    ("malformed", MALFORMED, "cannot parse"),
    ("error", HTTP_STATUS, "500"),
    ("slow", TIMEOUT, "0.3s"),
])
def test_failing_target_reasons(mode: str, reason: str, detail: str) -> None:
    with SyntheticExporter(slow_seconds=2.0) as exporter:
        exporter.mode = mode
        scraper = TargetScraper(target_for(exporter.url, timeout=0.3))
        started = time.monotonic()
        with pytest.raises(ScrapeError) as err:
            scraper.scrape()
        assert time.monotonic() - started < 1.5  # the timeout, not the target, decides
        assert err.value.reason == reason and detail in err.value.message
        exporter.mode = "ok"  # and the next scrape works again
        assert scraper.scrape().samples


def test_target_down_is_unreachable() -> None:
    scraper = TargetScraper(target_for(f"http://127.0.0.1:{free_port()}/metrics"))
    with pytest.raises(ScrapeError) as err:
        scraper.scrape()
    assert err.value.reason == UNREACHABLE and err.value.message == "connection refused"


def test_body_trickling_past_the_timeout_is_a_timeout() -> None:
    # A target that answers at once but sends its body slowly: the total time counts.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]

    def trickle() -> None:
        conn, _ = server.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100000\r\n\r\n")
        try:
            for _ in range(40):
                conn.sendall(b"a 1\n" * 64)
                time.sleep(0.05)  # the trickle's pace: 40 chunks over 2 s
        except OSError:
            pass
        conn.close()

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    scraper = TargetScraper(target_for(f"http://127.0.0.1:{port}/metrics", timeout=0.5))
    started = time.monotonic()
    with pytest.raises(ScrapeError) as err:
        scraper.scrape()
    assert err.value.reason == TIMEOUT and "body not complete" in err.value.message
    assert time.monotonic() - started < 1.5  # the target would take 2 s
    server.close()


def test_targets_are_spread_over_the_interval_each_at_its_own_offset() -> None:
    """As Prometheus spreads them: scraped all at the same instant, a crash lost a scrape of most
    targets at once (the soak benchmark's finding) and the CPU came in bursts."""
    now = dt.datetime(2026, 12, 1, 12, 0, 0, 250_000, tzinfo=dt.UTC)
    targets = [Target(url=f"http://10.0.0.{i}:9100/metrics", job="node", instance=f"10.0.0.{i}:9100", interval=10.0)
               for i in range(20)]
    firsts = [first_scrape(t, now) for t in targets]
    assert all(now <= f < now + dt.timedelta(seconds=10) for f in firsts)
    offsets = sorted(f.timestamp() % 10 for f in firsts)
    assert len(set(offsets)) == 20 and offsets[-1] - offsets[0] > 5  # spread, not bunched
    assert [first_scrape(t, now) for t in targets] == firsts  # the same after a restart
    later = now + dt.timedelta(seconds=3)
    assert [round(first_scrape(t, later).timestamp() % 10, 6) for t in targets] == [
        round(f.timestamp() % 10, 6) for f in firsts]  # the phase stays


class _Chunks:
    """A response body that arrives in the chunks given (what urllib3's stream yields)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def stream(self, _amount: int, decode_content: bool) -> list[bytes]:
        return self.chunks


@pytest.mark.parametrize("cut", [1, 2, 3, 7, 64])
def test_the_body_is_cut_into_lines_whatever_its_chunks(cut: int) -> None:
    """Lines across chunk boundaries, a line longer than many chunks, a character split between
    chunks, no newline at the end: the lines come out as they are in the body."""
    body = 'a{x="é☃"} 1\nlong' + "x" * 500 + ' 2\n\n# TYPE b gauge\nb 3'
    data = body.encode()
    chunks = [data[i:i + cut] for i in range(0, len(data), cut)]
    target = Target(url="http://h:1/metrics", job="j", instance="h:1")
    assert list(_body_lines(_Chunks(chunks), target, threading.Event())) == body.splitlines(keepends=True)
