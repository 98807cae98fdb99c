"""The host collectors on this machine's real /proc and /sys, scraped over HTTP from a real exporter.

Each value is checked against the kernel's own file read in the same test: counters must lie
between a read just before the scrape and one just after it.
"""

from __future__ import annotations

import os
import platform
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from support.exposition import names, value, values

from perfwatch.exporter.collectors.filesystem import FilesystemOptions, MountTable, parse_mounts

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
    exported = values(text, "node_cpu_seconds_total")
    cpus = os.cpu_count()
    assert cpus is not None
    assert len(exported) == len(before) == cpus * 8
    for (cpu, mode), low in before.items():
        got = exported[frozenset({("cpu", cpu), ("mode", mode)})]
        # Between the two reads the kernel moves on; allow that plus one tick either side.
        assert low - 0.011 <= got <= after[(cpu, mode)] + 0.011, (cpu, mode, low, got)


def test_cpu_info_matches_proc_cpuinfo(start_exporter: StartExporter) -> None:
    exporter = start_exporter({"collectors": {"cpu": {"info": True, "info_flags_include": ".*",
                                                      "info_bugs_include": ".*"}}})
    text = exporter.scrape()
    blocks = [dict((k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in block.splitlines()))
              for block in Path("/proc/cpuinfo").read_text().strip().split("\n\n")]
    got = {dict(k)["cpu"]: dict(k) for k in values(text, "node_cpu_info")}
    assert set(got) == {b["processor"] for b in blocks} and len(got) == os.cpu_count()
    for block in blocks:
        mine = got[block["processor"]]
        assert (mine["model_name"], mine["vendor"], mine["core"]) == (
            block.get("model name", ""), block.get("vendor_id", ""), block.get("core id", ""))
    flags = set(blocks[0].get("flags", blocks[0].get("Features", "")).split())
    assert {dict(k)["flag"] for k in values(text, "node_cpu_flag_info")} == flags and flags


def meminfo_metrics() -> dict[str, float]:
    """/proc/meminfo under node_exporter's names: Active(anon) → node_memory_Active_anon_bytes."""
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        key = re.sub(r"\((.*)\)", r"_\1", key)
        out[f"node_memory_{key}_bytes" if len(parts) == 2 else f"node_memory_{key}"] = \
            float(parts[0]) * (1024 if len(parts) == 2 else 1)
    return out


def test_meminfo_every_field(start_exporter: StartExporter) -> None:
    exporter = start_exporter()
    before = meminfo_metrics()
    text = exporter.scrape()
    after = meminfo_metrics()
    exported = {n for n in names(text) if n.startswith("node_memory_")}
    assert exported == set(before) and len(exported) > 40
    for name in ("node_memory_MemTotal_bytes", "node_memory_SwapTotal_bytes", "node_memory_Hugepagesize_bytes",
                 "node_memory_HugePages_Total", "node_memory_VmallocTotal_bytes"):
        assert value(text, name) == before[name] == after[name], name
    for name in exported:  # everything else moves while other work runs: within 64 MiB of a read
        assert min(before[name], after[name]) - 2**26 <= value(text, name) <= max(before[name], after[name]) + 2**26


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
    read_bytes = by_label(text, "node_disk_read_bytes_total", "device")
    assert set(read_bytes) == expected_devices
    checks = {"node_disk_reads_completed_total": (0, 1), "node_disk_read_bytes_total": (2, 512),
              "node_disk_writes_completed_total": (4, 1), "node_disk_written_bytes_total": (6, 512),
              "node_disk_write_time_seconds_total": (7, 0.001), "node_disk_io_time_seconds_total": (9, 0.001)}
    if all(len(v) >= 15 for v in before.values()):  # discards: kernel 4.18+, in sectors as node_exporter has them
        checks |= {"node_disk_discards_completed_total": (11, 1), "node_disk_discarded_sectors_total": (13, 1)}
    if all(len(v) >= 17 for v in before.values()):  # flushes: kernel 5.5+
        checks |= {"node_disk_flush_requests_total": (15, 1)}
    for device in expected_devices:
        for name, (column, scale) in checks.items():
            got = value(text, name, device=device)
            assert_between(got, before[device][column] * scale - 1e-9, after[device][column] * scale + 1e-9,
                           (name, device))
    assert not any(d.startswith(("loop", "ram")) for d in read_bytes)
    info = {dict(k)["device"]: dict(k) for k in values(text, "node_disk_info")}
    assert set(info) == expected_devices
    majors = {f[2]: (f[0], f[1]) for f in (line.split() for line in read("/proc/diskstats").splitlines())}
    for device, labels in info.items():
        assert (labels["major"], labels["minor"]) == majors[device]
        assert set(labels) == {"device", "major", "minor", "path", "wwn", "model", "serial", "revision"}


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
    devices = set(by_label(text, "node_network_receive_bytes_total", "device"))
    assert devices == set(before) - {"lo"}
    columns = ("receive_bytes", "receive_packets", "receive_errs", "receive_drop", "receive_fifo", "receive_frame",
               "receive_compressed", "receive_multicast", "transmit_bytes", "transmit_packets", "transmit_errs",
               "transmit_drop", "transmit_fifo", "transmit_colls", "transmit_carrier", "transmit_compressed")
    for device in devices:
        for column, metric in enumerate(columns):
            got = value(text, f"node_network_{metric}_total", device=device)
            assert_between(got, before[device][column], after[device][column], (metric, device))
        nohandler = Path(f"/sys/class/net/{device}/statistics/rx_nohandler")
        if nohandler.exists():
            assert value(text, "node_network_receive_nohandler_total", device=device) >= 0


def test_filesystem_sizes_match_statvfs(start_exporter: StartExporter) -> None:
    text = start_exporter().scrape()
    sizes = values(text, "node_filesystem_size_bytes")
    mounts = {dict(k)["mountpoint"]: dict(k) for k in sizes}
    assert "/" in mounts, mounts
    root_mount = next(m for m in reversed(parse_mounts(read("/proc/1/mounts"))) if m.mountpoint == "/")
    assert mounts["/"]["fstype"] == root_mount.fstype and mounts["/"]["device"] == root_mount.device
    options = FilesystemOptions()
    for mountpoint, labels in mounts.items():
        assert not options.mount_points_exclude.compiled.match(mountpoint), mountpoint
        assert not options.fs_types_exclude.compiled.match(labels["fstype"]), labels
        st = os.statvfs(mountpoint)
        assert value(text, "node_filesystem_size_bytes", **labels) == st.f_blocks * st.f_frsize
        assert value(text, "node_filesystem_files", **labels) == st.f_files
        assert value(text, "node_filesystem_readonly", **labels) == (1 if st.f_flag & os.ST_RDONLY else 0)
        assert value(text, "node_filesystem_device_error", **labels) == 0
        # Free space moves while other work runs: within 256 MiB and 10000 inodes of a read now.
        assert abs(value(text, "node_filesystem_avail_bytes", **labels) - st.f_bavail * st.f_frsize) < 2**28
        assert abs(value(text, "node_filesystem_free_bytes", **labels) - st.f_bfree * st.f_frsize) < 2**28
        assert abs(value(text, "node_filesystem_files_free", **labels) - st.f_ffree) < 10000
    assert not {"/proc", "/sys", "/dev"} & set(mounts)


def proc_stat() -> dict[str, int]:
    out = {}
    for line in read("/proc/stat").splitlines():
        key, _, rest = line.partition(" ")
        if key in ("ctxt", "intr", "processes", "btime"):
            out[key] = int(rest.split()[0])
    return out


SOFTIRQ_VECTORS = ("hi", "timer", "net_tx", "net_rx", "block", "block_iopoll", "tasklet", "sched", "hrtimer", "rcu")


def softirqs() -> dict[str, int]:
    """The softirq line of /proc/stat, under node_exporter's vector names."""
    line = next(line for line in read("/proc/stat").splitlines() if line.startswith("softirq "))
    return dict(zip(SOFTIRQ_VECTORS, map(int, line.split()[2:]), strict=True))


def vmstat() -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in read("/proc/vmstat").splitlines())}


def test_stat_softirqs_vmstat_match_proc(start_exporter: StartExporter) -> None:
    exporter = start_exporter()
    stat0, soft0, vm0 = proc_stat(), softirqs(), vmstat()
    text = exporter.scrape()
    stat1, soft1, vm1 = proc_stat(), softirqs(), vmstat()
    for name, key in (("context_switches_total", "ctxt"), ("intr_total", "intr"), ("forks_total", "processes")):
        assert_between(value(text, f"node_{name}"), stat0[key], stat1[key], name)
    assert value(text, "node_boot_time_seconds") == stat0["btime"]
    assert value(text, "node_procs_running") >= 1  # the exporter itself, reading /proc/stat
    assert value(text, "node_procs_blocked") >= 0
    exported = by_label(text, "node_softirqs_total", "vector")
    assert set(exported) == set(soft0) and {"timer", "net_rx", "sched"} <= set(exported)
    for kind, got in exported.items():
        assert_between(got, soft0[kind], soft1[kind], kind)
    # node_exporter's default vmstat fields, raw and untyped: oom_kill, pgpg*, pswp*, pg*fault*.
    wanted = {k for k in vm0 if re.match(r"^(oom_kill|pgpg|pswp|pg.*fault).*$", k)}
    assert {n for n in names(text) if n.startswith("node_vmstat_")} == {f"node_vmstat_{k}" for k in wanted}
    assert {"pgfault", "pgmajfault", "pgpgin", "pgpgout", "pswpin", "pswpout"} <= wanted
    for key in wanted:
        assert_between(value(text, f"node_vmstat_{key}"), vm0[key], vm1[key], key)
    assert "# TYPE node_vmstat_pgfault untyped" in text


def test_loadavg_filefd_time_processes_match_proc(start_exporter: StartExporter) -> None:
    exporter = start_exporter()
    load0, file0, t0 = read("/proc/loadavg").split(), read("/proc/sys/fs/file-nr").split(), time.time()
    pids0 = {p for p in os.listdir("/proc") if p.isdigit()}
    text = exporter.scrape()
    load1, file1, t1 = read("/proc/loadavg").split(), read("/proc/sys/fs/file-nr").split(), time.time()
    pids1 = {p for p in os.listdir("/proc") if p.isdigit()}
    for i, minutes in enumerate((1, 5, 15)):
        assert value(text, f"node_load{minutes}") in (float(load0[i]), float(load1[i]))
    assert value(text, "node_filefd_maximum") == int(file0[2])
    assert abs(value(text, "node_filefd_allocated") - int(file1[0])) < 1000
    assert_between(value(text, "node_time_seconds"), t0, t1, "time")
    local = time.localtime()
    assert value(text, "node_time_zone_offset_seconds", time_zone=local.tm_zone) == local.tm_gmtoff
    source = Path("/sys/devices/system/clocksource/clocksource0")
    if source.exists():
        assert value(text, "node_time_clocksource_current_info", device="0",
                     clocksource=(source / "current_clocksource").read_text().strip()) == 1
        assert {dict(k)["clocksource"] for k in values(text, "node_time_clocksource_available_info")} == \
            set((source / "available_clocksource").read_text().split())
    processes = sum(values(text, "node_processes_state").values())
    assert len(pids0 & pids1) <= processes <= len(pids0 | pids1)
    assert value(text, "node_processes_pids") == processes
    # The exporter's main thread waits for a signal while another thread serves: it sleeps.
    assert value(text, "node_processes_state", state="S") >= 1
    threads = value(text, "node_processes_threads")
    assert threads >= processes
    assert sum(values(text, "node_processes_threads_state").values()) == pytest.approx(threads, abs=50)
    assert value(text, "node_processes_max_processes") == int(read("/proc/sys/kernel/pid_max"))
    assert value(text, "node_processes_max_threads") == int(read("/proc/sys/kernel/threads-max"))


def test_pressure_matches_proc_or_is_absent(start_exporter: StartExporter) -> None:
    exporter = start_exporter()
    totals0 = psi_totals()
    text = exporter.scrape()
    totals1 = psi_totals()
    assert value(text, "node_scrape_collector_success", collector="pressure") == 1
    exported = {n for n in names(text) if n.startswith(("node_pressure_", "perfwatch_pressure_"))}
    assert exported == set(totals0)  # nothing at all where the kernel has no PSI
    for name in exported:
        assert_between(value(text, name), totals0[name] / 1e6, totals1[name] / 1e6, name)


def psi_totals() -> dict[str, int]:
    out = {}
    for resource in ("cpu", "memory", "io", "irq"):
        try:
            text = read(f"/proc/pressure/{resource}")
        except (FileNotFoundError, OSError):
            continue
        for line in text.splitlines():
            kind, _, rest = line.partition(" ")
            if (resource, kind) == ("irq", "some"):  # node_exporter reads irq's full line only
                continue
            suffix = {"some": "waiting", "full": "stalled"}[kind]
            # The system-wide cpu "full" line has no node_exporter metric: perfwatch's own.
            prefix = "perfwatch" if (resource, kind) == ("cpu", "full") else "node"
            out[f"{prefix}_pressure_{resource}_{suffix}_seconds_total"] = int(rest.rpartition("total=")[2])
    return out


def test_uname_and_os_match_kernel_and_os_release(start_exporter: StartExporter) -> None:
    text = start_exporter().scrape()
    [labels] = [dict(k) for k in values(text, "node_uname_info")]
    assert value(text, "node_uname_info") == 1
    assert labels["nodename"] == socket.gethostname()
    assert labels["sysname"] == platform.system()
    assert labels["release"] == platform.release()
    assert labels["version"] == platform.version()
    assert labels["machine"] == platform.machine()
    assert labels["domainname"] == read("/proc/sys/kernel/domainname").strip()
    release = {k: v.strip().strip('"') for k, v in
               (line.split("=", 1) for line in read("/etc/os-release").splitlines() if "=" in line)}
    [os_info] = [dict(k) for k in values(text, "node_os_info")]
    assert os_info["id"] == release["ID"] and os_info["pretty_name"] == release.get("PRETTY_NAME", "")
    assert os_info["version_id"] == release.get("VERSION_ID", "") and os_info["name"] == release.get("NAME", "")
    assert len(os_info) == 12
    version = value(text, "node_os_version", id=release["ID"])
    assert version == float(re.match(r"[0-9]+\.?[0-9]*", release.get("VERSION_ID", "0"))[0])  # type: ignore[index]


def test_sensors_and_cpufreq_real_machine(start_exporter: StartExporter) -> None:
    """This VM has neither; on a machine that has them the values must match sysfs."""
    text = start_exporter().scrape()
    for collector in ("hwmon", "cpufreq"):
        assert value(text, "node_scrape_collector_success", collector=collector) == 1
    cpufreq = sorted(Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/cpuinfo_max_freq"))
    exported_max = by_label(text, "node_cpu_frequency_max_hertz", "cpu")
    assert exported_max == {p.parent.parent.name[3:]: int(p.read_text()) * 1000.0 for p in cpufreq}
    hwmon_inputs = list(Path("/sys/class/hwmon").glob("hwmon*/temp*_input"))
    if not hwmon_inputs:
        assert not any(n.startswith("node_hwmon_") for n in names(text))
    else:
        assert len(values(text, "node_hwmon_temp_celsius")) >= 1


@contextmanager
def tcp_connections(pairs: int, listeners: int) -> Iterator[None]:
    """`listeners` listening sockets and `pairs` established loopback connections (2 sockets each),
    half of each over IPv6 where the machine has it."""
    opened: list[socket.socket] = []
    servers: list[socket.socket] = []
    try:
        for i in range(listeners):
            family, host = (socket.AF_INET6, "::1") if i % 2 and socket.has_ipv6 else (socket.AF_INET, "127.0.0.1")
            try:
                server = socket.create_server((host, 0), family=family)
            except OSError:  # no IPv6 on this interface
                server = socket.create_server(("127.0.0.1", 0))
            servers.append(server)
        opened += servers
        for i in range(pairs):
            server = servers[i % len(servers)]
            client = socket.create_connection(server.getsockname()[:2])
            accepted, _ = server.accept()
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


TCPSTAT = {"collectors": {"tcpstat": {"enabled": True}}}


def test_tcpstat_and_sockstat_match_proc(start_exporter: StartExporter) -> None:
    exporter = start_exporter(TCPSTAT)
    with tcp_connections(pairs=3, listeners=4):
        before = proc_tcp_states()
        text = exporter.scrape()
        after = proc_tcp_states()
    states = by_label(text, "node_tcp_connection_states", "state")
    assert set(states) == {"established", "syn_sent", "syn_recv", "fin_wait1", "fin_wait2", "time_wait", "close",
                           "close_wait", "last_ack", "listen", "closing", "rx_queued_bytes", "tx_queued_bytes"}
    # Other programs (and this test's own HTTP scrape) open and close connections meanwhile.
    assert states["listen"] >= 4 + 1  # ours and the exporter's
    assert states["established"] >= 6
    for state in ("listen", "established"):
        assert_between(states[state], before[state] - 10, after[state] + 10, state)
    sockstat = dict(re.findall(r"^(\w+): inuse (\d+)", read("/proc/net/sockstat"), re.MULTILINE))
    assert abs(value(text, "node_sockstat_TCP_inuse") - int(sockstat["TCP"])) < 20
    assert value(text, "node_sockstat_sockets_used") > 0
    page = os.sysconf("SC_PAGE_SIZE")
    assert value(text, "node_sockstat_TCP_mem_bytes") == value(text, "node_sockstat_TCP_mem") * page
    assert "node_tcp_connection_states" not in names(start_exporter().scrape())  # off by default


def test_tcpstat_one_walk_counts_both_families_as_the_per_family_dumps() -> None:
    """The all-families dump (TCPDIAG_GETSOCK) counts what node_exporter's two per-family dumps count."""
    from perfwatch.exporter.collectors.tcpstat import STATES, dump_netlink, new_counts

    with tcp_connections(pairs=6, listeners=4):
        one = new_counts()
        dump_netlink(one, None)
        two = new_counts()
        dump_netlink(two, socket.AF_INET)
        dump_netlink(two, socket.AF_INET6)
        v6 = new_counts()
        dump_netlink(v6, socket.AF_INET6)
    if socket.has_ipv6 and Path("/proc/net/tcp6").exists():
        assert v6[10] >= 2 and v6[1] >= 6  # the IPv6 half is there, so the one walk saw both families
    for code in (1, 10):  # established, listen: a moment apart, other programs' churn
        assert abs(one[code] - two[code]) <= 10, (STATES[code], one[code], two[code])
    assert one[10] >= 4 and one[1] >= 12


def test_tcpstat_netlink_and_proc_files_agree(start_exporter: StartExporter, tmp_path: Path) -> None:
    """The netlink dump (default) and /proc/net/tcp* (netlink: false) count the same connections."""
    netlink = start_exporter(TCPSTAT)
    files = start_exporter({"collectors": {"tcpstat": {"enabled": True, "netlink": False}}})
    with tcp_connections(pairs=5, listeners=3):
        by_netlink = by_label(netlink.scrape(), "node_tcp_connection_states", "state")
        by_files = by_label(files.scrape(), "node_tcp_connection_states", "state")
    assert by_netlink.keys() == by_files.keys()
    for state in ("listen", "established"):  # two scrapes, a moment apart: other programs' churn
        assert abs(by_netlink[state] - by_files[state]) <= 10, (state, by_netlink, by_files)
    assert by_netlink["listen"] >= 3 + 2 and by_netlink["established"] >= 10
    assert "sock_diag" not in netlink.service.log()  # it did not fall back


def test_the_mount_table_is_read_again_when_the_kernel_says_it_changed(tmp_path: Path) -> None:
    """A real mount and unmount (tmpfs; the tests run as root, as apt-get needs) between reads."""
    target = tmp_path / "mnt"
    target.mkdir()
    table = MountTable(["/proc/self/mounts"])
    try:
        before = table.read()
        assert table.read() is before  # nothing changed: the text kept, not read again
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "perfwatch-test", str(target)], check=True)
        try:
            mounted = table.read()
            assert f"perfwatch-test {target} tmpfs" in mounted and mounted != before
            assert table.read() is mounted
        finally:
            subprocess.run(["umount", str(target)], check=True)
        after = table.read()
        assert f"perfwatch-test {target}" not in after
        assert [m.mountpoint for m in parse_mounts(after)] == [m.mountpoint for m in parse_mounts(before)]
    finally:
        table.close()


def test_a_mount_table_in_a_regular_file_is_read_at_every_call(tmp_path: Path) -> None:
    fake = tmp_path / "mounts"
    fake.write_text("/dev/sda1 / ext4 rw 0 0\n")
    table = MountTable([str(tmp_path / "absent"), str(fake)])  # the first that opens
    try:
        assert table.read() == "/dev/sda1 / ext4 rw 0 0\n"
        fake.write_text("/dev/sda1 / ext4 rw 0 0\n/dev/sdb1 /srv xfs ro 0 0\n")
        assert [m.mountpoint for m in parse_mounts(table.read())] == ["/", "/srv"]
    finally:
        table.close()
    with pytest.raises(FileNotFoundError):
        MountTable([str(tmp_path / "absent")]).read()


def test_stat_files_stay_open_while_their_process_lives_and_close_when_it_exits() -> None:
    from perfwatch.exporter.collectors.processes import StatFiles

    files = StatFiles(limit=2)
    children = [subprocess.Popen(["sleep", "30"]) for _ in range(3)]
    try:
        paths = [f"/proc/{child.pid}/stat" for child in children]
        for _ in range(2):  # the second round reads the kept files again
            lines = [files.read(path) for path in paths]
            assert all(line is not None and line.startswith(f"{c.pid} (sleep) ".encode())
                       for line, c in zip(lines, children, strict=True))
            files.sweep()
            assert sorted(files.open) == sorted(paths[:2])  # the limit: the third is opened and closed
        children[0].kill()
        children[0].wait()  # reaped: the kept file now reads ESRCH, and is closed
        assert files.read(paths[0]) is None and paths[0] not in files.open
        files.read(paths[2])
        files.sweep()  # paths[1] was not read since the last sweep: closed; paths[2] took the free place
        assert sorted(files.open) == [paths[2]]
    finally:
        for child in children:
            child.kill()
            child.wait()
        files.close()
    assert files.open == {}
