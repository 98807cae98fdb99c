"""Filesystem size, free space and inodes per mount point (mount table + statvfs)."""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import re
import select
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

from perfwatch.common.config import Duration, Regex
from perfwatch.common.families import GaugeMetricFamily, Metric
from perfwatch.exporter.collectors.base import NODE, Collector, Matches, gauge, read_to_end, register

log = logging.getLogger(__name__)

# The mount table escapes space, tab, newline and backslash as octal (\040 \011 \012 \134).
_OCTAL = re.compile(r"\\([0-7]{3})")


def unescape(field: str) -> str:
    # Most fields hold no escape (a space is \040): no regex for them.
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field) if "\\" in field else field


class Mount(NamedTuple):  # a tuple: a frozen dataclass cost 2 µs per mount line and scrape
    device: str
    mountpoint: str
    fstype: str
    options: str


def parse_mounts(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            mounts.append(Mount(unescape(fields[0]), unescape(fields[1]), fields[2], fields[3]))
    return mounts


class MountTable:
    """A mount table file, read again only when it changed.

    /proc/<pid>/mounts can be polled (proc(5)): a mount or unmount in its mount namespace marks
    the open file with POLLPRI, and the poll clears the mark. Reading the table costs 0.2-0.3 ms
    here (the kernel formats every mount), a poll 10 µs. A regular file in its place (a fake
    procfs) cannot say that it changed, and is read at every call; the kernel's file tells itself
    apart by its size, 0, though it reads as text."""

    def __init__(self, candidates: Sequence[str]) -> None:
        self.candidates = candidates  # the first that opens is read: init's table, else ours
        self._fd: int | None = None
        self._poll = select.poll()
        self._pollable = False
        self._text: str | None = None

    def read(self) -> str:
        if self._fd is None:
            self._open()
        elif self._pollable and self._text is not None and not self._poll.poll(0):
            return self._text
        assert self._fd is not None
        try:
            os.lseek(self._fd, 0, os.SEEK_SET)
            self._text = read_to_end(self._fd).decode("utf-8", "replace")
        except OSError:
            self.close()  # opened afresh at the next call
            raise
        return self._text

    def _open(self) -> None:
        error: OSError | None = None
        for path in self.candidates:
            try:
                self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as err:
                error = error or err
                continue
            self._pollable = os.fstat(self._fd).st_size == 0
            self._poll.register(self._fd, select.POLLPRI | select.POLLERR)
            return
        assert error is not None
        raise error

    def close(self) -> None:
        if self._fd is not None:
            self._poll.unregister(self._fd)
            os.close(self._fd)
            self._fd, self._text = None, None


class _Batch:
    """One scrape's statvfs calls, handed to the worker thread."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths
        self.results: dict[str, os.statvfs_result | OSError] = {}
        self.current: str | None = None  # the path the worker is in statvfs() of
        self.abandoned = False
        self.done = threading.Event()
        self.queue: queue.SimpleQueue[_Batch | None] | None = None  # the worker's it went to, if any


class StatvfsRunner:
    """statvfs() with a deadline, so that a hung mount (NFS server gone) cannot hang the scrape.

    The calls run one after another in a daemon worker thread; the scrape waits at most `timeout`
    for the batch. If the deadline passes, the mount the worker is stuck on is remembered as hung
    and the worker abandoned (a daemon thread: it cannot block the exporter's exit); the next scrape
    gets a fresh worker and skips the hung mount until the abandoned call returns. A hung mount
    costs one timeout once, one blocked thread, and a device error for as long as it hangs. One
    thread for the batch, not one per call, keeps the usual case to a single thread hand-off.
    """

    def __init__(self, timeout: float, statvfs: Callable[[str], os.statvfs_result] = os.statvfs) -> None:
        self.timeout = timeout
        self.statvfs = statvfs
        self.hung: set[str] = set()
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Batch | None] | None = None

    def run(self, paths: Sequence[str]) -> dict[str, os.statvfs_result | OSError | None]:
        """path → its statvfs result, the OSError it raised, or None (hung, or not reached in time)."""
        return self.wait(self.submit(paths), paths)

    def submit(self, paths: Sequence[str]) -> _Batch:
        """Hand the statvfs calls of `paths` to the worker; wait() for them."""
        with self._lock:
            batch = _Batch([p for p in dict.fromkeys(paths) if p not in self.hung])
        if batch.paths:
            if self._queue is None:
                self._queue = queue.SimpleQueue()
                threading.Thread(target=self._serve, args=(self._queue,), name="statvfs", daemon=True).start()
            self._queue.put(batch)
            batch.queue = self._queue
        return batch

    def wait(self, batch: _Batch, paths: Sequence[str]) -> dict[str, os.statvfs_result | OSError | None]:
        """A submitted batch's results, as run() returns them, after at most the timeout."""
        if batch.queue is not None and not batch.done.wait(self.timeout):
            with self._lock:
                batch.abandoned = True
                # The next scrape starts a new worker. This one ends at its next look at the
                # batch, or, if the hung call was the batch's last, at this None.
                batch.queue.put(None)
                if self._queue is batch.queue:
                    self._queue = None
                if batch.current is not None:
                    self.hung.add(batch.current)
                    log.warning("statvfs of %s did not return within %.1fs: reporting a device error "
                                "for it until it does", batch.current, self.timeout)
        with self._lock:
            return {p: batch.results.get(p) for p in paths}

    def _serve(self, requests: queue.SimpleQueue[_Batch | None]) -> None:
        while (batch := requests.get()) is not None:
            for path in batch.paths:
                with self._lock:
                    if batch.abandoned:
                        return
                    batch.current = path
                try:
                    result: os.statvfs_result | OSError = self.statvfs(path)
                except OSError as err:
                    result = err
                with self._lock:
                    batch.results[path] = result
                    batch.current = None
                    if path in self.hung:
                        self.hung.discard(path)
                        log.info("statvfs of %s returned: reporting it again", path)
            batch.done.set()

    def close(self) -> None:
        if self._queue is not None:
            self._queue.put(None)
            self._queue = None


@dataclasses.dataclass
class FilesystemOptions:
    mount_points_exclude: Regex = dataclasses.field(
        default=Regex(r"/(dev|proc|run|sys|mnt|media|var/lib/docker/.+|var/lib/containers/storage/.+)($|/).*"),
        metadata={"help": "Mount points not reported (anchored regex). The default, node_exporter's, hides "
                          "/dev, /proc, /run, /sys, /mnt, /media and container storage."})
    fs_types_exclude: Regex = dataclasses.field(
        default=Regex(r"autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs|fusectl|"
                      r"hugetlbfs|iso9660|mqueue|nsfs|overlay|proc|procfs|pstore|rpc_pipefs|securityfs|"
                      r"selinuxfs|squashfs|sysfs|tracefs"),
        metadata={"help": "Filesystem types not reported (anchored regex): node_exporter 1.5's default, pseudo "
                          "filesystems and read-only images. tmpfs is kept, as node_exporter does: a full /tmp "
                          "is worth an alert."})
    statvfs_timeout: Duration = dataclasses.field(default=Duration(5), metadata={
        "help": "How long a scrape waits for statvfs() of the mounts before reporting the one that "
                "hangs (a dead NFS server) as a device error and skipping it until it returns."})


@register
class FilesystemCollector(Collector[FilesystemOptions]):
    name = "filesystem"
    description = "Filesystem size, free and available bytes, inodes, read-only flag, per mount point."
    node_collectors = ("filesystem",)

    def setup(self) -> None:
        self.mount_point_excluded = Matches(self.options.mount_points_exclude.compiled)
        self.fs_type_excluded = Matches(self.options.fs_types_exclude.compiled)
        self.runner = StatvfsRunner(self.options.statvfs_timeout)
        self.table = MountTable([self.paths.proc("1", "mounts"), self.paths.proc("self", "mounts")])
        self.failing: set[str] = set()  # mount points whose statvfs() failed last time
        self._started: tuple[list[Mount], list[str], _Batch] | None = None  # by start(), for collect()

    def mounts(self) -> list[Mount]:
        """The host's mounts (init's mount namespace when we can see it), excluded ones left out."""
        text = self.table.read()
        seen = set()
        out = []
        for mount in parse_mounts(text):
            key = (mount.device, mount.mountpoint)
            if key in seen or self.fs_type_excluded[mount.fstype] or self.mount_point_excluded[mount.mountpoint]:
                continue
            seen.add(key)
            out.append(mount)
        return out

    def start(self) -> None:
        # The statvfs calls start now, in the runner's thread, and run while the other collectors
        # do: collect() waited ~0.25 ms here for the two thread hand-offs of even one mount.
        mounts = self.mounts()
        rootfs = self.paths.rootfs
        paths = [os.path.join(rootfs, m.mountpoint.lstrip("/")) for m in mounts]
        self._started = (mounts, paths, self.runner.submit(paths))

    def collect(self) -> Iterator[Metric]:
        if self._started is None:
            self.start()
        assert self._started is not None
        (mounts, paths, batch), self._started = self._started, None
        # Forget failures of mounts that went away: over months, containers and automounts come
        # and go, and a set that only grows is a leak.
        self.failing &= {m.mountpoint for m in mounts}
        stats = self.runner.wait(batch, paths)
        labels = ["device", "mountpoint", "fstype"]

        def family(name: str, doc: str) -> GaugeMetricFamily:
            return gauge(name, doc, labels=labels, namespace=NODE)

        size = family("filesystem_size_bytes", "Filesystem size.")
        free = family("filesystem_free_bytes", "Free bytes, including those reserved for root.")
        avail = family("filesystem_avail_bytes", "Free bytes available to unprivileged users.")
        files = family("filesystem_files", "Inodes (file nodes) in total.")
        files_free = family("filesystem_files_free", "Free inodes.")
        readonly = family("filesystem_readonly", "1 if the filesystem is mounted read-only.")
        error = family("filesystem_device_error", "1 if statvfs() failed or hung for this filesystem.")
        for mount, path in zip(mounts, paths, strict=True):
            st = stats[path]
            values = [mount.device, mount.mountpoint, mount.fstype]
            if not isinstance(st, os.statvfs_result):
                # Logged when a mount starts failing, not at every scrape (hangs: by the runner).
                if isinstance(st, OSError) and mount.mountpoint not in self.failing:
                    log.warning("statvfs of %s (%s on %s) failed: %s; reporting node_filesystem_device_error 1",
                                path, mount.fstype, mount.device, st.strerror or st)
                self.failing.add(mount.mountpoint)
                error.add_metric(values, 1.0)
                continue
            if mount.mountpoint in self.failing:
                self.failing.discard(mount.mountpoint)
                log.info("statvfs of %s works again", path)
            error.add_metric(values, 0.0)
            size.add_metric(values, float(st.f_blocks * st.f_frsize))
            free.add_metric(values, float(st.f_bfree * st.f_frsize))
            avail.add_metric(values, float(st.f_bavail * st.f_frsize))
            files.add_metric(values, float(st.f_files))
            files_free.add_metric(values, float(st.f_ffree))
            # From the mount options, as node_exporter does (statvfs' ST_RDONLY says the same).
            readonly.add_metric(values, 1.0 if "ro" in mount.options.split(",") else 0.0)
        yield from (size, free, avail, files, files_free, readonly, error)

    def close(self) -> None:
        self.runner.close()
        self.table.close()
