"""netstat, netclass, softnet, conntrack, arp, timex, entropy, schedstat, thermal_zone: kernel files
versus metrics, in-process on a fake /proc and /sys (values known exactly), then on this machine
side by side with node_exporter 1.5 (Debian's prometheus-node-exporter) where it is installed.
"""

from __future__ import annotations

import ctypes
import errno
import math
import os
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.exposition import names, value, values
from support.hostfiles import write
from support.node_exporter import scrape_once

from perfwatch.common.config import from_mapping
from perfwatch.exporter.collectors import load_all
from perfwatch.exporter.collectors.base import Directory, HostPaths, read_text
from perfwatch.exporter.collectors.timex import Timex, TimexCollector
from perfwatch.exporter.exposition import render_families

NEW = ("netstat", "netclass", "softnet", "conntrack", "arp", "timex", "entropy", "schedstat", "thermal_zone")




def scrape(name: str, root: Path | None = None, **options: Any) -> str:
    """The collector's families, rendered as /metrics renders them."""
    cls = load_all()[name]
    paths = HostPaths(procfs=str(root / "proc"), sysfs=str(root / "sys")) if root else HostPaths()
    # through the config loader, as `collectors: <name>: {...}` would set them
    return render_families(cls(from_mapping(cls.Options, options, f"collectors.{name}"), paths).collect()).decode()


def types(text: str) -> dict[str, tuple[str, str]]:
    """Family name as exposed (a counter's with its _total) → (type, help)."""
    return {f.name + ("_total" if f.type == "counter" else ""): (f.type, f.documentation)
            for f in text_string_to_metric_families(text)}


def labels(**pairs: str) -> frozenset[tuple[str, str]]:
    return frozenset(pairs.items())


def test_every_new_collector_names_its_node_exporter_collector_and_is_on_by_default() -> None:
    registry = load_all()
    for name in NEW:
        assert registry[name].node_collectors == (name,)
        assert registry[name].default_enabled  # as in node_exporter 1.5
    assert registry["textfile"].default_enabled


# --- netstat --------------------------------------------------------------------------------------

NETSTAT = {
    "proc/net/netstat": "TcpExt: SyncookiesSent SyncookiesRecv ListenOverflows ListenDrops TCPTimeouts TCPSynRetrans"
                        " TCPOFOQueue\nTcpExt: 1 2 3 4 5 6 7\n"
                        "IpExt: InNoRoutes InOctets OutOctets\nIpExt: 0 1000 2000\n",
    "proc/net/snmp": "Ip: Forwarding DefaultTTL InReceives InHdrErrors\nIp: 1 64 100 9\n"
                     "Icmp: InMsgs InErrors OutMsgs\nIcmp: 10 11 12\n"
                     "Tcp: RtoAlgorithm MaxConn ActiveOpens PassiveOpens CurrEstab InSegs OutSegs RetransSegs InErrs"
                     " OutRsts\nTcp: 1 -1 20 21 22 23 24 25 26 27\n"
                     "Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors\n"
                     "Udp: 30 31 32 33 34 35 36\n"
                     "UdpLite: InDatagrams InErrors\nUdpLite: 0 40\n",
    "proc/net/snmp6": "Ip6InReceives                   \t50\nIp6InOctets 51\nIp6OutOctets 52\nIcmp6InMsgs 53\n"
                      "Icmp6InErrors 54\nUdp6InDatagrams 55\nUdpLite6InErrors 56\nIp6InNoRoutes 57\n",
}


def test_netstat_fake_files_default_fields(tmp_path: Path) -> None:
    text = scrape("netstat", write(tmp_path, NETSTAT))
    got = {n: value(text, n) for n in names(text)}
    assert got == {
        "node_netstat_TcpExt_SyncookiesSent": 1, "node_netstat_TcpExt_SyncookiesRecv": 2,
        "node_netstat_TcpExt_ListenOverflows": 3, "node_netstat_TcpExt_ListenDrops": 4,
        "node_netstat_TcpExt_TCPTimeouts": 5, "node_netstat_TcpExt_TCPSynRetrans": 6,
        "node_netstat_IpExt_InOctets": 1000, "node_netstat_IpExt_OutOctets": 2000,
        "node_netstat_Ip_Forwarding": 1,  # not Ip_InHdrErrors, Ip_DefaultTTL, Tcp_MaxConn
        "node_netstat_Icmp_InMsgs": 10, "node_netstat_Icmp_InErrors": 11, "node_netstat_Icmp_OutMsgs": 12,
        "node_netstat_Tcp_ActiveOpens": 20, "node_netstat_Tcp_PassiveOpens": 21, "node_netstat_Tcp_CurrEstab": 22,
        "node_netstat_Tcp_InSegs": 23, "node_netstat_Tcp_OutSegs": 24, "node_netstat_Tcp_RetransSegs": 25,
        "node_netstat_Tcp_InErrs": 26, "node_netstat_Tcp_OutRsts": 27,
        "node_netstat_Udp_InDatagrams": 30, "node_netstat_Udp_NoPorts": 31, "node_netstat_Udp_InErrors": 32,
        "node_netstat_Udp_OutDatagrams": 33, "node_netstat_Udp_RcvbufErrors": 34,
        "node_netstat_Udp_SndbufErrors": 35, "node_netstat_UdpLite_InErrors": 40,
        "node_netstat_Ip6_InOctets": 51, "node_netstat_Ip6_OutOctets": 52, "node_netstat_Icmp6_InMsgs": 53,
        "node_netstat_Icmp6_InErrors": 54, "node_netstat_Udp6_InDatagrams": 55,
        "node_netstat_UdpLite6_InErrors": 56,
    }
    assert types(text)["node_netstat_Tcp_RetransSegs"] == ("unknown", "Statistic TcpRetransSegs.")  # untyped
    assert "# TYPE node_netstat_Tcp_RetransSegs untyped" in text


def test_netstat_fields_option_and_ipv6_absent(tmp_path: Path) -> None:
    files = {k: v for k, v in NETSTAT.items() if not k.endswith("snmp6")}
    text = scrape("netstat", write(tmp_path, files), fields="Tcp_MaxConn|TcpExt_TCPOFOQueue")
    assert {n: value(text, n) for n in names(text)} == {"node_netstat_Tcp_MaxConn": -1,
                                                        "node_netstat_TcpExt_TCPOFOQueue": 7}


def test_netstat_mismatched_lines_fail(tmp_path: Path) -> None:
    write(tmp_path, {**NETSTAT, "proc/net/netstat": "TcpExt: A B\nTcpExt: 1\n"})
    with pytest.raises(ValueError, match="netstat"):
        scrape("netstat", tmp_path)


# --- netclass -------------------------------------------------------------------------------------

def netclass_device(name: str, **files: str) -> dict[str, str]:
    base = {"addr_assign_type": "0", "address": "52:54:00:12:34:56", "broadcast": "ff:ff:ff:ff:ff:ff",
            "carrier": "1", "carrier_changes": "3", "carrier_up_count": "2", "carrier_down_count": "1",
            "dev_id": "0x0", "dormant": "0", "duplex": "full", "flags": "0x1003", "ifalias": "uplink",
            "ifindex": "2", "iflink": "2", "link_mode": "0", "mtu": "9000", "name_assign_type": "4",
            "netdev_group": "0", "operstate": "up", "speed": "10000", "tx_queue_len": "1000", "type": "1"}
    base.update(files)
    return {f"sys/class/net/{name}/{k}": v + "\n" for k, v in base.items()}


def test_netclass_fake_tree(tmp_path: Path) -> None:
    root = write(tmp_path, {
        **netclass_device("eth0"),
        # down, virtual: the kernel refuses carrier/speed/duplex (EINVAL) -> absent files here
        **{k: v for k, v in netclass_device("veth1", operstate="down", speed="-1", ifalias="").items()
           if not k.endswith(("/carrier", "/duplex", "/name_assign_type"))},
        "sys/class/net/bonding_masters": "bond0\n",  # a regular file: not a device
    })
    text = scrape("netclass", root)
    assert values(text, "node_network_up") == {labels(device="eth0"): 1, labels(device="veth1"): 0}
    assert values(text, "node_network_info") == {
        labels(device="eth0", address="52:54:00:12:34:56", broadcast="ff:ff:ff:ff:ff:ff", duplex="full",
               operstate="up", ifalias="uplink"): 1,
        labels(device="veth1", address="52:54:00:12:34:56", broadcast="ff:ff:ff:ff:ff:ff", duplex="",
               operstate="down", ifalias=""): 1,
    }
    assert values(text, "node_network_speed_bytes") == {labels(device="eth0"): 1250000000,
                                                        labels(device="veth1"): -125000}
    assert values(text, "node_network_carrier") == {labels(device="eth0"): 1}
    assert values(text, "node_network_flags")[labels(device="eth0")] == 4099
    assert values(text, "node_network_mtu_bytes")[labels(device="eth0")] == 9000
    assert values(text, "node_network_carrier_changes_total")[labels(device="eth0")] == 3
    assert values(text, "node_network_carrier_up_changes_total")[labels(device="eth0")] == 2
    assert values(text, "node_network_carrier_down_changes_total")[labels(device="eth0")] == 1
    assert values(text, "node_network_iface_id")[labels(device="eth0")] == 2
    assert values(text, "node_network_name_assign_type") == {labels(device="eth0"): 4}
    assert values(text, "node_network_transmit_queue_length")[labels(device="veth1")] == 1000
    assert values(text, "node_network_protocol_type")[labels(device="eth0")] == 1
    assert types(text)["node_network_carrier_changes_total"] == ("counter", "Network device property: "
                                                                 "carrier_changes_total")
    assert types(text)["node_network_mtu_bytes"] == ("gauge", "Network device property: mtu_bytes")
    text = scrape("netclass", root, ignored_devices="veth.*", ignore_invalid_speed=True)
    assert values(text, "node_network_up") == {labels(device="eth0"): 1}


def test_directory_reads_relative_to_itself_and_names_the_full_path_in_errors(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "mtu").write_text("1500\n")
    (tmp_path / "file").write_text("x")
    with Directory(str(tmp_path / "dev")) as files:
        assert files.read_text("mtu") == files.read_attribute("mtu") == "1500\n"
        for read in (files.read_text, files.read_attribute):
            with pytest.raises(FileNotFoundError) as raised:
                read("speed")
            assert raised.value.filename == str(tmp_path / "dev" / "speed")
    with pytest.raises(NotADirectoryError):
        Directory(str(tmp_path / "file"))


def test_directory_reads_many_attributes_in_one_call(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "mtu").write_text("1500\n")
    (tmp_path / "dev" / "ifalias").write_text("\n")
    (tmp_path / "dev" / "queues").mkdir()  # read(2) of a directory: EISDIR, not in `missing`
    with Directory(str(tmp_path / "dev")) as files:
        assert files.read_attributes(["mtu", "speed", "ifalias"], (errno.ENOENT,)) == ["1500", None, ""]
        with pytest.raises(FileNotFoundError) as raised:
            files.read_attributes(["mtu", "speed"])
        assert raised.value.filename == str(tmp_path / "dev" / "speed")
        with pytest.raises(IsADirectoryError) as directory:
            files.read_attributes(["queues"], (errno.ENOENT,))
        assert directory.value.filename == str(tmp_path / "dev" / "queues")


def test_directory_reads_this_hosts_sysfs_attributes_whole() -> None:
    """One read of a real sysfs attribute gives what reading it to its end by full path gives."""
    for device in sorted(os.listdir("/sys/class/net")):
        path = f"/sys/class/net/{device}"
        with Directory(path) as files:
            for name in ("address", "mtu", "operstate", "flags", "type", "uevent"):
                assert files.read_attribute(name) == read_text(f"{path}/{name}") != ""


# --- softnet, conntrack, arp, entropy, schedstat --------------------------------------------------

def test_softnet_fake_file(tmp_path: Path) -> None:
    root = write(tmp_path, {"proc/net/softnet_stat":
                            "0000000a 00000001 00000002 00000000 00000000 00000000 00000000 00000000 00000000\n"
                            "000000ff 00000000 00000010 00000000 00000000 00000000 00000000 00000000 00000000"
                            " 00000000 00000000 00000000 00000001\n"})
    text = scrape("softnet", root)
    assert values(text, "node_softnet_processed_total") == {labels(cpu="0"): 10, labels(cpu="1"): 255}
    assert values(text, "node_softnet_dropped_total") == {labels(cpu="0"): 1, labels(cpu="1"): 0}
    assert values(text, "node_softnet_times_squeezed_total") == {labels(cpu="0"): 2, labels(cpu="1"): 16}


CONNTRACK_HEADER = ("entries  clashres found new invalid ignore delete chainlength insert insert_failed drop"
                    " early_drop icmp_error  expect_new expect_create expect_delete search_restart\n")


def test_conntrack_fake_files(tmp_path: Path) -> None:
    row = " ".join(f"{i:08x}" for i in range(17))
    root = write(tmp_path, {"proc/sys/net/netfilter/nf_conntrack_count": "42\n",
                            "proc/sys/net/netfilter/nf_conntrack_max": "65536\n",
                            "proc/net/stat/nf_conntrack": CONNTRACK_HEADER + row + "\n" + row + "\n"})
    text = scrape("conntrack", root)
    got = {n: value(text, n) for n in names(text)}
    assert got == {"node_nf_conntrack_entries": 42, "node_nf_conntrack_entries_limit": 65536,
                   "node_nf_conntrack_stat_found": 4, "node_nf_conntrack_stat_invalid": 8,
                   "node_nf_conntrack_stat_ignore": 10, "node_nf_conntrack_stat_insert": 16,
                   "node_nf_conntrack_stat_insert_failed": 18, "node_nf_conntrack_stat_drop": 20,
                   "node_nf_conntrack_stat_early_drop": 22, "node_nf_conntrack_stat_search_restart": 32}
    assert all(t == "gauge" for t, _ in types(text).values())  # as node_exporter, though kernel counters


def test_conntrack_module_not_loaded_no_series_no_error(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    assert scrape("conntrack", tmp_path) == ""
    # count and max without the statistics file: those two only
    write(tmp_path, {"proc/sys/net/netfilter/nf_conntrack_count": "1\n",
                     "proc/sys/net/netfilter/nf_conntrack_max": "2\n"})
    assert names(scrape("conntrack", tmp_path)) == {"node_nf_conntrack_entries", "node_nf_conntrack_entries_limit"}


ARP = ("IP address       HW type     Flags       HW address            Mask     Device\n"
       "192.0.2.1        0x1         0x2         02:fc:00:00:00:05     *        eth0\n"
       "192.0.2.7        0x1         0x2         02:fc:00:00:00:07     *        eth0\n"
       "198.51.100.1     0x1         0x2         02:fc:00:00:01:01     *        br-lan\n")


def test_arp_fake_table_and_device_filters(tmp_path: Path) -> None:
    root = write(tmp_path, {"proc/net/arp": ARP})
    assert values(scrape("arp", root), "node_arp_entries") == {labels(device="eth0"): 2, labels(device="br-lan"): 1}
    assert values(scrape("arp", root, device_exclude="br-.*"), "node_arp_entries") == {labels(device="eth0"): 2}
    assert values(scrape("arp", root, device_include="br-.*"), "node_arp_entries") == {labels(device="br-lan"): 1}
    write(tmp_path, {"proc/net/arp": ARP.splitlines()[0] + "\n"})
    assert scrape("arp", root) == ""  # no neighbours: no family, as node_exporter


def test_entropy_fake_files(tmp_path: Path) -> None:
    root = write(tmp_path, {"proc/sys/kernel/random/entropy_avail": "3712\n",
                            "proc/sys/kernel/random/poolsize": "4096\n"})
    text = scrape("entropy", root)
    assert value(text, "node_entropy_available_bits") == 3712
    assert value(text, "node_entropy_pool_size_bits") == 4096
    (tmp_path / "proc/sys/kernel/random/poolsize").unlink()
    with pytest.raises(FileNotFoundError):  # an error, as node_exporter's "couldn't get entropy poolsize"
        scrape("entropy", root)


SCHEDSTAT = ("version 15\ntimestamp 4296482425\n"
             "cpu0 0 0 0 0 0 0 2000000000 500000000 1234\n"
             "domain0 00000003 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31\n"
             "cpu1 0 0 0 0 0 0 1500 7 99\n")


def test_schedstat_fake_file_and_absent(tmp_path: Path) -> None:
    text = scrape("schedstat", write(tmp_path, {"proc/schedstat": SCHEDSTAT}))
    assert values(text, "node_schedstat_running_seconds_total") == {labels(cpu="0"): 2.0, labels(cpu="1"): 1.5e-06}
    assert values(text, "node_schedstat_waiting_seconds_total") == {labels(cpu="0"): 0.5, labels(cpu="1"): 7e-09}
    assert values(text, "node_schedstat_timeslices_total") == {labels(cpu="0"): 1234, labels(cpu="1"): 99}
    (tmp_path / "proc/schedstat").unlink()  # CONFIG_SCHEDSTATS off (this VM): nothing, no error
    assert scrape("schedstat", tmp_path) == ""


# --- thermal_zone ---------------------------------------------------------------------------------

def test_thermal_zones_and_cooling_devices(tmp_path: Path) -> None:
    root = write(tmp_path, {
        "sys/class/thermal/thermal_zone0/type": "x86_pkg_temp\n",
        "sys/class/thermal/thermal_zone0/policy": "step_wise\n",
        "sys/class/thermal/thermal_zone0/temp": "48500\n",
        "sys/class/thermal/thermal_zone1/type": "acpitz\n",
        "sys/class/thermal/thermal_zone1/policy": "step_wise\n",
        "sys/class/thermal/thermal_zone1/mode": "enabled\n",
        "sys/class/thermal/thermal_zone1/temp": "-2000\n",
        "sys/class/thermal/thermal_zone2/type": "off\n",  # disabled: skipped
        "sys/class/thermal/thermal_zone2/policy": "step_wise\n",
        "sys/class/thermal/thermal_zone2/mode": "disabled\n",
        "sys/class/thermal/thermal_zone2/temp": "0\n",
        "sys/class/thermal/thermal_zone3/type": "nopolicy\n",  # a required file missing: skipped
        "sys/class/thermal/thermal_zone3/temp": "1000\n",
        "sys/class/thermal/cooling_device0/type": "Processor\n",
        "sys/class/thermal/cooling_device0/cur_state": "1\n",
        "sys/class/thermal/cooling_device0/max_state": "3\n",
    })
    text = scrape("thermal_zone", root)
    assert values(text, "node_thermal_zone_temp") == {labels(zone="0", type="x86_pkg_temp"): 48.5,
                                                      labels(zone="1", type="acpitz"): -2.0}
    assert values(text, "node_cooling_device_cur_state") == {labels(name="0", type="Processor"): 1}
    assert values(text, "node_cooling_device_max_state") == {labels(name="0", type="Processor"): 3}
    assert types(text)["node_thermal_zone_temp"] == ("gauge", "Zone temperature in Celsius")
    (tmp_path / "empty").mkdir()
    assert scrape("thermal_zone", tmp_path / "empty") == ""  # no /sys/class/thermal (this VM)


# --- timex ----------------------------------------------------------------------------------------

def test_timex_struct_layout_is_glibcs_on_lp64() -> None:
    if ctypes.sizeof(ctypes.c_long) != 8:
        pytest.skip("32-bit: another layout, not checked here")
    offsets = {name: getattr(Timex, name).offset for name in ("offset", "status", "constant", "time", "tick",
                                                              "shift", "stabil", "stbcnt", "tai")}
    assert offsets == {"offset": 8, "status": 40, "constant": 48, "time": 72, "tick": 88, "shift": 112,
                       "stabil": 120, "stbcnt": 152, "tai": 160}
    assert ctypes.sizeof(Timex) == 208  # x86_64 and aarch64 alike


def fake_adjtimex(state: int, **fields: int) -> Any:
    def adjtimex(tx: Timex) -> int:
        for name, field_value in fields.items():
            setattr(tx, name, field_value)
        return state
    return adjtimex


@pytest.mark.parametrize(("nano", "state"), [(False, 0), (True, 5)])
def test_timex_values_from_the_struct(nano: bool, state: int) -> None:
    collector = TimexCollector(TimexCollector.Options(), HostPaths())
    status = 0x2001 if nano else 0x0001  # STA_PLL | STA_NANO
    collector.adjtimex = fake_adjtimex(state, offset=-2500, freq=655360, maxerror=1500, esterror=250,
                                       status=status, constant=7, tick=10000, ppsfreq=65536, jitter=800,
                                       shift=2, stabil=131072, jitcnt=1, calcnt=2, errcnt=3, stbcnt=4, tai=37)
    text = render_families(collector.collect()).decode()
    unit = 1e9 if nano else 1e6
    got = {n: value(text, n) for n in names(text)}
    assert got == {
        "node_timex_sync_status": 0 if state == 5 else 1, "node_timex_offset_seconds": -2500 / unit,
        "node_timex_frequency_adjustment_ratio": 1 + 10 / 1e6, "node_timex_maxerror_seconds": 0.0015,
        "node_timex_estimated_error_seconds": 0.00025, "node_timex_status": status,
        "node_timex_loop_time_constant": 7, "node_timex_tick_seconds": 0.01,
        "node_timex_pps_frequency_hertz": 1e-6, "node_timex_pps_jitter_seconds": 800 / unit,
        "node_timex_pps_shift_seconds": 2, "node_timex_pps_stability_hertz": 2e-6,
        "node_timex_pps_jitter_total": 1, "node_timex_pps_calibration_total": 2, "node_timex_pps_error_total": 3,
        "node_timex_pps_stability_exceeded_total": 4, "node_timex_tai_offset_seconds": 37,
    }
    assert types(text)["node_timex_pps_error_total"][0] == "counter"


def test_timex_real_syscall_matches_the_kernel_clock() -> None:
    text = scrape("timex")
    tick = value(text, "node_timex_tick_seconds")
    hz = os.sysconf("SC_CLK_TCK")
    assert math.isclose(tick, 1 / hz, rel_tol=0.01)  # USER_HZ ticks: 10000 us at 100 Hz
    assert value(text, "node_timex_sync_status") in (0, 1)
    assert 0.99 < value(text, "node_timex_frequency_adjustment_ratio") < 1.01  # ±500 ppm at most


# --- this machine, beside node_exporter 1.5 -------------------------------------------------------

@pytest.fixture(scope="module")
def node_exporter_text() -> str:
    return scrape_once(["--collector.disable-defaults", *(f"--collector.{name}" for name in NEW)])


def series(text: str, prefixes: tuple[str, ...]) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) for s in f.samples if s.name.startswith(prefixes)}


# Prefix of each collector's series; values that move between two reads get a tolerance.
PREFIXES = {"netstat": ("node_netstat_",), "netclass": ("node_network_",), "softnet": ("node_softnet_",),
            "conntrack": ("node_nf_conntrack_",), "arp": ("node_arp_",), "entropy": ("node_entropy_",),
            "schedstat": ("node_schedstat_",), "thermal_zone": ("node_thermal_zone_", "node_cooling_device_"),
            "timex": ("node_timex_",)}
MOVING = ("node_netstat_", "node_softnet_processed", "node_schedstat_", "node_entropy_available",
          "node_nf_conntrack_entries", "node_nf_conntrack_stat_", "node_timex_maxerror", "node_timex_estimated",
          "node_timex_offset", "node_timex_frequency")


@pytest.mark.parametrize("name", NEW)
def test_same_series_and_values_as_node_exporter_here(name: str, node_exporter_text: str) -> None:
    theirs = series(node_exporter_text, PREFIXES[name])
    text = scrape(name)
    ours = series(text, PREFIXES[name])
    assert set(ours) == set(theirs), f"node_exporter only: {set(theirs) - set(ours)}; ours: {set(ours) - set(theirs)}"
    for key, expected in theirs.items():
        got = ours[key]
        if key[0].startswith(MOVING):
            assert math.isclose(got, expected, rel_tol=0.05, abs_tol=50), (key, got, expected)
        else:
            assert got == expected, (key, got, expected)
    theirs_types = types(node_exporter_text)
    for family, kind in types(text).items():
        assert theirs_types[family] == kind, family
