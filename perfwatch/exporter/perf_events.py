"""The `perf_event_open(2)` boundary: the event table, the attr struct, open/read/close and errno meaning.

Everything that touches the kernel's perf interface goes through a `Kernel` object (`Syscalls`
is the real one), so tests can put a fake exactly at the system-call boundary: it receives the
packed `struct perf_event_attr` bytes and returns the raw `read()` bytes.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import os
import platform
import struct
from typing import Literal, NamedTuple, Protocol

# perf_event_open's number differs by architecture (asm/unistd.h).
SYSCALL_NUMBERS = {"x86_64": 298, "amd64": 298, "aarch64": 241, "arm64": 241}

PERF_TYPE_HARDWARE = 0
PERF_TYPE_SOFTWARE = 1
PERF_TYPE_HW_CACHE = 3

PERF_FORMAT_TOTAL_TIME_ENABLED = 1 << 0
PERF_FORMAT_TOTAL_TIME_RUNNING = 1 << 1
READ_FORMAT = PERF_FORMAT_TOTAL_TIME_ENABLED | PERF_FORMAT_TOTAL_TIME_RUNNING
READ_SIZE = 24  # u64 value, u64 time_enabled, u64 time_running (for the read_format above)

# The flags word stays 0: enabled at open (no ENABLE ioctl needed), no inherit, and kernel and
# hypervisor time counted, as `perf stat -a` does.
PERF_FLAG_FD_CLOEXEC = 1 << 3

# On hybrid CPUs (Intel P/E cores, Arm big.LITTLE) a legacy hardware or cache event names its PMU
# in config's upper 32 bits (Linux 5.12+ on x86).
PERF_PMU_TYPE_SHIFT = 32

# Generalised cache events: config = cache id | op << 8 | result << 16.
CACHE_IDS = {"l1d": 0, "l1i": 1, "ll": 2, "dtlb": 3, "itlb": 4, "bpu": 5}
CACHE_OP_READ = 0
CACHE_RESULT_ACCESS = 0
CACHE_RESULT_MISS = 1

UNSUPPORTED_ERRNOS = frozenset({errno.ENOENT, errno.EOPNOTSUPP, errno.EINVAL, errno.ENODEV, errno.ENOSYS})
DENIED_ERRNOS = frozenset({errno.EACCES, errno.EPERM})

Outcome = Literal["unsupported", "denied", "error"]


def classify(err: int) -> Outcome:
    """What an errno from perf_event_open means for the event (perf_event_open(2), ERRORS)."""
    if err in DENIED_ERRNOS:
        return "denied"
    if err in UNSUPPORTED_ERRNOS:
        return "unsupported"
    return "error"  # EMFILE, EBUSY, ENOMEM ...: a problem of this host or process, not of the event


def cache_config(cache: str, result: int, op: int = CACHE_OP_READ) -> int:
    return CACHE_IDS[cache] | op << 8 | result << 16


@dataclasses.dataclass(frozen=True)
class Event:
    name: str      # as `perf list` and `perf stat -e` spell it
    type: int
    config: int
    metric: str    # the counter's name after `perfwatch_perf_`
    help: str
    scale: float = 1.0  # the clocks count nanoseconds; exported in seconds

    @property
    def uses_pmu(self) -> bool:
        """Counted by the CPU's PMU (so per-PMU on hybrid CPUs), not by the kernel."""
        return self.type in (PERF_TYPE_HARDWARE, PERF_TYPE_HW_CACHE)


def _cache_events() -> list[Event]:
    # perf's names for the read (load) side of each cache; BPU is "branch-loads".
    perf_names = {"l1d": "L1-dcache", "l1i": "L1-icache", "ll": "LLC", "dtlb": "dTLB", "itlb": "iTLB",
                  "bpu": "branch"}
    what = {"l1d": "L1 data cache", "l1i": "L1 instruction cache", "ll": "last-level cache",
            "dtlb": "data TLB", "itlb": "instruction TLB", "bpu": "branch prediction unit"}
    out = []
    for cache, prefix in perf_names.items():
        out.append(Event(f"{prefix}-loads", PERF_TYPE_HW_CACHE, cache_config(cache, CACHE_RESULT_ACCESS),
                         f"perf_cache_{cache}_read_accesses_total", f"Read accesses to the {what[cache]}."))
        out.append(Event(f"{prefix}-load-misses", PERF_TYPE_HW_CACHE, cache_config(cache, CACHE_RESULT_MISS),
                         f"perf_cache_{cache}_read_misses_total", f"Read misses in the {what[cache]}."))
    return out


_EVENT_LIST = [
    Event("cycles", PERF_TYPE_HARDWARE, 0, "perf_cpu_cycles_total", "CPU cycles (the PMU's core clock)."),
    Event("instructions", PERF_TYPE_HARDWARE, 1, "perf_instructions_total", "Instructions retired."),
    Event("cache-references", PERF_TYPE_HARDWARE, 2, "perf_cache_references_total",
          "Cache accesses (usually last-level cache references)."),
    Event("cache-misses", PERF_TYPE_HARDWARE, 3, "perf_cache_misses_total",
          "Cache misses (usually last-level cache misses)."),
    Event("branch-instructions", PERF_TYPE_HARDWARE, 4, "perf_branch_instructions_total",
          "Branch instructions retired."),
    Event("branch-misses", PERF_TYPE_HARDWARE, 5, "perf_branch_misses_total", "Mispredicted branches."),
    Event("stalled-cycles-frontend", PERF_TYPE_HARDWARE, 7, "perf_stalled_cycles_frontend_total",
          "Cycles the front end issued nothing."),
    Event("stalled-cycles-backend", PERF_TYPE_HARDWARE, 8, "perf_stalled_cycles_backend_total",
          "Cycles the back end retired nothing."),
    Event("ref-cycles", PERF_TYPE_HARDWARE, 9, "perf_ref_cycles_total",
          "Reference cycles (a constant rate, not scaled by frequency changes)."),
    Event("cpu-clock", PERF_TYPE_SOFTWARE, 0, "perf_cpu_clock_seconds_total",
          "Seconds the cpu-clock software counter ran.", 1e-9),
    Event("task-clock", PERF_TYPE_SOFTWARE, 1, "perf_task_clock_seconds_total",
          "Seconds the task-clock software counter ran.", 1e-9),
    Event("page-faults", PERF_TYPE_SOFTWARE, 2, "perf_page_faults_total", "Page faults."),
    Event("context-switches", PERF_TYPE_SOFTWARE, 3, "perf_context_switches_total", "Context switches."),
    Event("cpu-migrations", PERF_TYPE_SOFTWARE, 4, "perf_cpu_migrations_total",
          "Tasks migrated to this CPU from another."),
    Event("minor-faults", PERF_TYPE_SOFTWARE, 5, "perf_minor_faults_total",
          "Page faults served without I/O."),
    Event("major-faults", PERF_TYPE_SOFTWARE, 6, "perf_major_faults_total", "Page faults that needed I/O."),
    *_cache_events(),
]
EVENTS: dict[str, Event] = {e.name: e for e in _EVENT_LIST}


class PerfEventAttr(ctypes.Structure):
    """`struct perf_event_attr`: the fields perfwatch sets, then a zeroed tail up to 136 bytes."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64),
        ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),  # the bitfield word: disabled, inherit, ..., exclude_kernel ...
        ("_rest", ctypes.c_uint8 * 88),
    ]


ATTR_SIZE = ctypes.sizeof(PerfEventAttr)
assert ATTR_SIZE == 136


def make_attr(event: Event, pmu_type: int | None = None) -> PerfEventAttr:
    """Counting mode, kernel and user both counted (system-wide, what `perf stat -a` counts)."""
    attr = PerfEventAttr()
    attr.type = event.type
    attr.size = ATTR_SIZE
    attr.config = event.config
    if pmu_type is not None and event.uses_pmu:
        attr.config |= pmu_type << PERF_PMU_TYPE_SHIFT
    attr.read_format = READ_FORMAT
    return attr


class Kernel(Protocol):
    """The system calls the collector makes; the real one is `Syscalls`, tests use a fake."""

    def perf_event_open(self, attr: bytes, pid: int, cpu: int, group_fd: int, flags: int) -> int: ...

    def read(self, fd: int, size: int) -> bytes: ...

    def close(self, fd: int) -> None: ...


class Syscalls:
    """The real kernel, through libc's syscall(2)."""

    def __init__(self, machine: str | None = None) -> None:
        machine = machine or platform.machine()
        self.number = SYSCALL_NUMBERS.get(machine.lower())
        self.machine = machine
        self._syscall = None
        if self.number is not None:
            libc = ctypes.CDLL(None, use_errno=True)
            self._syscall = libc.syscall
            self._syscall.restype = ctypes.c_long
            # Every argument as a full register: pid/cpu -1 must reach the kernel sign-extended.
            self._syscall.argtypes = [ctypes.c_long, ctypes.c_char_p, ctypes.c_long, ctypes.c_long,
                                      ctypes.c_long, ctypes.c_ulong]

    def perf_event_open(self, attr: bytes, pid: int, cpu: int, group_fd: int, flags: int) -> int:
        if self._syscall is None:
            raise OSError(errno.ENOSYS, f"perf_event_open's number is unknown on {self.machine}")
        fd = self._syscall(self.number, attr, pid, cpu, group_fd, flags)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return int(fd)

    def read(self, fd: int, size: int) -> bytes:
        return os.read(fd, size)

    def close(self, fd: int) -> None:
        os.close(fd)


class Reading(NamedTuple):
    value: int
    enabled: int  # ns the counter was enabled
    running: int  # ns it was actually on the PMU (< enabled when multiplexed)


ZERO = Reading(0, 0, 0)


def open_counter(kernel: Kernel, event: Event, cpu: int, pmu_type: int | None = None, pid: int = -1) -> int:
    """Open `event` counting on `cpu` (pid -1: every task there); OSError carries the errno."""
    attr = make_attr(event, pmu_type)
    try:
        return kernel.perf_event_open(bytes(attr), pid, cpu, -1, PERF_FLAG_FD_CLOEXEC)
    except OSError as err:
        # A kernel without extended hardware types refuses the PMU bits: try the legacy encoding.
        if pmu_type is None or not event.uses_pmu or err.errno not in UNSUPPORTED_ERRNOS:
            raise
        return kernel.perf_event_open(bytes(make_attr(event)), pid, cpu, -1, PERF_FLAG_FD_CLOEXEC)


def read_counter(kernel: Kernel, fd: int) -> Reading:
    data = kernel.read(fd, READ_SIZE)
    if len(data) != READ_SIZE:
        # The kernel answers 0 bytes for a counter in error state (e.g. its PMU went away).
        raise OSError(errno.EIO, f"short read of {len(data)} bytes from perf fd {fd}")
    return Reading(*struct.unpack("=QQQ", data))


def advance(prev: Reading, now: Reading) -> tuple[float, float, Reading]:
    """(increment, running ratio, new baseline) for the interval from `prev` to `now`.

    The increment is the interval's delta scaled by Δenabled/Δrunning: scaling each interval and
    summing keeps the total monotonic, where scaling the cumulative value can go down.
    """
    if now.value < prev.value or now.enabled < prev.enabled or now.running < prev.running:
        # Cannot happen for one fd; if it does, start again from here rather than invent counts.
        return 0.0, 0.0, now
    d_value = now.value - prev.value
    d_enabled = now.enabled - prev.enabled
    d_running = now.running - prev.running
    if d_running == 0:
        # Never on the PMU in this interval: nothing to scale from. Keep the old baseline, so the
        # next interval that runs extrapolates over this one too instead of losing it.
        return 0.0, 0.0, prev
    if d_running >= d_enabled:
        return float(d_value), 1.0, now
    return d_value * d_enabled / d_running, d_running / d_enabled, now


def parse_cpu_list(text: str) -> list[int]:
    """The kernel's CPU list format (`0-3,8`, as in sysfs `online`) → sorted CPU numbers."""
    cpus: set[int] = set()
    stripped = text.strip()
    if not stripped:
        return []
    for part in stripped.split(","):
        first, dash, last = part.strip().partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"{text.strip()!r} is not a CPU list (examples: 0-3,8 or 0,2,4)")
        low, high = int(first), int(last) if dash else int(first)
        if high < low:
            raise ValueError(f"{part.strip()!r} in {text.strip()!r} is a range that runs backwards")
        cpus.update(range(low, high + 1))
    return sorted(cpus)


def format_cpu_list(cpus: list[int] | set[int]) -> str:
    """Sorted CPU numbers → the kernel's list format (`0-3,8`)."""
    parts: list[str] = []
    ordered = sorted(cpus)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def hybrid_pmu_types(event_source_dir: str) -> dict[int, int]:
    """CPU → PMU type on heterogeneous CPUs; empty when one core PMU serves every CPU.

    Core PMUs list their CPUs in `cpus` (e.g. `cpu_core` and `cpu_atom` on Intel hybrids,
    `armv8_*` on big.LITTLE); a single one means the legacy encoding is enough.
    """
    try:
        names = sorted(os.listdir(event_source_dir))
    except OSError:
        return {}
    pmus: list[tuple[int, list[int]]] = []
    for name in names:
        base = os.path.join(event_source_dir, name)
        try:
            with open(os.path.join(base, "cpus"), encoding="ascii") as f:
                cpus = parse_cpu_list(f.read())
            with open(os.path.join(base, "type"), encoding="ascii") as f:
                pmu_type = int(f.read().strip())
        except (OSError, ValueError):
            continue
        pmus.append((pmu_type, cpus))
    if len(pmus) < 2:
        return {}
    return {cpu: pmu_type for pmu_type, cpus in pmus for cpu in cpus}
