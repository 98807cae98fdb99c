"""No data lost: PostgreSQL stopped and started under a running archiver; the archiver SIGKILLed
(with its embedded server too: reused by the next start, stopped by SIGTERM); the embedded server
dying under a running archiver (started again by it).

Each test has a PostgreSQL of its own (the embedded server, started in about a second) so that
it can stop it. The synthetic exporter records every scrape it answered; the archive must hold
each of them exactly once.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.archiver import ArchiverProcess, scrape_numbers
from support.synthetic import SyntheticExporter

from perfwatch.archiver.embedded import EmbeddedPostgres

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("stop_leftover_archivers")]


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


# Runs the rest of argv as a child subreaper (prctl PR_SET_CHILD_SUBREAPER = 36, kept across
# exec): orphans below it are adopted by it, as they are by a process that is PID 1 in a container.
SUBREAPER = "import ctypes, os, sys; ctypes.CDLL(None).prctl(36, 1, 0, 0, 0); os.execv(sys.argv[1], sys.argv[1:])"


def postmaster_pid(embedded: EmbeddedPostgres) -> int:
    return int((embedded.pgdata / "postmaster.pid").read_text().split()[0])


def parent_pid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("PPid:")).split()[1])


def test_a_dead_embedded_server_is_started_again_and_nothing_is_lost(tmp_path: Path) -> None:
    """No DSN: the archiver's own PostgreSQL dies under it (SIGKILL, as the OOM killer does; then
    stopped by hand while its config is broken, so starting fails for a while). The archiver
    starts it again each time, trying less often while starting fails, spools meanwhile, and
    every scrape lands in the archive exactly once.

    The archiver runs as PID 1 of a container without an init would: the server, which pg_ctl
    leaves an orphan, is its child, and a dead one stays a zombie (still "running" to pg_ctl and
    to a new server's lock-file check) until the archiver collects it."""
    embedded = EmbeddedPostgres(tmp_path / "data" / "postgres")
    with SyntheticExporter() as synth:
        settings = {"scrape_interval": "400ms", "targets": [{"url": synth.url, "job": "synthetic"}],
                    "database": {"retry_interval": "300ms"}}
        archiver = ArchiverProcess(tmp_path, settings)
        archiver.service.argv = [sys.executable, "-c", SUBREAPER, *archiver.service.argv]
        archiver.start()
        archiver.wait_for(lambda: written(archiver) > 0, "first writes")
        assert archiver.service.proc is not None and parent_pid(postmaster_pid(embedded)) == archiver.service.proc.pid
        port = embedded.port

        def tries() -> int:
            return archiver.service.log().count("starting it again")

        def failures() -> int:
            return archiver.service.log().count("cannot start the embedded PostgreSQL again")

        def starts() -> int:
            return archiver.service.log().count("embedded PostgreSQL listening on")

        def caught_up(after: int) -> Callable[[], bool]:
            """Started again (more than `after` starts so far), reachable, the spool written."""
            return lambda: (starts() > after and archiver.metric("perfwatch_archiver_database_up") == 1
                            and archiver.metric("perfwatch_archiver_spool_batches") == 0)

        started = starts()
        os.kill(postmaster_pid(embedded), signal.SIGKILL)
        archiver.wait_for(caught_up(started), "the killed server started again and the spool written", timeout=60)
        assert tries() == failures() + 1  # one start, after any that failed (a killed server's backends still exiting)
        written_before = written(archiver)
        archiver.wait_for(lambda: written(archiver) > written_before, "writes after the restart")

        conf = embedded.pgdata / "postgresql.conf"
        original = conf.read_bytes()
        conf.write_bytes(original + b"\nnot a setting\n")  # the server refuses to start
        before = tries()
        embedded.stop()  # by hand
        archiver.wait_for(lambda: failures() > 0, "a failed start")
        during = len(synth.served)
        archiver.wait_for(lambda: len(synth.served) >= during + 8, "eight scrapes while it cannot start")
        assert archiver.metric("perfwatch_archiver_database_up") == 0
        assert archiver.metric("perfwatch_archiver_spool_batches") >= 6  # scraping went on
        # A try every retry interval (300 ms) would be 10 in these 3.2 s or more; waiting twice as
        # long after each failure, 3 or 4.
        assert 1 <= tries() - before <= 5, archiver.service.log()[-3000:]
        started = starts()  # before the fix: a try already under way may be the one that succeeds
        conf.write_bytes(original)
        archiver.wait_for(caught_up(started), "started again once it can start", timeout=60)
        assert embedded.port == port  # clients (operator commands, pg_dump) find it where they did

        # Stopped again, and its port taken meanwhile: it comes back on another, and the archiver
        # follows it there.
        conf.write_bytes(original + b"\nnot a setting\n")
        before = failures()
        embedded.stop()
        with socket.socket() as squatter:  # listening, as a server that took the port would
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the old connections' TIME_WAIT
            squatter.bind(("127.0.0.1", port))
            squatter.listen()
            archiver.wait_for(lambda: failures() > before, "a failed start while the port is taken")
            started = starts()
            conf.write_bytes(original)
            archiver.wait_for(caught_up(started), "started again on another port", timeout=60)
        assert embedded.port != port
        assert "the database moved to a new address" in archiver.service.log()
        moved = written(archiver)
        archiver.wait_for(lambda: written(archiver) > moved, "writes on the new port")
        assert archiver.stop() == 0

    assert not embedded.running()  # SIGTERM stopped the server it had started again
    embedded.start()
    try:
        numbers = scrape_numbers(embedded.dsn())
    finally:
        embedded.stop()
    assert numbers == synth.served_numbers()  # all of them, in order, once


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: a disk that fills up during an outage."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_spool_whose_disk_filled_takes_batches_again_once_written(tmp_path: Path, small_disk: Path,
                                                                    own_postgres: EmbeddedPostgres) -> None:
    """The spool on a 256 KiB disk, PostgreSQL stopped until the disk is full: scrapes are lost while
    it is (logged, counted); once the database is back and the backlog written, the spool takes
    batches again. Its only segment, smaller than the rotation size, kept every written batch on
    the full disk, and every later scrape was lost, restarts included."""
    dsn = own_postgres.dsn()
    data_dir = small_disk / "data"
    with SyntheticExporter(wide=300) as synth:  # batches of about 30 KB: the disk is full in a second
        archiver = ArchiverProcess(tmp_path, {**config(synth, dsn), "data_dir": str(data_dir),
                                              "scrape_interval": "100ms"}).start()
        archiver.wait_for(lambda: written(archiver) > 0, "first writes")
        own_postgres.stop()
        archiver.wait_for(lambda: archiver.metric("perfwatch_archiver_spool_dropped_batches_total") >= 3,
                          "the disk full and scrapes lost", timeout=90)
        own_postgres.start()
        archiver.wait_for(lambda: archiver.metric("perfwatch_archiver_spool_batches") == 0, "the backlog written",
                          timeout=60)
        dropped = archiver.metric("perfwatch_archiver_spool_dropped_batches_total")
        resumed = len(synth.served)
        archiver.wait_for(lambda: len(synth.served) >= resumed + 20, "twenty scrapes after the backlog")
        archiver.wait_for(lambda: archiver.metric("perfwatch_archiver_spool_batches") == 0, "those written too")
        assert archiver.metric("perfwatch_archiver_spool_dropped_batches_total") == dropped
        assert archiver.stop() == 0
    numbers = scrape_numbers(dsn)
    assert set(range(resumed, resumed + 20)) <= set(numbers)  # every scrape after the recovery
    assert len(numbers) == len(set(numbers))
    assert "No space left on device" in archiver.service.log()
