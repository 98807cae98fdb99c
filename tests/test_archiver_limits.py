"""What a target sends cannot stop the archive: a target with 20,000 new series, a sample whose
timestamp no archive holds, endless and huge bodies. Each beside a small target whose every
scrape must still land. Real archiver processes, real PostgreSQL, synthetic targets on loopback.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support.archiver import ArchiverProcess, archived
from support.synthetic import SyntheticExporter

from perfwatch.archiver.embedded import EmbeddedPostgres

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("stop_leftover_archivers")]


def numbers_of(dsn: str, instance: str) -> list[int]:
    """The scrape numbers of `instance` the archive holds, in time order."""
    return [int(v) for labels, _, v in archived(dsn, "synthetic_scrape_number") if labels["instance"] == instance]


def target(synth: SyntheticExporter, **extra: Any) -> dict[str, Any]:
    return {"url": synth.url, "job": "synthetic", **extra}


def peak_rss_mib(pid: int) -> float:
    """The process' peak resident memory (VmHWM), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@contextlib.contextmanager
def targets(*synths: SyntheticExporter) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for synth in synths:
            stack.enter_context(synth)
        yield


def test_a_target_with_20000_new_series_and_a_small_one_land_every_scrape(
        tmp_path: Path, own_postgres: EmbeddedPostgres) -> None:
    """20,000 new series in one batch took 80,000 bind parameters in one INSERT, past libpq's 65,535:
    the error read as "database unreachable", and the batch (and every target behind it) was
    retried for ever."""
    dsn = own_postgres.dsn()
    wide, small = SyntheticExporter(wide=20_000), SyntheticExporter()
    with targets(wide, small):
        archiver = ArchiverProcess(tmp_path, {
            "scrape_interval": "2s", "targets": [target(wide), target(small)],
            "database": {"dsn": dsn, "retry_interval": "500ms"}}).start()
        archiver.wait_for(lambda: len(wide.served) >= 4 and len(small.served) >= 4
                          and archiver.metric("perfwatch_archiver_spool_batches") == 0,
                          "four scrapes of each target written", timeout=120)
        assert archiver.stop() == 0
    assert numbers_of(dsn, wide.instance) == wide.served_numbers()
    assert numbers_of(dsn, small.instance) == small.served_numbers()
    with psycopg.connect(dsn) as conn:
        series = conn.execute("SELECT count(*) FROM perfwatch.series s JOIN perfwatch.metric m ON m.id = s.metric_id "
                              "WHERE m.name = 'synthetic_wide'").fetchone()
    assert series == (20_000,)
    assert "database unreachable" not in archiver.service.log()


def test_a_sample_with_a_timestamp_no_archive_holds_costs_only_that_sample(
        tmp_path: Path, own_postgres: EmbeddedPostgres) -> None:
    """It lost the whole scrape (retried, then set aside), at every scrape."""
    dsn = own_postgres.dsn()
    bad = SyntheticExporter(bad_timestamp=True)
    with bad:
        archiver = ArchiverProcess(tmp_path, {
            "scrape_interval": "500ms", "targets": [target(bad)],
            "database": {"dsn": dsn, "retry_interval": "500ms"}}).start()
        archiver.wait_for(lambda: len(bad.served) >= 5 and archiver.metric("perfwatch_archiver_spool_batches") == 0,
                          "five scrapes written")
        assert archiver.stop() == 0
    assert numbers_of(dsn, bad.instance) == bad.served_numbers()
    assert archived(dsn, "synthetic_from_the_future") == []
    log = archiver.service.log()
    assert log.count("(out_of_bounds)") == 1, log  # once per target and reason, counted after that
    assert "set a batch aside" not in log


def test_endless_and_huge_bodies_are_abandoned_at_the_limit_while_others_land(
        tmp_path: Path, own_postgres: EmbeddedPostgres) -> None:
    """Three endless bodies took the archiver to 9 GB in a minute, a 50 MB body to 4-6 GB. Now each
    is read as it arrives, parsed as it arrives, and abandoned at its target's limit: the endless
    ones at body_size_limit, the huge one (50 MB of 760k samples) at sample_limit. The limits are
    set lower than the defaults (50 MB, 200k samples) so that the pure-Python parser reaches them
    within the scrape timeout; at the defaults the timeout cuts such a body off first."""
    dsn = own_postgres.dsn()
    endless = [SyntheticExporter(mode="endless") for _ in range(3)]
    huge = SyntheticExporter(mode="huge", huge_bytes=50 << 20)
    small = SyntheticExporter()
    with targets(*endless, huge, small):
        archiver = ArchiverProcess(tmp_path, {
            "scrape_interval": "2s", "scrape_timeout": "2s",
            "targets": [*(target(s, body_size_limit="2MB") for s in endless), target(huge, sample_limit=5_000),
                        target(small)],
            "database": {"dsn": dsn, "retry_interval": "500ms"}}).start()
        archiver.wait_for(lambda: archiver.metric("perfwatch_archiver_scrape_failures_total",
                                                  reason="body_size_limit") >= 6
                          and archiver.metric("perfwatch_archiver_scrape_failures_total", reason="sample_limit") >= 2,
                          "every large target failed twice at its limit", timeout=120)
        served = len(small.served)
        archiver.wait_for(lambda: len(small.served) >= served + 3, "three more scrapes of the small target")
        time.sleep(1)  # let the last one reach the database
        peak = peak_rss_mib(archiver.service.proc.pid)  # type: ignore[union-attr]
        assert archiver.stop() == 0
    assert all(s.abandoned >= 2 for s in endless)
    numbers = numbers_of(dsn, small.instance)
    assert numbers == small.served_numbers()[:len(numbers)] and len(numbers) >= served + 2
    assert archived(dsn, "synthetic_endless") == [] and archived(dsn, "synthetic_filler") == []
    # The bodies are never held whole: 50 MB was on offer from the huge target alone.
    assert peak < 200, f"peak RSS {peak:.0f} MiB"
