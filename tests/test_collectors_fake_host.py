"""Collectors read a fake /proc and /sys (config `procfs:`/`sysfs:`/`rootfs:`), through a real exporter.

The sources this VM lacks (hwmon sensors, cpufreq, older kernels' formats) and the odd cases
(label values with quotes, backslashes, newlines, unicode and SQL; a mount that fails; comm names
with ')' in them) are written as files, so every value below is known exactly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from support.exposition import names, samples, value, values
from support.prometheus import promtool

from perfwatch.exporter.collectors import load_all

if TYPE_CHECKING:
    from conftest import StartExporter


def write(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def only(*enabled: str, **settings: Any) -> dict[str, Any]:
    """A config enabling just `enabled` (with options given as `name={...}`)."""
    collectors: dict[str, Any] = {name: {"enabled": name in enabled} for name in load_all()}
    for name, options in settings.pop("options", {}).items():
        collectors[name].update(options)
    return {**settings, "collectors": collectors}


def labels(text: str, name: str) -> set[frozenset[tuple[str, str]]]:
    return set(values(text, name))


# --- pressure -------------------------------------------------------------------------------------

def test_pressure_fake_tree_older_kernel_without_cpu_full(start_exporter: StartExporter, tmp_path: Path) -> None:
    proc = write(tmp_path / "proc", {
        "pressure/cpu": "some avg10=1.00 avg60=0.50 avg300=0.10 total=1500000\n",
        "pressure/memory": "some avg10=0.00 avg60=0.00 avg300=0.00 total=2500000\n"
                           "full avg10=0.00 avg60=0.00 avg300=0.00 total=1000000\n",
        "pressure/io": "some avg10=0.00 avg60=0.00 avg300=0.00 total=123\n"
                       "full avg10=0.00 avg60=0.00 avg300=0.00 total=45\n",
    })
    text = start_exporter(only("pressure", procfs=str(proc))).scrape()
    assert value(text, "perfwatch_scrape_collector_success", collector="pressure") == 1
    assert value(text, "perfwatch_pressure_cpu_waiting_seconds_total") == 1.5
    assert value(text, "perfwatch_pressure_memory_waiting_seconds_total") == 2.5
    assert value(text, "perfwatch_pressure_memory_stalled_seconds_total") == 1.0
    assert value(text, "perfwatch_pressure_io_waiting_seconds_total") == 0.000123
    assert value(text, "perfwatch_pressure_io_stalled_seconds_total") == 0.000045
    assert "perfwatch_pressure_cpu_stalled_seconds_total" not in names(text)  # no "full" line for cpu


def test_pressure_absent_emits_nothing(start_exporter: StartExporter, tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    text = start_exporter(only("pressure", procfs=str(tmp_path / "proc"))).scrape()
    assert value(text, "perfwatch_scrape_collector_success", collector="pressure") == 1
    assert not any(n.startswith("perfwatch_pressure_") for n in names(text))


# --- hwmon ---------------------------------------------------------------------------------------

HWMON = {
    # Socket 0 and socket 1 both call themselves coretemp.
    "class/hwmon/hwmon0/name": "coretemp\n",
    "class/hwmon/hwmon0/temp1_input": "45000\n",
    "class/hwmon/hwmon0/temp1_label": "Package id 0\n",
    "class/hwmon/hwmon0/temp1_max": "80000\n",
    "class/hwmon/hwmon0/temp1_crit": "100000\n",
    "class/hwmon/hwmon0/temp2_input": "43500\n",
    "class/hwmon/hwmon0/temp2_label": "Core 0\n",
    "class/hwmon/hwmon10/name": "coretemp\n",
    "class/hwmon/hwmon10/temp1_input": "47000\n",
    "class/hwmon/hwmon10/temp1_label": "Package id 0\n",
    # The older layout: attributes under device/.
    "class/hwmon/hwmon2/device/name": "it8728\n",
    "class/hwmon/hwmon2/device/fan1_input": "1200\n",
    "class/hwmon/hwmon2/device/fan2_input": "0\n",
    "class/hwmon/hwmon2/device/fan2_label": 'CPU "fan" \\ ü\n',
    "class/hwmon/hwmon2/device/temp3_input": "not a number\n",
    # No label: the sensor is named after its file; two inputs sharing a label stay apart.
    "class/hwmon/hwmon3/name": "acpitz\n",
    "class/hwmon/hwmon3/temp1_input": "27800\n",
    "class/hwmon/hwmon3/temp2_input": "-5000\n",
    "class/hwmon/hwmon3/temp2_label": "board\n",
    "class/hwmon/hwmon3/temp3_input": "30000\n",
    "class/hwmon/hwmon3/temp3_label": "board\n",
    # A device without a name is not a sensor chip.
    "class/hwmon/hwmon4/temp1_input": "99000\n",
}


def test_hwmon_fake_tree(start_exporter: StartExporter, tmp_path: Path) -> None:
    sys_root = write(tmp_path / "sys", HWMON)
    text = start_exporter(only("hwmon", sysfs=str(sys_root))).scrape()
    assert value(text, "perfwatch_scrape_collector_success", collector="hwmon") == 1
    temps = {(dict(k)["chip"], dict(k)["sensor"]): v for k, v in
             values(text, "perfwatch_hwmon_temperature_celsius").items()}
    assert temps == {
        ("coretemp_0", "Package id 0"): 45.0, ("coretemp_0", "Core 0"): 43.5,
        ("coretemp_1", "Package id 0"): 47.0,
        ("acpitz", "temp1"): 27.8, ("acpitz", "board"): -5.0, ("acpitz", "temp3"): 30.0,
    }
    assert value(text, "perfwatch_hwmon_temperature_max_celsius", chip="coretemp_0", sensor="Package id 0") == 80
    assert value(text, "perfwatch_hwmon_temperature_critical_celsius", chip="coretemp_0",
                 sensor="Package id 0") == 100
    assert len(values(text, "perfwatch_hwmon_temperature_max_celsius")) == 1
    fans = {dict(k)["sensor"]: v for k, v in values(text, "perfwatch_hwmon_fan_rpm").items()}
    assert fans == {"fan1": 1200.0, 'CPU "fan" \\ ü': 0.0}
    assert promtool("check", "metrics", stdin=text).returncode == 0


def test_hwmon_none_emits_nothing(start_exporter: StartExporter, tmp_path: Path) -> None:
    (tmp_path / "sys").mkdir()
    text = start_exporter(only("hwmon", sysfs=str(tmp_path / "sys"))).scrape()
    assert value(text, "perfwatch_scrape_collector_success", collector="hwmon") == 1
    assert not any(n.startswith("perfwatch_hwmon_") for n in names(text))


# --- cpufreq --------------------------------------------------------------------------------------

def test_cpufreq_fake_tree(start_exporter: StartExporter, tmp_path: Path) -> None:
    cpu = "devices/system/cpu"
    sys_root = write(tmp_path / "sys", {
        f"{cpu}/cpu0/cpufreq/scaling_cur_freq": "2400000\n",
        f"{cpu}/cpu0/cpufreq/cpuinfo_min_freq": "800000\n",
        f"{cpu}/cpu0/cpufreq/cpuinfo_max_freq": "3600000\n",
        # Only the root-readable hardware reading: used when scaling_cur_freq is missing.
        f"{cpu}/cpu1/cpufreq/cpuinfo_cur_freq": "1200000\n",
        f"{cpu}/cpu1/cpufreq/cpuinfo_min_freq": "800000\n",
        f"{cpu}/cpu1/cpufreq/cpuinfo_max_freq": "3600000\n",
        f"{cpu}/cpu2/online": "1\n",  # no cpufreq driver for this one
        f"{cpu}/cpufreq/boost": "1\n",  # not a CPU
        f"{cpu}/online": "0-2\n",
    })
    text = start_exporter(only("cpufreq", sysfs=str(sys_root))).scrape()
    assert value(text, "perfwatch_scrape_collector_success", collector="cpufreq") == 1
    current = {dict(k)["cpu"]: v for k, v in values(text, "perfwatch_cpu_frequency_hertz").items()}
    assert current == {"0": 2.4e9, "1": 1.2e9}
    assert value(text, "perfwatch_cpu_frequency_min_hertz", cpu="1") == 8e8
    assert value(text, "perfwatch_cpu_frequency_max_hertz", cpu="0") == 3.6e9
    assert len(values(text, "perfwatch_cpu_frequency_max_hertz")) == 2


# --- diskstats ------------------------------------------------------------------------------------

DISKSTATS = (
    # 4.17-: 14 fields. sda1 is a partition, loop0 a loop device: both hidden by default.
    "   8       0 sda 100 2 800 30 50 5 400 70 1 90 100\n"
    "   8       1 sda1 99 2 792 29 49 5 392 69 0 88 98\n"
    "   7       0 loop0 5 0 10 0 0 0 0 0 0 0 0\n"
    # 5.5+: 20 fields with discards and flushes.
    " 259       0 nvme0n1 1000 10 20000 300 2000 20 40000 500 3 700 800 6 1 16 2 7 9\n"
    " 259       1 nvme0n1p1 1 0 8 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
    "garbage\n"
)


def test_diskstats_fake_tree_scaling_and_default_exclude(start_exporter: StartExporter, tmp_path: Path) -> None:
    proc = write(tmp_path / "proc", {"diskstats": DISKSTATS})
    text = start_exporter(only("diskstats", procfs=str(proc))).scrape()
    assert value(text, "perfwatch_scrape_collector_success", collector="diskstats") == 1
    assert {dict(k)["device"] for k in values(text, "perfwatch_disk_read_bytes_total")} == {"sda", "nvme0n1"}
    assert value(text, "perfwatch_disk_reads_completed_total", device="sda") == 100
    assert value(text, "perfwatch_disk_reads_merged_total", device="sda") == 2
    assert value(text, "perfwatch_disk_read_bytes_total", device="sda") == 800 * 512
    assert value(text, "perfwatch_disk_read_time_seconds_total", device="sda") == 0.03
    assert value(text, "perfwatch_disk_writes_completed_total", device="sda") == 50
    assert value(text, "perfwatch_disk_writes_merged_total", device="sda") == 5
    assert value(text, "perfwatch_disk_written_bytes_total", device="sda") == 400 * 512
    assert value(text, "perfwatch_disk_write_time_seconds_total", device="sda") == 0.07
    assert value(text, "perfwatch_disk_io_now", device="sda") == 1
    assert value(text, "perfwatch_disk_io_time_seconds_total", device="sda") == 0.09
    assert value(text, "perfwatch_disk_io_time_weighted_seconds_total", device="sda") == 0.1
    # Discards and flushes only where the kernel has them.
    assert set(values(text, "perfwatch_disk_discards_completed_total")) == {frozenset({("device", "nvme0n1")})}
    assert value(text, "perfwatch_disk_discards_completed_total", device="nvme0n1") == 6
    assert value(text, "perfwatch_disk_discards_merged_total", device="nvme0n1") == 1
    assert value(text, "perfwatch_disk_discarded_bytes_total", device="nvme0n1") == 16 * 512
    assert value(text, "perfwatch_disk_discard_time_seconds_total", device="nvme0n1") == 0.002
    assert value(text, "perfwatch_disk_flushes_completed_total", device="nvme0n1") == 7
    assert value(text, "perfwatch_disk_flush_time_seconds_total", device="nvme0n1") == 0.009


def test_diskstats_devices_exclude_option(start_exporter: StartExporter, tmp_path: Path) -> None:
    proc = write(tmp_path / "proc", {"diskstats": DISKSTATS})
    text = start_exporter(only("diskstats", procfs=str(proc),
                               options={"diskstats": {"devices_exclude": "nvme.*"}})).scrape()
    assert {dict(k)["device"] for k in values(text, "perfwatch_disk_io_now")} == {"sda", "sda1", "loop0"}


# --- netdev ---------------------------------------------------------------------------------------

NET_DEV = (
    "Inter-|   Receive                                                |  Transmit\n"
    " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier "
    "compressed\n"
    "    lo:  464132    3298    0    0    0     0          0         0   464132    3298    0    0    0     0       0"
    "          0\n"
    # Counters wide enough to touch the colon.
    "  eth0:123456789012 3125 1 2 0 0 0 0 211150 2166 3 4 0 0 0 0\n"
    "veth-a1: 10 1 0 0 0 0 0 0 20 2 0 0 0 0 0 0\n"
)


def test_netdev_fake_tree_and_default_exclude(start_exporter: StartExporter, tmp_path: Path) -> None:
    proc = write(tmp_path / "proc", {"net/dev": NET_DEV})
    text = start_exporter(only("netdev", procfs=str(proc))).scrape()
    assert {dict(k)["interface"] for k in values(text, "perfwatch_network_receive_bytes_total")} == {
        "eth0", "veth-a1"}
    expected = {"receive_bytes": 123456789012, "receive_packets": 3125, "receive_errors": 1, "receive_drops": 2,
                "transmit_bytes": 211150, "transmit_packets": 2166, "transmit_errors": 3, "transmit_drops": 4}
    for metric, number in expected.items():
        assert value(text, f"perfwatch_network_{metric}_total", interface="eth0") == number, metric


def test_netdev_interfaces_exclude_option(start_exporter: StartExporter, tmp_path: Path) -> None:
    proc = write(tmp_path / "proc", {"net/dev": NET_DEV})
    text = start_exporter(only("netdev", procfs=str(proc),
                               options={"netdev": {"interfaces_exclude": "veth.*"}})).scrape()
    assert {dict(k)["interface"] for k in values(text, "perfwatch_network_transmit_bytes_total")} == {"lo", "eth0"}
    assert value(text, "perfwatch_network_transmit_packets_total", interface="lo") == 3298


# --- tcp ------------------------------------------------------------------------------------------

TCP_HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
TCP4 = TCP_HEADER + (
    "   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1077 1 "
    "00000000ded56b17 100 0 0 10 0\n"
    "   1: 0100007F:9C5A 0100007F:07E8 01 00000000:00000000 02:0000000A 00000000  1000        0 2211 2 "
    "00000000aa 20 4 30 10 -1\n"
    "   2: 0100007F:07E8 0100007F:9C5A 01 00000000:00000000 00:00000000 00000000     0        0 2212 1 "
    "00000000bb 20 4 30 10 -1\n"
    "12345: 0100007F:07E8 0100007F:0C38 06 00000000:00000000 03:00001770 00000000     0        0 0 3 "
    "00000000cc\n"
)
TCP6 = TCP_HEADER + (
    "   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 "
    "00:00000000 00000000     0        0 3001 1 00000000dd 100 0 0 10 0\n"
    "   1: 0000000000000000FFFF00000100007F:0016 0000000000000000FFFF00000100007F:D2F0 08 00000000:00000000 "
    "00:00000000 00000000     0        0 3002 1 00000000ee 20 4 30 10 -1\n"
)
SOCKSTAT = ("sockets: used 321\nTCP: inuse 4 orphan 1 tw 2 alloc 9 mem 3\nUDP: inuse 5 mem 2\nUDPLITE: inuse 0\n"
            "RAW: inuse 1\nFRAG: inuse 0 memory 4096\n")
# Connection states from the files (the netlink dump would count this machine's connections).
FILES = {"tcp": {"netlink": False}}
SOCKSTAT6 = "TCP6: inuse 2\nUDP6: inuse 3\nUDPLITE6: inuse 0\nRAW6: inuse 0\nFRAG6: inuse 0 memory 0\n"


def test_tcp_fake_tree_counts_every_state(start_exporter: StartExporter, tmp_path: Path) -> None:
    proc = write(tmp_path / "proc", {"net/tcp": TCP4, "net/tcp6": TCP6, "net/sockstat": SOCKSTAT,
                                     "net/sockstat6": SOCKSTAT6})
    text = start_exporter(only("tcp", procfs=str(proc), options=FILES)).scrape()
    assert value(text, "perfwatch_scrape_collector_success", collector="tcp") == 1
    states = {dict(k)["state"]: v for k, v in values(text, "perfwatch_tcp_connections").items()}
    assert states == {"established": 2, "syn_sent": 0, "syn_recv": 0, "fin_wait1": 0, "fin_wait2": 0,
                      "time_wait": 1, "close": 0, "close_wait": 1, "last_ack": 0, "listen": 2, "closing": 0}
    assert value(text, "perfwatch_sockets_used") == 321
    assert value(text, "perfwatch_sockstat_sockets", protocol="tcp", state="orphan") == 1
    assert value(text, "perfwatch_sockstat_sockets", protocol="tcp", state="alloc") == 9
    assert value(text, "perfwatch_sockstat_sockets", protocol="tcp6", state="inuse") == 2
    assert value(text, "perfwatch_sockstat_sockets", protocol="udp6", state="inuse") == 3
    page = os.sysconf("SC_PAGE_SIZE")
    assert value(text, "perfwatch_sockstat_memory_bytes", protocol="tcp") == 3 * page
    assert value(text, "perfwatch_sockstat_memory_bytes", protocol="udp") == 2 * page
    assert value(text, "perfwatch_sockstat_memory_bytes", protocol="frag") == 4096


def test_tcp_without_ipv6(start_exporter: StartExporter, tmp_path: Path) -> None:
    proc = write(tmp_path / "proc", {"net/tcp": TCP4, "net/sockstat": SOCKSTAT})
    text = start_exporter(only("tcp", procfs=str(proc), options=FILES)).scrape()
    assert value(text, "perfwatch_tcp_connections", state="listen") == 1
    assert frozenset({("protocol", "tcp6"), ("state", "inuse")}) not in values(text, "perfwatch_sockstat_sockets")


# --- processes ------------------------------------------------------------------------------------

def stat_line(pid: int, comm: str, state: str, threads: int) -> str:
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    # cutime cstime priority nice num_threads ...
    return f"{pid} ({comm}) {state} 1 1 1 0 -1 4194560 10 0 0 0 5 3 0 0 20 0 {threads} 0 100 1000 200\n"


def test_processes_fake_tree(start_exporter: StartExporter, tmp_path: Path) -> None:
    proc = write(tmp_path / "proc", {
        "1/stat": stat_line(1, "init", "S", 1),
        # A command name may hold spaces and ')': the state follows the last ')'.
        "42/stat": stat_line(42, "evil) Z (name", "R", 7),
        "43/stat": stat_line(43, "gone", "Z", 1),
        "44/stat": stat_line(44, "kworker/0:1", "I", 1),
        "45/stat": stat_line(45, "dd", "D", 2),
        "self/stat": stat_line(45, "dd", "D", 2),  # not a pid directory
        "sys/kernel/pid_max": "4194304\n",
        "sys/kernel/threads-max": "191837\n",
    })
    text = start_exporter(only("processes", procfs=str(proc))).scrape()
    assert value(text, "perfwatch_scrape_collector_success", collector="processes") == 1
    states = {dict(k)["state"]: v for k, v in values(text, "perfwatch_processes").items()}
    assert states == {"running": 1, "sleeping": 1, "disk_sleep": 1, "zombie": 1, "stopped": 0, "tracing_stop": 0,
                      "dead": 0, "idle": 1, "parked": 0, "waking": 0}
    assert value(text, "perfwatch_threads") == 12
    assert value(text, "perfwatch_processes_max") == 4194304
    assert value(text, "perfwatch_threads_max") == 191837


# --- filesystem -----------------------------------------------------------------------------------

# Characters a mount point may hold and a label value must survive: quotes, a backslash, a newline,
# unicode and SQL. The mount table writes space, tab, newline and backslash as octal escapes.
ODD_MOUNT = '/data "q" \\ x\nü\'; DROP TABLE series;--'


def mount_escape(path: str) -> str:
    return path.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011").replace("\n", "\\012")


def test_filesystem_fake_mount_table(start_exporter: StartExporter, tmp_path: Path) -> None:
    root = tmp_path / "root"
    for mountpoint in ("/", "/srv/data", ODD_MOUNT, "/dev/shm", "/proc"):
        (root / mountpoint.lstrip("/")).mkdir(parents=True, exist_ok=True)
    proc = write(tmp_path / "proc", {"1/mounts": "".join(f"{line}\n" for line in (
        "/dev/vda1 / ext4 rw,relatime 0 0",
        "/dev/vda1 / ext4 rw,relatime 0 0",  # the same mount seen twice
        "/dev/vdb1 /srv/data xfs ro,relatime 0 0",
        f"server:/export {mount_escape(ODD_MOUNT)} nfs4 rw 0 0",
        "nfs:/gone /srv/missing nfs4 rw 0 0",  # its directory does not exist: statvfs fails
        "tmpfs /dev/shm tmpfs rw 0 0",  # excluded mount point
        "proc /proc proc rw 0 0",  # excluded type
        "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0",
        "overlay /var/lib/docker/overlay2/abc/merged overlay rw 0 0",
    ))})
    exporter = start_exporter(only("filesystem", procfs=str(proc), rootfs=str(root)))
    exporter.scrape()
    text = exporter.scrape()
    assert value(text, "perfwatch_scrape_collector_success", collector="filesystem") == 1
    # The failing mount is logged once, with what failed, not at every scrape.
    assert exporter.service.log().count(f"statvfs of {root}/srv/missing (nfs4 on nfs:/gone) failed: "
                                        "No such file or directory") == 1
    seen = {(dict(k)["device"], dict(k)["mountpoint"], dict(k)["fstype"]): v
            for k, v in values(text, "perfwatch_filesystem_device_error").items()}
    assert seen == {("/dev/vda1", "/", "ext4"): 0, ("/dev/vdb1", "/srv/data", "xfs"): 0,
                    ("server:/export", ODD_MOUNT, "nfs4"): 0, ("nfs:/gone", "/srv/missing", "nfs4"): 1}
    st = os.statvfs(root / ODD_MOUNT.lstrip("/"))
    odd = {"device": "server:/export", "mountpoint": ODD_MOUNT, "fstype": "nfs4"}
    assert value(text, "perfwatch_filesystem_size_bytes", **odd) == st.f_blocks * st.f_frsize
    assert value(text, "perfwatch_filesystem_files", **odd) == st.f_files
    assert "/srv/missing" not in {dict(k)["mountpoint"] for k in values(text, "perfwatch_filesystem_size_bytes")}
    # promtool reads the escaped label value back as valid exposition.
    assert promtool("check", "metrics", stdin=text).returncode == 0


def test_filesystem_exclude_options(start_exporter: StartExporter, tmp_path: Path) -> None:
    root = tmp_path / "root"
    for mountpoint in ("dev/shm", "srv/data", "run"):
        (root / mountpoint).mkdir(parents=True)
    proc = write(tmp_path / "proc", {"1/mounts": "tmpfs /dev/shm tmpfs rw 0 0\n/dev/vdb1 /srv/data xfs rw 0 0\n"
                                                 "tmpfs /run tmpfs rw 0 0\n"})
    config = only("filesystem", procfs=str(proc), rootfs=str(root), options={"filesystem": {
        "mount_points_exclude": "/srv/.*", "fs_types_exclude": "xfs"}})
    text = start_exporter(config).scrape()
    assert {dict(k)["mountpoint"] for k in values(text, "perfwatch_filesystem_size_bytes")} == {"/dev/shm", "/run"}


@pytest.mark.parametrize(("key", "raw", "message"), [
    ("filesystem.mount_points_exclude", "'(unclosed'", "invalid regular expression"),
    ("netdev.interfaces_exclude", "[1]", "must be a regular expression string"),
    ("filesystem.statvfs_timeout", "'soon'", "not a duration"),
    ("tcp.netlink", "'yes'", "true or false"),
])
def test_option_errors_name_the_key(tmp_path: Path, key: str, raw: str, message: str) -> None:
    from test_exporter_process import run_cli

    collector, option = key.split(".")
    path = tmp_path / "config.yml"
    path.write_text(f"collectors:\n  {collector}:\n    {option}: {raw}\n")
    result = run_cli("--config", str(path))
    assert result.returncode == 2
    assert f"collectors.{key}" in result.stderr and message in result.stderr, result.stderr


def test_every_collector_option_names_its_key_when_wrong(tmp_path: Path) -> None:
    """Each option of each collector, given a mapping (wrong for every option type), is refused by name."""
    import dataclasses

    from perfwatch.common.config import ConfigError
    from perfwatch.exporter.settings import load_settings

    checked = set()
    for name, cls in load_all().items():
        for field in dataclasses.fields(cls.Options):
            path = tmp_path / "config.yml"
            path.write_text(f"collectors:\n  {name}:\n    {field.name}: {{wrong: 1}}\n")
            with pytest.raises(ConfigError) as caught:
                load_settings(path)
            assert caught.value.key == f"collectors.{name}.{field.name}", caught.value
            checked.add(caught.value.key)
    assert {"collectors.diskstats.devices_exclude", "collectors.filesystem.fs_types_exclude",
            "collectors.filesystem.mount_points_exclude", "collectors.filesystem.statvfs_timeout",
            "collectors.netdev.interfaces_exclude", "collectors.tcp.netlink", "collectors.perf.events",
            "collectors.perf.cpus"} <= checked


def test_fake_host_scrape_is_promtool_clean(start_exporter: StartExporter, tmp_path: Path) -> None:
    proc = write(tmp_path / "proc", {"diskstats": DISKSTATS, "net/dev": NET_DEV, "net/tcp": TCP4, "net/tcp6": TCP6,
                                     "net/sockstat": SOCKSTAT, "net/sockstat6": SOCKSTAT6,
                                     "pressure/cpu": "some avg10=0.00 avg60=0.00 avg300=0.00 total=1\n"})
    sys_root = write(tmp_path / "sys", {**HWMON, "devices/system/cpu/cpu0/cpufreq/scaling_cur_freq": "1000\n"})
    text = start_exporter(only("diskstats", "netdev", "tcp", "pressure", "hwmon", "cpufreq",
                               procfs=str(proc), sysfs=str(sys_root), options=FILES)).scrape()
    assert all(s.value == 1 for s in samples(text) if s.name == "perfwatch_scrape_collector_success")
    result = promtool("check", "metrics", stdin=text)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


def test_malformed_files_fail_their_collector_only_and_are_named_in_the_log(start_exporter: StartExporter,
                                                                           tmp_path: Path) -> None:
    proc = write(tmp_path / "proc", {
        "loadavg": "not numbers at all\n",
        "vmstat": "pgfault lots\n",
        "net/dev": "header\nheader\n  eth0: 1 2 3\n",  # cut short
        "pressure/cpu": "some avg10=0.00 total=\n",
        "sys/fs/file-nr": "1 2\n",
        "net/sockstat": "TCP: inuse\n",
        "stat": "cpu0 not numbers at all\n",
        "meminfo": "MemTotal: lots kB\n",
        "diskstats": DISKSTATS,  # fine
    })
    broken = ("loadavg", "vmstat", "netdev", "pressure", "filefd", "tcp", "cpu", "memory")
    exporter = start_exporter(only(*broken, "diskstats", procfs=str(proc), options=FILES))
    text = exporter.scrape()
    for name in broken:
        assert value(text, "perfwatch_scrape_collector_success", collector=name) == 0, name
    assert value(text, "perfwatch_scrape_collector_success", collector="diskstats") == 1
    assert value(text, "perfwatch_disk_reads_completed_total", device="sda") == 100
    log = exporter.service.log()
    for file in ("loadavg", "vmstat", "net/dev", "pressure/cpu", "sys/fs/file-nr", "net/sockstat", "stat", "meminfo"):
        assert f"cannot parse {proc / file}" in log, (file, log)
