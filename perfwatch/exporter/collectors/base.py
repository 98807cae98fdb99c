"""The collector contract.

A collector is one small class in its own module under `exporter/collectors/`:

    @register
    class LoadavgCollector(Collector):
        name = "loadavg"                      # the key under `collectors:` in the config
        description = "Load averages over 1, 5 and 15 minutes."
        default_enabled = True
        Options = NoOptions                   # a dataclass of its config keys, with defaults

        def collect(self) -> Iterator[Metric]:
            yield gauge("load1", "1-minute load average.", value)

`collect()` runs at scrape time and yields metric families (prometheus_client's). It may raise:
the scrape marks the collector failed (`perfwatch_scrape_collector_success 0`) and answers with
everything else. A collector that holds state across scrapes (perf deltas, open fds) keeps it
on the instance and releases it in `close()`.
"""

from __future__ import annotations

import dataclasses
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import psutil
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

NAMESPACE = "perfwatch"


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

    def apply_to_psutil(self) -> None:
        # psutil reads /proc through this module-level setting; keep it in step with ours.
        psutil.PROCFS_PATH = self.procfs


@dataclasses.dataclass
class NoOptions:
    """A collector without options of its own (only `enabled`)."""


class Collector(ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    default_enabled: ClassVar[bool] = True
    Options: ClassVar[type[Any]] = NoOptions

    def __init__(self, options: Any, paths: HostPaths) -> None:
        self.options = options
        self.paths = paths

    @abstractmethod
    def collect(self) -> Iterable[Metric]:
        """Yield this scrape's metric families."""

    def close(self) -> None:  # noqa: B027 - most collectors hold nothing to release
        """Release what the collector holds (file descriptors, threads)."""


REGISTRY: dict[str, type[Collector]] = {}


def register(cls: type[Collector]) -> type[Collector]:
    """Class decorator: make the collector known under `cls.name`."""
    if cls.name in REGISTRY:
        raise RuntimeError(f"collector {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls


def metric_name(name: str) -> str:
    return f"{NAMESPACE}_{name}"


def counter(name: str, documentation: str, value: float | None = None,
            labels: Sequence[str] | None = None) -> CounterMetricFamily:
    """A counter family `perfwatch_<name>`; `name` ends in `_total` (the sample name keeps it)."""
    if not name.endswith("_total"):
        raise ValueError(f"counter {name!r} must end in _total")
    return CounterMetricFamily(metric_name(name), documentation, value=value, labels=labels)


def gauge(name: str, documentation: str, value: float | None = None,
          labels: Sequence[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(metric_name(name), documentation, value=value, labels=labels)


def info(name: str, documentation: str, value: dict[str, str]) -> InfoMetricFamily:
    """An info family: renders as `perfwatch_<name>_info{…} 1`."""
    return InfoMetricFamily(metric_name(name), documentation, value=value)


def read_bytes(path: str) -> bytes:
    # Plain os.read: half the cost of open()'s buffered text layer for a small /proc file, and
    # a scrape reads a few dozen of them. /proc files are read to EOF: one read may not hold all.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8", "replace")


@contextmanager
def parsing(path: str) -> Iterator[None]:
    """Name the file in a parsing error, so the log says which file had unexpected content."""
    try:
        yield
    except (ValueError, IndexError, KeyError, StopIteration) as err:
        raise ValueError(f"cannot parse {path}: {type(err).__name__}: {err}") from err

