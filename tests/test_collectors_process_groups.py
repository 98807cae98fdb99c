"""The process_groups collector ("top processes"): named child processes burning known CPU and
holding known memory, seen in their group and in the top N, through a real exporter; the cap on
groups; counters that survive exiting processes; a fake /proc tree for the exact arithmetic."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from support.exposition import samples, value, values
from support.hostfiles import write
from support.prometheus import promtool
from test_perf_kernel import ensure_unprivileged_user

from perfwatch.common.config import ConfigError
from perfwatch.exporter.collectors import load_all
from perfwatch.exporter.settings import load_settings

if TYPE_CHECKING:
    from conftest import StartExporter

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 1 << 20
CPU = "perfwatch_process_group_cpu_seconds_total"

# A child that names itself (prctl PR_SET_NAME, what /proc/<pid>/comm shows), holds N MiB it has
# written to (so they are resident), and burns CPU on request: "burn SECONDS" answers with the CPU
# time it really used (its own clock, exact to the nanosecond).
CHILD = r"""
import ctypes, sys, time
name, mib = sys.argv[1].encode(), int(sys.argv[2])
ctypes.CDLL(None).prctl(15, ctypes.c_char_p(name), 0, 0, 0)  # PR_SET_NAME
held = b"\x01" * (mib << 20)
print("ready", flush=True)
for line in sys.stdin:
    command = line.split()
    if command[0] == "burn":
        start = time.process_time()
        while time.process_time() - start < float(command[1]):
            pass
        print("burnt", time.process_time() - start, flush=True)
    elif command[0] == "write":
        import os
        fd = os.open(command[1], os.O_WRONLY | os.O_CREAT, 0o600)
        for _ in range(int(command[2])):
            os.write(fd, b"x" * 65536)
        os.fsync(fd)
        os.close(fd)
        print("written", flush=True)
    elif command[0] == "exit":
        break
"""


class Child:
    """A named child process (see CHILD); `argv0` is what its argv[0] reads (`exec -a`)."""

    def __init__(self, script: Path, name: str, mib: int = 0, argv0: str | None = None) -> None:
        self.proc = subprocess.Popen([argv0 or sys.executable, str(script), name, str(mib)],
                                     executable=sys.executable, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        assert self.read() == "ready"

    def read(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        assert line, f"child exited with {self.proc.poll()}"
        return line

    def burn(self, seconds: float) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"burn {seconds}\n")
        self.proc.stdin.flush()
        word, used = self.read().split()
        assert word == "burnt"
        return float(used)

    def write(self, path: Path, chunks: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"write {path} {chunks}\n")
        self.proc.stdin.flush()
        assert self.read() == "written"

    def exit(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("exit\n")
            self.proc.stdin.flush()
            self.proc.wait(10)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Any]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    children: list[Child] = []

    def start(name: str, mib: int = 0, argv0: str | None = None) -> Child:
        child = Child(script, name, mib, argv0)
        children.append(child)
        return child

    yield start
    for child in children:
        if child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait()


def config(settings: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
    """The exporter with only process_groups on, with these options (and top-level `settings`)."""
    collectors: dict[str, Any] = {name: {"enabled": False} for name in load_all()}
    collectors["process_groups"] = {"enabled": True, **options}
    return {"collectors": collectors, **(settings or {})}


def ours(pattern: str = "pw.*", **options: Any) -> dict[str, Any]:
    """Only the test's children, each group by its comm: the host's other processes are left out."""
    return config(groups=[{"comm": pattern, "name": "{comm}"}], unmatched="drop", kernel_threads="drop", **options)


def cpu(text: str, group: str) -> float:
    return sum(value(text, CPU, group=group, mode=mode) for mode in ("user", "system"))


def groups_in(text: str) -> set[str]:
    return {s.labels["group"] for s in samples(text) if s.name.startswith("perfwatch_process_group_")}


# -- real processes ----------------------------------------------------------------------------------

def test_named_children_show_their_cpu_memory_and_rank(start_exporter: StartExporter, spawn: Any) -> None:
    burner = spawn("pwburner", mib=96)
    idler = spawn("pwidler", mib=0)
    worker = spawn("pwexe", argv0="/opt/pw/pwexe-worker")  # grouped by argv[0], not by comm
    exporter = start_exporter(config(top_n=3, unmatched="drop", kernel_threads="drop", groups=[
        {"exe": "pwexe-(?P<role>.+)", "name": "exe-{role}"},
        {"comm": "pw(burner|idler)"},  # name: {comm}, the default
    ]))
    before = exporter.scrape()
    used = burner.burn(1.0)
    after = exporter.scrape()
    assert groups_in(after) == {"pwburner", "pwidler", "exe-worker", "other"}
    # CPU: what the burner's own clock says it used, to within a few clock ticks (/proc counts in ticks).
    grown = cpu(after, "pwburner") - cpu(before, "pwburner")
    assert abs(grown - used) <= 0.05, (grown, used)
    assert cpu(after, "pwidler") - cpu(before, "pwidler") <= 0.05
    # Memory: the same interpreter holding 96 MiB more, within 8 MiB.
    rss = values(after, "perfwatch_process_group_resident_memory_bytes")
    held = rss[frozenset({("group", "pwburner")})] - rss[frozenset({("group", "pwidler")})]
    assert abs(held - 96 * MIB) <= 8 * MIB, held / MIB
    assert value(after, "perfwatch_process_group_virtual_memory_bytes", group="pwburner") >= 96 * MIB
    for group in ("pwburner", "pwidler", "exe-worker"):
        assert value(after, "perfwatch_process_group_processes", group=group) == 1
        assert value(after, "perfwatch_process_group_threads", group=group) == 1
    assert value(after, "perfwatch_process_group_processes", group="other") == 0
    # The top N: the burner used the most CPU since the scrape before, and holds the most memory.
    assert value(after, "perfwatch_process_group_rank", by="cpu", group="pwburner") == 1
    assert value(after, "perfwatch_process_group_rank", by="memory", group="pwburner") == 1
    assert value(after, "perfwatch_process_group_rank", by="memory", group="pwidler") in (2, 3)
    assert worker.proc.poll() is None and idler.proc.poll() is None
    # The exporter's own process and everything else on the host: dropped, counted.
    assert value(after, "perfwatch_process_groups_dropped_processes") > 0


def test_io_counters_follow_what_a_child_writes(start_exporter: StartExporter, spawn: Any, tmp_path: Path) -> None:
    writer = spawn("pwwriter")
    exporter = start_exporter(ours())
    before = exporter.scrape()
    writer.write(tmp_path / "out", 64)  # 64 write(2) calls of 64 KiB, then fsync: 4 MiB to storage
    after = exporter.scrape()

    def grown(name: str) -> float:
        return value(after, name, group="pwwriter") - value(before, name, group="pwwriter")

    assert 64 <= grown("perfwatch_process_group_write_syscalls_total") <= 64 + 4  # + its "written" reply
    fs_type = subprocess.run(["stat", "-f", "--format=%T", str(tmp_path)], capture_output=True, text=True,
                             check=True).stdout.strip()
    if fs_type == "tmpfs":  # no block device under it: the kernel accounts no storage writes
        assert grown("perfwatch_process_group_written_bytes_total") == 0
    else:
        assert 4 * MIB <= grown("perfwatch_process_group_written_bytes_total") <= 4 * MIB + 64 * 1024, fs_type
    assert value(after, "perfwatch_process_group_io_unreadable_processes", group="pwwriter") == 0


def test_cap_folds_extra_groups_into_other_and_never_exceeds_max_groups(start_exporter: StartExporter,
                                                                        spawn: Any) -> None:
    children = [spawn(f"pwcap{i}") for i in range(6)]
    exporter = start_exporter(ours("pwcap.", max_groups=4))
    for _ in range(3):
        text = exporter.scrape()
        found = groups_in(text)
        assert len(found) == 4 and "other" in found, found
        assert value(text, "perfwatch_process_group_processes", group="other") == 3
        assert sum(values(text, "perfwatch_process_group_processes").values()) == 6
        assert value(text, "perfwatch_process_groups_folded_groups") == 3
        assert value(text, "perfwatch_process_groups_folded_processes_total") == 3  # each process once
    assert all(c.proc.poll() is None for c in children)


def test_default_config_on_the_whole_host_stays_under_the_cap(start_exporter: StartExporter) -> None:
    """Every process of this host, one group per comm, kernel threads as one: capped at 5 values."""
    exporter = start_exporter(config(max_groups=5))
    for _ in range(3):
        text = exporter.scrape()
        assert value(text, "node_scrape_collector_success", collector="process_groups") == 1
        found = groups_in(text)
        assert len(found) == 5 and "other" in found, found  # this host runs far more than 4 comms
        assert value(text, "perfwatch_process_group_processes", group="other") > 0
        assert "pid" not in {k for s in samples(text) for k in s.labels}


def test_exited_processes_keep_their_cpu_in_the_group(start_exporter: StartExporter, spawn: Any) -> None:
    first, second = spawn("pwexit"), spawn("pwexit")
    exporter = start_exporter(ours())
    first.burn(0.3)
    second.burn(0.2)
    both = exporter.scrape()
    assert value(both, "perfwatch_process_group_processes", group="pwexit") == 2
    assert cpu(both, "pwexit") >= 0.45
    first.exit()
    one = exporter.scrape()
    assert value(one, "perfwatch_process_group_processes", group="pwexit") == 1
    assert cpu(one, "pwexit") >= cpu(both, "pwexit")  # the exited one's 0.3 s stay
    second.exit()
    none = exporter.scrape()
    assert value(none, "perfwatch_process_group_processes", group="pwexit") == 0  # kept (forget_after: 10m)
    assert cpu(none, "pwexit") >= cpu(one, "pwexit")
    for name in ("perfwatch_process_group_resident_memory_bytes", "perfwatch_process_group_threads"):
        assert value(none, name, group="pwexit") == 0


def test_a_freed_slot_goes_to_a_folded_group_and_other_never_goes_back(start_exporter: StartExporter,
                                                                       spawn: Any) -> None:
    first = spawn("pwslotA")
    exporter = start_exporter(ours("pwslot.", max_groups=2, forget_after="1s"))
    assert groups_in(exporter.scrape()) == {"pwslotA", "other"}
    second = spawn("pwslotB")
    second.burn(0.2)
    folded = exporter.scrape()
    assert groups_in(folded) == {"pwslotA", "other"}
    assert cpu(folded, "other") >= 0.15  # pwslotB's, folded
    first.exit()
    exporter.scrape()  # pwslotA is empty now; its slot is free once forget_after has passed
    time.sleep(1.2)
    exporter.scrape()
    text = exporter.scrape()
    assert groups_in(text) == {"pwslotB", "other"}
    assert value(text, "perfwatch_process_group_processes", group="pwslotB") == 1
    assert value(text, "perfwatch_process_group_processes", group="other") == 0
    assert cpu(text, "other") >= cpu(folded, "other")
    assert value(text, "perfwatch_process_groups_folded_groups") == 0


def test_processes_coming_and_going_during_scrapes_never_fail_one(start_exporter: StartExporter) -> None:
    exporter = start_exporter(config(groups=[{"cmdline": ".*", "name": "{exe}"}]))  # reads cmdline too
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            subprocess.run(["true"], check=True)

    workers = [threading.Thread(target=churn) for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        for _ in range(25):
            text = exporter.scrape()
            assert value(text, "node_scrape_collector_success", collector="process_groups") == 1
    finally:
        stop.set()
        for worker in workers:
            worker.join()


def test_io_of_other_users_processes_is_counted_as_unreadable(start_exporter: StartExporter, spawn: Any) -> None:
    """As another user, root's processes' /proc/<pid>/io is refused (ptrace access): counted, no failure."""
    if os.geteuid() != 0:
        pytest.fail("this test runs the exporter as another user: it needs root (scripts/test runs as root)")
    spawn("pwroot")  # a process of root's
    user = ensure_unprivileged_user()
    shared = Path(tempfile.mkdtemp(prefix="perfwatch-procgroups-"))  # tmp_path is private to root
    try:
        shared.chmod(0o755)
        path = shared / "exporter.yml"
        # The exporter's own process by its (unique) config path in its command line.
        path.write_text(yaml.safe_dump(config(groups=[{"comm": "pwroot"}, {"cmdline": f".* --config {path}",
                                                                          "name": "exporter"}], unmatched="drop")))
        path.chmod(0o644)
        exporter = start_exporter(None, "--config", str(path), user=user)
        text = exporter.scrape()
    finally:
        shutil.rmtree(shared)
    assert value(text, "node_scrape_collector_success", collector="process_groups") == 1
    assert value(text, "perfwatch_process_group_io_unreadable_processes", group="pwroot") == 1
    assert value(text, "perfwatch_process_group_processes", group="pwroot") == 1
    # Its CPU and memory come from /proc/<pid>/stat, which anyone may read.
    assert value(text, "perfwatch_process_group_resident_memory_bytes", group="pwroot") > 0
    # The exporter's own process is nobody's: its I/O is read.
    assert value(text, "perfwatch_process_group_processes", group="exporter") == 1
    assert value(text, "perfwatch_process_group_io_unreadable_processes", group="exporter") == 0
    assert value(text, "perfwatch_process_group_read_syscalls_total", group="exporter") > 0


def test_hostile_names_render_clean_for_promtool(start_exporter: StartExporter, spawn: Any) -> None:
    names = ['pw"q\\x', "pw\nline", "pwé✓", "pw{x}"]  # quote and backslash, newline, unicode, braces
    for name in names:
        spawn(name)
    exporter = start_exporter(ours("pw(?s:.*)"))  # `.` matches no newline unless told (RE2's neither)
    text = exporter.scrape()
    result = promtool("check", "metrics", stdin=text)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr
    assert groups_in(text) == {*names, "other"}  # each label value read back as the kernel has it


# -- a fake /proc: the arithmetic, exactly ---------------------------------------------------------------

def stat_line(pid: int, comm: str, utime: int, stime: int, *, threads: int = 1, start: int = 1000,
              vsize: int = 0, rss: int = 0, flags: int = 0x400100) -> str:
    """A /proc/<pid>/stat line (proc(5)) with the fields the collector reads; the rest plausible."""
    fields = [str(pid), f"({comm})", "S", "1", str(pid), str(pid), "0", "-1", str(flags), "10", "0", "0", "0",
              str(utime), str(stime), "0", "0", "20", "0", str(threads), "0", str(start), str(vsize), str(rss)]
    fields += ["18446744073709551615"] + ["0"] * 27
    return " ".join(fields) + "\n"


def io_file(read_bytes: int, write_bytes: int, syscr: int, syscw: int) -> str:
    return (f"rchar: {read_bytes + 5}\nwchar: {write_bytes + 7}\nsyscr: {syscr}\nsyscw: {syscw}\n"
            f"read_bytes: {read_bytes}\nwrite_bytes: {write_bytes}\ncancelled_write_bytes: 0\n")


def test_fake_proc_tree_exact_sums_and_counters_across_exit_reuse_and_rename(start_exporter: StartExporter,
                                                                             tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    write(proc, {
        # group app-web: two processes, one named by a capture of its command line
        "100/stat": stat_line(100, "web worker) S", 250, 50, threads=3, vsize=100 * MIB, rss=2560),
        "100/io": io_file(4096, 8192, 10, 20),
        "100/cmdline": "/usr/bin/app\0--role=web\0",
        "101/stat": stat_line(101, "web", 100, 0, vsize=10 * MIB, rss=1000),
        "101/io": io_file(1, 2, 3, 4),
        "101/cmdline": "app\0--role=web\0",
        "200/stat": stat_line(200, "db", 500, 500, threads=8, start=2000, rss=100),
        "200/io": io_file(0, 0, 0, 0),
        "200/cmdline": "/usr/lib/db/dbd\0-D\0/var/db\0",
        "2/stat": stat_line(2, "kthreadd", 0, 7, flags=0x208040),  # a kernel thread (PF_KTHREAD)
        "2/io": io_file(0, 0, 0, 0),
        "300/stat": stat_line(300, "zzz", 1, 1),  # no io file: it exited between the two reads
        "301/stat": "",  # exited between open and read
        "self": "not a pid",
    })
    rules = [{"cmdline": "\\S*app --role=(?P<role>\\w+).*", "name": "app-{role}"},
             {"exe": "dbd", "name": "database"}]
    exporter = start_exporter(config({"procfs": str(proc)}, groups=rules))
    text = exporter.scrape()
    assert value(text, "node_scrape_collector_success", collector="process_groups") == 1
    assert groups_in(text) == {"app-web", "database", "kernel", "other"}
    assert value(text, CPU, group="app-web", mode="user") == 350 / TICK
    assert value(text, CPU, group="app-web", mode="system") == 50 / TICK
    assert value(text, CPU, group="database", mode="user") == 500 / TICK
    assert value(text, CPU, group="kernel", mode="system") == 7 / TICK
    assert value(text, CPU, group="other", mode="user") == 1 / TICK  # zzz: unmatched
    assert value(text, "perfwatch_process_group_resident_memory_bytes", group="app-web") == 3560 * PAGE
    assert value(text, "perfwatch_process_group_virtual_memory_bytes", group="app-web") == 110 * MIB
    assert value(text, "perfwatch_process_group_processes", group="app-web") == 2
    assert value(text, "perfwatch_process_group_threads", group="app-web") == 4
    assert value(text, "perfwatch_process_group_threads", group="database") == 8
    assert value(text, "perfwatch_process_group_read_bytes_total", group="app-web") == 4097
    assert value(text, "perfwatch_process_group_written_bytes_total", group="app-web") == 8194
    assert value(text, "perfwatch_process_group_read_syscalls_total", group="app-web") == 13
    assert value(text, "perfwatch_process_group_write_syscalls_total", group="app-web") == 24
    assert value(text, "perfwatch_process_group_processes", group="other") == 1  # 300 counts; 301 is gone
    assert value(text, "perfwatch_process_group_rank", by="cpu", group="database") == 1
    assert value(text, "perfwatch_process_group_rank", by="cpu", group="app-web") == 2
    assert value(text, "perfwatch_process_group_rank", by="memory", group="app-web") == 1

    # 101 exits; 100 uses 100 more ticks and reads 1000 bytes; PID 200 is reused by a new db process
    # (another start time) that has used less than the old one; 102 is new; zzz renames itself "db".
    (proc / "101/stat").unlink()
    write(proc, {
        "100/stat": stat_line(100, "web worker) S", 350, 50, threads=3, vsize=100 * MIB, rss=2560),
        "100/io": io_file(5096, 8192, 11, 20),
        "102/stat": stat_line(102, "web", 20, 0, start=3000),
        "102/cmdline": "app\0--role=web\0",
        "200/stat": stat_line(200, "db", 10, 0, start=3001),
        "300/stat": stat_line(300, "db", 2, 1),
        "300/cmdline": "dbd\0",
    })
    text = exporter.scrape()
    assert value(text, CPU, group="app-web", mode="user") == (350 + 100 + 20) / TICK  # 101's 100 stay
    assert value(text, CPU, group="database", mode="user") == (500 + 10 + 1) / TICK  # renamed zzz: its +1 only
    assert value(text, CPU, group="other", mode="user") == 1 / TICK
    assert value(text, "perfwatch_process_group_processes", group="database") == 2
    assert value(text, "perfwatch_process_group_processes", group="other") == 0
    assert value(text, "perfwatch_process_group_read_bytes_total", group="app-web") == 5097
    assert value(text, "perfwatch_process_group_read_syscalls_total", group="app-web") == 14
    assert value(text, "perfwatch_process_group_rank", by="cpu", group="app-web") == 1  # 120 ticks against 11


def test_fake_proc_tree_unmatched_and_kernel_threads_dropped(start_exporter: StartExporter, tmp_path: Path) -> None:
    proc = write(tmp_path / "proc", {
        "10/stat": stat_line(10, "keep", 5, 5), "10/io": io_file(0, 0, 0, 0),
        "11/stat": stat_line(11, "other-thing", 9, 9),
        "2/stat": stat_line(2, "kthreadd", 0, 7, flags=0x208040),
        "12/stat": stat_line(12, "long", 1, 1), "12/cmdline": "a" * 300 + "\0",
    })
    rules = [{"comm": "keep"}, {"cmdline": "(?P<all>a+)", "name": "{all}"}]  # a capture of 300 characters
    exporter = start_exporter(config({"procfs": str(proc)}, groups=rules, unmatched="drop",
                                     kernel_threads="drop", top_n=0, io=False))
    text = exporter.scrape()
    assert groups_in(text) == {"keep", "a" * 128, "other"}  # a group name is cut at 128 characters
    assert value(text, "perfwatch_process_groups_dropped_processes") == 2
    assert value(text, CPU, group="other", mode="user") == 0
    assert "perfwatch_process_group_rank" not in {s.name for s in samples(text)}
    assert "perfwatch_process_group_read_bytes_total" not in {s.name for s in samples(text)}


# -- config ----------------------------------------------------------------------------------------

BAD_CONFIGS = [
    ({"groups": [{"comm": "("}]}, "collectors.process_groups.groups[0].comm", "invalid regular expression"),
    ({"groups": [{"comm": "a"}, {"name": "{app}"}]}, "collectors.process_groups.groups[1].name", "{app}"),
    ({"groups": [{"comm": "(?P<app>x)", "name": "{ap}"}]}, "collectors.process_groups.groups[0].name", "app"),
    ({"groups": [{"name": "a}b"}]}, "collectors.process_groups.groups[0].name", "brace"),
    ({"groups": [{"comms": "x"}]}, "collectors.process_groups.groups[0].comms", "did you mean 'comm'"),
    ({"groups": []}, "collectors.process_groups.groups", "at least one"),
    ({"groups": "x"}, "collectors.process_groups.groups", "must be a list"),
    ({"groups": [{"name": ""}]}, "collectors.process_groups.groups[0].name", "empty"),
    ({"max_groups": 1}, "collectors.process_groups.max_groups", "between 2"),
    ({"top_n": -1}, "collectors.process_groups.top_n", "0 (no rank) or more"),
    ({"unmatched": "keep"}, "collectors.process_groups.unmatched", "other, drop"),
    ({"kernel_threads": True}, "collectors.process_groups.kernel_threads", "group, rules, drop"),
    ({"forget_after": "soon"}, "collectors.process_groups.forget_after", "not a duration"),
    ({"io": "yes"}, "collectors.process_groups.io", "true or false"),
]


@pytest.mark.parametrize(("options", "key", "message"), BAD_CONFIGS, ids=[c[1].split(".", 2)[2] + "-" + c[2][:12]
                                                                           for c in BAD_CONFIGS])
def test_config_errors_name_the_key(tmp_path: Path, options: dict[str, Any], key: str, message: str) -> None:
    path = tmp_path / "exporter.yml"
    path.write_text(yaml.safe_dump({"collectors": {"process_groups": {"enabled": True, **options}}}))
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert caught.value.key == key and message in caught.value.message, str(caught.value)


def test_off_by_default_and_listed_with_the_others(tmp_path: Path) -> None:
    _, collectors = load_settings(None)
    assert collectors["process_groups"].enabled is False
    listed = subprocess.run([sys.executable, "-m", "perfwatch.exporter", "--list-collectors"], capture_output=True,
                            text=True, timeout=60, check=True).stdout
    assert any(line.split()[:2] == ["process_groups", "disabled"] for line in listed.splitlines()), listed
    bad = tmp_path / "bad.yml"
    bad.write_text("collectors:\n  process_groups:\n    max_groups: 0\n")
    result = subprocess.run([sys.executable, "-m", "perfwatch.exporter", "--config", str(bad)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and "collectors.process_groups.max_groups" in result.stderr


def test_the_compose_config_enables_it_with_valid_groups() -> None:
    repo = Path(__file__).resolve().parents[1]
    _, collectors = load_settings(repo / "provisioning/perfwatch/exporter.yml")
    assert collectors["process_groups"].enabled is True
    assert collectors["process_groups"].options.max_groups <= 50
