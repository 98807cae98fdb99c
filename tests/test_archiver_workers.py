"""perfwatch-archiver with `scrape.workers` as a real process: every sample of several targets
stored, a worker SIGKILLed mid-run replaced, workers gone after SIGTERM; and a target slower than
its interval counted as skipped and said once."""

from __future__ import annotations

import collections
import os
import signal
from pathlib import Path

import pytest
import yaml
from support.archiver import ArchiverProcess, archived
from support.synthetic import SyntheticExporter

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("stop_leftover_archivers")]

SAMPLES_PER_SCRAPE = 14  # exposition()'s own samples beside the wide ones (its NaN is never stored)


def workers_of(pid: int) -> list[int]:
    """The scrape workers among `pid`'s children (multiprocessing's spawned processes)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == pid and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def by_instance(dsn: str, metric: str) -> dict[str, list[float]]:
    found: dict[str, list[float]] = collections.defaultdict(list)
    for labels, _, value in archived(dsn, metric):
        found[labels["instance"]].append(value)
    return found


def test_two_workers_store_every_sample_of_several_targets(tmp_path: Path, pg_dsn: str) -> None:
    wide = (300, 120, 40, 0)
    with SyntheticExporter(wide=wide[0]) as a, SyntheticExporter(wide=wide[1]) as b, \
            SyntheticExporter(wide=wide[2]) as c, SyntheticExporter(wide=wide[3]) as d:
        targets = (a, b, c, d)
        archiver = ArchiverProcess(tmp_path, {
            "scrape_interval": "300ms", "scrape": {"workers": 2}, "database": {"dsn": pg_dsn},
            "targets": [{"url": t.url, "job": "synthetic"} for t in targets],
        }).start()
        assert archiver.service.proc is not None
        archiver.wait_for(lambda: all(len(t.served) >= 8 for t in targets)
                          and all(archiver.metric("perfwatch_archiver_samples_written_total", instance=t.instance)
                                  > 0 for t in targets), "eight scrapes of every target, and writes")
        assert archiver.metric("perfwatch_archiver_scrape_workers") == 2
        pids = workers_of(archiver.service.proc.pid)
        assert len(pids) == 2
        assert archiver.metric("perfwatch_archiver_scrape_failures_total") == 0
        assert archiver.metric("perfwatch_archiver_scrape_failures_total", reason="worker") == 0
        assert archiver.stop() == 0
        assert not any(alive(pid) for pid in pids)  # SIGTERM ends the workers too

    numbers = by_instance(pg_dsn, "synthetic_scrape_number")
    widths = by_instance(pg_dsn, "synthetic_wide")
    for target, width in zip(targets, wide, strict=True):
        served = target.served_numbers()
        assert [int(n) for n in numbers[target.instance]] == served  # every scrape, in order, once
        assert len(widths[target.instance]) == width * len(served)  # every sample of each
    log = archiver.service.log()
    assert "scraping and parsing in 2 worker processes" in log
    assert "level=error" not in log and "Traceback" not in log


def test_a_worker_killed_mid_run_is_replaced_and_scraping_goes_on(tmp_path: Path, pg_dsn: str) -> None:
    with SyntheticExporter(wide=200) as a, SyntheticExporter(wide=200) as b, SyntheticExporter(wide=200) as c:
        targets = (a, b, c)
        archiver = ArchiverProcess(tmp_path, {
            "scrape_interval": "200ms", "scrape": {"workers": 2}, "database": {"dsn": pg_dsn},
            "targets": [{"url": t.url, "job": "synthetic"} for t in targets],
        }).start()
        assert archiver.service.proc is not None
        archiver.wait_for(lambda: all(len(t.served) >= 5 for t in targets), "five scrapes of every target")
        victim = workers_of(archiver.service.proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        archiver.wait_for(lambda: archiver.metric("perfwatch_archiver_scrape_worker_restarts_total") == 1
                          and len(workers_of(archiver.service.proc.pid)) == 2, "the worker replaced")  # type: ignore[union-attr]
        assert victim not in workers_of(archiver.service.proc.pid)
        served = [len(t.served) for t in targets]
        archiver.wait_for(lambda: all(len(t.served) >= n + 5 for t, n in zip(targets, served, strict=True))
                          and archiver.metric("perfwatch_archiver_target_up") == 3, "five more scrapes of each")
        assert archiver.metric("perfwatch_archiver_scrape_workers") == 2
        lost_to_the_kill = archiver.metric("perfwatch_archiver_scrape_failures_total", reason="worker")
        # At most the scrapes in flight on the killed worker: those due while it was started again waited.
        assert archiver.metric("perfwatch_archiver_scrape_failures_total") == lost_to_the_kill <= len(targets)
        assert archiver.stop() == 0

    numbers = by_instance(pg_dsn, "synthetic_scrape_number")
    lost = 0
    for target in targets:
        archived_numbers = [int(n) for n in numbers[target.instance]]
        served_numbers = target.served_numbers()
        assert archived_numbers == sorted(set(archived_numbers))  # none twice, in order
        assert set(archived_numbers) <= set(served_numbers)
        lost += len(served_numbers) - len(archived_numbers)
    assert lost <= lost_to_the_kill  # only the scrapes the killed worker had in flight
    log = archiver.service.log()
    assert f"(pid {victim}) was killed by SIGKILL" in log and "starting it again" in log


def test_a_target_slower_than_its_interval_is_counted_as_skipped_and_said_once(tmp_path: Path,
                                                                              pg_dsn: str) -> None:
    with SyntheticExporter(slow_seconds=3.0) as slow:
        slow.mode = "slow"  # every scrape takes its whole timeout, which is the interval
        archiver = ArchiverProcess(tmp_path, {
            "scrape_interval": "1s", "scrape_timeout": "1s", "database": {"dsn": pg_dsn},
            "targets": [{"url": slow.url, "job": "slow"}],
        }).start()
        archiver.wait_for(lambda: archiver.metric("perfwatch_archiver_scrapes_skipped_total",
                                                  reason="still_running") >= 2, "two runs skipped", timeout=30)
        assert archiver.metric("perfwatch_archiver_scrapes_skipped_total", reason="missed") == 0
        slow.mode = "ok"
        archiver.wait_for(lambda: "keep up again" in archiver.service.log(), "the target keeping up", timeout=30)
        skipped = archiver.metric("perfwatch_archiver_scrapes_skipped_total", reason="still_running")
        archiver.wait_for(lambda: archiver.metric("perfwatch_archiver_samples_written_total") > 0, "writes")
        assert archiver.metric("perfwatch_archiver_scrapes_skipped_total", reason="still_running") == skipped
        assert archiver.stop() == 0

    log = archiver.service.log()
    assert log.count("fall behind") == 1, log  # one line, not one per skipped run
    assert f"scrapes of slow/{slow.instance} ({slow.url}) fall behind their 1s interval: its previous scrape " \
           "was still running" in log
    assert "maximum number of running instances" not in log  # APScheduler's own warning, silenced


def test_a_reload_reaches_the_workers(tmp_path: Path, pg_dsn: str) -> None:
    """Each job carries its Target: a target's changed labels apply from its next scrape, an added
    target is scraped, a removed one no more — the workers need no restart."""
    with SyntheticExporter() as first, SyntheticExporter() as second:
        def config(targets: list[dict[str, object]]) -> dict[str, object]:
            return {"scrape_interval": "300ms", "scrape": {"workers": 2}, "database": {"dsn": pg_dsn},
                    "targets": targets}

        archiver = ArchiverProcess(tmp_path, config([{"url": first.url, "job": "synthetic",
                                                      "labels": {"site": "old"}}])).start()
        assert archiver.service.proc is not None
        archiver.wait_for(lambda: len(first.served) >= 2, "the first target scraped")
        pids = workers_of(archiver.service.proc.pid)
        archiver.config_path.write_text(yaml.safe_dump({
            "listen": f"127.0.0.1:{archiver.port}", "data_dir": str(tmp_path / "data"),
            **config([{"url": first.url, "job": "synthetic", "labels": {"site": "new"}},
                      {"url": second.url, "job": "synthetic"}])}))
        archiver.service.send_signal(signal.SIGHUP)
        archiver.wait_for(lambda: len(second.served) >= 3, "the added target scraped")
        changed_at = len(first.served)
        archiver.wait_for(lambda: len(first.served) >= changed_at + 3
                          and archiver.metric("perfwatch_archiver_spool_batches") == 0, "the changed one, written")
        archiver.config_path.write_text(yaml.safe_dump({
            "listen": f"127.0.0.1:{archiver.port}", "data_dir": str(tmp_path / "data"),
            **config([{"url": second.url, "job": "synthetic"}])}))
        archiver.service.send_signal(signal.SIGHUP)
        archiver.wait_for(lambda: "reload: -synthetic/" in archiver.service.log(), "the removal")
        removed_at = len(first.served)
        served = len(second.served)
        archiver.wait_for(lambda: len(second.served) >= served + 3, "the remaining target scraped on")
        assert len(first.served) <= removed_at + 1  # at most the scrape in flight at the reload
        assert workers_of(archiver.service.proc.pid) == pids  # the same workers all along
        assert archiver.stop() == 0

    sites = [labels.get("site") for labels, _, _ in archived(pg_dsn, "synthetic_scrape_number")
             if labels["instance"] == first.instance]
    assert sites[0] == "old" and sites[-1] == "new" and set(sites) == {"old", "new"}
    assert sites == sorted(sites, key=lambda site: site == "new")  # old ones first, then new ones only
    assert by_instance(pg_dsn, "synthetic_scrape_number")[second.instance]
