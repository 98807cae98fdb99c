"""The collector contract.

A collector is one small class in its own module under `exporter/collectors/`: a name, its
options and `collect()`:

    @dataclasses.dataclass
    class NetdevOptions:                      # its config keys, with defaults (type-checked at load)
        interfaces_exclude: Regex = Regex("lo")

    @register
    class NetdevCollector(Collector[NetdevOptions]):
        name = "netdev"                       # the key under `collectors:` in the config
        description = "Network traffic per interface: bytes, packets, errors, drops."
        default_enabled = True

        def setup(self) -> None:              # optional: once, before the first scrape
            self.exclude = self.options.interfaces_exclude.compiled

        def collect(self) -> Iterator[Metric]:
            yield counter("network_receive_bytes_total", "Bytes received.", value)

The type parameter is the options' dataclass: `self.options` is typed by it, and it becomes the
class's `Options`, which the config loader fills from the collector's section. A collector
without options of its own subclasses `Collector[NoOptions]`. None re-declares
`__init__` to keep its options; what a collector computes once from them (compiled regexes,
sysconf values, a worker thread) goes in `setup()`.

`collect()` runs at scrape time and yields metric families (perfwatch.common.families). It may raise:
the scrape marks the collector failed (`node_scrape_collector_success 0`) and answers with
everything else. A collector that holds state across scrapes (perf deltas, open fds) keeps it
on the instance and releases it in `close()`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, ClassVar, Generic, TypeVar, get_args, get_origin

from perfwatch.common.families import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
    UnknownMetricFamily,
)

NAMESPACE = "perfwatch"  # what node_exporter has no metric for
NODE = "node"  # what node_exporter has: its exact name, labels, unit, type and source field


@dataclasses.dataclass(frozen=True)
class HostPaths:
    """Where the host's /proc and /sys are; a container mounts the host's under e.g. /host."""

    procfs: str = "/proc"
    sysfs: str = "/sys"
    rootfs: str = "/"

    def proc(self, *parts: str) -> str:
        return os.path.join(self.procfs, *parts)

    def sys(self, *parts: str) -> str:
        return os.path.join(self.sysfs, *parts)


@dataclasses.dataclass
class NoOptions:
    """A collector without options of its own (only `enabled`)."""


OptionsT = TypeVar("OptionsT")
K = TypeVar("K")
V = TypeVar("V")


class Collector(ABC, Generic[OptionsT]):
    name: ClassVar[str]
    description: ClassVar[str]
    default_enabled: ClassVar[bool] = True
    # node_exporter's collectors whose metrics this one exposes under their names (`--collector.X`),
    # for the side-by-side test and the README's table; () for perfwatch's own (perf).
    node_collectors: ClassVar[tuple[str, ...]] = ()
    # Runs after the other collectors of a scrape, told first what they expose (expose_after): the
    # textfile collector, whose files may not override the exporter's own metrics.
    runs_last: ClassVar[bool] = False
    Options: ClassVar[type[Any]] = NoOptions  # set from the type parameter: Collector[FooOptions]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in cls.__dict__.get("__orig_bases__", ()):
            if get_origin(base) is not Collector:
                continue
            (options,) = get_args(base)
            if isinstance(options, TypeVar):  # a generic subclass: its own subclasses name the type
                continue
            if not isinstance(options, type):
                raise TypeError(f"{cls.__name__}: Collector[...] takes the options' class, not {options!r}")
            cls.Options = options

    def __init__(self, options: OptionsT, paths: HostPaths) -> None:
        self.options: OptionsT = options
        self.paths = paths
        self.setup()

    def setup(self) -> None:  # not abstract: most collectors need nothing prepared
        """Prepare, once, what every scrape reuses; `self.options` and `self.paths` are set."""

    @abstractmethod
    def collect(self) -> Iterable[Metric]:
        """Yield this scrape's metric families."""

    def start(self) -> None:  # not abstract: only a collector that waits on a thread of its own needs it
        """Called at the start of every collection, before any collector's collect(): a collector
        whose answer waits on the kernel in a thread of its own (filesystem's statvfs) starts that
        here, so that the wait overlaps the other collectors' work; its collect() then finds the
        answer ready. collect() must work without it too (start() failed, or a test calls it)."""

    def expose_after(self, families: Sequence[Metric]) -> None:  # for runs_last collectors
        """What the other collectors expose in this scrape, before this one's collect()."""

    def close(self) -> None:  # not abstract: most collectors hold nothing to release
        """Release what the collector holds (file descriptors, threads)."""


REGISTRY: dict[str, type[Collector[Any]]] = {}


def register(cls: type[Collector[Any]]) -> type[Collector[Any]]:
    """Class decorator: make the collector known under `cls.name`."""
    if cls.name in REGISTRY:
        raise RuntimeError(f"collector {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls


def metric_name(name: str, namespace: str = NAMESPACE) -> str:
    return f"{namespace}_{name}"


def counter(name: str, documentation: str, value: float | None = None,
            labels: Sequence[str] | None = None, *, namespace: str = NAMESPACE) -> CounterMetricFamily:
    """A counter family `<namespace>_<name>` (perfwatch_… or node_…); `name` ends in `_total`
    (the sample name keeps it)."""
    if not name.endswith("_total"):
        raise ValueError(f"counter {name!r} must end in _total")
    return CounterMetricFamily(f"{namespace}_{name}", documentation, value, labels)


def gauge(name: str, documentation: str, value: float | None = None,
          labels: Sequence[str] | None = None, *, namespace: str = NAMESPACE) -> GaugeMetricFamily:
    # Positional arguments and the name made here: a keyword call of the class and metric_name()
    # cost more than the family itself, and a scrape makes some 280 families.
    return GaugeMetricFamily(f"{namespace}_{name}", documentation, value, labels)


def untyped(name: str, documentation: str, value: float | None = None,
            labels: Sequence[str] | None = None, *, namespace: str = NODE) -> UnknownMetricFamily:
    """A family without a type (`# TYPE … untyped`): only where node_exporter exposes its own
    metric that way (netstat, vmstat, sockstat, ...), so that its users' queries see the same."""
    return UnknownMetricFamily(f"{namespace}_{name}", documentation, value, labels)


def info(name: str, documentation: str, value: dict[str, str], *, namespace: str = NAMESPACE) -> InfoMetricFamily:
    """An info family: renders as `<namespace>_<name>_info{…} 1`."""
    return InfoMetricFamily(metric_name(name, namespace), documentation, value=value)


# The most one os.read() asks for; it allocates that much before reading. With 1 MiB, the first
# buffers were mmap()ed, and glibc, seeing them freed, raised its mmap threshold to 1 MiB: from
# then on large blocks came from the heap, which 8 concurrent scrapers left ~1 MiB larger for
# good. 64 KiB stays under glibc's initial 128 KiB threshold and holds most /proc files at once.
READ_CHUNK = 64 * 1024


# The most a sysfs attribute holds: one page of the running kernel.
SYSFS_ATTRIBUTE_MAX = os.sysconf("SC_PAGE_SIZE")


def read_bytes(path: str, *, dir_fd: int | None = None, size: int | None = None) -> bytes:
    """The file at `path` (relative to `dir_fd` if given), read to its end, or in one read of at
    most `size` bytes where the caller knows one read returns it whole (a sysfs attribute)."""
    # Plain os.read: half the cost of open()'s buffered text layer for a small /proc file, and
    # a scrape reads a few dozen of them. /proc files are read to EOF: one read may not hold all.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        return os.read(fd, size) if size is not None else read_to_end(fd)
    finally:
        os.close(fd)


def read_to_end(fd: int) -> bytes:
    """What is left of the open file `fd`, read until EOF."""
    chunks = []
    while chunk := os.read(fd, READ_CHUNK):
        chunks.append(chunk)
    return b"".join(chunks)


def read_proc_file(path: str, size: int = 4096) -> bytes | None:
    """A small file of one process (/proc/<pid>/...), in one read, or None if the process has gone meanwhile
    (or the file is not there); PermissionError is the caller's to judge."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return None
    try:
        return os.read(fd, size)
    except ProcessLookupError:  # exited between open and read
        return None
    finally:
        os.close(fd)


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8", "replace")


class Directory:
    """A directory whose files are read relative to it (openat(2)), for collectors that read many
    files of one directory: the kernel resolves the directory's path once instead of once per
    file. A sysfs device directory is reached through symlinks (/sys/class/net/eth0 →
    /sys/devices/…/net/eth0), and a dozen of its files cost half as much read this way: 0.9 ms
    instead of 1.35 for netclass's 88 files here. Raises NotADirectoryError for a file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def __enter__(self) -> Directory:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def read_text(self, name: str) -> str:
        """The file `name` of the directory, read to its end; an OSError names its full path."""
        return self._read(name, None)

    def read_attribute(self, name: str) -> str:
        """A sysfs attribute of the directory, in one read: the kernel formats an attribute into one
        page at most and returns it whole from the first read (sysfs_kf_seq_show), so the read to
        its end that read_text does would only cost a second, empty read."""
        return self._read(name, SYSFS_ATTRIBUTE_MAX)

    def read_attributes(self, names: Sequence[str], missing: Collection[int] = ()) -> list[str | None]:
        """Sysfs attributes of the directory, each in one read as read_attribute does, stripped of
        surrounding whitespace: None for one whose read fails with an errno in `missing`; another
        error names the file's full path. One call for a device's two dozen attributes: a loop of
        read_attribute calls cost netclass twice the Python time of the reads themselves."""
        out: list[str | None] = []
        for name in names:
            try:
                data = read_bytes(name, dir_fd=self.fd, size=SYSFS_ATTRIBUTE_MAX)
            except OSError as err:
                if err.errno in missing:
                    out.append(None)
                    continue
                raise type(err)(err.errno, err.strerror, os.path.join(self.path, name)) from None
            out.append(data.decode("utf-8", "replace").strip())
        return out

    def _read(self, name: str, size: int | None) -> str:
        try:
            data = read_bytes(name, dir_fd=self.fd, size=size)
        except OSError as err:
            raise type(err)(err.errno, err.strerror, os.path.join(self.path, name)) from None
        return data.decode("utf-8", "replace")


class Memo(dict[K, V]):
    """key → compute(key), computed once per key: a /proc file repeats the same keys at every
    scrape, and a dict lookup costs a fraction of a regex or of building the same names again.
    Starts over past `limit` keys, in case a file keeps inventing them."""

    def __init__(self, compute: Callable[[K], V], limit: int = 10_000) -> None:
        super().__init__()
        self.compute, self.limit = compute, limit

    def __missing__(self, key: K) -> V:
        value = self.compute(key)
        if len(self) >= self.limit:
            self.clear()
        self[key] = value
        return value


class Matches(Memo[str, bool]):
    """Whether `pattern` matches a key (vmstat's 180-odd keys, mount points), asked once per key."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        super().__init__(lambda key: pattern.match(key) is not None)


class parsing:  # noqa: N801 - used as a function: `with parsing(path):`
    """Name the file in a parsing error, so the log says which file had unexpected content.

    A class, not a @contextmanager generator: that cost 3 µs a use, and the processes collector
    uses it once per process."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: object) -> None:
        if isinstance(err, (ValueError, IndexError, KeyError, StopIteration)):
            raise ValueError(f"cannot parse {self.path}: {type(err).__name__}: {err}") from err

