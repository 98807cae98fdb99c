"""Parts of the host collectors tested in-process: a hung mount, and parsers on inputs the VM lacks.

A hung NFS mount cannot be made here, so statvfs() is replaced by one that blocks until the
test releases it; the real statvfs path is tested against real mounts in test_collectors_host.py.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from support.waiting import wait_until

from perfwatch.common.config import Duration
from perfwatch.exporter.collectors.base import HostPaths, NoOptions
from perfwatch.exporter.collectors.filesystem import FilesystemCollector, FilesystemOptions, StatvfsRunner, parse_mounts
from perfwatch.exporter.collectors.meminfo import parse_meminfo
from perfwatch.exporter.collectors.os_release import os_release, version_number
from perfwatch.exporter.collectors.tcpstat import RX, TX, count_proc, new_counts


class HangingStatvfs:
    """statvfs() that blocks on `hung_path` until released; other paths answer at once."""

    def __init__(self, hung_path: str) -> None:
        self.hung_path = hung_path
        self.release = threading.Event()
        self.calls: list[str] = []

    def __call__(self, path: str) -> os.statvfs_result:
        self.calls.append(path)
        if path == self.hung_path:
            self.release.wait(30)
        return os.statvfs("/")


def test_hung_statvfs_costs_one_timeout_then_is_skipped_until_it_returns() -> None:
    fake = HangingStatvfs("/hung")
    runner = StatvfsRunner(timeout=0.3, statvfs=fake)
    try:
        start = time.monotonic()
        first = runner.run(["/a", "/hung", "/b"])
        assert 0.3 <= time.monotonic() - start < 2
        assert isinstance(first["/a"], os.statvfs_result)
        assert first["/hung"] is None and first["/b"] is None  # /b was queued behind the hung call
        assert runner.hung == {"/hung"}

        start = time.monotonic()
        second = runner.run(["/a", "/hung", "/b"])
        assert time.monotonic() - start < 0.25  # no new wait: the hung mount is skipped
        assert isinstance(second["/a"], os.statvfs_result) and isinstance(second["/b"], os.statvfs_result)
        assert second["/hung"] is None
        assert fake.calls.count("/hung") == 1

        fake.release.set()  # the server comes back
        wait_until(lambda: not runner.hung, "the hung mount to be forgotten", 5)
        third = runner.run(["/a", "/hung"])
        assert all(isinstance(r, os.statvfs_result) for r in third.values())
    finally:
        fake.release.set()
        runner.close()


def statvfs_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "statvfs"}


def test_an_abandoned_worker_ends_when_its_hung_call_returns() -> None:
    # The hung mount last in the batch (NFS mounts often come last): after its call returns the
    # worker has no next path at which to see it was abandoned.
    others = statvfs_threads()
    fake = HangingStatvfs("/hung")
    runner = StatvfsRunner(timeout=0.3, statvfs=fake)
    try:
        assert runner.run(["/a", "/hung"])["/hung"] is None
        [abandoned] = statvfs_threads() - others
        fake.release.set()
        wait_until(lambda: not runner.hung, "the hung mount to be forgotten", 5)
        abandoned.join(5)
        assert not abandoned.is_alive()  # not blocked for ever on the old queue
        assert isinstance(runner.run(["/a", "/hung"])["/hung"], os.statvfs_result)
        assert len(statvfs_threads() - others) == 1  # the new worker
    finally:
        fake.release.set()
        runner.close()


def test_statvfs_errors_are_returned_not_raised(tmp_path: Path) -> None:
    runner = StatvfsRunner(timeout=5)
    try:
        result = runner.run([str(tmp_path), str(tmp_path / "missing")])
    finally:
        runner.close()
    assert isinstance(result[str(tmp_path)], os.statvfs_result)
    assert isinstance(result[str(tmp_path / "missing")], FileNotFoundError)


def test_filesystem_collector_reports_hung_mount_as_device_error(tmp_path: Path) -> None:
    (tmp_path / "proc" / "1").mkdir(parents=True)
    (tmp_path / "proc" / "1" / "mounts").write_text("/dev/vda1 / ext4 rw 0 0\nnfs:/x /mnt2/nfs nfs4 rw 0 0\n")
    collector = FilesystemCollector(FilesystemOptions(statvfs_timeout=Duration(0.3)),
                                    HostPaths(procfs=str(tmp_path / "proc"), rootfs="/"))
    fake = HangingStatvfs("/mnt2/nfs")
    collector.runner = StatvfsRunner(0.3, statvfs=fake)
    try:
        for _ in range(2):  # the first scrape waits once; the second skips the hung mount
            families = {f.name: f for f in collector.collect()}
            errors = {s.labels["mountpoint"]: s.value for s in families["node_filesystem_device_error"].samples}
            assert errors == {"/": 0.0, "/mnt2/nfs": 1.0}
            sized = {s.labels["mountpoint"] for s in families["node_filesystem_size_bytes"].samples}
            assert sized == {"/"}
    finally:
        fake.release.set()
        collector.close()


def test_failures_of_mounts_that_went_away_are_forgotten(tmp_path: Path) -> None:
    mounts = tmp_path / "proc" / "1" / "mounts"
    mounts.parent.mkdir(parents=True)
    collector = FilesystemCollector(FilesystemOptions(), HostPaths(procfs=str(tmp_path / "proc"), rootfs="/"))
    try:
        for i in range(50):  # short-lived mounts, each failing (their directories do not exist)
            mounts.write_text(f"/dev/vda1 / ext4 rw 0 0\nnfs:/x /srv/gone-{i} nfs4 rw 0 0\n")
            families = {f.name: f for f in collector.collect()}
            errors = {s.labels["mountpoint"]: s.value for s in families["node_filesystem_device_error"].samples}
            assert errors == {"/": 0.0, f"/srv/gone-{i}": 1.0}
        assert collector.failing == {"/srv/gone-49"}
    finally:
        collector.close()


def test_parse_mounts_unescapes_octal() -> None:
    [mount] = parse_mounts("//srv/share /mnt/my\\040disk\\011tab\\012nl\\134bs cifs rw 0 0\n")
    assert mount.device == "//srv/share" and mount.fstype == "cifs"
    assert mount.mountpoint == "/mnt/my disk\ttab\nnl\\bs"


def proc_counts(data: bytes) -> dict[int, int]:
    counts = new_counts()
    count_proc(data, counts)
    return {i: n for i, n in enumerate(counts) if n}


def test_count_proc_states_on_a_busy_host_file() -> None:
    header = b"  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    v4 = (b"%4d: 0100007F:%04X 0A00020F:01BB %s 00000000:00000001 00:00000000 00000000  1000        0 %d 1 ff "
          b"20 4 0 10 -1\n")
    v6 = (b"%4d: 0000000000000000FFFF00000100007F:%04X 00000000000000000000000000000000:0000 %s 0000000A:00000000 "
          b"00:00000000 00000000     0        0 %d 1 ff 100 0 0 10 0\n")
    # Wide slot numbers (>9999) and states whose hex looks like other columns' digits.
    data4 = header + b"".join(v4 % (i, i % 65536, b"01" if i % 3 else b"06", i) for i in range(30000))
    data6 = header + b"".join(v6 % (i, i % 65536, b"0A", i) for i in range(500))
    assert proc_counts(data4) == {1: 20000, 6: 10000, RX: 30000}
    assert proc_counts(data6) == {10: 500, TX: 5000}
    assert proc_counts(header) == {}


def test_os_release_parsing() -> None:
    release = os_release('NAME="Debian GNU/Linux"\nID=debian\nVERSION_ID="12"\n# comment=x\nPRETTY_NAME=\'It\\\'s\'\n'
                         'BROKEN="unterminated\n')
    assert release["ID"] == "debian" and release["VERSION_ID"] == "12" and release["NAME"] == "Debian GNU/Linux"
    assert release["BROKEN"] == '"unterminated'
    assert "# comment" not in release
    # node_os_version: the major.minor part of VERSION_ID, as node_exporter's regex takes it.
    assert [version_number(v) for v in ("12", "22.04", "3.17.2", "rolling", "")] == [12, 22.04, 3.17, 0, 0]


def test_meminfo_names_as_node_exporter() -> None:
    fields = parse_meminfo("MemTotal:       16384 kB\nActive(anon):     100 kB\nHugePages_Total:       4\n"
                           "\nHugepagesize:    2048 kB\n")
    assert fields == {"MemTotal_bytes": 16384 * 1024, "Active_anon_bytes": 100 * 1024, "HugePages_Total": 4,
                      "Hugepagesize_bytes": 2048 * 1024}


def test_process_limits_are_reread_after_a_minute(tmp_path: Path) -> None:
    from perfwatch.exporter.collectors.processes import LIMITS_MAX_AGE, ProcessesCollector

    kernel = tmp_path / "sys" / "kernel"
    kernel.mkdir(parents=True)
    (kernel / "pid_max").write_text("32768\n")
    (kernel / "threads-max").write_text("1000\n")
    collector = ProcessesCollector(NoOptions(), HostPaths(procfs=str(tmp_path)))

    def pid_max() -> float:
        families = {f.name: f for f in collector.collect()}
        return families["node_processes_max_processes"].samples[0].value

    assert pid_max() == 32768
    (kernel / "pid_max").write_text("4194304\n")  # sysctl kernel.pid_max=4194304
    assert pid_max() == 32768  # not read again at every scrape
    collector._limits_read_at -= LIMITS_MAX_AGE
    assert pid_max() == 4194304


def test_matches_answers_as_the_regex_and_remembers_each_key() -> None:
    import re

    from perfwatch.exporter.collectors.base import Matches

    selected = Matches(re.compile(r"(oom_kill|pg.*fault)$"))
    assert [selected[k] for k in ("pgfault", "pgmajfault", "oom_kill", "nr_free_pages", "oom_kill_x")] == [
        True, True, True, False, False]
    assert selected == {"pgfault": True, "pgmajfault": True, "oom_kill": True, "nr_free_pages": False,
                        "oom_kill_x": False}
