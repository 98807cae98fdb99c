"""The host collectors on this machine's real /proc and /sys, scraped over HTTP from a real exporter.

Each value is checked against the kernel's own file read in the same test: counters must lie
between a read just before the scrape and one just after it.
"""

from __future__ import annotations

import os
import platform
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from support.exposition import names, value, values

from perfwatch.exporter.collectors.filesystem import FilesystemOptions, parse_mounts

if TYPE_CHECKING:
    from conftest import StartExporter


def read(path: str) -> str:
    return Path(path).read_text()


def by_label(text: str, name: str, label: str) -> dict[str, float]:
    return {dict(k)[label]: v for k, v in values(text, name).items()}


def assert_between(got: float, before: float, after: float, what: object) -> None:
    low, high = min(before, after), max(before, after)
    assert low <= got <= high, (what, before, got, after)


def proc_stat_cpu_seconds() -> dict[tuple[str, str], float]:
    hz = os.sysconf("SC_CLK_TCK")
    modes = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and not line.startswith("cpu "):
            fields = line.split()
            for mode, v in zip(modes, fields[1:], strict=False):
                out[(fields[0][3:], mode)] = int(v) / hz
    return out


def test_cpu_seconds_match_proc_stat(start_exporter: StartExporter) -> None:
    exporter = start_exporter()
    before = proc_stat_cpu_seconds()
    text = exporter.scrape()
    after = proc_stat_cpu_seconds()
    exported = values(text, "perfwatch_cpu_seconds_total")
    cpus = os.cpu_count()
    assert cpus is not None
    assert len(exported) == len(before) == cpus * 8
    for (cpu, mode), low in before.items():
        got = exported[frozenset({("cpu", cpu), ("mode", mode)})]
        # Between the two reads the kernel moves on; allow that plus one tick either side.
        assert low - 0.011 <= got <= after[(cpu, mode)] + 0.011, (cpu, mode, low, got)


def test_memtotal_exact(start_exporter: StartExporter) -> None:
    text = start_exporter().scrape()
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    assert value(text, "perfwatch_memory_total_bytes") == int(meminfo["MemTotal"].split()[0]) * 1024
    swap_total = int(meminfo["SwapTotal"].split()[0]) * 1024
    assert value(text, "perfwatch_swap_total_bytes") == swap_total


def diskstats() -> dict[str, list[int]]:
    return {f[2]: [int(x) for x in f[3:]] for f in (line.split() for line in read("/proc/diskstats").splitlines())}


def test_diskstats_per_device_match_proc(start_exporter: StartExporter) -> None:
    exporter = start_exporter()
    before = diskstats()
    text = exporter.scrape()
    after = diskstats()
    exclude = re.compile(r"^(ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$")
    expected_devices = {d for d in before if not exclude.match(d)}
    assert expected_devices, "no block device on this machine to compare"
    read_bytes = by_label(text, "perfwatch_disk_read_bytes_total", "device")
    assert set(read_bytes) == expected_devices
    checks = {"perfwatch_disk_reads_completed_total": (0, 1), "perfwatch_disk_read_bytes_total": (2, 512),
              "perfwatch_disk_writes_completed_total": (4, 1), "perfwatch_disk_written_bytes_total": (6, 512),
              "perfwatch_disk_write_time_seconds_total": (7, 0.001), "perfwatch_disk_io_time_seconds_total": (9, 0.001)}
    for device in expected_devices:
        for name, (column, scale) in checks.items():
            got = value(text, name, device=device)
            assert_between(got, before[device][column] * scale - 1e-9, after[device][column] * scale + 1e-9,
                           (name, device))
    assert not any(d.startswith(("loop", "ram")) for d in read_bytes)


def net_dev() -> dict[str, list[int]]:
    out = {}
    for line in read("/proc/net/dev").splitlines()[2:]:
        name, _, rest = line.partition(":")
        out[name.strip()] = [int(x) for x in rest.split()]
    return out


def test_netdev_per_interface_match_proc(start_exporter: StartExporter) -> None:
    exporter = start_exporter()
    before = net_dev()
    text = exporter.scrape()
    after = net_dev()
    interfaces = set(by_label(text, "perfwatch_network_receive_bytes_total", "interface"))
    assert interfaces == set(before) - {"lo"}
    columns = {"receive_bytes": 0, "receive_packets": 1, "receive_errors": 2, "receive_drops": 3,
               "transmit_bytes": 8, "transmit_packets": 9, "transmit_errors": 10, "transmit_drops": 11}
    for interface in interfaces:
        for metric, column in columns.items():
            got = value(text, f"perfwatch_network_{metric}_total", interface=interface)
            assert_between(got, before[interface][column], after[interface][column], (metric, interface))


def test_filesystem_sizes_match_statvfs(start_exporter: StartExporter) -> None:
    text = start_exporter().scrape()
    sizes = values(text, "perfwatch_filesystem_size_bytes")
    mounts = {dict(k)["mountpoint"]: dict(k) for k in sizes}
    assert "/" in mounts, mounts
    root_mount = next(m for m in reversed(parse_mounts(read("/proc/1/mounts"))) if m.mountpoint == "/")
    assert mounts["/"]["fstype"] == root_mount.fstype and mounts["/"]["device"] == root_mount.device
    options = FilesystemOptions()
    for mountpoint, labels in mounts.items():
        assert not options.mount_points_exclude.compiled.match(mountpoint), mountpoint
        assert not options.fs_types_exclude.compiled.match(labels["fstype"]), labels
        st = os.statvfs(mountpoint)
        assert value(text, "perfwatch_filesystem_size_bytes", **labels) == st.f_blocks * st.f_frsize
        assert value(text, "perfwatch_filesystem_files", **labels) == st.f_files
        assert value(text, "perfwatch_filesystem_readonly", **labels) == (1 if st.f_flag & os.ST_RDONLY else 0)
        assert value(text, "perfwatch_filesystem_device_error", **labels) == 0
        # Free space moves while other work runs: within 256 MiB and 10000 inodes of a read now.
        assert abs(value(text, "perfwatch_filesystem_avail_bytes", **labels) - st.f_bavail * st.f_frsize) < 2**28
        assert abs(value(text, "perfwatch_filesystem_free_bytes", **labels) - st.f_bfree * st.f_frsize) < 2**28
        assert abs(value(text, "perfwatch_filesystem_files_free", **labels) - st.f_ffree) < 10000
    assert not {"/proc", "/sys", "/dev"} & set(mounts)


def proc_stat() -> dict[str, int]:
    out = {}
    for line in read("/proc/stat").splitlines():
        key, _, rest = line.partition(" ")
        if key in ("ctxt", "intr", "processes", "btime"):
            out[key] = int(rest.split()[0])
    return out


def softirqs() -> dict[str, int]:
    return {kind.strip().lower(): sum(map(int, counts.split()))
            for kind, _, counts in (line.partition(":") for line in read("/proc/softirqs").splitlines()[1:])}


def vmstat() -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in read("/proc/vmstat").splitlines())}


def test_stat_softirqs_vmstat_match_proc(start_exporter: StartExporter) -> None:
    exporter = start_exporter()
    stat0, soft0, vm0 = proc_stat(), softirqs(), vmstat()
    text = exporter.scrape()
    stat1, soft1, vm1 = proc_stat(), softirqs(), vmstat()
    for name, key in (("context_switches_total", "ctxt"), ("interrupts_total", "intr"), ("forks_total", "processes")):
        assert_between(value(text, f"perfwatch_{name}"), stat0[key], stat1[key], name)
    assert value(text, "perfwatch_procs_running") >= 1  # the exporter itself, reading /proc/stat
    assert value(text, "perfwatch_procs_blocked") >= 0
    exported = by_label(text, "perfwatch_softirqs_total", "type")
    assert set(exported) == set(soft0) and {"timer", "net_rx", "sched"} <= set(exported)
    for kind, got in exported.items():
        assert_between(got, soft0[kind], soft1[kind], kind)
    for name, key, scale in (("page_faults_total", "pgfault", 1), ("major_page_faults_total", "pgmajfault", 1),
                             ("paged_in_bytes_total", "pgpgin", 1024), ("paged_out_bytes_total", "pgpgout", 1024),
                             ("oom_kills_total", "oom_kill", 1)):
        assert_between(value(text, f"perfwatch_{name}"), vm0[key] * scale, vm1[key] * scale, name)


def test_loadavg_filefd_time_processes_match_proc(start_exporter: StartExporter) -> None:
    exporter = start_exporter()
    load0, file0, t0 = read("/proc/loadavg").split(), read("/proc/sys/fs/file-nr").split(), time.time()
    pids0 = {p for p in os.listdir("/proc") if p.isdigit()}
    text = exporter.scrape()
    load1, file1, t1 = read("/proc/loadavg").split(), read("/proc/sys/fs/file-nr").split(), time.time()
    pids1 = {p for p in os.listdir("/proc") if p.isdigit()}
    for i, minutes in enumerate((1, 5, 15)):
        assert value(text, f"perfwatch_load{minutes}") in (float(load0[i]), float(load1[i]))
    assert value(text, "perfwatch_filefd_maximum") == int(file0[2])
    assert abs(value(text, "perfwatch_filefd_allocated") - int(file1[0])) < 1000
    assert value(text, "perfwatch_boot_time_seconds") == proc_stat()["btime"]
    assert_between(value(text, "perfwatch_time_seconds"), t0, t1, "time")
    processes = sum(values(text, "perfwatch_processes").values())
    assert len(pids0 & pids1) <= processes <= len(pids0 | pids1)
    # The exporter's main thread waits for a signal while another thread serves: it sleeps.
    assert value(text, "perfwatch_processes", state="sleeping") >= 1
    assert value(text, "perfwatch_threads") >= processes
    assert value(text, "perfwatch_processes_max") == int(read("/proc/sys/kernel/pid_max"))
    assert value(text, "perfwatch_threads_max") == int(read("/proc/sys/kernel/threads-max"))


def test_pressure_matches_proc_or_is_absent(start_exporter: StartExporter) -> None:
    exporter = start_exporter()
    totals0 = psi_totals()
    text = exporter.scrape()
    totals1 = psi_totals()
    assert value(text, "perfwatch_scrape_collector_success", collector="pressure") == 1
    exported = {n for n in names(text) if n.startswith("perfwatch_pressure_")}
    assert exported == set(totals0)  # nothing at all where the kernel has no PSI
    for name in exported:
        assert_between(value(text, name), totals0[name] / 1e6, totals1[name] / 1e6, name)


def psi_totals() -> dict[str, int]:
    out = {}
    for resource in ("cpu", "memory", "io"):
        try:
            text = read(f"/proc/pressure/{resource}")
        except (FileNotFoundError, OSError):
            continue
        for line in text.splitlines():
            kind, _, rest = line.partition(" ")
            suffix = {"some": "waiting", "full": "stalled"}[kind]
            out[f"perfwatch_pressure_{resource}_{suffix}_seconds_total"] = int(rest.rpartition("total=")[2])
    return out


def test_host_info_matches_kernel_and_os_release(start_exporter: StartExporter) -> None:
    text = start_exporter().scrape()
    [labels] = [dict(k) for k in values(text, "perfwatch_host_info")]
    assert value(text, "perfwatch_host_info") == 1
    assert labels["hostname"] == socket.gethostname()
    assert labels["kernel_release"] == platform.release()
    assert labels["kernel_version"] == platform.version()
    assert labels["architecture"] == platform.machine()
    assert labels["cpu_count"] == str(os.cpu_count())
    release = dict(line.split("=", 1) for line in read("/etc/os-release").splitlines() if "=" in line)
    assert labels["os_id"] == release["ID"].strip('"')
    assert labels["os_version"] == release.get("VERSION_ID", "").strip('"')
    models = {line.split(":", 1)[1].strip() for line in read("/proc/cpuinfo").splitlines()
              if line.startswith("model name")}
    assert labels["cpu_model"] in (models or {""})


def test_sensors_and_cpufreq_real_machine(start_exporter: StartExporter) -> None:
    """This VM has neither; on a machine that has them the values must match sysfs."""
    text = start_exporter().scrape()
    for collector in ("hwmon", "cpufreq"):
        assert value(text, "perfwatch_scrape_collector_success", collector=collector) == 1
    cpufreq = sorted(Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/cpuinfo_max_freq"))
    exported_max = by_label(text, "perfwatch_cpu_frequency_max_hertz", "cpu")
    assert exported_max == {p.parent.parent.name[3:]: int(p.read_text()) * 1000.0 for p in cpufreq}
    hwmon_inputs = list(Path("/sys/class/hwmon").glob("hwmon*/temp*_input"))
    if not hwmon_inputs:
        assert not any(n.startswith("perfwatch_hwmon_") for n in names(text))
    else:
        assert len(values(text, "perfwatch_hwmon_temperature_celsius")) >= 1


@contextmanager
def tcp_connections(pairs: int, listeners: int) -> Iterator[None]:
    """`listeners` listening sockets and `pairs` established loopback connections (2 sockets each)."""
    opened: list[socket.socket] = []
    try:
        for _ in range(listeners):
            server = socket.create_server(("127.0.0.1", 0))
            opened.append(server)
        for _ in range(pairs):
            client = socket.create_connection(opened[0].getsockname())
            accepted, _ = opened[0].accept()
            opened += [client, accepted]
        yield
    finally:
        for s in opened:
            s.close()


def proc_tcp_states() -> dict[str, int]:
    codes = {"01": "established", "0A": "listen", "06": "time_wait"}
    counts = dict.fromkeys(codes.values(), 0)
    for name in ("tcp", "tcp6"):
        for line in read(f"/proc/net/{name}").splitlines()[1:]:
            state = codes.get(line.split()[3])
            if state:
                counts[state] += 1
    return counts


def test_tcp_states_and_sockstat_match_proc(start_exporter: StartExporter) -> None:
    exporter = start_exporter()
    with tcp_connections(pairs=3, listeners=4):
        before = proc_tcp_states()
        text = exporter.scrape()
        after = proc_tcp_states()
    states = by_label(text, "perfwatch_tcp_connections", "state")
    assert set(states) == {"established", "syn_sent", "syn_recv", "fin_wait1", "fin_wait2", "time_wait", "close",
                           "close_wait", "last_ack", "listen", "closing"}
    # Other programs (and this test's own HTTP scrape) open and close connections meanwhile.
    assert states["listen"] >= 4 + 1  # ours and the exporter's
    assert states["established"] >= 6
    for state in ("listen", "established"):
        assert_between(states[state], before[state] - 10, after[state] + 10, state)
    sockstat = dict(re.findall(r"^(\w+): inuse (\d+)", read("/proc/net/sockstat"), re.MULTILINE))
    assert abs(value(text, "perfwatch_sockstat_sockets", protocol="tcp", state="inuse") - int(sockstat["TCP"])) < 20
    assert value(text, "perfwatch_sockets_used") > 0
    assert value(text, "perfwatch_sockstat_memory_bytes", protocol="tcp") % os.sysconf("SC_PAGE_SIZE") == 0


def test_tcp_netlink_and_proc_files_agree(start_exporter: StartExporter, tmp_path: Path) -> None:
    """The netlink dump (default) and /proc/net/tcp* (netlink: false) count the same connections."""
    netlink = start_exporter()
    files = start_exporter({"collectors": {"tcp": {"netlink": False}}})
    with tcp_connections(pairs=5, listeners=3):
        by_netlink = by_label(netlink.scrape(), "perfwatch_tcp_connections", "state")
        by_files = by_label(files.scrape(), "perfwatch_tcp_connections", "state")
    assert by_netlink.keys() == by_files.keys()
    for state in ("listen", "established"):  # two scrapes, a moment apart: other programs' churn
        assert abs(by_netlink[state] - by_files[state]) <= 10, (state, by_netlink, by_files)
    assert by_netlink["listen"] >= 3 + 2 and by_netlink["established"] >= 10
    assert "sock_diag" not in netlink.service.log()  # it did not fall back
