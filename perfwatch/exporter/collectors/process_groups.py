"""CPU, memory, I/O, processes and threads per *group* of processes ("top processes"), from
/proc/<pid>/stat and /proc/<pid>/io. node_exporter has no such collector; process-exporter's
groups gave the idea.

A process's group comes from the first rule of `groups` that matches it: each rule has regexes for
`comm` (the kernel's 15-byte task name), `exe` (the base name of argv[0]) and `cmdline` (argv joined
by spaces), all that are given must match, and a `name` template (`{comm}`, `{exe}`, or a named
capture `(?P<app>…)` of the rule's regexes). A process no rule matches goes to `other` or nowhere
(`unmatched`); kernel threads all go to `kernel` unless `kernel_threads` says otherwise.

Cardinality is bounded whatever runs on the host: at most `max_groups` values of `group` (`other`
included, always present). A group name that finds no free slot folds into `other` (counted in
`perfwatch_process_groups_folded_…`). A group without processes for `forget_after` gives its slot up.
No PID is ever a label.

Counters stay monotonic when processes exit: a group's counters are the sum of its processes'
increases since the scrape before (a new process: all it used since it started), so what an exited
process used stays in its group, as in process-exporter. What a process used after the last scrape
that saw it alive is not counted (nothing reads a dead process' counters). A group that is
forgotten and comes back starts from 0 again: a counter reset, which rate() handles.

/proc/<pid>/io needs ptrace access to the process (root, CAP_SYS_PTRACE, or the same user): the
processes whose file cannot be read are counted per group, their I/O is not in the group's counters.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Callable, Iterator
from typing import Literal

from perfwatch.common.config import ConfigError, Duration, Regex
from perfwatch.common.families import Metric
from perfwatch.exporter.collectors.base import Collector, counter, gauge, parsing, read_proc_file, register

OTHER = "other"
KERNEL = "kernel"
PF_KTHREAD = 0x00200000  # task flag of a kernel thread (include/linux/sched.h), /proc/<pid>/stat field 9
MAX_NAME = 128  # a group name longer than this (a capture of a long command line) is cut
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_IO_FIELDS = (b"read_bytes", b"write_bytes", b"syscr", b"syscw")


@dataclasses.dataclass
class GroupRule:
    name: str = dataclasses.field(default="{comm}", metadata={
        "help": "The group's name: a template of `{comm}`, `{exe}` (argv[0]'s base name) and the named "
                "captures `(?P<x>…)` of this rule's regexes; or plain text."})
    comm: Regex | None = dataclasses.field(default=None, metadata={
        "help": "Regex the process' comm (its 15-byte task name, /proc/<pid>/comm) must match."})
    exe: Regex | None = dataclasses.field(default=None, metadata={
        "help": "Regex the base name of the process' argv[0] must match."})
    cmdline: Regex | None = dataclasses.field(default=None, metadata={
        "help": "Regex the process' command line (argv joined by spaces) must match."})

    def validate(self, key: str) -> None:
        known = {"comm", "exe"}
        for regex in (self.comm, self.exe, self.cmdline):
            if regex is not None:
                known |= set(regex.compiled.groupindex)
        if not self.name:
            raise ConfigError(f"{key}.name", "must not be empty")
        leftover = _PLACEHOLDER.sub("", self.name)
        if "{" in leftover or "}" in leftover:
            raise ConfigError(f"{key}.name", f"{self.name!r}: a brace outside a {{placeholder}}")
        for placeholder in _PLACEHOLDER.findall(self.name):
            if placeholder not in known:
                raise ConfigError(f"{key}.name", f"unknown placeholder {{{placeholder}}}; known here: "
                                  f"{', '.join(sorted(known))} (named captures of this rule's regexes)")


@dataclasses.dataclass
class ProcessGroupsOptions:
    groups: list[GroupRule] = dataclasses.field(default_factory=lambda: [GroupRule()], metadata={
        "help": "Rules, first match wins: `name` (template), `comm`, `exe`, `cmdline` (regexes, all given "
                "must match; none: every process). Default: one group per comm."})
    unmatched: Literal["other", "drop"] = dataclasses.field(default="other", metadata={
        "help": "Processes no rule matches: counted in group `other`, or left out (`drop`)."})
    kernel_threads: Literal["group", "rules", "drop"] = dataclasses.field(default="group", metadata={
        "help": "Kernel threads: all in group `kernel`, grouped by the rules like any process, or left out."})
    max_groups: int = dataclasses.field(default=50, metadata={
        "help": "Most values of the `group` label, `other` included; further group names fold into `other`."})
    top_n: int = dataclasses.field(default=5, metadata={
        "help": "perfwatch_process_group_rank for the top N groups by CPU (since the previous scrape) and "
                "by resident memory; 0: none."})
    io: bool = dataclasses.field(default=True, metadata={
        "help": "Read /proc/<pid>/io for the I/O counters (about a third of the cost per process)."})
    forget_after: Duration = dataclasses.field(default=Duration(600), metadata={
        "help": "A group without processes for this long gives its slot up (its series end)."})

    def validate(self, key: str) -> None:
        if not self.groups:
            raise ConfigError(f"{key}.groups", "needs at least one rule (the default groups by comm)")
        if not 2 <= self.max_groups <= 10_000:
            raise ConfigError(f"{key}.max_groups", f"must be between 2 (one group and `other`) and 10000, "
                              f"not {self.max_groups}")
        if self.top_n < 0:
            raise ConfigError(f"{key}.top_n", f"must be 0 (no rank) or more, not {self.top_n}")


class _Proc:
    """What the previous scrape saw of one process: its identity, group and counters."""

    __slots__ = ("comm", "folded", "io", "name", "start", "stime", "utime")

    def __init__(self, start: int, comm: bytes, name: str | None) -> None:
        self.start = start
        self.comm = comm
        self.name = name  # the rules' group name; None: in no group
        self.utime = self.stime = 0
        self.io: tuple[int, ...] | None = None  # read_bytes, write_bytes, syscr, syscw once read
        self.folded = False


class _Group:
    __slots__ = ("cpu_delta", "io", "last_seen", "processes", "rss", "stime", "threads", "unreadable",
                 "utime", "vsize")

    def __init__(self, now: float) -> None:
        self.utime = self.stime = 0  # clock ticks, summed exactly
        self.io = [0, 0, 0, 0]
        self.last_seen = now
        self.reset()

    def reset(self) -> None:
        self.processes = self.threads = self.rss = self.vsize = self.unreadable = self.cpu_delta = 0


def expand(template: str, values: dict[str, str]) -> str:
    """A group name from its template; cut at MAX_NAME (a capture may be a whole command line)."""
    return _PLACEHOLDER.sub(lambda m: values[m[1]], template)[:MAX_NAME]


def parse_io(data: bytes) -> tuple[int, ...]:
    values = {}
    for line in data.splitlines():
        key, _, number = line.partition(b":")
        values[key] = number
    return tuple(int(values[field]) for field in _IO_FIELDS)


@register
class ProcessGroupsCollector(Collector[ProcessGroupsOptions]):
    name = "process_groups"
    description = "CPU, memory, I/O, processes and threads per group of processes (by name), top N; off by default."
    default_enabled = False  # costs per process at every scrape (README: Top processes)

    def setup(self) -> None:
        self.clock_ticks = os.sysconf("SC_CLK_TCK")
        self.page_size = os.sysconf("SC_PAGE_SIZE")
        self.rules = [(rule.name, [(field, regex.compiled) for field, regex in
                                   (("comm", rule.comm), ("exe", rule.exe), ("cmdline", rule.cmdline))
                                   if regex is not None]) for rule in self.options.groups]
        # The command line costs a read per new process: only when a rule needs it.
        self.needs_cmdline = any(field != "comm" for _, matchers in self.rules for field, _ in matchers) or any(
            "{exe}" in name for name, _ in self.rules)
        self.procs: dict[str, _Proc] = {}
        self.groups: dict[str, _Group] = {OTHER: _Group(time.monotonic())}
        self.folded_total = 0

    # -- which group ---------------------------------------------------------------------------------

    def classify(self, pid: str, comm: str, flags: int) -> str | None:
        """The rules' group name for a process; None: in no group."""
        if flags & PF_KTHREAD and self.options.kernel_threads != "rules":
            return KERNEL if self.options.kernel_threads == "group" else None
        fields = {"comm": comm, "exe": "", "cmdline": ""}
        if self.needs_cmdline:
            raw = read_proc_file(f"{self.paths.procfs}/{pid}/cmdline") or b""
            argv = raw.rstrip(b"\0").split(b"\0")
            fields["exe"] = os.path.basename(argv[0]).decode("utf-8", "replace")
            fields["cmdline"] = b" ".join(argv).decode("utf-8", "replace")
        for template, matchers in self.rules:
            captures: dict[str, str] = {}
            for field, regex in matchers:
                match = regex.match(fields[field])
                if match is None:
                    break
                captures.update({k: v or "" for k, v in match.groupdict().items()})
            else:
                name = expand(template, {"comm": comm, "exe": fields["exe"], **captures})
                return name or (OTHER if self.options.unmatched == "other" else None)
        return OTHER if self.options.unmatched == "other" else None

    # -- one scrape ----------------------------------------------------------------------------------

    def read_processes(self) -> tuple[list[tuple[str, _Proc | None, str | None, list[int], bytes]], int]:
        """Every process' stat fields, its state from before (None: new) and its group name."""
        proc = self.paths.procfs
        with os.scandir(proc) as entries:
            pids = [e.name for e in entries if e.name.isdigit()]
        seen = []
        dropped = 0
        for pid in pids:
            path = f"{proc}/{pid}/stat"
            stat = read_proc_file(path)
            if not stat:
                continue
            with parsing(path):
                close = stat.rindex(b")")  # comm may hold spaces and ')'
                comm = stat[stat.index(b"(") + 1:close]
                fields = stat[close + 2:].split(None, 22)
                # proc(5) fields 9 flags, 14 utime, 15 stime, 20 num_threads, 22 starttime, 23 vsize, 24 rss
                numbers = [int(fields[i]) for i in (6, 11, 12, 17, 19, 20, 21)]
            before = self.procs.get(pid)
            if before is not None and before.start != numbers[4]:
                before = None  # the PID was reused
            if before is not None and before.comm == comm:
                name = before.name
            else:  # new, or renamed itself (exec, prctl): the rules again
                name = self.classify(pid, comm.decode("utf-8", "replace"), numbers[0])
            if name is None:
                dropped += 1
            seen.append((pid, before, name, numbers, comm))
        return seen, dropped

    def collect(self) -> Iterator[Metric]:
        now = time.monotonic()
        seen, dropped = self.read_processes()
        for group in self.groups.values():
            group.reset()
        self.allocate({name for _, _, name, _, _ in seen if name is not None}, seen, now)
        procs: dict[str, _Proc] = {}
        folded_names: set[str] = set()
        for pid, before, name, (_, utime, stime, threads, start, vsize, rss), comm in seen:
            state = before if before is not None else _Proc(start, comm, name)
            state.comm, state.name = comm, name
            procs[pid] = state
            if name is None:
                state.utime, state.stime = utime, stime
                continue
            slot = self.groups.get(name)
            if slot is None:  # no slot free: into `other`
                group = self.groups[OTHER]
                folded_names.add(name)
                if not state.folded:
                    self.folded_total += 1
                state.folded = True
            else:
                group = slot
                state.folded = False
            # Increases since the scrape before (everything, for a process not seen before): what a
            # process used stays in its group when it exits. max(): a counter never goes back.
            du, ds = max(utime - state.utime, 0), max(stime - state.stime, 0)
            state.utime, state.stime = utime, stime
            group.utime += du
            group.stime += ds
            group.cpu_delta += du + ds
            group.processes += 1
            group.threads += threads
            group.rss += rss
            group.vsize += vsize
            group.last_seen = now
            if self.options.io:
                self.add_io(pid, state, group)
        self.procs = procs
        self.forget(now)
        yield from self.families(folded_names, dropped)

    def allocate(self, names: set[str], seen: list[tuple[str, _Proc | None, str | None, list[int], bytes]],
                 now: float) -> None:
        """Give group names without a slot one while there are free slots, the busiest first."""
        new = names - self.groups.keys()
        free = self.options.max_groups - len(self.groups)
        if not new or free <= 0:
            return
        if len(new) > free:  # who gets the last slots: CPU used so far, then memory, then name
            weight: dict[str, list[int]] = {name: [0, 0] for name in new}
            for _, _, name, numbers, _ in seen:
                if name in weight:
                    weight[name][0] -= numbers[1] + numbers[2]
                    weight[name][1] -= numbers[6]
            new = set(sorted(new, key=lambda n: (weight[n], n))[:free])
        for name in new:
            self.groups[name] = _Group(now)

    def add_io(self, pid: str, state: _Proc, group: _Group) -> None:
        path = f"{self.paths.procfs}/{pid}/io"
        try:
            data = read_proc_file(path)
        except PermissionError:  # another user's process without CAP_SYS_PTRACE: count it, go on
            group.unreadable += 1
            return
        if not data:  # exited since its stat was read
            return
        with parsing(path):
            now = parse_io(data)
        before = state.io or (0, 0, 0, 0)
        for i, (value, old) in enumerate(zip(now, before, strict=True)):
            group.io[i] += max(value - old, 0)
        state.io = now

    def forget(self, now: float) -> None:
        for name, group in list(self.groups.items()):
            if name != OTHER and not group.processes and now - group.last_seen >= self.options.forget_after:
                del self.groups[name]

    # -- exposition ----------------------------------------------------------------------------------

    def families(self, folded_names: set[str], dropped: int) -> Iterator[Metric]:
        groups = sorted(self.groups.items())
        cpu = counter("process_group_cpu_seconds_total", "CPU time the group's processes used, by mode "
                      "(/proc/<pid>/stat utime, stime; exited processes' time stays).", labels=["group", "mode"])
        for name, group in groups:
            cpu.add_metric([name, "user"], group.utime / self.clock_ticks)
            cpu.add_metric([name, "system"], group.stime / self.clock_ticks)
        yield cpu
        per_group: tuple[tuple[str, str, Callable[[_Group], int]], ...] = (
            ("process_group_resident_memory_bytes", "Resident memory of the group's processes, summed "
             "(pages shared between them counted in each).", lambda g: g.rss * self.page_size),
            ("process_group_virtual_memory_bytes", "Virtual memory size of the group's processes, summed.",
             lambda g: g.vsize),
            ("process_group_processes", "Processes in the group.", lambda g: g.processes),
            ("process_group_threads", "Threads of the group's processes.", lambda g: g.threads),
        )
        for metric, doc, get in per_group:
            family = gauge(metric, doc, labels=["group"])
            for name, group in groups:
                family.add_metric([name], float(get(group)))
            yield family
        if self.options.io:
            for index, metric, doc in (
                    (0, "process_group_read_bytes_total", "Bytes the group's processes caused to be read "
                     "from storage (/proc/<pid>/io read_bytes)."),
                    (1, "process_group_written_bytes_total", "Bytes the group's processes caused to be "
                     "written to storage (/proc/<pid>/io write_bytes)."),
                    (2, "process_group_read_syscalls_total", "Read system calls of the group's processes "
                     "(/proc/<pid>/io syscr)."),
                    (3, "process_group_write_syscalls_total", "Write system calls of the group's processes "
                     "(/proc/<pid>/io syscw).")):
                io = counter(metric, doc, labels=["group"])
                for name, group in groups:
                    io.add_metric([name], float(group.io[index]))
                yield io
            unreadable = gauge("process_group_io_unreadable_processes", "Processes of the group whose "
                               "/proc/<pid>/io could not be read (permission): not in the I/O counters.",
                               labels=["group"])
            for name, group in groups:
                unreadable.add_metric([name], float(group.unreadable))
            yield unreadable
        if self.options.top_n:
            rank = gauge("process_group_rank", "Rank (1 = most) of the top groups by CPU used since the "
                         "previous scrape and by resident memory.", labels=["by", "group"])
            keys: tuple[tuple[str, Callable[[_Group], int]], ...] = (
                ("cpu", lambda g: g.cpu_delta), ("memory", lambda g: g.rss))
            for by, key in keys:
                # Only groups that used some: an idle group is no "top" group.
                ranked = sorted((-key(g), name) for name, g in groups if key(g) > 0)
                top = ranked[:self.options.top_n]
                for position, (_, name) in enumerate(top, 1):
                    rank.add_metric([by, name], float(position))
            yield rank
        yield gauge("process_groups_folded_groups", "Group names folded into `other` at this scrape "
                    "because max_groups was reached.", float(len(folded_names)))
        yield counter("process_groups_folded_processes_total", "Processes counted in `other` because their "
                      "group found no free slot (max_groups), each once.", float(self.folded_total))
        yield gauge("process_groups_dropped_processes", "Processes in no group (unmatched: drop, "
                    "kernel_threads: drop).", float(dropped))
