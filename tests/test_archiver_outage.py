"""No data lost: PostgreSQL stopped and started under a running archiver; the archiver SIGKILLed
(with its embedded server too: reused by the next start, stopped by SIGTERM).

Each test has a PostgreSQL of its own (the embedded server, started in about a second) so that
it can stop it. The synthetic exporter records every scrape it answered; the archive must hold
each of them exactly once.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.archiver import ArchiverProcess, scrape_numbers, stop_leftovers
from support.synthetic import SyntheticExporter

from archiver.embedded import EmbeddedPostgres


@pytest.fixture(autouse=True)
def _stop_leftover_archivers() -> Iterator[None]:
    yield
    stop_leftovers()


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    pg = EmbeddedPostgres(tmp_path / "pg")
    pg.start()
    yield pg
    pg.stop()


def config(synth: SyntheticExporter, dsn: str) -> dict[str, object]:
    # 400 ms: a scrape the server answered but the archiver gave up on would look like a loss.
    return {"scrape_interval": "400ms", "targets": [{"url": synth.url, "job": "synthetic"}],
            "database": {"dsn": dsn, "retry_interval": "300ms"}}


def written(archiver: ArchiverProcess) -> float:
    return archiver.metric("perfwatch_archiver_samples_written_total")


def test_database_outage_loses_nothing_and_writes_nothing_twice(tmp_path: Path,
                                                                own_postgres: EmbeddedPostgres) -> None:
    dsn = own_postgres.dsn()
    with SyntheticExporter() as synth:
        archiver = ArchiverProcess(tmp_path, config(synth, dsn)).start()
        archiver.wait_for(lambda: written(archiver) > 0, "first writes")

        own_postgres.stop()
        archiver.wait_for(lambda: archiver.metric("perfwatch_archiver_database_up") == 0, "database_up 0")
        during = len(synth.served)
        archiver.wait_for(lambda: len(synth.served) >= during + 8, "eight scrapes during the outage")
        assert archiver.metric("perfwatch_archiver_spool_batches") >= 5
        assert archiver.metric("perfwatch_archiver_spool_bytes") > 0
        assert archiver.metric("perfwatch_archiver_spool_oldest_age_seconds") >= 0.8
        assert archiver.metric("perfwatch_archiver_target_up") == 1  # scraping goes on

        assert own_postgres.start() == dsn  # same port: clients find it again
        archiver.wait_for(lambda: archiver.metric("perfwatch_archiver_database_up") == 1
                          and archiver.metric("perfwatch_archiver_spool_batches") == 0, "spool replayed")
        assert archiver.stop() == 0

    assert scrape_numbers(dsn) == synth.served_numbers()  # all of them, in order, once
    log = archiver.service.log()
    assert "database unreachable" in log and "database reachable again" in log


def test_sigkill_mid_run_and_during_an_outage_loses_nothing(tmp_path: Path, own_postgres: EmbeddedPostgres) -> None:
    dsn = own_postgres.dsn()
    kills = []
    with SyntheticExporter() as synth:
        first = ArchiverProcess(tmp_path, config(synth, dsn), name="first").start()
        first.wait_for(lambda: written(first) > 0 and len(synth.served) >= 5, "first writes")
        kills.append(time.time())
        first.stop(signal.SIGKILL)

        second = ArchiverProcess(tmp_path, config(synth, dsn), name="second").start()  # same data dir
        second.wait_for(lambda: written(second) > 0, "writes after the restart")
        own_postgres.stop()
        second.wait_for(lambda: second.metric("perfwatch_archiver_database_up") == 0, "database_up 0")
        during = len(synth.served)
        second.wait_for(lambda: len(synth.served) >= during + 6, "six scrapes spooled during the outage")
        kills.append(time.time())
        second.stop(signal.SIGKILL)  # with a backlog in the spool

        own_postgres.start()
        third = ArchiverProcess(tmp_path, config(synth, dsn), name="third").start()
        assert third.metric("perfwatch_archiver_spool_batches") >= 1 or written(third) > 0
        after = len(synth.served)
        third.wait_for(lambda: third.metric("perfwatch_archiver_spool_batches") == 0 and len(synth.served) >= after + 3,
                       "backlog replayed and new scrapes written")
        assert third.stop() == 0

    numbers = scrape_numbers(dsn)
    assert len(numbers) == len(set(numbers))  # none twice
    served = synth.served
    assert set(numbers) <= {n for _, n in served}
    # The only scrapes that may be missing are ones answered in the instant before a SIGKILL,
    # whose batch had not reached the spool's fsync yet (Prometheus loses such a scrape too).
    in_flight = {n for t, n in served for kill in kills if kill - 1.0 < t <= kill}
    missing = {n for _, n in served} - set(numbers)
    assert missing <= in_flight, (missing, in_flight)
    assert len(missing) <= len(kills)


def test_embedded_server_outlives_a_sigkill_and_is_reused_then_stopped_on_sigterm(tmp_path: Path) -> None:
    """No DSN: the archiver's own PostgreSQL. A SIGKILLed archiver leaves it running; the next
    archiver on that data dir uses it (same port, data kept) and SIGTERM stops it."""
    embedded = EmbeddedPostgres(tmp_path / "data" / "postgres")
    with SyntheticExporter() as synth:
        settings = {"scrape_interval": "400ms", "targets": [{"url": synth.url, "job": "synthetic"}]}
        first = ArchiverProcess(tmp_path, settings, name="first").start()
        first.wait_for(lambda: written(first) > 0, "first writes")
        port = embedded.port
        assert "embedded PostgreSQL listening" in first.service.log()  # it started the server
        first.stop(signal.SIGKILL)
        assert embedded.running()  # nobody stopped it
        before = scrape_numbers(embedded.dsn())

        second = ArchiverProcess(tmp_path, settings, name="second").start()
        second.wait_for(lambda: written(second) > 0, "writes after the restart")
        assert embedded.port == port and "embedded PostgreSQL listening" not in second.service.log()
        assert second.stop() == 0
    assert not embedded.running()
    embedded.start()
    try:
        after = scrape_numbers(embedded.dsn())
    finally:
        embedded.stop()
    assert before and set(before) < set(after) and len(after) == len(set(after))
