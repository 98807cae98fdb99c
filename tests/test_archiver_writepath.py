"""The write path at fleet rates: the spool's memory queue hands out what its log would, scrape
workers return what an in-process scrape does, and skipped scrapes are counted and said once."""

from __future__ import annotations

import datetime as dt
import logging
import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from apscheduler.events import (
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    EVENT_JOB_SUBMITTED,
    JobExecutionEvent,
    JobSubmissionEvent,
)
from support.synthetic import SyntheticExporter, exposition
from test_archiver_spool import batch, drain

from perfwatch.archiver import workers
from perfwatch.archiver.model import Batch
from perfwatch.archiver.scrape import ScrapeError, Target, parse_exposition
from perfwatch.archiver.service import KEEPS_UP_AFTER, Archiver
from perfwatch.archiver.settings import ArchiverSettings, ScrapeSettings, TargetSettings, load_settings
from perfwatch.archiver.spool import Spool
from perfwatch.archiver.workers import WORKER, ScrapePool, pack, unpack
from perfwatch.common.config import ConfigError

LINE = len(batch(0).to_json().encode()) + 1  # every batch(i) for i < 10 is this long on disk


# -- the spool: memory and disk hand out the same batches ------------------------------------


def test_an_appended_batch_is_handed_to_the_writer_as_it_was_not_decoded_again(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    sent = [batch(i) for i in range(3)]
    for b in sent:
        spool.append(b)
    assert spool.stats().memory_batches == 3 and spool.stats().memory_bytes == 3 * LINE
    for b in sent:
        entry = spool.peek()
        assert entry is not None and entry.batch is b
        spool.commit(entry)
    assert spool.read_back == 0 and spool.stats().memory_bytes == 0


def test_a_restart_mid_queue_reads_back_only_what_the_last_process_spooled(tmp_path: Path) -> None:
    first = Spool(tmp_path)
    for i in range(6):
        first.append(batch(i))
    entry = first.peek()
    assert entry is not None
    first.commit(entry)
    first.close()
    again = Spool(tmp_path)
    assert again.stats().memory_batches == 0  # the log is all there is after a restart
    for i in range(6, 9):
        again.append(batch(i))
    assert drain(again) == [batch(i) for i in range(1, 9)]
    assert again.read_back == 5  # those of the first process; the rest came from memory


def test_past_memory_bytes_batches_wait_on_disk_and_memory_takes_new_ones_as_it_drains(tmp_path: Path) -> None:
    spool = Spool(tmp_path, memory_bytes=3 * LINE)
    for i in range(5):
        spool.append(batch(i))  # 0-2 held, 3 and 4 on disk only
    assert spool.stats().memory_batches == 3
    got = []
    for _ in range(2):
        entry = spool.peek()
        assert entry is not None
        got.append(entry.batch)
        spool.commit(entry)
    spool.append(batch(5))  # room again: held, behind 3 and 4 which are on disk only
    assert spool.stats().memory_batches == 2
    got += drain(spool)
    assert got == [batch(i) for i in range(6)]
    assert spool.read_back == 2


def test_memory_bytes_zero_reads_every_batch_back(tmp_path: Path) -> None:
    spool = Spool(tmp_path, memory_bytes=0)
    for i in range(3):
        spool.append(batch(i))
    assert drain(spool) == [batch(i) for i in range(3)] and spool.read_back == 3


def test_a_batch_dropped_at_max_bytes_leaves_memory_too(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=4 * LINE, segment_bytes=LINE)
    for i in range(8):
        spool.append(batch(i))
    stats = spool.stats()
    assert (stats.batches, stats.memory_batches, stats.memory_bytes) == (4, 4, 4 * LINE)
    assert drain(spool) == [batch(i) for i in range(4, 8)] and spool.read_back == 0


def test_head_is_written_at_most_every_half_second_so_a_kill_replays_a_little_and_loses_nothing(
        tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    for i in range(5):
        spool.append(batch(i))
    for _ in range(3):  # in well under HEAD_EVERY: the first commit writes the head, the next two not
        entry = spool.peek()
        assert entry is not None
        spool.commit(entry)
    shutil.copytree(tmp_path / "spool", tmp_path / "killed")  # what a SIGKILL now would leave
    assert drain(Spool(tmp_path / "killed")) == [batch(i) for i in range(1, 5)]  # 1 and 2 again: harmless
    spool.close()  # a clean stop writes the head as it is
    assert drain(Spool(tmp_path / "spool")) == [batch(i) for i in range(3, 5)]


def test_a_segment_emptied_for_reuse_writes_the_head_at_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=2 * LINE)  # emptied once all written and at reclaim_bytes: 2 lines
    assert spool.reclaim_bytes == 2 * LINE
    spool.append(batch(0))
    spool.append(batch(1))
    for _ in range(2):
        entry = spool.peek()
        assert entry is not None
        spool.commit(entry)  # the second empties the segment: back to offset 0
    spool.append(batch(2))  # at offset 0 again: a stale head would skip it
    assert drain(Spool(tmp_path)) == [batch(2)]


def test_a_small_segment_all_written_is_kept_and_a_crash_replays_without_skipping(tmp_path: Path) -> None:
    # Below reclaim_bytes the written batches stay on disk (no truncate and head rewrite per batch);
    # the head, written at most every HEAD_EVERY, may then name an earlier batch: replayed, not lost.
    spool = Spool(tmp_path)
    spool.append(batch(0))
    spool.append(batch(1))
    for _ in range(2):
        entry = spool.peek()
        assert entry is not None
        spool.commit(entry)
    segment = next(tmp_path.glob("*.jsonl"))
    assert segment.stat().st_size == 2 * LINE and spool.stats().batches == 0
    spool.append(batch(2))
    replayed = drain(Spool(tmp_path))  # not closed: as after a crash
    assert replayed in ([batch(2)], [batch(1), batch(2)], [batch(0), batch(1), batch(2)])


@pytest.mark.parametrize("seed", range(6))
def test_memory_and_disk_hand_out_the_same_batches_in_the_same_order(tmp_path: Path, seed: int) -> None:
    """The same random run of appends, writes, failed writes (peek without commit), restarts and
    drops at max_bytes, on three spools: disk only, a small memory queue that fills up, and the
    default. Whatever each holds in memory, the writer sees the same batches in the same order."""
    rng = random.Random(seed)
    max_bytes = rng.choice([1 << 30, 12 * LINE])
    segment_bytes = rng.choice([LINE, 3 * LINE, 1 << 20])
    memories = {"disk": 0, "small": 2 * LINE, "default": 16 << 20}
    spools = {name: Spool(tmp_path / name, max_bytes, segment_bytes, memory) for name, memory in memories.items()}
    seen: dict[str, list[Batch]] = {name: [] for name in spools}
    appended = 0
    for _ in range(300):
        op = rng.random()
        if op < 0.5:
            for spool in spools.values():
                assert spool.append(batch(appended))
            appended += 1
        elif op < 0.85:
            for name, spool in spools.items():
                entry = spool.peek()
                if entry is not None:
                    seen[name].append(entry.batch)
                    spool.commit(entry)
        elif op < 0.95:
            for spool in spools.values():
                entry = spool.peek()  # a write that failed: the same batch stays at the head
                if entry is not None:
                    assert spool.peek() == entry
        else:
            for name, memory in memories.items():
                spools[name].close()
                spools[name] = Spool(tmp_path / name, max_bytes, segment_bytes, memory)
    for name, spool in spools.items():
        seen[name] += drain(spool)
    assert seen["disk"] == seen["small"] == seen["default"]
    if max_bytes == 1 << 30:
        assert seen["disk"] == [batch(i) for i in range(appended)]
    assert spools["disk"].dropped_batches == spools["default"].dropped_batches
    assert spools["default"].read_back <= spools["small"].read_back <= spools["disk"].read_back


# -- scrape workers --------------------------------------------------------------------------


def test_a_packed_batch_comes_back_equal(tmp_path: Path) -> None:
    b = batch(3, samples=5)
    assert unpack(pack(b)) == b


@pytest.fixture
def pool() -> Iterator[ScrapePool]:
    pool = ScrapePool(2)
    pool.start()
    yield pool
    pool.close()


@pytest.mark.slow  # worker processes
def test_a_worker_returns_what_an_in_process_scrape_would_and_its_spool_line(pool: ScrapePool) -> None:
    with SyntheticExporter(wide=50) as synth:
        target = Target(synth.url, "synthetic", synth.instance, labels=(("site", "lab"),), timeout=5)
        got, line = pool.scrape(target)
        assert synth.served_numbers() == [0]
        expected = parse_exposition(exposition(0, wide=50), target.target_labels(), got.scraped_at_ms)
        assert got == expected
        assert line == (expected.to_json() + "\n").encode()
        pool.scrape(target)  # the same worker, the same keep-alive session
        assert len(pool.pids()) == 2


@pytest.mark.slow  # worker processes
def test_a_failed_scrape_in_a_worker_keeps_its_reason(pool: ScrapePool) -> None:
    with SyntheticExporter() as synth:
        synth.mode = "malformed"
        with pytest.raises(ScrapeError) as err:
            pool.scrape(Target(synth.url, "synthetic", synth.instance, timeout=5))
        assert err.value.reason == "malformed"


def worker_of(pool: ScrapePool, target: Target) -> int:
    life = pool._slot_for(target).life
    assert life is not None and life.process.pid is not None
    return life.process.pid


def wait_for_restart(pool: ScrapePool, gone: int) -> None:
    deadline = time.monotonic() + 10
    while (pool.restarts < 1 or len(pool.pids()) < 2 or gone in pool.pids()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool.restarts == 1 and len(pool.pids()) == 2 and gone not in pool.pids()


@pytest.mark.slow  # worker processes
def test_a_worker_killed_mid_scrape_fails_the_scrape_at_once_and_is_replaced(pool: ScrapePool) -> None:
    with SyntheticExporter(slow_seconds=3.0) as slow:
        slow.mode = "slow"
        target = Target(slow.url, "slow", slow.instance, timeout=5)
        failures: list[ScrapeError] = []

        def scrape_slow() -> None:
            try:
                pool.scrape(target)
            except ScrapeError as err:
                failures.append(err)

        scraping = threading.Thread(target=scrape_slow)
        started = time.monotonic()
        scraping.start()
        time.sleep(0.5)  # the request is out, the target sleeps on it
        victim = worker_of(pool, target)
        os.kill(victim, signal.SIGKILL)
        scraping.join(10)
        assert time.monotonic() - started < 2.5  # at once, not at the timeout
        assert len(failures) == 1 and failures[0].reason == WORKER
        assert f"(pid {victim}) was killed by SIGKILL" in failures[0].message
        wait_for_restart(pool, victim)
        slow.mode = "ok"
        for _ in range(3):
            assert pool.scrape(target)[0].samples  # the same slot, a new process


@pytest.mark.slow  # worker processes
def test_a_hung_worker_is_killed_at_the_timeout_and_replaced(pool: ScrapePool,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers, "GRACE", 0.5)
    with SyntheticExporter() as synth:
        target = Target(synth.url, "synthetic", synth.instance, timeout=1)
        pool.scrape(target)
        hung = worker_of(pool, target)
        os.kill(hung, signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(ScrapeError) as err:
            pool.scrape(target)
        assert err.value.reason == WORKER and "did not answer" in err.value.message
        assert 1.5 <= time.monotonic() - started < 3.5  # timeout + GRACE, then the kill
        wait_for_restart(pool, hung)
        assert pool.scrape(target)[0].samples


@pytest.mark.slow  # worker processes
def test_close_ends_the_workers(tmp_path: Path) -> None:
    pool = ScrapePool(2)
    pool.start()
    pids = pool.pids()
    assert len(pids) == 2
    pool.close()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(ScrapeError):
        pool.scrape(Target("http://127.0.0.1:1/metrics", "j", "i"))


def test_scrape_workers_setting_is_validated(tmp_path: Path) -> None:
    path = tmp_path / "a.yml"
    path.write_text("scrape:\n  workers: 2\nspool:\n  memory_bytes: 4MiB\n")
    settings = load_settings(path)
    assert settings.scrape.workers == 2 and settings.spool.memory_bytes == 4 << 20
    assert load_settings(None).scrape.workers == 0
    path.write_text("scrape:\n  workers: -1\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert err.value.key == "scrape.workers"
    path.write_text("scrape:\n  worker: 2\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert "did you mean 'workers'" in str(err.value)


# -- falling behind --------------------------------------------------------------------------


def skipped(archiver: Archiver, reason: str) -> float:
    return archiver.metrics.registry.get_sample_value(
        "perfwatch_archiver_scrapes_skipped_total", {"job": "j", "instance": "i", "reason": reason}) or 0.0


def test_skipped_runs_are_counted_per_reason_and_said_once_until_the_target_keeps_up(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = ArchiverSettings(data_dir=str(tmp_path), scrape=ScrapeSettings(workers=0),
                                targets=[TargetSettings(url="http://127.0.0.1:1/metrics", job="j", instance="i",
                                                        scrape_interval=2)])  # type: ignore[arg-type]
    archiver = Archiver(settings, "postgresql://nowhere/x")
    target = settings.scrape_targets()[0]
    job_id = "scrape j/i"
    archiver._jobs[job_id] = target
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

    def due(seconds: float) -> dt.datetime:
        return t0 + dt.timedelta(seconds=seconds)

    caplog.set_level(logging.INFO, logger="perfwatch.archiver")
    archiver._job_event(JobSubmissionEvent(EVENT_JOB_SUBMITTED, job_id, "default", [due(0)]))
    archiver._ran(target, time.perf_counter())
    archiver._job_event(JobSubmissionEvent(EVENT_JOB_MAX_INSTANCES, job_id, "default", [due(2)]))
    archiver._job_event(JobSubmissionEvent(EVENT_JOB_MAX_INSTANCES, job_id, "default", [due(4)]))
    archiver._job_event(JobSubmissionEvent(EVENT_JOB_SUBMITTED, job_id, "default", [due(6)]))
    archiver._job_event(JobExecutionEvent(EVENT_JOB_MISSED, job_id, "default", due(6)))  # it started too late
    # The scheduler woke up 3 intervals late: it coalesced 2 runs into this one, without events.
    archiver._job_event(JobSubmissionEvent(EVENT_JOB_SUBMITTED, job_id, "default", [due(12)]))
    archiver._job_event(JobSubmissionEvent(EVENT_JOB_SUBMITTED, job_id, "default", [due(14)]))
    assert (skipped(archiver, "still_running"), skipped(archiver, "missed")) == (2, 3)
    behind = [r.getMessage() for r in caplog.records if "fall behind" in r.getMessage()]
    assert behind == ["scrapes of j/i (http://127.0.0.1:1/metrics) fall behind their 2s interval: its previous "
                      f"scrape was still running (for {behind[0].split('(for ')[1].split(')')[0]}) when the next "
                      "was due; skipped runs are counted in perfwatch_archiver_scrapes_skipped_total until it "
                      "keeps up"]
    archiver._ran(target, time.perf_counter())  # runs were skipped since the last one: still behind
    assert not any("keep up again" in r.getMessage() for r in caplog.records)
    # On time, nothing skipped since the last run: it keeps up again after KEEPS_UP_AFTER such runs
    # (a target whose scrapes take about its interval would flap otherwise).
    for n in range(1, KEEPS_UP_AFTER + 1):
        archiver._job_event(JobSubmissionEvent(EVENT_JOB_SUBMITTED, job_id, "default", [due(14 + 2 * n)]))
        archiver._ran(target, time.perf_counter())
        said = [r.getMessage() for r in caplog.records if "keep up again" in r.getMessage()]
        assert said == ([] if n < KEEPS_UP_AFTER else ["scrapes of j/i (http://127.0.0.1:1/metrics) keep up again"])
    assert skipped(archiver, "missed") == 3  # the runs on time added nothing
    archiver.spool.close()


def test_apschedulers_own_warning_per_skipped_run_is_silenced(caplog: pytest.LogCaptureFixture) -> None:
    from perfwatch.archiver.service import _quiet_apscheduler

    _quiet_apscheduler()
    _quiet_apscheduler()  # once is enough: no second filter
    assert len(logging.getLogger("apscheduler.scheduler").filters) == 1
    with caplog.at_level(logging.WARNING):
        logging.getLogger("apscheduler.scheduler").warning(
            'Execution of job "%s" skipped: maximum number of running instances reached (%d)', "x", 1)
        logging.getLogger("apscheduler.executors.default").warning('Run time of job "%s" was missed by %s', "x", 1)
        logging.getLogger("apscheduler.scheduler").warning("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]
