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
from support.hostfiles import write
from support.prometheus import promtool

from perfwatch.exporter.collectors import load_all

if TYPE_CHECKING:
    from conftest import StartExporter




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
    assert value(text, "node_scrape_collector_success", collector="pressure") == 1
    assert value(text, "node_pressure_cpu_waiting_seconds_total") == 1.5
    assert value(text, "node_pressure_memory_waiting_seconds_total") == 2.5
    assert value(text, "node_pressure_memory_stalled_seconds_total") == 1.0
    assert value(text, "node_pressure_io_waiting_seconds_total") == 0.000123
    assert value(text, "node_pressure_io_stalled_seconds_total") == 0.000045
    assert "perfwatch_pressure_cpu_stalled_seconds_total" not in names(text)  # no "full" line for cpu
    assert "node_pressure_irq_stalled_seconds_total" not in names(text)  # no irq file (kernel < 6.1)


def test_pressure_fake_tree_newer_kernel(start_exporter: StartExporter, tmp_path: Path) -> None:
    proc = write(tmp_path / "proc", {
        "pressure/cpu": "some avg10=1.00 avg60=0.50 avg300=0.10 total=1500000\n"
                        "full avg10=0.00 avg60=0.00 avg300=0.00 total=250000\n",
        "pressure/irq": "full avg10=0.00 avg60=0.00 avg300=0.00 total=4000000\n",
    })
    text = start_exporter(only("pressure", procfs=str(proc))).scrape()
    # The cpu "full" line has no node_exporter metric: perfwatch's own name.
    assert value(text, "perfwatch_pressure_cpu_stalled_seconds_total") == 0.25
    assert value(text, "node_pressure_irq_stalled_seconds_total") == 4.0


def test_pressure_absent_emits_nothing(start_exporter: StartExporter, tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    text = start_exporter(only("pressure", procfs=str(tmp_path / "proc"))).scrape()
    assert value(text, "node_scrape_collector_success", collector="pressure") == 1
    assert not any(n.startswith(("node_pressure_", "perfwatch_pressure_")) for n in names(text))


# --- hwmon ---------------------------------------------------------------------------------------

HWMON = {
    # Socket 0 and socket 1 both call themselves coretemp; their device links tell them apart.
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
    "devices/platform/coretemp.0/uevent": "",
    "devices/platform/coretemp.1/uevent": "",
    # The older layout: attributes in the device's directory (hwmon2/device is a link to it).
    "devices/platform/it87.2608/name": "it8728\n",
    "devices/platform/it87.2608/fan1_input": "1200\n",
    "devices/platform/it87.2608/fan1_min": "600\n",
    "devices/platform/it87.2608/fan2_input": "0\n",
    "devices/platform/it87.2608/fan2_label": 'CPU "fan" \\ ü\n',
    "devices/platform/it87.2608/temp3_input": "not a number\n",
    "devices/platform/it87.2608/in0_input": "1056\n",
    "class/hwmon/hwmon2/uevent": "",
    # No device link: the chip is named after the driver.
    "class/hwmon/hwmon3/name": "acpitz\n",
    "class/hwmon/hwmon3/temp1_input": "27800\n",
    "class/hwmon/hwmon3/temp2_input": "-5000\n",
    "class/hwmon/hwmon3/temp2_label": "board\n",
    "class/hwmon/hwmon3/power1_input": "12500000\n",
    "class/hwmon/hwmon3/energy1_input": "3000000\n",
    # Neither a device link nor a name: the chip is named after the directory.
    "class/hwmon/hwmon4/temp1_input": "99000\n",
}
HWMON_LINKS = {"class/hwmon/hwmon0/device": "../../../devices/platform/coretemp.0",
               "class/hwmon/hwmon10/device": "../../../devices/platform/coretemp.1",
               "class/hwmon/hwmon2/device": "../../../devices/platform/it87.2608"}


def hwmon_tree(root: Path) -> Path:
    write(root, HWMON)
    for link, target in HWMON_LINKS.items():
        (root / link).symlink_to(target)
    return root


def test_hwmon_fake_tree(start_exporter: StartExporter, tmp_path: Path) -> None:
    sys_root = hwmon_tree(tmp_path / "sys")
    text = start_exporter(only("hwmon", sysfs=str(sys_root))).scrape()
    assert value(text, "node_scrape_collector_success", collector="hwmon") == 1
    # node_exporter's naming: chip from the device link (<bus>_<device>), sensor from the file name,
    # the human-readable names in node_hwmon_chip_names and node_hwmon_sensor_label.
    temps = {(dict(k)["chip"], dict(k)["sensor"]): v for k, v in values(text, "node_hwmon_temp_celsius").items()}
    assert temps == {
        ("platform_coretemp_0", "temp1"): 45.0, ("platform_coretemp_0", "temp2"): 43.5,
        ("platform_coretemp_1", "temp1"): 47.0,
        ("acpitz", "temp1"): 27.8, ("acpitz", "temp2"): -5.0, ("hwmon4", "temp1"): 99.0,
    }
    assert value(text, "node_hwmon_temp_max_celsius", chip="platform_coretemp_0", sensor="temp1") == 80
    assert value(text, "node_hwmon_temp_crit_celsius", chip="platform_coretemp_0", sensor="temp1") == 100
    assert len(values(text, "node_hwmon_temp_max_celsius")) == 1
    fans = {dict(k)["sensor"]: v for k, v in values(text, "node_hwmon_fan_rpm").items()}
    assert fans == {"fan1": 1200.0, "fan2": 0.0}
    assert value(text, "node_hwmon_fan_min_rpm", chip="platform_it87_2608", sensor="fan1") == 600
    assert value(text, "node_hwmon_in_volts", chip="platform_it87_2608", sensor="in0") == 1.056
    assert value(text, "node_hwmon_power_watt", chip="acpitz", sensor="power1") == 12.5
    assert value(text, "node_hwmon_energy_joule_total", chip="acpitz", sensor="energy1") == 3.0
    sensor_labels = {(dict(k)["chip"], dict(k)["sensor"], dict(k)["label"])
                     for k in values(text, "node_hwmon_sensor_label")}
    assert sensor_labels == {("platform_coretemp_0", "temp1", "Package id 0"),
                             ("platform_coretemp_0", "temp2", "Core 0"),
                             ("platform_coretemp_1", "temp1", "Package id 0"), ("acpitz", "temp2", "board"),
                             ("platform_it87_2608", "fan2", 'CPU "fan" \\ ü')}
    chips = {dict(k)["chip"]: dict(k)["chip_name"] for k in values(text, "node_hwmon_chip_names")}
    assert chips == {"platform_coretemp_0": "coretemp", "platform_coretemp_1": "coretemp", "acpitz": "acpitz"}
    assert promtool("check", "metrics", stdin=text).returncode == 0


def test_hwmon_none_emits_nothing(start_exporter: StartExporter, tmp_path: Path) -> None:
    (tmp_path / "sys").mkdir()
    text = start_exporter(only("hwmon", sysfs=str(tmp_path / "sys"))).scrape()
    assert value(text, "node_scrape_collector_success", collector="hwmon") == 1
    assert not any(n.startswith("node_hwmon_") for n in names(text))


# --- cpu: thermal throttling and isolated CPUs ----------------------------------------------------

def test_cpu_throttles_and_isolated_fake_tree(start_exporter: StartExporter, tmp_path: Path) -> None:
    cpu = "devices/system/cpu"
    files = {"stat": "cpu  1 0 1 1 0 0 0 0 0 0\ncpu0 1 0 1 1 0 0 0 0 0 0\n"}
    proc = write(tmp_path / "proc", files)
    sys_files = {f"{cpu}/isolated": "1-2\n"}
    # Two hyperthreads of core 0 and one of core 1, in package 0: each core and package read once.
    for n, core in ((0, 0), (1, 0), (2, 1)):
        sys_files |= {f"{cpu}/cpu{n}/topology/physical_package_id": "0\n",
                      f"{cpu}/cpu{n}/topology/core_id": f"{core}\n",
                      f"{cpu}/cpu{n}/thermal_throttle/core_throttle_count": f"{10 + core}\n",
                      f"{cpu}/cpu{n}/thermal_throttle/package_throttle_count": "7\n"}
    sys_root = write(tmp_path / "sys", sys_files)
    text = start_exporter(only("cpu", procfs=str(proc), sysfs=str(sys_root))).scrape()
    assert values(text, "node_cpu_core_throttles_total") == {
        frozenset({("package", "0"), ("core", "0")}): 10, frozenset({("package", "0"), ("core", "1")}): 11}
    assert values(text, "node_cpu_package_throttles_total") == {frozenset({("package", "0")}): 7}
    assert {dict(k)["cpu"] for k in values(text, "node_cpu_isolated")} == {"1", "2"}


X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 85
model name\t: Intel(R) Xeon(R) "Gold" 6230 CPU @ 2.10GHz
stepping\t: 7
microcode\t: 0x5003604
cpu MHz\t\t: 2100.000
cache size\t: 28160 KB
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu vme avx avx2 avx512f
bugs\t\t: spectre_v1 spectre_v2 mds
power management:

processor\t: 1
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 85
model name\t: Intel(R) Xeon(R) "Gold" 6230 CPU @ 2.10GHz
stepping\t: 7
microcode\t: 0x5003604
cache size\t: 28160 KB
physical id\t: 1
core id\t\t: 3
flags\t\t: fpu
bugs\t\t: spectre_v1

"""


def test_cpu_info_fake_cpuinfo(start_exporter: StartExporter, tmp_path: Path) -> None:
    proc = write(tmp_path / "proc", {"stat": "cpu  1 0 1 1 0 0 0 0 0 0\ncpu0 1 0 1 1 0 0 0 0 0 0\n",
                                     "cpuinfo": X86_CPUINFO})
    exporter = start_exporter(only("cpu", procfs=str(proc), options={"cpu": {"info_flags_include": "avx.*"}}))
    text = exporter.scrape()
    common = {"vendor": "GenuineIntel", "family": "6", "model": "85", "microcode": "0x5003604",
              "stepping": "7", "cachesize": "28160 KB", "model_name": 'Intel(R) Xeon(R) "Gold" 6230 CPU @ 2.10GHz'}
    assert values(text, "node_cpu_info") == {
        frozenset({**common, "package": "0", "core": "0", "cpu": "0"}.items()): 1,
        frozenset({**common, "package": "1", "core": "3", "cpu": "1"}.items()): 1}
    # The first CPU's flags, filtered by the anchored regex; bugs only when asked for.
    assert {dict(k)["flag"] for k in values(text, "node_cpu_flag_info")} == {"avx", "avx2", "avx512f"}
    assert "node_cpu_bug_info" not in names(text)
    promtool("check", "metrics", stdin=text)


def test_cpu_info_is_off_by_default_and_reads_arm_features(start_exporter: StartExporter, tmp_path: Path) -> None:
    arm = ("processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes\nCPU implementer\t: 0x41\n\n"
           "processor\t: 1\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes\nCPU implementer\t: 0x41\n\n")
    proc = write(tmp_path / "proc", {"stat": "cpu  1 0 1 1 0 0 0 0 0 0\ncpu0 1 0 1 1 0 0 0 0 0 0\n", "cpuinfo": arm})
    assert "node_cpu_info" not in names(start_exporter(only("cpu", procfs=str(proc))).scrape())
    text = start_exporter(only("cpu", procfs=str(proc), options={"cpu": {"info": True, "info_flags_include": "aes|fp",
                                                                          "info_bugs_include": ".*"}})).scrape()
    empty = dict.fromkeys(("package", "core", "vendor", "family", "model", "model_name", "microcode", "stepping",
                           "cachesize"), "")
    assert values(text, "node_cpu_info") == {frozenset({**empty, "cpu": cpu}.items()): 1 for cpu in ("0", "1")}
    assert {dict(k)["flag"] for k in values(text, "node_cpu_flag_info")} == {"aes", "fp"}
    assert "node_cpu_bug_info" not in names(text)  # ARM's cpuinfo has no bugs line: no series


# --- cpufreq --------------------------------------------------------------------------------------

def test_cpufreq_fake_tree(start_exporter: StartExporter, tmp_path: Path) -> None:
    cpu = "devices/system/cpu"
    sys_root = write(tmp_path / "sys", {
        f"{cpu}/cpu0/cpufreq/scaling_cur_freq": "2400000\n",
        f"{cpu}/cpu0/cpufreq/scaling_min_freq": "1000000\n",
        f"{cpu}/cpu0/cpufreq/scaling_max_freq": "3000000\n",
        f"{cpu}/cpu0/cpufreq/scaling_governor": "powersave\n",
        f"{cpu}/cpu0/cpufreq/scaling_available_governors": "performance powersave\n",
        f"{cpu}/cpu0/cpufreq/cpuinfo_min_freq": "800000\n",
        f"{cpu}/cpu0/cpufreq/cpuinfo_max_freq": "3600000\n",
        # Only the root-readable hardware reading, node_cpu_frequency_hertz.
        f"{cpu}/cpu1/cpufreq/cpuinfo_cur_freq": "1200000\n",
        f"{cpu}/cpu1/cpufreq/cpuinfo_min_freq": "800000\n",
        f"{cpu}/cpu1/cpufreq/cpuinfo_max_freq": "3600000\n",
        f"{cpu}/cpu2/online": "1\n",  # no cpufreq driver for this one
        f"{cpu}/cpufreq/boost": "1\n",  # not a CPU
        f"{cpu}/online": "0-2\n",
    })
    text = start_exporter(only("cpufreq", sysfs=str(sys_root))).scrape()
    assert value(text, "node_scrape_collector_success", collector="cpufreq") == 1
    # node_exporter's split: cpuinfo_* (the hardware) and scaling_* (the governor's view).
    assert by_cpu(text, "node_cpu_frequency_hertz") == {"1": 1.2e9}
    assert by_cpu(text, "node_cpu_scaling_frequency_hertz") == {"0": 2.4e9}
    assert value(text, "node_cpu_frequency_min_hertz", cpu="1") == 8e8
    assert value(text, "node_cpu_frequency_max_hertz", cpu="0") == 3.6e9
    assert len(values(text, "node_cpu_frequency_max_hertz")) == 2
    assert by_cpu(text, "node_cpu_scaling_frequency_min_hertz") == {"0": 1e9}
    assert by_cpu(text, "node_cpu_scaling_frequency_max_hertz") == {"0": 3e9}
    governors = {dict(k)["governor"]: v for k, v in values(text, "node_cpu_scaling_governor").items()}
    assert governors == {"performance": 0, "powersave": 1}


def by_cpu(text: str, name: str) -> dict[str, float]:
    return {dict(k)["cpu"]: v for k, v in values(text, name).items()}


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
    assert value(text, "node_scrape_collector_success", collector="diskstats") == 1
    assert {dict(k)["device"] for k in values(text, "node_disk_read_bytes_total")} == {"sda", "nvme0n1"}
    assert value(text, "node_disk_reads_completed_total", device="sda") == 100
    assert value(text, "node_disk_reads_merged_total", device="sda") == 2
    assert value(text, "node_disk_read_bytes_total", device="sda") == 800 * 512
    assert value(text, "node_disk_read_time_seconds_total", device="sda") == 0.03
    assert value(text, "node_disk_writes_completed_total", device="sda") == 50
    assert value(text, "node_disk_writes_merged_total", device="sda") == 5
    assert value(text, "node_disk_written_bytes_total", device="sda") == 400 * 512
    assert value(text, "node_disk_write_time_seconds_total", device="sda") == 0.07
    assert value(text, "node_disk_io_now", device="sda") == 1
    assert value(text, "node_disk_io_time_seconds_total", device="sda") == 0.09
    assert value(text, "node_disk_io_time_weighted_seconds_total", device="sda") == 0.1
    # Discards and flushes only where the kernel has them.
    assert set(values(text, "node_disk_discards_completed_total")) == {frozenset({("device", "nvme0n1")})}
    assert value(text, "node_disk_discards_completed_total", device="nvme0n1") == 6
    assert value(text, "node_disk_discards_merged_total", device="nvme0n1") == 1
    assert value(text, "node_disk_discarded_sectors_total", device="nvme0n1") == 16
    assert value(text, "node_disk_discard_time_seconds_total", device="nvme0n1") == 0.002
    assert value(text, "node_disk_flush_requests_total", device="nvme0n1") == 7
    assert value(text, "node_disk_flush_requests_time_seconds_total", device="nvme0n1") == 0.009
    # Without udev's database, node_disk_info still names every device, its other labels empty.
    info = {dict(k)["device"]: dict(k) for k in values(text, "node_disk_info")}
    assert info["sda"] == {"device": "sda", "major": "8", "minor": "0", "path": "", "wwn": "", "model": "",
                           "serial": "", "revision": ""}
    assert set(info) == {"sda", "nvme0n1"}


def test_diskstats_udev_properties(start_exporter: StartExporter, tmp_path: Path) -> None:
    proc = write(tmp_path / "proc", {"diskstats": DISKSTATS})
    root = write(tmp_path / "root", {
        "run/udev/data/b8:0": "S:disk/by-id/ata-X\nE:ID_ATA=1\nE:ID_MODEL=Samsung_SSD_860\n"
                              "E:ID_SERIAL_SHORT=S3Z9\n"
                              "E:ID_REVISION=RVT04B6Q\nE:ID_WWN=0x5002538e\nE:ID_PATH=pci-0000:00:1f.2-ata-1\n"
                              "E:ID_ATA_ROTATION_RATE_RPM=0\nE:ID_ATA_WRITE_CACHE=1\n"
                              "E:ID_ATA_WRITE_CACHE_ENABLED=1\n"
                              "E:ID_FS_TYPE=LVM2_member\nE:ID_FS_USAGE=raid\n"
                              "E:ID_FS_UUID=abc\nE:ID_FS_VERSION=LVM2 001\n",
        "run/udev/data/b259:0": "E:DM_NAME=vg-root\nE:DM_UUID=LVM-x\nE:DM_VG_NAME=vg\nE:DM_LV_NAME=root\n",
    })
    text = start_exporter(only("diskstats", procfs=str(proc), rootfs=str(root))).scrape()
    assert value(text, "node_disk_info", device="sda", major="8", minor="0", model="Samsung_SSD_860", serial="S3Z9",
                 revision="RVT04B6Q", wwn="0x5002538e", path="pci-0000:00:1f.2-ata-1") == 1
    assert value(text, "node_disk_filesystem_info", device="sda", type="LVM2_member", usage="raid", uuid="abc",
                 version="LVM2 001") == 1
    assert values(text, "node_disk_device_mapper_info") == {frozenset({
        ("device", "nvme0n1"), ("name", "vg-root"), ("uuid", "LVM-x"), ("vg_name", "vg"), ("lv_name", "root"),
        ("lv_layer", "")}): 1}
    assert value(text, "node_disk_ata_rotation_rate_rpm", device="sda") == 0
    assert value(text, "node_disk_ata_write_cache_enabled", device="sda") == 1
    assert "node_disk_ata_write_cache" in names(text)


def test_diskstats_devices_exclude_option(start_exporter: StartExporter, tmp_path: Path) -> None:
    proc = write(tmp_path / "proc", {"diskstats": DISKSTATS})
    text = start_exporter(only("diskstats", procfs=str(proc),
                               options={"diskstats": {"devices_exclude": "nvme.*"}})).scrape()
    assert {dict(k)["device"] for k in values(text, "node_disk_io_now")} == {"sda", "sda1", "loop0"}


# --- netdev ---------------------------------------------------------------------------------------

NET_DEV = (
    "Inter-|   Receive                                                |  Transmit\n"
    " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier "
    "compressed\n"
    "    lo:  464132    3298    0    0    0     0          0         0   464132    3298    0    0    0     0       0"
    "          0\n"
    # Counters wide enough to touch the colon.
    "  eth0:123456789012 3125 1 2 5 6 7 8 211150 2166 3 4 9 10 11 12\n"
    "veth-a1: 10 1 0 0 0 0 0 0 20 2 0 0 0 0 0 0\n"
)


def test_netdev_fake_tree_and_default_exclude(start_exporter: StartExporter, tmp_path: Path) -> None:
    proc = write(tmp_path / "proc", {"net/dev": NET_DEV})
    (tmp_path / "sys").mkdir()
    text = start_exporter(only("netdev", procfs=str(proc), sysfs=str(tmp_path / "sys"))).scrape()
    assert {dict(k)["device"] for k in values(text, "node_network_receive_bytes_total")} == {"eth0", "veth-a1"}
    # Every column of /proc/net/dev under node_exporter's name.
    expected = {"receive_bytes": 123456789012, "receive_packets": 3125, "receive_errs": 1, "receive_drop": 2,
                "receive_fifo": 5, "receive_frame": 6, "receive_compressed": 7, "receive_multicast": 8,
                "transmit_bytes": 211150, "transmit_packets": 2166, "transmit_errs": 3, "transmit_drop": 4,
                "transmit_fifo": 9, "transmit_colls": 10, "transmit_carrier": 11, "transmit_compressed": 12}
    for metric, number in expected.items():
        assert value(text, f"node_network_{metric}_total", device="eth0") == number, metric
    assert "node_network_receive_nohandler_total" not in names(text)  # no sysfs statistics here


def test_netdev_nohandler_from_sysfs(start_exporter: StartExporter, tmp_path: Path) -> None:
    proc = write(tmp_path / "proc", {"net/dev": NET_DEV})
    sys_root = write(tmp_path / "sys", {"class/net/eth0/statistics/rx_nohandler": "17\n"})
    text = start_exporter(only("netdev", procfs=str(proc), sysfs=str(sys_root))).scrape()
    assert values(text, "node_network_receive_nohandler_total") == {frozenset({("device", "eth0")}): 17}


def test_netdev_interfaces_exclude_option(start_exporter: StartExporter, tmp_path: Path) -> None:
    proc = write(tmp_path / "proc", {"net/dev": NET_DEV})
    text = start_exporter(only("netdev", procfs=str(proc),
                               options={"netdev": {"interfaces_exclude": "veth.*"}})).scrape()
    assert {dict(k)["device"] for k in values(text, "node_network_transmit_bytes_total")} == {"lo", "eth0"}
    assert value(text, "node_network_transmit_packets_total", device="lo") == 3298


# --- tcpstat, sockstat ------------------------------------------------------------------------------------------

TCP_HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
TCP4 = TCP_HEADER + (
    "   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1077 1 "
    "00000000ded56b17 100 0 0 10 0\n"
    "   1: 0100007F:9C5A 0100007F:07E8 01 00000010:00000002 02:0000000A 00000000  1000        0 2211 2 "
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
FILES = {"tcpstat": {"netlink": False}}
SOCKSTAT6 = "TCP6: inuse 2\nUDP6: inuse 3\nUDPLITE6: inuse 0\nRAW6: inuse 0\nFRAG6: inuse 0 memory 0\n"


def test_tcpstat_fake_tree_counts_every_state(start_exporter: StartExporter, tmp_path: Path) -> None:
    proc = write(tmp_path / "proc", {"net/tcp": TCP4, "net/tcp6": TCP6})
    text = start_exporter(only("tcpstat", procfs=str(proc), options=FILES)).scrape()
    assert value(text, "node_scrape_collector_success", collector="tcpstat") == 1
    states = {dict(k)["state"]: v for k, v in values(text, "node_tcp_connection_states").items()}
    assert states == {"established": 2, "syn_sent": 0, "syn_recv": 0, "fin_wait1": 0, "fin_wait2": 0,
                      "time_wait": 1, "close": 0, "close_wait": 1, "last_ack": 0, "listen": 2, "closing": 0,
                      "rx_queued_bytes": 2, "tx_queued_bytes": 16}


def test_tcpstat_without_ipv6(start_exporter: StartExporter, tmp_path: Path) -> None:
    proc = write(tmp_path / "proc", {"net/tcp": TCP4})
    text = start_exporter(only("tcpstat", procfs=str(proc), options=FILES)).scrape()
    assert value(text, "node_tcp_connection_states", state="listen") == 1


def test_tcpstat_and_sockstat_defaults_are_node_exporters() -> None:
    registry = load_all()
    assert registry["tcpstat"].default_enabled is False and registry["tcpstat"].node_collectors == ("tcpstat",)
    assert registry["sockstat"].default_enabled is True and registry["sockstat"].node_collectors == ("sockstat",)


def test_sockstat_fake_tree_as_node_exporter_names_it(start_exporter: StartExporter, tmp_path: Path) -> None:
    proc = write(tmp_path / "proc", {"net/sockstat": SOCKSTAT, "net/sockstat6": SOCKSTAT6})
    text = start_exporter(only("sockstat", procfs=str(proc))).scrape()
    assert value(text, "node_scrape_collector_success", collector="sockstat") == 1
    page = os.sysconf("SC_PAGE_SIZE")
    expected = {
        "node_sockstat_sockets_used": 321,
        "node_sockstat_TCP_inuse": 4, "node_sockstat_TCP_orphan": 1, "node_sockstat_TCP_tw": 2,
        "node_sockstat_TCP_alloc": 9, "node_sockstat_TCP_mem": 3, "node_sockstat_TCP_mem_bytes": 3 * page,
        "node_sockstat_UDP_inuse": 5, "node_sockstat_UDP_mem": 2, "node_sockstat_UDP_mem_bytes": 2 * page,
        "node_sockstat_UDPLITE_inuse": 0, "node_sockstat_RAW_inuse": 1,
        "node_sockstat_FRAG_inuse": 0, "node_sockstat_FRAG_memory": 4096,
        "node_sockstat_TCP6_inuse": 2, "node_sockstat_UDP6_inuse": 3, "node_sockstat_UDPLITE6_inuse": 0,
        "node_sockstat_RAW6_inuse": 0, "node_sockstat_FRAG6_inuse": 0, "node_sockstat_FRAG6_memory": 0,
    }
    got = {s.name: s.value for s in samples(text) if s.name.startswith("node_sockstat_")}
    assert got == expected
    assert "# TYPE node_sockstat_TCP_inuse gauge" in text  # as node_exporter 1.5 types it


def test_sockstat_without_ipv6(start_exporter: StartExporter, tmp_path: Path) -> None:
    proc = write(tmp_path / "proc", {"net/sockstat": SOCKSTAT})
    text = start_exporter(only("sockstat", procfs=str(proc))).scrape()
    assert value(text, "node_sockstat_TCP_inuse") == 4
    assert "node_sockstat_TCP6_inuse" not in names(text)


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
        "45/task/45/stat": stat_line(45, "dd", "D", 2),
        "45/task/46/stat": stat_line(46, "dd", "S", 2),  # its second thread sleeps
        "self/stat": stat_line(45, "dd", "D", 2),  # not a pid directory
        "sys/kernel/pid_max": "4194304\n",
        "sys/kernel/threads-max": "191837\n",
    })
    text = start_exporter(only("processes", procfs=str(proc))).scrape()
    assert value(text, "node_scrape_collector_success", collector="processes") == 1
    # node_exporter's state letters; the common ones always present (0 included).
    states = {dict(k)["state"]: v for k, v in values(text, "node_processes_state").items()}
    assert states == {"R": 1, "S": 1, "D": 1, "Z": 1, "T": 0, "t": 0, "I": 1}
    assert value(text, "node_processes_pids") == 5
    assert value(text, "node_processes_threads") == 12
    # Threads by their own state: single-threaded processes count as themselves; 42's task
    # directory is gone (it exited meanwhile), 45's two threads are read one by one.
    threads = {dict(k)["thread_state"]: v for k, v in values(text, "node_processes_threads_state").items()}
    assert threads == {"R": 0, "S": 2, "D": 1, "Z": 1, "T": 0, "t": 0, "I": 1}
    assert value(text, "node_processes_max_processes") == 4194304
    assert value(text, "node_processes_max_threads") == 191837


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
    assert value(text, "node_scrape_collector_success", collector="filesystem") == 1
    # The failing mount is logged once, with what failed, not at every scrape.
    assert exporter.service.log().count(f"statvfs of {root}/srv/missing (nfs4 on nfs:/gone) failed: "
                                        "No such file or directory") == 1
    seen = {(dict(k)["device"], dict(k)["mountpoint"], dict(k)["fstype"]): v
            for k, v in values(text, "node_filesystem_device_error").items()}
    assert seen == {("/dev/vda1", "/", "ext4"): 0, ("/dev/vdb1", "/srv/data", "xfs"): 0,
                    ("server:/export", ODD_MOUNT, "nfs4"): 0, ("nfs:/gone", "/srv/missing", "nfs4"): 1}
    st = os.statvfs(root / ODD_MOUNT.lstrip("/"))
    odd = {"device": "server:/export", "mountpoint": ODD_MOUNT, "fstype": "nfs4"}
    assert value(text, "node_filesystem_size_bytes", **odd) == st.f_blocks * st.f_frsize
    assert value(text, "node_filesystem_files", **odd) == st.f_files
    assert "/srv/missing" not in {dict(k)["mountpoint"] for k in values(text, "node_filesystem_size_bytes")}
    # Read-only from the mount options, as node_exporter reads it.
    assert value(text, "node_filesystem_readonly", mountpoint="/srv/data") == 1
    assert value(text, "node_filesystem_readonly", mountpoint="/") == 0
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
    assert {dict(k)["mountpoint"] for k in values(text, "node_filesystem_size_bytes")} == {"/dev/shm", "/run"}


@pytest.mark.parametrize(("key", "raw", "message"), [
    ("filesystem.mount_points_exclude", "'(unclosed'", "invalid regular expression"),
    ("netdev.interfaces_exclude", "[1]", "must be a regular expression string"),
    ("filesystem.statvfs_timeout", "'soon'", "not a duration"),
    ("tcpstat.netlink", "'yes'", "true or false"),
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
            "collectors.netdev.interfaces_exclude", "collectors.tcpstat.netlink", "collectors.perf.events",
            "collectors.perf.cpus"} <= checked


def test_fake_host_scrape_is_promtool_clean(start_exporter: StartExporter, tmp_path: Path) -> None:
    proc = write(tmp_path / "proc", {"diskstats": DISKSTATS, "net/dev": NET_DEV, "net/tcp": TCP4, "net/tcp6": TCP6,
                                     "net/sockstat": SOCKSTAT, "net/sockstat6": SOCKSTAT6,
                                     "pressure/cpu": "some avg10=0.00 avg60=0.00 avg300=0.00 total=1\n"})
    sys_root = hwmon_tree(tmp_path / "sys")
    write(sys_root, {"devices/system/cpu/cpu0/cpufreq/scaling_cur_freq": "1000\n"})
    text = start_exporter(only("diskstats", "netdev", "tcpstat", "sockstat", "pressure", "hwmon", "cpufreq",
                               procfs=str(proc), sysfs=str(sys_root), options=FILES)).scrape()
    assert all(s.value == 1 for s in samples(text) if s.name == "node_scrape_collector_success")
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
    broken = ("loadavg", "vmstat", "netdev", "pressure", "filefd", "sockstat", "cpu", "meminfo")
    exporter = start_exporter(only(*broken, "diskstats", procfs=str(proc), options=FILES))
    text = exporter.scrape()
    for name in broken:
        assert value(text, "node_scrape_collector_success", collector=name) == 0, name
    assert value(text, "node_scrape_collector_success", collector="diskstats") == 1
    assert value(text, "node_disk_reads_completed_total", device="sda") == 100
    log = exporter.service.log()
    for file in ("loadavg", "vmstat", "net/dev", "pressure/cpu", "sys/fs/file-nr", "net/sockstat", "stat", "meminfo"):
        assert f"cannot parse {proc / file}" in log, (file, log)
