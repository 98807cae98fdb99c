"""Hardware, cache and software counters per CPU, through perf_event_open (exporter/perf_events.py)."""

from __future__ import annotations

import dataclasses
import difflib
import errno
import logging
import os
import resource
from collections.abc import Iterator

from perfwatch.common.config import ConfigError
from perfwatch.common.families import Metric
from perfwatch.exporter import perf_events as pe
from perfwatch.exporter.collectors.base import Collector, HostPaths, counter, gauge, read_text, register

log = logging.getLogger(__name__)


@dataclasses.dataclass
class PerfOptions:
    events: list[str] = dataclasses.field(default_factory=lambda: list(pe.EVENTS), metadata={
        "help": "Events to count, spelled as `perf list` does (cycles, L1-dcache-load-misses ...); default all."})
    cpus: str | None = dataclasses.field(default=None, metadata={
        "help": "CPUs to count on, as a list like `0-3,8`; default every online CPU."})

    def validate(self, key: str) -> None:
        by_lower = {name.lower(): name for name in pe.EVENTS}
        chosen: list[str] = []
        for i, name in enumerate(self.events):
            canonical = by_lower.get(name.lower())
            if canonical is None:
                close = difflib.get_close_matches(name, list(pe.EVENTS), n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ConfigError(f"{key}.events[{i}]", f"unknown event {name!r}; {hint}"
                                  f"known events: {', '.join(pe.EVENTS)}")
            if canonical not in chosen:
                chosen.append(canonical)
        if not chosen:
            raise ConfigError(f"{key}.events", "names no event (to turn perf off: enabled: false)")
        self.events = chosen
        if self.cpus is not None:
            try:
                if not pe.parse_cpu_list(self.cpus):
                    raise ValueError("names no CPU")
            except ValueError as err:
                raise ConfigError(f"{key}.cpus", str(err)) from None


@dataclasses.dataclass
class _Slot:
    """One counter: an event on a CPU. Its total outlives the fd (a lost fd or an offline CPU)."""

    fd: int | None = None
    last: pe.Reading = pe.ZERO
    total: float = 0.0
    ratio: float = 1.0


def _errno_name(err: int) -> str:
    return errno.errorcode.get(err, str(err))


@register
class PerfCollector(Collector[PerfOptions]):
    name = "perf"
    description = "Hardware, cache and software perf-event counters per CPU (perf_event_open)."

    def __init__(self, options: PerfOptions, paths: HostPaths, kernel: pe.Kernel | None = None) -> None:
        # The syscall boundary, which tests replace with a fake PMU; set before setup() opens counters.
        self.kernel: pe.Kernel = kernel or pe.Syscalls()
        super().__init__(options, paths)

    def setup(self) -> None:
        self.events = [pe.EVENTS[name] for name in self.options.events]
        self.wanted = set(pe.parse_cpu_list(self.options.cpus)) if self.options.cpus else None
        self.slots: dict[tuple[str, int], _Slot] = {}
        # errno of the open that failed. Unsupported and refused events stay failed until a restart
        # (or their CPU returns); other errors (EMFILE, EBUSY, ENOMEM) are this moment's, retried
        # at every scrape, so a counter lost to a read error and then to a full fd table comes back.
        self.failed: dict[tuple[str, int], int] = {}
        self.active: set[int] = set()
        self._read_failing: set[tuple[str, int]] = set()
        self.pmu_types = pe.hybrid_pmu_types(self.paths.sys("bus", "event_source", "devices"))
        self._raise_fd_limit(len(self.events) * len(self._online()))
        self._sync_cpus(log_changes=False)
        self._log_summary()

    # -- collector contract ------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        self._sync_cpus(log_changes=True)
        for (name, cpu), slot in self.slots.items():
            if slot.fd is not None:
                self._read(name, cpu, slot)

        supported = gauge("perf_event_supported", "1 if the event opened on a selected CPU, 0 if not "
                          "(see permission_denied for why).", labels=["event"])
        denied = gauge("perf_event_permission_denied", "1 if the kernel refused the event for lack of "
                       "permission (root, CAP_PERFMON or kernel.perf_event_paranoid).", labels=["event"])
        ratio = gauge("perf_event_running_ratio", "Share of the last interval the counter was on the PMU "
                      "(1: counted throughout; <1: multiplexed, the value is scaled).", labels=["event", "cpu"])
        refused = {name for (name, _), err in self.failed.items() if pe.classify(err) == "denied"}
        cpus = [(cpu, str(cpu)) for cpu in sorted(self.active)]
        for event in self.events:
            is_open = False
            # Most events of a VM or a container never open: no family for them (they had none
            # anyway, being empty), and no cost of one.
            found = [(label, self.slots[key]) for cpu, label in cpus if (key := (event.name, cpu)) in self.slots]
            if found:
                family = counter(event.metric, event.help, labels=["cpu"])
                for label, slot in found:
                    family.add_metric([label], slot.total * event.scale)
                    if slot.fd is not None:
                        is_open = True
                        ratio.add_metric([event.name, label], slot.ratio)
                yield family
            supported.add_metric([event.name], 1.0 if is_open else 0.0)
            denied.add_metric([event.name], 1.0 if event.name in refused and not is_open else 0.0)
        yield supported
        yield denied
        yield ratio
        yield gauge("perf_counters_open", "perf_event file descriptors the exporter holds.",
                    sum(1 for slot in self.slots.values() if slot.fd is not None))

    def close(self) -> None:
        held = [slot for slot in self.slots.values() if slot.fd is not None]
        for slot in held:
            self._close_fd(slot)
        if held:
            log.info("perf: closed %d counters", len(held))

    # -- CPUs coming and going ---------------------------------------------------------------

    def _online(self) -> set[int]:
        try:
            online = set(pe.parse_cpu_list(read_text(self.paths.sys("devices", "system", "cpu", "online"))))
        except (OSError, ValueError):
            online = set(range(os.cpu_count() or 1))  # no sysfs (some containers): assume all present
        return online if self.wanted is None else online & self.wanted

    def _sync_cpus(self, log_changes: bool) -> None:
        """Open counters on CPUs that came online, close those on CPUs that went away."""
        online = self._online()
        gone, new = self.active - online, online - self.active
        for cpu in gone:
            for event in self.events:
                slot = self.slots.get((event.name, cpu))
                if slot is not None and slot.fd is not None:
                    self._close_fd(slot)
                self.failed.pop((event.name, cpu), None)  # when it returns, try it afresh
        self.active = online
        for cpu in sorted(online):
            for event in self.events:
                key = (event.name, cpu)
                slot = self.slots.get(key)
                if slot is not None and slot.fd is not None:
                    continue
                # Open what is not open: new CPUs and counters whose fd was lost (see _read).
                err = self.failed.get(key)
                if err is None or pe.classify(err) == "error":
                    self._open(event, cpu)
        if log_changes and (gone or new):
            changes = [f"CPUs {pe.format_cpu_list(cpus)} {what}" for cpus, what in (
                (gone, "went offline, their counters closed"), (new, "came online, their counters opened")) if cpus]
            log.info("perf: %s; %d counters open", "; ".join(changes),
                     sum(1 for s in self.slots.values() if s.fd is not None))

    # -- one counter -------------------------------------------------------------------------

    def _open(self, event: pe.Event, cpu: int) -> None:
        try:
            fd = pe.open_counter(self.kernel, event, cpu, self.pmu_types.get(cpu))
        except OSError as err:
            self.failed[(event.name, cpu)] = err.errno or errno.EIO
            return
        self.failed.pop((event.name, cpu), None)
        slot = self.slots.setdefault((event.name, cpu), _Slot())
        slot.fd, slot.last = fd, pe.ZERO  # a new counter starts at zero: its first read is all new

    def _read(self, event: str, cpu: int, slot: _Slot) -> None:
        assert slot.fd is not None
        try:
            reading = pe.read_counter(self.kernel, slot.fd)
        except OSError as err:
            # The fd is no good any more: close it; the next scrape opens a new one and its counts
            # add to the same total, so the exported counter never goes back.
            if (event, cpu) not in self._read_failing:  # once, not at every scrape while it lasts
                log.warning("perf: reading %s on CPU %d failed (%s); reopening it at the next scrape",
                            event, cpu, err.strerror or err)
                self._read_failing.add((event, cpu))
            self._close_fd(slot)
            return
        self._read_failing.discard((event, cpu))
        increment, slot.ratio, slot.last = pe.advance(slot.last, reading)
        slot.total += increment

    def _is_open(self, event: str, cpu: int) -> bool:
        slot = self.slots.get((event, cpu))
        return slot is not None and slot.fd is not None

    def _close_fd(self, slot: _Slot) -> None:
        assert slot.fd is not None
        try:
            self.kernel.close(slot.fd)
        except OSError as err:
            log.warning("perf: closing fd %d failed: %s", slot.fd, err.strerror or err)
        slot.fd = None

    # -- start-up ----------------------------------------------------------------------------

    def _raise_fd_limit(self, needed: int) -> None:
        # One fd per event per CPU: 28 events on a 64-CPU host is 1792, above the usual soft 1024.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = needed + 256  # room for sockets and files
        if soft != resource.RLIM_INFINITY and soft < want:
            new = want if hard == resource.RLIM_INFINITY else min(want, hard)
            if new > soft:
                resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))

    def _log_summary(self) -> None:
        opened, unsupported, refused, broken = [], [], [], []
        for event in self.events:
            errs = [err for (name, _), err in self.failed.items() if name == event.name]
            if any(self._is_open(event.name, cpu) for cpu in self.active):
                opened.append(event.name)
            elif any(pe.classify(err) == "denied" for err in errs):
                refused.append(event.name)
            elif errs and all(pe.classify(err) == "unsupported" for err in errs):
                unsupported.append(event.name)
            elif errs:
                broken.append(f"{event.name} ({'/'.join(sorted({_errno_name(e) for e in errs}))})")
        counters = sum(1 for s in self.slots.values() if s.fd is not None)
        parts = [f"perf: counting {len(opened)} of {len(self.events)} events with {counters} counters on "
                 f"CPUs {pe.format_cpu_list(self.active) or 'none'}: {', '.join(opened) or 'none'}"]
        if not self.active:
            parts.append(f"none of the selected CPUs ({self.options.cpus}) is online")
        if unsupported:
            parts.append(f"unsupported by this kernel/CPU (a VM without a virtual PMU has no hardware "
                         f"events): {', '.join(unsupported)}")
        if refused:
            parts.append(f"refused for permission (kernel.perf_event_paranoid={self._paranoid()}; "
                         f"system-wide counting needs root, CAP_PERFMON on Linux 5.8+ (CAP_SYS_ADMIN before), "
                         f"or sysctl kernel.perf_event_paranoid=0): {', '.join(refused)}")
        if broken:
            parts.append(f"failed: {', '.join(broken)}")
        level = logging.WARNING if refused or broken or not opened else logging.INFO
        log.log(level, "; ".join(parts))

    def _paranoid(self) -> str:
        try:
            return read_text(self.paths.proc("sys", "kernel", "perf_event_paranoid")).strip()
        except OSError:
            return "unknown"
